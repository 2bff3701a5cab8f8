import type { Logger } from 'pino';
import { RTCPeerConnection, RTCRtpCodecParameters, RtpHeader, type RtpPacket, type RTCRtpTransceiver } from 'werift';
import { Disposer, SafeEmitter } from '../src/util/safe-emitter.js';
import { GatewayError, InvalidStateError } from '../src/util/errors.js';
import type { Codec } from './sdp.js';
import { sendDtlsCloseNotify } from './dtls-close-notify.js';

interface EndpointBaseOptions {
  /** Ports reserved by our allocator; werift binds the first free one (it refuses a range of one). */
  portRange: [number, number];
  bindAddress: string;
  announceAddress: string;
  /** Bound on ICE gathering + description creation, and on applying the far end's answer. */
  setupTimeoutMs?: number;
  log: Logger;
}

/** The browser offered (calls from softphones): answer with exactly `codec`. */
export interface WebRtcAnswerOptions extends EndpointBaseOptions {
  offer: string;
  codec: Codec;
  /** telephone-event payload type in the browser's numbering, when negotiated. */
  dtmfPt?: number;
}

/** We offer (calls toward softphones): `codecs` in preference order, telephone-event included if wanted. */
export interface WebRtcOfferOptions extends EndpointBaseOptions {
  codecs: Codec[];
}

export type WebRtcEndpointEvents = {
  rtp: [packet: RtpPacket];
  connected: [];
  /** ICE or DTLS failed, or the PeerConnection closed under us. */
  failed: [reason: string];
};

/** Counts every PeerConnection opened and closed, process-wide, so tests can prove none leak. */
export const peerConnectionCounter = { opened: 0, closed: 0, get open() { return this.opened - this.closed; } };

function codecParameters(c: Codec): RTCRtpCodecParameters {
  const mime = c.name === 'telephone-event' ? 'telephone-event' : c.name === 'g722' ? 'G722' : c.name === 'opus' ? 'opus' : c.name.toUpperCase();
  return new RTCRtpCodecParameters({
    mimeType: `audio/${mime}`,
    clockRate: c.rate,
    payloadType: c.pt,
    ...(c.channels > 1 ? { channels: c.channels } : {}),
    ...(c.fmtp ? { parameters: c.fmtp } : {}),
    rtcpFeedback: [],
  });
}

/**
 * The browser leg: one werift PeerConnection, ICE-lite (the browser runs full ICE), DTLS-SRTP,
 * one audio transceiver answering the browser's offer with exactly the codec the SIP side chose.
 */
export class WebRtcEndpoint extends SafeEmitter<WebRtcEndpointEvents> {
  /** Our SDP: the answer (create) or the offer (createOffer). */
  readonly localSdp: string;
  /** The UDP port werift bound (from our host candidate). */
  readonly localPort: number;
  #pc: RTCPeerConnection;
  #transceiver: RTCRtpTransceiver;
  #disposer: Disposer;
  #closing: Promise<void> | undefined;
  #log: Logger;
  #dtmfPt: number | undefined;
  #timeoutMs: number;
  #wired = false;
  packetsIn = 0;
  packetsOut = 0;
  /** Last RTP or RTCP from the browser (ms since epoch): media liveness. */
  lastPacketAt: number | undefined;
  lastRtcpAt: number | undefined;

  private constructor(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver, localSdp: string, disposer: Disposer, opts: EndpointBaseOptions & { dtmfPt?: number }) {
    super(opts.log);
    this.#pc = pc;
    this.#transceiver = transceiver;
    this.localSdp = localSdp;
    this.localPort = Number(/^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host/im.exec(localSdp)?.[1] ?? 0);
    this.#disposer = disposer;
    this.#log = opts.log;
    this.#dtmfPt = opts.dtmfPt;
    this.#timeoutMs = opts.setupTimeoutMs ?? 10_000;
  }

  /** Answers a browser's offer; on any failure the PeerConnection is closed before this rejects. */
  static async create(opts: WebRtcAnswerOptions): Promise<WebRtcEndpoint> {
    const codecs = [opts.codec];
    if (opts.dtmfPt !== undefined) codecs.push({ pt: opts.dtmfPt, name: 'telephone-event', rate: 8000, channels: 1, fmtp: '0-16' });
    const endpoint = await WebRtcEndpoint.#build(opts, codecs, async (pc) => {
      await pc.setRemoteDescription({ type: 'offer', sdp: opts.offer });
      const transceiver = pc.getTransceivers().find((t) => t.kind === 'audio');
      if (!transceiver) throw new GatewayError('GW_SDP_NOT_ACCEPTABLE', 'no audio transceiver after applying the offer');
      // Answers built from a remote offer are recvonly unless told otherwise (see NOTES).
      transceiver.setDirection('sendrecv');
      await pc.setLocalDescription(await pc.createAnswer());
      return transceiver;
    });
    endpoint.#wire();
    return endpoint;
  }

  /** Creates an offer toward a browser; call applyAnswer() with its answer. */
  static async createOffer(opts: WebRtcOfferOptions): Promise<WebRtcEndpoint> {
    return WebRtcEndpoint.#build(opts, opts.codecs, async (pc) => {
      const transceiver = pc.addTransceiver('audio', { direction: 'sendrecv' });
      await pc.setLocalDescription(await pc.createOffer());
      return transceiver;
    });
  }

  static async #build(opts: EndpointBaseOptions & { dtmfPt?: number }, codecs: Codec[], negotiate: (pc: RTCPeerConnection) => Promise<RTCRtpTransceiver>): Promise<WebRtcEndpoint> {
    const pc = new RTCPeerConnection({
      iceLite: true,
      iceServers: [],
      iceUseIpv4: false,
      iceUseIpv6: false,
      iceAdditionalHostAddresses: [opts.announceAddress],
      iceInterfaceAddresses: { udp4: opts.bindAddress },
      icePortRange: opts.portRange,
      codecs: { audio: codecs.map(codecParameters), video: [] },
      headerExtensions: { audio: [], video: [] },
    });
    peerConnectionCounter.opened++;
    const disposer = new Disposer();
    const timeoutMs = opts.setupTimeoutMs ?? 10_000;
    try {
      const { transceiver, sdp } = await withTimeout(
        (async () => {
          const transceiver = await negotiate(pc);
          if (pc.iceGatheringState !== 'complete') await pc.iceGatheringStateChange.watch((s) => s === 'complete', timeoutMs);
          const sdp = pc.localDescription?.sdp;
          if (!sdp || !/a=candidate:/.test(sdp)) throw new GatewayError('GW_ICE_FAILED', `no ICE candidate in ports ${opts.portRange.join('-')}`);
          return { transceiver, sdp };
        })(),
        timeoutMs,
        `WebRTC setup took over ${timeoutMs} ms`,
      );
      return new WebRtcEndpoint(pc, transceiver, sdp, disposer, opts);
    } catch (err) {
      disposer.dispose();
      await closePc(pc, opts.log);
      throw err;
    }
  }

  /** Applies the browser's answer to our offer; `dtmfPt` is telephone-event in its numbering, if any. */
  async applyAnswer(sdp: string, dtmfPt?: number): Promise<void> {
    this.assertOpen();
    await withTimeout(this.#pc.setRemoteDescription({ type: 'answer', sdp }), this.#timeoutMs, 'applying the browser answer timed out');
    this.#dtmfPt = dtmfPt;
    this.#wire();
  }

  #wire(): void {
    if (this.#wired) return;
    this.#wired = true;
    const pc = this.#pc;
    // The receiver's tracks exist once the remote description is applied (one per signalled SSRC).
    const receiver = this.#transceiver.receiver;
    for (const track of new Set([receiver.track, ...receiver.tracks])) {
      const sub = track.onReceiveRtp.subscribe((packet) => {
        this.packetsIn++;
        this.lastPacketAt = Date.now();
        this.safeEmit('rtp', packet);
      });
      this.#disposer.add(() => sub.unSubscribe());
    }
    const rtcp = this.#transceiver.receiver.onRtcp.subscribe(() => {
      this.lastRtcpAt = Date.now();
    });
    this.#disposer.add(() => rtcp.unSubscribe());
    const state = pc.connectionStateChange.subscribe((s) => {
      this.#log.debug({ connectionState: s }, 'PeerConnection state');
      if (s === 'connected') this.safeEmit('connected');
      else if (s === 'failed' || s === 'closed') {
        if (!this.#closing) this.safeEmit('failed', `PeerConnection ${s}`);
      }
    });
    this.#disposer.add(() => state.unSubscribe());
  }

  get connectionState(): string {
    return this.#pc.connectionState;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /** Sends an audio packet (werift sets SSRC and the negotiated payload type). */
  sendAudio(header: RtpHeader, payload: Buffer): void {
    if (this.#closing) return;
    const sender = this.#transceiver.sender;
    if (sender.dtlsTransport.state !== 'connected') return;
    this.packetsOut++;
    sender.sendRtp({ header, payload } as RtpPacket).catch((err: unknown) => this.#log.debug({ err }, 'sendRtp failed'));
  }

  /**
   * Sends telephone-event (RFC 4733) in the audio stream's SSRC: werift's sendRtp would relabel it
   * with the audio payload type, so it goes straight to the DTLS transport.
   */
  sendDtmf(header: RtpHeader, payload: Buffer): void {
    if (this.#closing || this.#dtmfPt === undefined) return;
    const sender = this.#transceiver.sender;
    if (sender.dtlsTransport.state !== 'connected') return;
    header.ssrc = sender.ssrc;
    header.payloadType = this.#dtmfPt;
    this.packetsOut++;
    sender.dtlsTransport.sendRtp(payload, header).catch((err: unknown) => this.#log.debug({ err }, 'DTMF send failed'));
  }

  /** Closes the PeerConnection: idempotent, concurrent callers share one promise. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#disposer.dispose((err) => this.#log.warn({ err }, 'dispose failed'));
      try {
        // Tell the browser now rather than letting ICE consent run out.
        let timer: NodeJS.Timeout | undefined;
        const sent = await Promise.race([
          sendDtlsCloseNotify(this.#transceiver.sender.dtlsTransport),
          new Promise<false>((r) => (timer = setTimeout(r, 200, false))),
        ]).finally(() => clearTimeout(timer));
        if (!sent) this.#log.debug('DTLS close_notify not sent');
      } catch (err) {
        this.#log.debug({ err }, 'DTLS close_notify failed');
      }
      await closePc(this.#pc, this.#log);
      this.removeAllListeners();
    })();
    return this.#closing;
  }

  assertOpen(): void {
    if (this.#closing) throw new InvalidStateError('WebRTC endpoint closed');
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new GatewayError('GW_WEBRTC_TIMEOUT', message)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function closePc(pc: RTCPeerConnection, log: Logger): Promise<void> {
  try {
    await pc.close();
  } catch (err) {
    log.warn({ err }, 'PeerConnection close failed');
  } finally {
    peerConnectionCounter.closed++;
  }
}

export { RtpHeader };
