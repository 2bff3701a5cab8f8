import assert from 'node:assert/strict';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, wsUrl } from '../support/gateway-harness.js';
import { formatSippResult, startSipp, type SippPeer } from '../support/sipp.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';

/**
 * Early media: a trunk answers 183 Session Progress with SDP and plays audio before its final
 * response, as carriers do for ringback and for announcements ("the number you have dialled...").
 * SIPp plays Debian's g711a.pcap (PCMA) from its media port; the softphone (SIP.js with
 * `earlyMedia`) must hear it before the call is answered, or before it is refused.
 */
describe('early media: a trunk plays audio before its final response', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let phone: Softphone | undefined;

  before(requireSipp);

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

  async function start(scenario: 'uas-early-media' | 'uas-early-media-reject', earlyMs: number): Promise<{ gw: Gateway; sipp: SippPeer; phone: Softphone }> {
    sipp = await startSipp({ scenario, calls: 1, traceMsg: true, keys: { early_ms: String(earlyMs) } });
    gw = await startGateway({ trunkPort: sipp.port });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    return { gw, sipp, phone };
  }

  it('relays the 183 audio to the browser before the answer, then keeps the same media through the 200', async () => {
    const { gw, sipp, phone } = await start('uas-early-media', 3000);
    const call = phone.call('sip:1000@127.0.0.1', { earlyMedia: true });
    let answered = false;
    void call.established.then(() => (answered = true), () => undefined);
    // The pcap sends a packet every 30 ms: 20 packets is 0.6 s of the 3 s before the 200.
    await call.waitForRtp(20, 10_000);
    assert.equal(answered, false, 'the audio came before the answer');
    const info = gw.controller.calls()[0]!.info();
    assert.equal(info.state, 'ringing');
    assert.equal(info.codec, 'pcma');
    assert.equal(info.legs.browser.media?.connectionState, 'connected', 'ICE and DTLS done during early media');
    assert.ok(info.relay!.toBrowser.packets >= 20, JSON.stringify(info.relay));

    await call.established;
    const before = call.rtpReceived;
    await call.waitForRtp(before + 10, 10_000);
    assert.equal(gw.stats().peerConnections, 1, 'one PeerConnection from 183 to hangup');
    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('plays an announcement, then the trunk refuses: the browser heard it and gets the 404; nothing leaks', async () => {
    const { sipp, phone } = await start('uas-early-media-reject', 2000);
    const call = phone.call('sip:1000@127.0.0.1', { earlyMedia: true });
    const refused = assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 404);
    await call.waitForRtp(20, 10_000);
    await refused;
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('a browser without early media still gets the call: the 183 answer is applied with the 200', async () => {
    const { sipp, phone } = await start('uas-early-media', 1000);
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    await call.waitForRtp(20, 10_000);
    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });
});
