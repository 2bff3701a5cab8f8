import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import type { RtpPacket } from 'werift';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, waitFor, wsUrl } from '../support/gateway-harness.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { formatSippResult, startSipp, type SippPeer } from '../support/sipp.js';
import { Softphone, type SoftphoneCall } from '../support/softphone.js';

/** What the softphone sends: PCMA frames of one byte value, so their echo is told apart from SIPp's own audio. */
const MARK = 0x2a;
const SENT = 150;

/**
 * A SIP peer behind NAT (issue: symmetric RTP): SIPp's SDP answer advertises a port where SIPp
 * does not listen (a UDP socket of this test, counting what arrives), while its RTP (Debian's
 * g711a.pcap) comes from its real media port, which echoes whatever reaches it. The softphone's
 * audio comes back only if the gateway sends to where SIPp's packets come from.
 */
describe('symmetric RTP: a SIP peer whose SDP address is not where its RTP comes from', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let phone: Softphone | undefined;
  let sdpSocket: dgram.Socket | undefined;
  let unsubscribe: Array<() => void> = [];

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      unsubscribe.forEach((u) => u());
      unsubscribe = [];
      await phone?.close();
      await sipp?.stop();
      await gw?.close();
      if (sdpSocket) await closeUdp(sdpSocket);
      phone = sipp = gw = sdpSocket = undefined;
    }
  });

  /** Calls SIPp through a gateway with the switch as given; counts what reaches the SDP's port and what the softphone gets back. */
  async function callNatPeer(symmetricRtp: boolean) {
    const sdp = await bindUdp(0);
    sdpSocket = sdp;
    const atSdpPort = { packets: 0 };
    sdp.on('message', () => void atSdpPort.packets++);
    const sdpPort = sdp.address().port;
    sipp = await startSipp({
      scenario: 'uas-answer-nat',
      rtpEcho: true,
      calls: 1,
      keys: { pt: '8', codec: 'PCMA', sdp_ip: '127.0.0.1', sdp_port: String(sdpPort) },
    });
    gw = await startGateway({ trunkPort: sipp.port, symmetricRtp });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const heard = countReceived(call);
    const sdh = call.sessionDescriptionHandler;
    const pt = sdh.payloadTypeOf('audio/PCMA');
    assert.ok(pt !== undefined, 'PCMA negotiated');
    const sending = sdh.sendPacedRtp({ payload: Buffer.alloc(160, MARK), count: SENT, intervalMs: 20, payloadType: pt });
    return { gw, sipp, call, heard, sending, atSdpPort, sdpPort };
  }

  /** Audio reaching the softphone, split into the echo of its own frames and SIPp's pcap audio. */
  function countReceived(call: SoftphoneCall): { echo: number; sipAudio: number } {
    const counts = { echo: 0, sipAudio: 0 };
    for (const track of call.sessionDescriptionHandler.transceiver.receiver.tracks) {
      const { unSubscribe } = track.onReceiveRtp.subscribe((p: RtpPacket) => {
        if (p.payload.length > 0 && p.payload.every((b) => b === MARK)) counts.echo++;
        else counts.sipAudio++;
      });
      unsubscribe.push(unSubscribe);
    }
    return counts;
  }

  it('sends to the port the SIP peer\'s RTP comes from, so audio flows both ways', async () => {
    const { gw, sipp, call, heard, sending, sdpPort } = await callNatPeer(true);
    await waitFor(() => heard.sipAudio >= 50, `SIPp's audio at the softphone (${JSON.stringify(heard)})`, 15_000);
    // Nothing listens at the SDP's port: the echo can only come from SIPp's real media port.
    await waitFor(() => heard.echo >= 50, `the softphone's audio echoed by SIPp (${JSON.stringify(heard)})`, 15_000);
    await sending;

    const media = gw.controller.calls()[0]!.info().legs.sip.media!;
    assert.equal(media.remote, `127.0.0.1:${sipp.mediaPort}`);
    assert.equal(media.latched, true);
    assert.equal(media.sdpRemote, `127.0.0.1:${sdpPort}`);

    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('keeps sending to the SDP address with media.symmetricRtp off: the SIP peer gets none of the softphone\'s audio', async () => {
    const { gw, sipp, call, heard, sending, atSdpPort, sdpPort } = await callNatPeer(false);
    await sending;
    // Everything the gateway relayed went to the SDP's port...
    await waitFor(() => atSdpPort.packets >= SENT - 5, `the softphone's audio at the SDP's port (${atSdpPort.packets})`, 15_000);
    const sipAudioThen = heard.sipAudio;
    // ...and SIPp's audio still reaches the softphone (taken from any source) for a while after
    // the last frame was relayed, long past when an echo of it would have come back.
    await waitFor(() => heard.sipAudio >= sipAudioThen + 20, `more of SIPp's audio at the softphone (${JSON.stringify(heard)})`, 15_000);
    assert.equal(heard.echo, 0, 'no echo: SIPp never received the softphone\'s audio');

    const media = gw.controller.calls()[0]!.info().legs.sip.media!;
    assert.equal(media.remote, `127.0.0.1:${sdpPort}`);
    assert.equal(media.latched, false);
    assert.ok(media.packetsIn >= 50 && media.packetsOut >= SENT - 5, JSON.stringify(media));

    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });
});
