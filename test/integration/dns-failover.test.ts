import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import { TestDnsServer } from '../support/dns-server.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, wsUrl } from '../support/gateway-harness.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';

/** A UDP "SIP server" that takes every request and never answers; it keeps what it got. */
interface DeadPeer {
  port: number;
  received: string[];
}

const callIdOf = (text: string): string | undefined => /^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)/im.exec(text)?.[1];

/**
 * RFC 3263 end to end: a trunk named only by its domain (pbx.test, UDP, no port) is found
 * through SRV records served on 127.0.0.1, and a call fails over from the first SRV target to
 * the second when the first stays silent or answers 503. Every test ends with the gateway
 * holding no call, no port and no PeerConnection.
 */
describe('DNS failover: a trunk reached through its SRV records', function () {
  this.timeout(60_000);

  let dns: TestDnsServer;
  let gw: Gateway | undefined;
  let phone: Softphone | undefined;
  let sipps: SippPeer[] = [];
  let sockets: dgram.Socket[] = [];

  before(requireSipp);
  before(async () => {
    dns = await TestDnsServer.start();
  });
  after(() => dns?.close());

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await Promise.all(sipps.map((s) => s.stop()));
      await Promise.all(sockets.map((s) => closeUdp(s)));
      await gw?.close();
      dns.reset();
      phone = gw = undefined;
      sipps = [];
      sockets = [];
    }
  });

  async function deadPeer(): Promise<DeadPeer> {
    const socket = await bindUdp(0);
    sockets.push(socket);
    const peer: DeadPeer = { port: socket.address().port, received: [] };
    socket.on('message', (msg) => peer.received.push(msg.toString('utf8')));
    return peer;
  }

  async function sipp(opts: SippOptions): Promise<SippPeer> {
    const peer = await startSipp({ transport: 'udp', calls: 1, traceMsg: true, ...opts });
    sipps.push(peer);
    return peer;
  }

  /** _sip._udp.pbx.test: priority 10 → a.pbx.test:portA, priority 20 → b.pbx.test:portB, both 127.0.0.1. */
  function zone(portA: number, portB: number): void {
    dns.srv('_sip._udp.pbx.test', [
      { priority: 20, weight: 0, port: portB, target: 'b.pbx.test' },
      { priority: 10, weight: 0, port: portA, target: 'a.pbx.test' },
    ]);
    dns.a('a.pbx.test', ['127.0.0.1']).a('b.pbx.test', ['127.0.0.1']);
  }

  async function start(): Promise<{ gw: Gateway; phone: Softphone }> {
    gw = await startGateway({
      trunkPort: 9, // replaced: the trunk below has no port, so SRV decides
      trunk: { host: 'pbx.test', port: undefined, transport: 'udp', failoverTimeoutMs: 500 },
      extra: { sip: { dns: { servers: [dns.server] } } },
    });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    return { gw, phone };
  }

  async function invitesAt(peer: SippPeer): Promise<string[]> {
    return (await peer.messages()).filter((m) => m.kind === 'received' && m.method === 'INVITE').map((m) => m.callId ?? '');
  }

  it('pings the next SRV target with OPTIONS after failoverTimeoutMs of silence, not after the whole of Timer F', async () => {
    const a = await deadPeer();
    const b = await sipp({ scenario: 'uas-options', calls: 1 });
    zone(a.port, b.port);
    // T1 1 s: Timer F is 64 s, far beyond this test's timeout; the 500 ms failover must do it.
    gw = await startGateway({
      trunkPort: 9,
      t1: 1000,
      trunk: { host: 'pbx.test', port: undefined, transport: 'udp', failoverTimeoutMs: 500, optionsPingMs: 60_000 },
      extra: { sip: { dns: { servers: [dns.server] } } },
    });
    const g = gw;
    const deadline = Date.now() + 10_000;
    while (g.trunkStatus()[0]!.reachability !== 'reachable' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(g.trunkStatus()[0]!.reachability, 'reachable', JSON.stringify(g.trunkStatus()[0]));
    assert.ok(a.received.some((m) => m.startsWith('OPTIONS ')), 'the priority-10 target was pinged first');
    const done = await b.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('fails over to the priority-20 target when the priority-10 one never answers, within the same call', async () => {
    const a = await deadPeer();
    const b = await sipp({ scenario: 'uas-answer' });
    zone(a.port, b.port);
    const { gw, phone } = await start();

    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    assert.equal(gw.controller.calls()[0]!.info().legs.sip.target, `udp:127.0.0.1:${b.port}`);
    const atA = a.received.filter((m) => m.startsWith('INVITE '));
    assert.ok(atA.length >= 1, 'the first SRV target was tried first');
    assert.ok(atA[0]!.startsWith('INVITE sip:1000@pbx.test '), `Request-URI keeps the domain: ${atA[0]!.split('\r\n')[0]}`);
    const atB = await invitesAt(b);
    assert.deepEqual(atB, [callIdOf(atA[0]!)], 'the second target got the same call');
    assert.ok(dns.queries.some((q) => q.type === 'SRV' && q.name === '_sip._udp.pbx.test'));
    assert.ok(!dns.queries.some((q) => q.type === 'NAPTR'), 'a trunk with a transport skips NAPTR');

    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await b.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('fails over to the second target when the first answers 503', async () => {
    const a = await sipp({ scenario: 'uas-reject', keys: { status: '503' } });
    const b = await sipp({ scenario: 'uas-answer' });
    zone(a.port, b.port);
    const { gw, phone } = await start();

    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    assert.equal(gw.controller.calls()[0]!.info().legs.sip.target, `udp:127.0.0.1:${b.port}`);
    const doneA = await a.done;
    assert.equal(doneA.code, 0, `the 503 was acknowledged: ${doneA.errors}`);
    const [atA, atB] = [await invitesAt(a), await invitesAt(b)];
    assert.equal(atA.length, 1);
    assert.deepEqual(atB, atA, 'the same call went on to the second target');

    await call.hangup();
    const doneB = await b.done;
    assert.equal(doneB.code, 0, doneB.errors);
  });

  it('goes past an IPv6-only target the IPv4 listener cannot reach, to the next SRV target', async () => {
    const b = await sipp({ scenario: 'uas-answer' });
    dns.srv('_sip._udp.pbx.test', [
      { priority: 10, weight: 0, port: b.port, target: 'v6.pbx.test' },
      { priority: 20, weight: 0, port: b.port, target: 'b.pbx.test' },
    ]);
    dns.aaaa('v6.pbx.test', ['::1']).a('b.pbx.test', ['127.0.0.1']);
    const { gw, phone } = await start();

    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    assert.equal(gw.controller.calls()[0]!.info().legs.sip.target, `udp:127.0.0.1:${b.port}`);
    await call.hangup();
    const done = await b.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('ends the call cleanly with an error status when every SRV target is dead', async () => {
    const a = await deadPeer();
    const b = await deadPeer();
    zone(a.port, b.port);
    const { phone } = await start();

    const call = phone.call('sip:1000@127.0.0.1');
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && (e.statusCode === 408 || (e.statusCode >= 500 && e.statusCode < 600)));
    assert.ok(a.received.some((m) => m.startsWith('INVITE ')), 'first target tried');
    assert.ok(b.received.some((m) => m.startsWith('INVITE ')), 'second target tried');
  });

  it('answers 5xx when the DNS server does not answer at all, and keeps serving', async () => {
    dns.silence('_sip._udp.pbx.test').silence('pbx.test');
    const { gw, phone } = await start();

    const call = phone.call('sip:1000@127.0.0.1');
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode >= 500 && e.statusCode < 600);
    assert.ok(dns.queries.some((q) => q.name === '_sip._udp.pbx.test'));

    // The same gateway still serves a call once DNS answers (the failed lookups were not cached).
    dns.reset();
    const b = await sipp({ scenario: 'uas-answer' });
    zone(b.port, b.port);
    const next = phone.call('sip:1000@127.0.0.1');
    await next.established;
    assert.equal(gw.controller.calls()[0]!.info().legs.sip.target, `udp:127.0.0.1:${b.port}`);
    await next.hangup();
  });

  it('recognises calls from a trunk named by domain by what it resolves to, and follows an address change', async () => {
    // The trunk's SRV target first resolves to 127.0.0.2 (TTL 0: not cached), so SIPp on 127.0.0.1 is a stranger.
    dns.srv('_sip._udp.pbx.test', [{ priority: 10, weight: 0, port: 5060, target: 'a.pbx.test' }]);
    dns.a('a.pbx.test', ['127.0.0.2'], 0);
    const { gw } = await start();
    const uac = (status: string) =>
      sipp({ scenario: 'uac-expect-status', remote: `127.0.0.1:${gw.sipAddress('udp')!.port}`, keys: { to_user: 'bob', status, linger_ms: '300' } });
    const refused = await (await uac('403')).done;
    assert.equal(refused.code, 0, `an unknown source gets 403: ${refused.errors}`);

    dns.reset();
    dns.srv('_sip._udp.pbx.test', [{ priority: 10, weight: 0, port: 5060, target: 'a.pbx.test' }]);
    dns.a('a.pbx.test', ['127.0.0.1'], 0);
    await gw.refreshTrunkAddresses();
    // Recognised as the trunk now: bob is a known user with no device, so 480 instead of 403.
    const recognised = await (await uac('480')).done;
    assert.equal(recognised.code, 0, `the trunk's call reaches routing: ${recognised.errors}`);

    // DNS failing later keeps the last known addresses.
    dns.reset();
    dns.serverFailure('_sip._udp.pbx.test').serverFailure('a.pbx.test').serverFailure('pbx.test');
    await gw.refreshTrunkAddresses();
    const still = await (await uac('480')).done;
    assert.equal(still.code, 0, `still recognised after a failed lookup: ${still.errors}`);
  });
});
