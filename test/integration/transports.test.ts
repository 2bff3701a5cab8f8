import assert from 'node:assert/strict';
import https from 'node:https';
import net from 'node:net';
import type { Gateway } from '../../src/gateway.js';
import { createTestCa, type PemFiles, type TestCa } from '../support/certs.js';
import { TEST_PASSWORD, assertClean, requireSipp, startGateway, waitFor, wsUrl, type HarnessOptions } from '../support/gateway-harness.js';
import { startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';

/**
 * Calls over every SIP transport with real peers on 127.0.0.1: SIPp over TCP and TLS (SIPp behind a
 * TLS tunnel, see tls-tunnel.ts), SIP.js over WSS, a SIPp trunk calling in over TLS. Certificates
 * are made per run by a test CA, so verification is real. Every test ends with a clean gateway.
 */
describe('SIP transports: TCP, TLS and WSS', function () {
  this.timeout(60_000);

  let ca: TestCa;
  let server: PemFiles; // localhost, 127.0.0.1
  let otherName: PemFiles; // other.example only
  let foreignCa: TestCa;
  let foreign: PemFiles; // localhost, 127.0.0.1, signed by a CA the gateway does not trust

  let gw: Gateway | undefined;
  const sipps: SippPeer[] = [];
  const phones: Softphone[] = [];

  before(requireSipp);
  before(async () => {
    ca = await createTestCa();
    server = await ca.leaf('server');
    otherName = await ca.leaf('other-name', { dns: ['other.example'], ips: [] });
    foreignCa = await createTestCa('Foreign CA');
    foreign = await foreignCa.leaf('foreign');
  });
  after(async () => {
    await ca?.remove();
    await foreignCa?.remove();
  });

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await Promise.allSettled(phones.splice(0).map((p) => p.close()));
      await Promise.allSettled(sipps.splice(0).map((s) => s.stop()));
      await gw?.close();
      gw = undefined;
    }
  });

  async function sipp(opts: SippOptions): Promise<SippPeer> {
    const p = await startSipp(opts);
    sipps.push(p);
    return p;
  }

  async function phone(opts: { user?: string; secure?: boolean } = {}): Promise<Softphone> {
    const p = await Softphone.connect({ server: wsUrl(gw!), user: opts.user ?? 'alice', domain: '127.0.0.1', password: TEST_PASSWORD, ...(opts.secure ? { tlsCa: ca.caPem } : {}) });
    phones.push(p);
    return p;
  }

  const tlsGateway = (opts: Partial<HarnessOptions> & { trunkPort: number }) =>
    startGateway({ trunkTransport: 'tls', sipTls: { cert: server.cert, key: server.key, ca: ca.caFile }, trunk: { tlsVerify: true }, ...opts });

  /** Places a call to the trunk, checks audio comes back through SIPp's echo, hangs up. */
  async function callWithEcho(p: Softphone): Promise<void> {
    const call = p.call('sip:1000@127.0.0.1');
    await call.established;
    const sending = call.startSendingPcmu({ count: 60, intervalMs: 20 });
    await call.waitForRtp(40, 10_000);
    await sending;
    const info = gw!.controller.calls()[0]!.info();
    assert.ok(info.relay!.toSip.packets >= 40 && info.relay!.toBrowser.packets >= 40, JSON.stringify(info.relay));
    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
  }

  function receivedBy(peer: SippPeer, method: string) {
    return peer.messages().then((ms) => ms.filter((m) => m.kind === 'received' && m.method === method));
  }

  it('bridges a WebSocket softphone to a SIPp trunk over TCP: audio both ways, BYE over the connection', async () => {
    const uas = await sipp({ scenario: 'uas-answer', transport: 'tcp', rtpEcho: true, traceMsg: true });
    gw = await startGateway({ trunkPort: uas.port, trunkTransport: 'tcp' });
    await callWithEcho(await phone());
    const done = await uas.done;
    assert.equal(done.code, 0, done.errors);
    const [invite] = await receivedBy(uas, 'INVITE');
    // Via and Contact name the listening port, not the connection's ephemeral one (RFC 3261 §18.1.1).
    const tcpPort = gw.sipAddress('tcp')!.port;
    assert.match(invite!.text, new RegExp(`^Via: SIP/2\\.0/TCP 127\\.0\\.0\\.1:${tcpPort};`, 'm'));
    assert.match(invite!.text, new RegExp(`^Contact: <sip:[^@]+@127\\.0\\.0\\.1:${tcpPort};transport=tcp>`, 'm'));
    assert.equal((await receivedBy(uas, 'BYE')).length, 1);
  });

  it('sends RFC 5626 CRLF pings to a TCP trunk during a call; the call is unaffected', async () => {
    const uas = await sipp({ scenario: 'uas-answer-then-bye', transport: 'tcp', rtpEcho: true, traceMsg: true, keys: { hold_ms: '1500' } });
    gw = await startGateway({ trunkPort: uas.port, trunkTransport: 'tcp', keepAliveMs: 100 });
    const call = (await phone()).call('sip:1000@127.0.0.1');
    await call.established;
    void call.startSendingPcmu({ count: 75, intervalMs: 20 }).catch(() => undefined);
    const end = await call.waitTerminated(15_000);
    assert.equal(end.byeReceived, true, 'SIPp hung up after its hold time');
    const done = await uas.done;
    assert.equal(done.code, 0, done.errors);
  });

  it('bridges to a SIPp trunk over TLS, verifying its certificate against the configured CA', async () => {
    const uas = await sipp({ scenario: 'uas-answer', transport: 'tls', tls: { cert: server.cert, key: server.key }, rtpEcho: true, traceMsg: true });
    gw = await tlsGateway({ trunkPort: uas.port });
    await callWithEcho(await phone());
    const done = await uas.done;
    assert.equal(done.code, 0, done.errors);
    const [invite] = await receivedBy(uas, 'INVITE');
    const tlsPort = gw.sip.address('tls')!.port;
    assert.match(invite!.text, new RegExp(`^Via: SIP/2\\.0/TLS 127\\.0\\.0\\.1:${tlsPort};`, 'm'));
    assert.match(invite!.text, /^INVITE sip:1000@127\.0\.0\.1:\d+;transport=tls SIP\/2\.0/);
    assert.match(invite!.text, new RegExp(`^Contact: <sip:[^@]+@127\\.0\\.0\\.1:${tlsPort};transport=tls>`, 'm'));
    assert.equal((await receivedBy(uas, 'BYE')).length, 1, 'the BYE went over TLS too');
    assert.deepEqual(uas.tls!.servernames, [false], 'one connection, and no IP address as SNI');
    assert.deepEqual(uas.tls!.handshakeErrors, []);
  });

  it('sends a trunk domain as SNI and checks the certificate against that name', async () => {
    const uas = await sipp({ scenario: 'uas-answer', transport: 'tls', tls: { cert: server.cert, key: server.key }, rtpEcho: true });
    gw = await tlsGateway({ trunkPort: uas.port, trunkHost: 'localhost' });
    await callWithEcho(await phone());
    assert.equal((await uas.done).code, 0);
    assert.deepEqual(uas.tls!.servernames, ['localhost']);
  });

  for (const [why, cert] of [
    ['is for another name', () => otherName],
    ['is signed by a CA nobody configured', () => foreign],
  ] as const) {
    it(`fails the call cleanly with 503 when the trunk's certificate ${why}; the next good call works`, async () => {
      const bad = await sipp({ scenario: 'uas-answer', transport: 'tls', tls: { cert: cert().cert, key: cert().key } });
      const good = await sipp({ scenario: 'uas-answer', transport: 'tls', tls: { cert: server.cert, key: server.key }, rtpEcho: true });
      const trunk = (name: string, port: number) => ({ name, host: '127.0.0.1', port, transport: 'tls', tlsVerify: true, optionsPingMs: 0 });
      gw = await tlsGateway({
        trunkPort: bad.port,
        extra: { trunks: [trunk('bad', bad.port), trunk('good', good.port)], routes: [{ to: { prefix: '9' }, trunk: 'bad', strip: 1 }, { to: { prefix: '1' }, trunk: 'good' }] },
      });
      const p = await phone();
      const call = p.call('sip:91000@127.0.0.1');
      await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 503);
      await assertClean(gw);
      assert.equal(bad.tls!.connections, 0, 'the gateway refused the handshake: nothing reached SIPp');
      await waitFor(() => bad.tls!.handshakeErrors.length > 0, 'the tunnel to see the aborted handshake');
      await callWithEcho(p);
      assert.equal((await good.done).code, 0);
      assert.equal((await bad.stop()).stats?.created ?? 0, 0);
    });
  }

  it('serves the page over HTTPS and SIP over WSS on the same port: a softphone registers and hears the echo extension', async () => {
    gw = await startGateway({ trunkPort: 9, httpTls: { cert: server.cert, key: server.key } });
    const health = await new Promise<number>((resolve, reject) => {
      https.get(`https://127.0.0.1:${gw!.httpAddress.port}/healthz`, { ca: ca.caPem }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    assert.equal(health, 200);
    assert.match(wsUrl(gw), /^wss:\/\//);
    const p = await phone({ secure: true });
    await p.register({ expires: 300 });
    assert.equal(gw.sip.registrations().filter((r) => r.user === 'alice').length, 1);
    const echo = p.call('sip:600@127.0.0.1');
    await echo.established;
    const sending = echo.startSendingPcmu({ count: 60, intervalMs: 20 });
    await echo.waitForRtp(40, 10_000);
    await sending;
    assert.deepEqual(await echo.hangup(), { method: 'BYE', statusCode: 200 });
  });

  it('a SIPp trunk calls in over TLS to a softphone registered over WSS; a bad client on the TLS port changes nothing', async () => {
    gw = await startGateway({ trunkPort: 9, sipTls: { cert: server.cert, key: server.key }, httpTls: { cert: server.cert, key: server.key } });
    const tlsPort = gw.sip.address('tls')!.port;
    // Plain SIP at the TLS listener: its handshake fails and only its own connection goes.
    await new Promise<void>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: tlsPort }, () => s.write('OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n'));
      s.on('error', () => undefined);
      s.on('close', () => resolve());
    });
    const alice = await phone({ secure: true });
    await alice.register({ expires: 300 });
    const uac = await sipp({
      scenario: 'uac-call',
      transport: 'tls',
      remote: `127.0.0.1:${tlsPort}`,
      tls: { ca: ca.caFile, servername: 'localhost' },
      rtpEcho: true,
      traceMsg: true,
      keys: { to_user: 'alice', hangup_ms: '1500', bye_wait_ms: '15000', linger_ms: '0' },
    });
    const inc = await alice.nextIncoming(10_000);
    assert.match(inc.invitation.request.getHeader('via') ?? '', /^SIP\/2\.0\/WSS /, 'the gateway speaks WSS to the browser');
    await inc.answer();
    const sending = inc.startSendingPcmu({ count: 60, intervalMs: 20 });
    await inc.waitForRtp(30, 10_000);
    await sending;
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true);
    const done = await uac.done;
    assert.equal(done.code, 0, done.errors);
    assert.deepEqual(uac.tls!.handshakeErrors, [], 'SIPp verified the gateway certificate');
    const [ok] = (await uac.messages()).filter((m) => m.kind === 'received' && m.status === 200 && m.cseq?.method === 'INVITE');
    assert.match(ok!.text, new RegExp(`^Contact: <sip:[^@]+@127\\.0\\.0\\.1:${tlsPort};transport=tls>`, 'm'));
  });
});
