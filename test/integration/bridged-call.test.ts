import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, startGateway, TEST_PASSWORD, waitFor, wsUrl, requireSipp } from '../support/gateway-harness.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';
import { OPUS } from '../support/werift-sdh.js';
import type { GatewayConfig } from '../../src/config.js';
import { bindUdp, freeUdpRun } from '../support/ports.js';
import { startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';

/**
 * The first bridged call (issue 2): a SIP.js softphone over WebSocket (werift media) calls
 * through the gateway to SIPp over UDP. Every test ends with the gateway holding no call,
 * no port and no PeerConnection.
 */
describe('bridged call: SIP.js over WebSocket to SIPp over UDP', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let phone: Softphone | undefined;

  before(requireSipp);

  async function setup(opts: SippOptions & { t1?: number; rtpPorts?: [number, number]; codecs?: GatewayConfig['media']['codecs']; trunk?: Record<string, unknown>; ringTimeoutMs?: number }): Promise<{ gw: Gateway; sipp: SippPeer; phone: Softphone }> {
    const { t1, rtpPorts, codecs, trunk, ringTimeoutMs, ...sippOpts } = opts;
    sipp = await startSipp({ transport: 'udp', ...sippOpts });
    gw = await startGateway({ trunkPort: sipp.port, trunkTransport: sipp.transport, ...(t1 ? { t1 } : {}), ...(rtpPorts ? { rtpPorts } : {}), ...(codecs ? { codecs } : {}), ...(trunk ? { trunk } : {}), ...(ringTimeoutMs ? { ringTimeoutMs } : {}) });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    return { gw, sipp, phone };
  }

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await sipp?.stop();
      await gw?.close();
      phone = sipp = gw = undefined;
    }
  });

  it('relays audio both ways and the client hangs up: SIPp gets BYE, the gateway ends clean', async () => {
    const { gw, sipp, phone } = await setup({ scenario: 'uas-answer', rtpEcho: true, calls: 1, traceMsg: true });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    assert.equal(gw.stats().calls, 1);
    assert.equal(gw.stats().peerConnections, 1);
    const sending = call.startSendingPcmu({ count: 150, intervalMs: 20 });
    await call.waitForRtp(100, 10_000);
    await sending;
    const info = gw.controller.calls()[0]!.info();
    assert.equal(info.codec, 'pcmu');
    assert.ok(info.relay!.toSip.packets >= 100 && info.relay!.toBrowser.packets >= 100, JSON.stringify(info.relay));
    assert.equal(info.relay!.toSip.lost, 0);
    const result = await call.hangup();
    assert.deepEqual(result, { method: 'BYE', statusCode: 200 });
    const done = await sipp.done;
    assert.equal(done.code, 0, done.errors);
    const received = (await sipp.messages()).filter((m) => m.kind === 'received').map((m) => m.method);
    assert.ok(received.includes('BYE'), `SIPp saw ${received.join(',')}`);
  });

  it('reaches the built-in echo and tone extensions through the trunk path', async () => {
    const { phone } = await setup({ scenario: 'uas-answer', calls: 1 });
    const echo = phone.call('sip:600@127.0.0.1');
    await echo.established;
    const sending = echo.startSendingPcmu({ count: 60, intervalMs: 20 });
    await echo.waitForRtp(40, 10_000);
    await sending;
    await echo.hangup();
    const tone = phone.call('sip:601@127.0.0.1');
    await tone.established;
    await tone.waitForRtp(25, 10_000); // the tone plays without being sent anything
    await tone.hangup();
    assert.equal((await sipp!.stop()).stats?.created ?? 0, 0, 'the trunk saw neither call');
  });

  it('bridges a call to a SIP peer over TCP', async () => {
    const { gw, sipp, phone } = await setup({ scenario: 'uas-answer', transport: 'tcp', rtpEcho: true, calls: 1, traceMsg: true });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const sending = call.startSendingPcmu({ count: 60, intervalMs: 20 });
    await call.waitForRtp(40, 10_000);
    await sending;
    assert.equal(gw.stats().sipRetransmissions, 0, 'nothing is retransmitted over TCP');
    await call.hangup();
    const done = await sipp.done;
    assert.equal(done.code, 0, done.errors);
    const received = (await sipp.messages()).filter((m) => m.kind === 'received').map((m) => `${m.transport}:${m.method}`);
    assert.ok(received.some((r) => /tcp:BYE/i.test(r)), `SIPp saw ${received.join(',')}`);
  });

  for (const [password, outcome] of [
    ['trunk-secret', 'answers'],
    ['wrong-secret', 'is refused with 403 and nothing leaks'],
  ] as const) {
    it(`answers the trunk's 401 challenge once with its credentials: the call ${outcome}`, async () => {
      const { sipp, phone } = await setup({ scenario: 'uas-auth', calls: 1, keys: { pt: '0', codec: 'PCMU' }, trunk: { username: 'gwtrunk', password } });
      const call = phone.call('sip:1000@127.0.0.1');
      if (password === 'trunk-secret') {
        await call.established;
        await call.hangup();
        assert.equal((await sipp.done).code, 0);
      } else {
        await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 403);
      }
    });
  }

  it('SIPp hangs up: the client receives BYE and the gateway ends clean', async () => {
    const { sipp, phone } = await setup({ scenario: 'uas-answer-then-bye', rtpEcho: true, calls: 1, keys: { hold_ms: '1500' } });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    void call.startSendingPcmu({ count: 50, intervalMs: 20 }).catch(() => undefined);
    const end = await call.waitTerminated(15_000);
    assert.equal(end.byeReceived, true);
    assert.equal((await sipp.done).code, 0);
  });

  for (const status of ['486', '404', '503']) {
    it(`passes SIPp's ${status} to the client as the final response`, async () => {
      const { phone } = await setup({ scenario: 'uas-reject', calls: 1, keys: { status } });
      const call = phone.call('sip:1000@127.0.0.1');
      await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === Number(status));
      const end = await call.waitTerminated(10_000);
      assert.equal(end.statusCode, Number(status));
    });
  }

  it('the client CANCELs while SIPp rings: 487 to the client, CANCEL to SIPp', async () => {
    const { sipp, phone } = await setup({ scenario: 'uas-ring-no-answer', calls: 1, traceMsg: true });
    const call = phone.call('sip:1000@127.0.0.1');
    assert.equal(await call.progress, 180);
    const result = await call.hangup();
    assert.equal(result.method, 'CANCEL');
    const end = await call.waitTerminated(10_000);
    assert.equal(end.statusCode, 487);
    assert.equal((await sipp.done).code, 0);
    const received = (await sipp.messages()).filter((m) => m.kind === 'received').map((m) => m.method);
    assert.ok(received.includes('CANCEL'), `SIPp saw ${received.join(',')}`);
  });

  it('SIPp rings past calls.ringTimeoutMs: CANCEL to SIPp, 480 to the client', async () => {
    const { sipp, phone } = await setup({ scenario: 'uas-ring-no-answer', calls: 1, traceMsg: true, ringTimeoutMs: 1000 });
    const call = phone.call('sip:1000@127.0.0.1');
    assert.equal(await call.progress, 180);
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 480);
    assert.equal((await sipp.done).code, 0, 'SIPp got the CANCEL it waits for');
    const received = (await sipp.messages()).filter((m) => m.kind === 'received').map((m) => m.method);
    assert.ok(received.includes('CANCEL'), `SIPp saw ${received.join(',')}`);
  });

  it('SIPp never answers: Timer B ends the call with 408 to the client', async () => {
    // T1 = 50 ms makes Timer B 3.2 s; SIPp stays silent for 6 s.
    const { gw, phone } = await setup({ scenario: 'uas-silent', calls: 1, keys: { silent_ms: '6000' }, t1: 50 });
    const call = phone.call('sip:1000@127.0.0.1');
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 408);
    assert.ok(gw.stats().sipRetransmissions >= 5, `INVITE retransmitted on Timer A (${gw.stats().sipRetransmissions})`);
  });

  it('closes its PeerConnection after BYE even when the client keeps its own open', async () => {
    const { phone } = await setup({ scenario: 'uas-answer', rtpEcho: true, calls: 1 });
    const call = phone.call('sip:1000@127.0.0.1', { keepPeerConnectionOnClose: true });
    await call.established;
    const pc = call.peerConnection;
    await waitFor(() => pc.connectionState === 'connected', 'client PeerConnection connected');
    await call.hangup();
    await assertClean(gw!);
    // The gateway sends DTLS close_notify before closing. Chrome then closes the PeerConnection;
    // werift (our stand-in) closes its DTLS transport but keeps connectionState on ICE alone.
    const dtls = pc.getTransceivers()[0]!.sender.dtlsTransport;
    await waitFor(() => pc.connectionState !== 'connected' || dtls.state === 'closed', 'client PeerConnection to leave connected', 10_000);
  });

  it('fails a call cleanly when its second RTP port is taken, and frees the first', async () => {
    const squatted = await findEvenPairWithSecondBound();
    try {
      const { gw, phone } = await setup({ scenario: 'uas-answer', calls: 1, rtpPorts: [squatted.base, squatted.base + 1] });
      const call = phone.call('sip:1000@127.0.0.1');
      await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 503);
      await assertClean(gw);
      assert.equal(gw.rtpPorts.inUse, 0);
      const first = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        first.once('error', reject);
        first.bind(squatted.base, '127.0.0.1', () => resolve());
      });
      first.close();
    } finally {
      squatted.socket.close();
    }
  });

  it('rejects an offer with no codec a plain RTP peer takes with 488, and creates nothing on the SIP side', async () => {
    const { gw, phone } = await setup({ scenario: 'uas-answer', calls: 1, codecs: ['pcmu', 'pcma'] });
    const call = phone.call('sip:1000@127.0.0.1', { codecs: [OPUS] });
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 488);
    await assertClean(gw);
    assert.equal((await sipp!.stop()).stats?.created ?? 0, 0);
  });
});

/** An even port whose odd neighbour is bound by another socket (for the all-or-nothing test). */
async function findEvenPairWithSecondBound(): Promise<{ base: number; socket: dgram.Socket }> {
  const base = await freeUdpRun(2);
  return { base, socket: await bindUdp(base + 1) };
}
