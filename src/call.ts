import type { Logger } from 'pino';
import type { InboundCall, LegEnd, OutboundCall, SipBackend } from '../sip/backend.js';
import { MediaRelay } from '../webrtc/media-relay.js';
import type { PortAllocator } from '../webrtc/port-allocator.js';
import { RtpEndpoint } from '../webrtc/rtp-endpoint.js';
import { SdpError, buildPlainOffer, negotiateSipAnswer, parseWebRtcOffer, sipOfferCodecs, type NegotiatedMedia, type PlainRtpCodec } from '../webrtc/sdp.js';
import { WebRtcEndpoint } from '../webrtc/webrtc-endpoint.js';
import { CallBase, legEndReason, endpointBase, failureReason, latest, rtpMediaInfo, type CallEndReason, type CallInfo, type CallState } from './call-base.js';
import type { TrunkRoute } from './router.js';
import { errorMessage } from './util/errors.js';

export type { CallEndReason, CallInfo, CallState };

export interface CallDeps {
  sip: SipBackend;
  rtpPorts: PortAllocator;
  webrtcPorts: PortAllocator;
  trunk: TrunkRoute;
  /** The number as the trunk gets it (after the route's rewriting); default the dialled one. */
  toUser?: string;
  media: { announceAddress: string; bindAddress: string; codecs: readonly PlainRtpCodec[]; webrtcSetupTimeoutMs: number; symmetricRtp: boolean };
  /** How long the SIP side may ring before we CANCEL (calls.ringTimeoutMs). */
  ringTimeoutMs: number;
  log: Logger;
}

/**
 * A call from a softphone to a SIP peer: the browser's SIP leg and WebRTC PeerConnection, the SIP
 * peer's leg and RTP ports, and the relay between them. Any terminal event of any part ends the
 * whole call exactly once (CallBase.teardown), whatever media was negotiated.
 */
export class Call extends CallBase {
  #deps: CallDeps;
  #inbound: InboundCall;
  #outbound: OutboundCall | undefined;
  #media: NegotiatedMedia | undefined;
  #relay: MediaRelay | undefined;
  #rtp: RtpEndpoint | undefined;
  #webrtc: WebRtcEndpoint | undefined;
  #webrtcPorts: number[] = [];
  /** The browser's media, built once: for early media (18x with SDP) or for the answer. */
  #bridging: Promise<boolean> | undefined;
  #ringingSent = false;

  constructor(inbound: InboundCall, deps: CallDeps) {
    super(inbound.callId, deps.log, { inCallId: inbound.callId });
    this.#deps = deps;
    this.#inbound = inbound;
    this.disposer.on(inbound, 'ended', (end: LegEnd) => this.#legEnded('browser', end));
  }

  protected async setup(): Promise<void> {
    const d = this.#deps;
    const offer = parseWebRtcOffer(this.#inbound.offer);
    const codecs = sipOfferCodecs(offer, d.trunk.codecs ?? d.media.codecs);
    if (codecs.length === 0) throw new SdpError('no codec in the offer that a plain RTP peer can take', 488);

    const lease = await d.rtpPorts.allocate({ callId: this.id, leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
    if (!this.own(() => lease.release())) return;
    const rtp = new RtpEndpoint(lease, this.log, { symmetric: d.media.symmetricRtp });
    this.#rtp = rtp;

    const { credentials, target, fromUser, fromDomain } = d.trunk;
    const outbound = d.sip.createCall({
      target: { trunk: target },
      ...(credentials ? { credentials } : {}),
      toUser: d.toUser ?? this.#inbound.toUser,
      fromUser: fromUser ?? (this.#inbound.fromUser || 'anonymous'),
      ...(fromDomain ? { fromDomain } : {}),
      offer: buildPlainOffer({ address: d.media.announceAddress, port: rtp.port, codecs }),
    });
    this.#outbound = outbound;
    this.log = this.log.child({ outCallId: outbound.callId });
    this.disposer.on(outbound, 'ended', (end: LegEnd) => this.#legEnded('sip', end));
    this.armRingTimeout(d.ringTimeoutMs, { by: 'gateway', cause: 'no-answer', status: 480 });
    const fail = (what: string) => (err: unknown) => {
      this.log.warn({ err: errorMessage(err) }, what);
      void this.teardown(failureReason(err));
    };
    this.disposer.on(outbound, 'progress', (status: number, _reason: string, sdp?: string) => {
      if (sdp && !this.#bridging) {
        // Early media (ringback, announcements): bridge now and give the browser a 183 with our
        // answer; the 200 to the browser will carry the same one (RFC 3261 §13.3.1.1).
        this.state = 'ringing';
        this.#bridging = this.#bridge(sdp, codecs);
        this.#bridging.then((ok) => {
          if (ok && !this.closed) this.#inbound.progress(183, 'Session Progress', this.#webrtc!.localSdp);
        }, fail('bridging early media failed'));
        return;
      }
      if ((status === 180 || status === 183) && !this.#ringingSent && !this.#bridging) {
        this.#ringingSent = true;
        this.state = 'ringing';
        this.#inbound.progress(180);
      }
    });
    this.disposer.on(outbound, 'answered', (sdp: string) => void this.#onAnswered(sdp, codecs).catch(fail('bridging the answer failed')));
    this.log.debug({ to: d.toUser ?? this.#inbound.toUser, trunk: d.trunk.name }, 'INVITE sent to SIP peer');
  }

  async #onAnswered(sdp: string, offered: Parameters<typeof negotiateSipAnswer>[1]): Promise<void> {
    if (this.#bridging) {
      // Bridged for early media: the 200 may only move the SIP side's address.
      if (!(await this.#bridging)) return;
      this.#confirmSipAnswer(sdp, offered);
    } else {
      this.#bridging = this.#bridge(sdp, offered);
      if (!(await this.#bridging)) return;
    }
    if (this.closed) return;
    this.#inbound.accept(this.#webrtc!.localSdp);
    this.markAnswered();
    const media = this.#media!;
    this.log.info({ codec: media.codec.name, sip: `${media.sip.address}:${media.sip.port}`, setupMs: Date.now() - this.startedAt }, 'call answered');
  }

  /** Negotiates the SIP side's answer and builds the browser's PeerConnection and the relay; false if the call ended meanwhile. */
  async #bridge(sdp: string, offered: Parameters<typeof negotiateSipAnswer>[1]): Promise<boolean> {
    const d = this.#deps;
    const media = negotiateSipAnswer(sdp, offered);
    this.#media = media;
    const opened = await this.openWebRtc(d.webrtcPorts, 'browser', (portRange) =>
      WebRtcEndpoint.create({
        offer: this.#inbound.offer,
        codec: media.codec,
        ...(media.dtmf ? { dtmfPt: media.dtmf.browserPt } : {}),
        ...endpointBase(d.media, portRange, this.log),
      }),
    );
    if (!opened) return false;
    const webrtc = opened.endpoint;
    this.#webrtc = webrtc;
    this.#webrtcPorts = opened.lease.ports;
    this.disposer.on(webrtc, 'failed', (reason: string) => void this.teardown({ by: 'browser', cause: 'webrtc-failed', status: 500 }, reason));
    this.#relay = new MediaRelay(webrtc, this.#rtp!, media);
    return true;
  }

  /**
   * The 200 after early media: the browser already has our answer, so the codec and payload types
   * must stay (488 otherwise); a new address or port (another fork, a media server handing over)
   * just redirects our RTP.
   */
  #confirmSipAnswer(sdp: string, offered: Parameters<typeof negotiateSipAnswer>[1]): void {
    const early = this.#media!;
    const media = negotiateSipAnswer(sdp, offered);
    if (media.codec.name !== early.codec.name || media.sipPt !== early.sipPt || media.dtmf?.sipPt !== early.dtmf?.sipPt) {
      throw new SdpError(`the 200 answers ${media.codec.name}/${media.sipPt} after early media in ${early.codec.name}/${early.sipPt}`, 488);
    }
    const [a, b] = [early.sip, media.sip];
    if (a.address !== b.address || a.port !== b.port || a.rtcpPort !== b.rtcpPort) {
      this.log.info({ from: `${a.address}:${a.port}`, to: `${b.address}:${b.port}` }, 'the 200 moved the SIP side\'s media');
      this.#rtp!.setRemote(b.address, b.port, b.rtcpPort);
      early.sip = b;
    }
  }

  #legEnded(side: 'browser' | 'sip', end: LegEnd): void {
    this.log.debug({ side, ...end }, 'leg ended');
    void this.teardown(legEndReason(side, end));
  }

  protected endLegs(reason: CallEndReason, detail?: string): void {
    this.#relay?.stop();
    this.#inbound.terminate({ status: inboundStatus(reason), ...(detail ? { reason: detail } : {}) });
    this.#outbound?.terminate(reason.by === 'browser' ? {} : { reasonHeader: `SIP;cause=${reason.status ?? 200};text="${reason.cause}"` });
  }

  protected endLogFields(): Record<string, unknown> {
    const i = this.info();
    return { durationMs: i.durationMs ?? 0, codec: i.codec, relay: i.relay };
  }

  /**
   * The last RTP or RTCP received from each side (undefined: nothing yet). A side sending only
   * RTCP, as a peer on hold does, is alive.
   */
  mediaLiveness(): { sip: number | undefined; browser: number | undefined } {
    return {
      sip: latest(this.#rtp?.lastPacketAt, this.#rtp?.lastRtcpAt),
      browser: latest(this.#webrtc?.lastPacketAt, this.#webrtc?.lastRtcpAt),
    };
  }

  info(): CallInfo {
    const iso = (t: number | undefined) => (t ? new Date(t).toISOString() : undefined);
    const rtp = this.#rtp;
    const webrtc = this.#webrtc;
    const times = this.times;
    return {
      id: this.id,
      direction: 'outbound',
      state: this.state,
      startedAt: iso(times.startedAt)!,
      ...(times.answeredAt ? { answeredAt: iso(times.answeredAt) } : {}),
      ...(times.endedAt ? { endedAt: iso(times.endedAt) } : {}),
      ...(times.answeredAt ? { durationMs: (times.endedAt ?? Date.now()) - times.answeredAt } : {}),
      ...(times.endReason ? { endReason: times.endReason } : {}),
      ...(this.#media ? { codec: this.#media.codec.name } : {}),
      legs: {
        browser: {
          callId: this.#inbound.callId,
          state: this.#inbound.state,
          user: this.#inbound.fromUser,
          source: `${this.#inbound.source.transport}:${this.#inbound.source.address}:${this.#inbound.source.port}`,
          ...(webrtc ? { media: { localPorts: this.#webrtcPorts, connectionState: webrtc.connectionState, packetsIn: webrtc.packetsIn, packetsOut: webrtc.packetsOut } } : {}),
        },
        sip: {
          ...(this.#outbound ? { callId: this.#outbound.callId, state: this.#outbound.state } : {}),
          trunk: this.#deps.trunk.name,
          target: this.#outbound?.destination ?? targetName(this.#deps.trunk),
          toUser: this.#deps.toUser ?? this.#inbound.toUser,
          ...(rtp ? { media: rtpMediaInfo(rtp) } : {}),
        },
      },
      ...(this.#relay ? { relay: this.#relay.stats } : {}),
    };
  }
}

function targetName(t: TrunkRoute): string {
  const { host, port, transport } = t.target.target;
  return `${transport ?? 'sip'}:${host}${port ? `:${port}` : ''}`;
}

/** The final response an unanswered browser leg gets for a given ending. */
function inboundStatus(reason: CallEndReason): number {
  if (reason.by === 'sip') {
    const s = reason.status;
    if (reason.cause === 'timeout') return 408;
    if (reason.cause === 'transport') return 503;
    if (!s || s < 300) return 480;
    if (s === 401 || s === 407) return 403; // the trunk's credentials are ours to give, not the browser's
    if (s < 400) return 480; // redirects are not followed yet
    return s;
  }
  return reason.status && reason.status >= 300 ? reason.status : 480;
}
