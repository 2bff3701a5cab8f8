import { randomInt } from 'node:crypto';
import { RtpHeader, type RtpPacket } from 'werift';
import { Disposer } from '../src/util/safe-emitter.js';
import type { RtpEndpoint, RtpView } from './rtp-endpoint.js';
import { serializeRtp } from './rtp-endpoint.js';
import type { NegotiatedMedia } from './sdp.js';
import type { WebRtcEndpoint } from './webrtc-endpoint.js';

/**
 * Gives one outgoing stream a stable SSRC and continuous sequence numbers and timestamps even
 * when its source changes SSRC (a re-INVITE, a PBX switching media, werift #677/#679).
 */
export class StreamRewriter {
  readonly ssrc = randomInt(1, 2 ** 32 - 1);
  #inSsrc: number | undefined;
  #seqOffset = 0;
  #tsOffset = 0;
  #lastSeq = randomInt(0, 0x7fff);
  #lastTs = randomInt(0, 2 ** 31);
  #lastAt = 0;
  #started = false;

  constructor(private readonly clockRate: number) {}

  rewrite(ssrc: number, seq: number, ts: number): { seq: number; ts: number } {
    const now = Date.now();
    if (ssrc !== this.#inSsrc) {
      // New source: continue just after what we last sent, advancing the clock by the time that passed.
      const elapsed = this.#started ? Math.max(1, Math.round(((now - this.#lastAt) * this.clockRate) / 1000)) : 0;
      this.#seqOffset = (this.#lastSeq + (this.#started ? 1 : 0) - seq) & 0xffff;
      this.#tsOffset = (this.#lastTs + elapsed - ts) >>> 0;
      this.#inSsrc = ssrc;
      this.#started = true;
    }
    const outSeq = (seq + this.#seqOffset) & 0xffff;
    const outTs = (ts + this.#tsOffset) >>> 0;
    // Only a newer packet moves the reference (reordered ones keep their place).
    if (((outSeq - this.#lastSeq) & 0xffff) < 0x8000) {
      this.#lastSeq = outSeq;
      this.#lastTs = outTs;
      this.#lastAt = now;
    }
    return { seq: outSeq, ts: outTs };
  }
}

/** Packets lost on the way in, from sequence-number gaps (RFC 3550 A.3, simplified: per source, no wrap of cycles beyond 2^16 per source switch). */
export class LossCounter {
  #ssrc: number | undefined;
  #base = 0;
  #highest = 0;
  #received = 0;
  #lostBefore = 0;

  add(ssrc: number, seq: number): void {
    if (ssrc !== this.#ssrc) {
      this.#lostBefore = this.lost;
      this.#ssrc = ssrc;
      this.#base = seq;
      this.#highest = seq;
      this.#received = 0;
    } else {
      const delta = (seq - (this.#highest & 0xffff)) & 0xffff;
      if (delta > 0 && delta < 0x8000) this.#highest += delta;
    }
    this.#received++;
  }

  get lost(): number {
    if (this.#ssrc === undefined) return this.#lostBefore;
    return this.#lostBefore + Math.max(0, this.#highest - this.#base + 1 - this.#received);
  }
}

export interface RelayStats {
  /** Browser to SIP; `lost` counts gaps in what the browser sent us. */
  toSip: { packets: number; dropped: number; lost: number };
  /** SIP to browser; `lost` counts gaps in what the SIP peer sent us. */
  toBrowser: { packets: number; dropped: number; lost: number };
}

/**
 * Relays one call's audio: SRTP from the browser leg to plain RTP on the SIP leg and back,
 * mapping payload types per call and rewriting SSRC/sequence/timestamp per direction.
 */
export class MediaRelay {
  #disposer = new Disposer();
  #counts = { toSip: { packets: 0, dropped: 0 }, toBrowser: { packets: 0, dropped: 0 } };
  #lossFromBrowser = new LossCounter();
  #lossFromSip = new LossCounter();
  #toSip: StreamRewriter;
  #toBrowser: StreamRewriter;

  constructor(
    private readonly webrtc: WebRtcEndpoint,
    private readonly rtp: RtpEndpoint,
    private readonly media: NegotiatedMedia,
  ) {
    this.#toSip = new StreamRewriter(media.codec.rate);
    this.#toBrowser = new StreamRewriter(media.codec.rate);
    rtp.setRemote(media.sip.address, media.sip.port, media.sip.rtcpPort);
    this.#disposer.on(webrtc, 'rtp', (p: RtpPacket) => this.#fromBrowser(p));
    this.#disposer.on(rtp, 'rtp', (v: RtpView) => this.#fromSip(v));
  }

  get stats(): RelayStats {
    return {
      toSip: { ...this.#counts.toSip, lost: this.#lossFromBrowser.lost },
      toBrowser: { ...this.#counts.toBrowser, lost: this.#lossFromSip.lost },
    };
  }

  #fromBrowser(p: RtpPacket): void {
    const h = p.header;
    this.#lossFromBrowser.add(h.ssrc, h.sequenceNumber);
    const m = this.media;
    let pt: number;
    if (h.payloadType === m.browserPt) pt = m.sipPt;
    else if (m.dtmf && h.payloadType === m.dtmf.browserPt) pt = m.dtmf.sipPt;
    else {
      this.#counts.toSip.dropped++; // CN, RED, anything not negotiated with the SIP side
      return;
    }
    const { seq, ts } = this.#toSip.rewrite(h.ssrc, h.sequenceNumber, h.timestamp);
    this.#counts.toSip.packets++;
    this.rtp.send(serializeRtp({ payloadType: pt, marker: h.marker, sequenceNumber: seq, timestamp: ts, ssrc: this.#toSip.ssrc }, p.payload));
  }

  #fromSip(v: RtpView): void {
    this.#lossFromSip.add(v.ssrc, v.sequenceNumber);
    const m = this.media;
    const isAudio = v.payloadType === m.sipPt;
    const isDtmf = !isAudio && m.dtmf !== undefined && v.payloadType === m.dtmf.sipPt;
    if (!isAudio && !isDtmf) {
      this.#counts.toBrowser.dropped++;
      return;
    }
    const { seq, ts } = this.#toBrowser.rewrite(v.ssrc, v.sequenceNumber, v.timestamp);
    const header = new RtpHeader({
      payloadType: isAudio ? m.browserPt : m.dtmf!.browserPt,
      marker: v.marker,
      sequenceNumber: seq,
      timestamp: ts,
      ssrc: this.#toBrowser.ssrc,
    });
    this.#counts.toBrowser.packets++;
    // The payload is a view into the socket's buffer: copy, werift may hold it past this tick.
    const payload = Buffer.from(v.payload);
    if (isAudio) this.webrtc.sendAudio(header, payload);
    else this.webrtc.sendDtmf(header, payload);
  }

  stop(): void {
    this.#disposer.dispose();
  }
}

/**
 * Relays audio between two PeerConnections (a call between two registered browsers): each
 * direction gets its own SSRC/sequence/timestamp rewriting and payload type mapping.
 */
export class WebRtcBridge {
  #disposer = new Disposer();
  #counts = { aToB: 0, bToA: 0, dropped: 0 };

  constructor(
    a: WebRtcEndpoint,
    b: WebRtcEndpoint,
    map: { aPt: number; bPt: number; aDtmfPt?: number; bDtmfPt?: number; clockRate: number },
  ) {
    const forward = (to: WebRtcEndpoint, fromPt: number, toPt: number, fromDtmf: number | undefined, toDtmf: number | undefined, key: 'aToB' | 'bToA') => {
      const rewriter = new StreamRewriter(map.clockRate);
      return (p: RtpPacket) => {
        const h = p.header;
        const isAudio = h.payloadType === fromPt;
        if (!isAudio && (fromDtmf === undefined || toDtmf === undefined || h.payloadType !== fromDtmf)) {
          this.#counts.dropped++;
          return;
        }
        const { seq, ts } = rewriter.rewrite(h.ssrc, h.sequenceNumber, h.timestamp);
        const header = new RtpHeader({ payloadType: isAudio ? toPt : toDtmf!, marker: h.marker, sequenceNumber: seq, timestamp: ts, ssrc: rewriter.ssrc });
        this.#counts[key]++;
        if (isAudio) to.sendAudio(header, p.payload);
        else to.sendDtmf(header, p.payload);
      };
    };
    this.#disposer.on(a, 'rtp', forward(b, map.aPt, map.bPt, map.aDtmfPt, map.bDtmfPt, 'aToB'));
    this.#disposer.on(b, 'rtp', forward(a, map.bPt, map.aPt, map.bDtmfPt, map.aDtmfPt, 'bToA'));
  }

  /** In RelayStats terms: the caller (a) stands where the SIP side would. */
  get stats(): RelayStats {
    return { toSip: { packets: this.#counts.bToA, dropped: 0, lost: 0 }, toBrowser: { packets: this.#counts.aToB, dropped: this.#counts.dropped, lost: 0 } };
  }

  stop(): void {
    this.#disposer.dispose();
  }
}
