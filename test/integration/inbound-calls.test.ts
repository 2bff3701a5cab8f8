import assert from 'node:assert/strict';
import type { Gateway } from '../../src/gateway.js';
import { TEST_PASSWORD, assertClean, startGateway, waitFor, wsUrl, type HarnessOptions, requireSipp } from '../support/gateway-harness.js';
import { Softphone } from '../support/softphone.js';
import { startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';

/**
 * Calls from a SIP trunk (SIPp UAC) to registered browsers (SIP.js + werift): forking, CANCEL,
 * timeouts, routing and refusal of unknown sources. Every test ends with a clean gateway.
 */
describe('inbound calls: SIP trunk to registered browsers', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  const phones: Softphone[] = [];

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await Promise.allSettled(phones.splice(0).map((p) => p.close()));
      await sipp?.stop();
      await gw?.close();
      sipp = gw = undefined;
    }
  });

  async function gateway(opts: Partial<HarnessOptions> = {}): Promise<Gateway> {
    // The trunk is whatever SIPp listens on; inbound calls are recognised by source address.
    gw = await startGateway({ trunkPort: 9, ...opts });
    return gw;
  }

  async function registered(user: string): Promise<Softphone> {
    const p = await Softphone.connect({ server: wsUrl(gw!), user, domain: '127.0.0.1', password: TEST_PASSWORD });
    phones.push(p);
    await p.register({ expires: 300 });
    return p;
  }

  /** Keywords each UAC scenario needs besides the test's own (SIPp rejects a scenario with one missing). */
  const UAC_DEFAULT_KEYS: Record<string, Record<string, string>> = {
    'uac-call': { bye_wait_ms: '15000', linger_ms: '500' },
    'uac-cancel': { linger_ms: '500' },
    'uac-expect-status': { linger_ms: '500' },
  };

  async function uac(scenario: string, keys: Record<string, string>, extra: Partial<SippOptions> = {}): Promise<SippPeer> {
    const udp = gw!.sipAddress('udp')!;
    sipp = await startSipp({ scenario, remote: `127.0.0.1:${udp.port}`, calls: 1, keys: { ...UAC_DEFAULT_KEYS[scenario], ...keys }, traceMsg: true, ...extra });
    return sipp;
  }

  it('rings a registered browser; it answers; RTP flows both ways; SIPp hangs up', async () => {
    await gateway();
    const alice = await registered('alice');
    const peer = await uac('uac-call', { to_user: 'alice', hangup_ms: '2500' }, { rtpEcho: true });
    const inc = await alice.nextIncoming(10_000);
    assert.equal(inc.fromUser, 'sipp');
    await inc.ringing();
    await inc.answer();
    const sending = inc.startSendingPcmu({ count: 100, intervalMs: 20 });
    await inc.waitForRtp(50, 10_000);
    await sending;
    const info = gw!.controller.list()[0]!;
    assert.equal(info.direction, 'inbound');
    assert.equal(info.codec, 'pcmu');
    assert.ok(info.relay!.toSip.packets >= 50 && info.relay!.toBrowser.packets >= 50, JSON.stringify(info.relay));
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true, 'the browser got BYE');
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('the browser hangs up: SIPp gets BYE', async () => {
    await gateway();
    const alice = await registered('alice');
    const peer = await uac('uac-call', { to_user: 'alice', hangup_ms: '0' }, { rtpEcho: true });
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    await inc.hangup();
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
    assert.ok((await peer.messages()).some((m) => m.kind === 'received' && m.method === 'BYE'));
  });

  it('rings every device of the user; the first to answer wins and the other gets CANCEL (completed elsewhere)', async () => {
    await gateway();
    const desk = await registered('bob');
    const laptop = await registered('bob');
    assert.equal(gw!.sip.registrations().filter((r) => r.user === 'bob').length, 2);
    const peer = await uac('uac-call', { to_user: 'bob', hangup_ms: '1000' });
    const [a, b] = await Promise.all([desk.nextIncoming(10_000), laptop.nextIncoming(10_000)]);
    await Promise.all([a.ringing(), b.ringing()]);
    await a.answer();
    const cancel = await b.waitCancelled(10_000);
    assert.equal(cancel.cause, 200);
    assert.match(cancel.text ?? '', /completed elsewhere/i);
    await a.waitTerminated(10_000);
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('SIPp CANCELs while the browser rings: 487 to SIPp and CANCEL to the browser', async () => {
    await gateway();
    const alice = await registered('alice');
    const peer = await uac('uac-cancel', { to_user: 'alice', cancel_after_ms: '300' });
    const inc = await alice.nextIncoming(10_000);
    await inc.ringing();
    await inc.waitCancelled(10_000);
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('answers 480 when nobody answers in time, and CANCELs the ringing browser', async () => {
    await gateway({ ringTimeoutMs: 1500 });
    const alice = await registered('alice');
    const peer = await uac('uac-expect-status', { to_user: 'alice', status: '480' });
    const inc = await alice.nextIncoming(10_000);
    await inc.ringing();
    await inc.waitCancelled(10_000);
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('an answered call outlives the ring timeout (it limits ringing, not the call)', async () => {
    await gateway({ ringTimeoutMs: 1000 });
    const alice = await registered('alice');
    const peer = await uac('uac-call', { to_user: 'alice', hangup_ms: '2500' });
    const inc = await alice.nextIncoming(10_000);
    await inc.ringing();
    await inc.answer();
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true, 'SIPp hung up after 2.5 s, not the gateway after 1 s');
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
    await waitFor(() => gw!.controller.size === 0, 'the call to end');
    const ended = gw!.controller.list()[0]!;
    assert.equal(ended.endReason?.by, 'sip', JSON.stringify(ended.endReason));
  });

  it('answers 480 for a known user with no registered device', async () => {
    await gateway();
    const peer = await uac('uac-expect-status', { to_user: 'carol', status: '480' });
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
    assert.equal(gw!.stats().totalCalls, 0);
  });

  it('routes a DID to its user', async () => {
    await gateway({ dids: { '+15550100': 'alice' } });
    const alice = await registered('alice');
    const peer = await uac('uac-call', { to_user: '+15550100', hangup_ms: '500' });
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    await inc.waitTerminated(10_000);
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('bridges two registered users through the gateway with audio both ways', async () => {
    await gateway();
    const bob = await registered('bob');
    const alice = await registered('alice');
    const call = alice.call('sip:bob@127.0.0.1');
    const inc = await bob.nextIncoming(10_000);
    assert.equal(inc.fromUser, 'alice');
    await inc.ringing();
    assert.equal(await call.progress, 180);
    await inc.answer();
    await call.established;
    const a = call.startSendingPcmu({ count: 60, intervalMs: 20 });
    const b = inc.startSendingPcmu({ count: 60, intervalMs: 20 });
    await Promise.all([call.waitForRtp(40, 10_000), inc.waitForRtp(40, 10_000), a, b]);
    const info = gw!.controller.list()[0]!;
    assert.equal(gw!.stats().peerConnections, 2, 'one PeerConnection per browser');
    assert.ok(info.relay!.toSip.packets >= 40 && info.relay!.toBrowser.packets >= 40, JSON.stringify(info.relay));
    await call.hangup();
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true);
  });

  it('refuses calls from an address that is not a configured trunk with 403, creating nothing', async () => {
    await gateway({ extra: { trunks: [{ name: 'elsewhere', host: '127.0.0.1', port: 9, transport: 'udp', addresses: ['127.0.0.2'] }] } });
    await registered('alice');
    const peer = await uac('uac-expect-status', { to_user: 'alice', status: '403' });
    const done = await peer.done;
    assert.equal(done.code, 0, done.errors);
    assert.equal(gw!.stats().totalCalls, 0);
    assert.equal(gw!.stats().rtpPortsInUse, 0);
  });
  it('matchPort checks the source port of UDP trunks only: TCP peers connect from ephemeral ports', async () => {
    // Port 9 is nobody's source port. Recognised as the trunk, the call gets 480 (bob is not
    // registered); not recognised, it gets 403.
    await gateway({ trunk: { matchPort: true } });
    const refused = await uac('uac-expect-status', { to_user: 'bob', status: '403' });
    assert.equal((await refused.done).code, 0, 'UDP from another port than the trunk\'s is refused');
    await sipp!.stop();
    await gw!.close();

    await gateway({ trunkTransport: 'tcp', trunk: { matchPort: true } });
    const tcp = gw!.sipAddress('tcp')!;
    sipp = await startSipp({ scenario: 'uac-expect-status', transport: 'tcp', remote: `127.0.0.1:${tcp.port}`, calls: 1, keys: { to_user: 'bob', status: '480', linger_ms: '0' }, traceMsg: true });
    const done = await sipp.done;
    assert.equal(done.code, 0, `TCP from an ephemeral port is the trunk: ${done.errors}`);
  });
});
