import type { ContactTarget, InboundCall, LegEnd, OutboundCall, SipBackend } from '../sip/backend.js';
import { MediaRelay, WebRtcBridge } from '../webrtc/media-relay.js';
import type { PortAllocator, PortLease } from '../webrtc/port-allocator.js';
import { RtpEndpoint } from '../webrtc/rtp-endpoint.js';
import {
  SdpError,
  buildPlainAnswer,
  chooseAnswered,
  negotiateBrowserAnswer,
  parsePlainOffer,
  parseWebRtcOffer,
  sipOfferCodecs,
  type Codec,
  type NegotiatedMedia,
  type PlainOffer,
  type PlainRtpCodec,
} from '../webrtc/sdp.js';
import { WebRtcEndpoint } from '../webrtc/webrtc-endpoint.js';
import { CallBase, legEndReason, endpointBase, failureReason, latest, rtpMediaInfo, type CallEndReason, type CallInfo } from './call-base.js';
import { errorMessage } from './util/errors.js';

export interface CallToBrowserDeps {
  sip: SipBackend;
  rtpPorts: PortAllocator;
  webrtcPorts: PortAllocator;
  media: { announceAddress: string; bindAddress: string; codecs: readonly PlainRtpCodec[]; webrtcSetupTimeoutMs: number; symmetricRtp: boolean };
  ringTimeoutMs: number;
  log: import('pino').Logger;
}

/** One device being rung: its SIP leg and its own PeerConnection and ports. */
interface Fork {
  contact: ContactTarget;
  leg: OutboundCall | undefined;
  webrtc: WebRtcEndpoint | undefined;
  lease: PortLease | undefined;
  ended: LegEnd | undefined;
}

const COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"';

/**
 * A call to a registered user, from a SIP peer (trunk) or from another registered user: every
 * device of the user rings (parallel forking), each with its own WebRTC offer; the first 2xx wins,
 * the others get CANCEL (or ACK and BYE if their 2xx crossed), and the winner is bridged to the
 * caller: the trunk's plain RTP, or the calling browser's own PeerConnection.
 */
export class CallToBrowser extends CallBase {
  #deps: CallToBrowserDeps;
  #inbound: InboundCall;
  #user: string;
  #contacts: ContactTarget[];
  #forks: Fork[] = [];
  #winner: Fork | undefined;
  #offer: PlainOffer | undefined;
  #media: NegotiatedMedia | undefined;
  #rtp: RtpEndpoint | undefined;
  #relay: MediaRelay | WebRtcBridge | undefined;
  #ringing = false;
  /** The caller is a softphone (WebRTC) rather than a SIP peer (plain RTP). */
  #fromBrowser: boolean;
  #forkCodecs: Codec[] = [];
  #caller: WebRtcEndpoint | undefined;

  constructor(inbound: InboundCall, user: string, contacts: ContactTarget[], deps: CallToBrowserDeps) {
    super(inbound.callId, deps.log, { inCallId: inbound.callId, user });
    this.#fromBrowser = inbound.source.transport === 'ws';
    this.#deps = deps;
    this.#inbound = inbound;
    this.#user = user;
    this.#contacts = contacts;
    this.disposer.on(inbound, 'ended', (end: LegEnd) => void this.teardown(legEndReason('sip', end)));
  }

  protected async setup(): Promise<void> {
    const d = this.#deps;
    if (this.#fromBrowser) {
      this.#forkCodecs = sipOfferCodecs(parseWebRtcOffer(this.#inbound.offer), d.media.codecs);
      if (this.#forkCodecs.length === 0) throw new SdpError('no codec in the offer that the gateway relays', 488);
    } else {
      const offer = parsePlainOffer(this.#inbound.offer, d.media.codecs);
      this.#offer = offer;
      this.#forkCodecs = offer.codecs;
      const lease = await d.rtpPorts.allocate({ callId: this.id, leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
      if (!this.own(() => lease.release())) return;
      this.#rtp = new RtpEndpoint(lease, this.log, { symmetric: d.media.symmetricRtp });
    }
    this.armRingTimeout(d.ringTimeoutMs, { by: 'gateway', cause: 'no-answer', status: 480 });
    // Every device gets its own PeerConnection and ports; a device that fails to set up is dropped.
    await Promise.all(this.#contacts.map((c) => this.#startFork(c)));
    this.#checkForks();
  }

  async #startFork(contact: ContactTarget): Promise<void> {
    const d = this.#deps;
    const fork: Fork = { contact, leg: undefined, webrtc: undefined, lease: undefined, ended: undefined };
    this.#forks.push(fork);
    try {
      const opened = await this.openWebRtc(d.webrtcPorts, `browser:${this.#forks.length}`, (portRange) =>
        WebRtcEndpoint.createOffer({
          codecs: this.#forkCodecs,
          ...endpointBase(d.media, portRange, this.log),
        }),
      );
      if (!opened) return;
      fork.lease = opened.lease;
      const webrtc = (fork.webrtc = opened.endpoint);
      const leg = d.sip.createCall({
        target: { contact },
        toUser: this.#user,
        fromUser: this.#inbound.fromUser || 'anonymous',
        offer: webrtc.localSdp,
      });
      fork.leg = leg;
      this.disposer.on(leg, 'progress', (status: number) => {
        if ((status === 180 || status === 183) && !this.#ringing) {
          this.#ringing = true;
          this.state = 'ringing';
          this.#inbound.progress(180);
        }
      });
      this.disposer.on(leg, 'answered', (sdp: string) => {
        void this.#onAnswered(fork, sdp).catch((err: unknown) => {
          this.log.warn({ err: errorMessage(err) }, 'bridging the answer failed');
          void this.teardown(failureReason(err));
        });
      });
      this.disposer.on(leg, 'ended', (end: LegEnd) => {
        fork.ended = end;
        if (fork === this.#winner) void this.teardown(legEndReason('browser', end));
        else this.#closeFork(fork);
        this.#checkForks();
      });
    } catch (err) {
      this.log.warn({ err: errorMessage(err), contact: contact.uri }, 'could not ring a device');
      fork.ended = { cause: 'local', status: 500 };
      this.#closeFork(fork);
    }
  }

  /** Releases a losing fork's PeerConnection and ports now, not at the end of the call. */
  #closeFork(fork: Fork): void {
    fork.leg?.terminate(this.#winner ? { reasonHeader: COMPLETED_ELSEWHERE } : {});
    void fork.webrtc?.close();
    void fork.lease?.release();
  }

  /** Nobody left ringing and nobody answered: the trunk gets the most telling final status. */
  #checkForks(): void {
    if (this.#winner || this.closed || this.#forks.length < this.#contacts.length) return;
    if (!this.#forks.every((f) => f.ended)) return;
    const statuses = this.#forks.map((f) => f.ended?.status ?? 480);
    const status = statuses.find((s) => s === 486 || s === 600 || s === 603) ?? 480;
    void this.teardown({ by: 'browser', cause: 'no-device-answered', status });
  }

  async #onAnswered(fork: Fork, sdp: string): Promise<void> {
    if (this.#winner || this.closed) {
      fork.leg?.terminate({ reasonHeader: COMPLETED_ELSEWHERE }); // a late 2xx: the leg ACKs and BYEs it
      return;
    }
    this.#winner = fork;
    for (const other of this.#forks) if (other !== fork) this.#closeFork(other);
    const webrtc = fork.webrtc!;
    const watch = (ep: WebRtcEndpoint) => {
      this.disposer.on(ep, 'failed', (reason: string) => void this.teardown({ by: 'browser', cause: 'webrtc-failed', status: 500 }, reason));
    };
    if (this.#fromBrowser) {
      await this.#bridgeToCaller(fork, sdp, watch);
      return;
    }
    const media = negotiateBrowserAnswer(sdp, this.#offer!);
    this.#media = media;
    await webrtc.applyAnswer(sdp, media.dtmf?.browserPt);
    if (this.closed) return;
    watch(webrtc);
    this.#relay = new MediaRelay(webrtc, this.#rtp!, media);
    this.#inbound.accept(buildPlainAnswer({ address: this.#deps.media.announceAddress, port: this.#rtp!.port, media }));
    this.markAnswered();
    this.log.info({ codec: media.codec.name, contact: fork.contact.uri, setupMs: Date.now() - this.startedAt }, 'call answered');
  }

  /** Browser to browser: answer the caller with exactly the codec the callee kept, and bridge the two PeerConnections. */
  async #bridgeToCaller(fork: Fork, sdp: string, watch: (ep: WebRtcEndpoint) => void): Promise<void> {
    const d = this.#deps;
    const { codec, te } = chooseAnswered(sdp, this.#forkCodecs);
    this.#media = { codec, browserPt: codec.pt, sipPt: codec.pt, sip: { address: '', port: 0, rtcpPort: 0 }, ptime: 20 };
    await fork.webrtc!.applyAnswer(sdp, te?.pt);
    const opened = await this.openWebRtc(d.webrtcPorts, 'caller', (portRange) =>
      WebRtcEndpoint.create({
        offer: this.#inbound.offer,
        codec,
        ...(te ? { dtmfPt: te.pt } : {}),
        ...endpointBase(d.media, portRange, this.log),
      }),
    );
    if (!opened) return;
    const caller = (this.#caller = opened.endpoint);
    watch(caller);
    watch(fork.webrtc!);
    this.#relay = new WebRtcBridge(caller, fork.webrtc!, {
      aPt: codec.pt,
      bPt: codec.pt,
      ...(te ? { aDtmfPt: te.pt, bDtmfPt: te.pt } : {}),
      clockRate: codec.rate,
    });
    this.#inbound.accept(caller.localSdp);
    this.markAnswered();
    this.log.info({ codec: codec.name, contact: fork.contact.uri, setupMs: Date.now() - this.startedAt }, 'call answered (browser to browser)');
  }

  protected endLegs(reason: CallEndReason, detail?: string): void {
    this.#relay?.stop();
    const status = reason.by === 'gateway' || reason.by === 'browser' ? (reason.status && reason.status >= 300 ? reason.status : 480) : 487;
    this.#inbound.terminate({ status, ...(detail ? { reason: detail } : {}) });
    for (const f of this.#forks) {
      // Only a call someone answered was completed elsewhere (RFC 3326); the rest were just ended.
      f.leg?.terminate(f === this.#winner ? {} : this.#winner ? { reasonHeader: COMPLETED_ELSEWHERE } : {});
    }
  }

  protected endLogFields(): Record<string, unknown> {
    return { codec: this.#media?.codec.name, forks: this.#forks.length, relay: this.#relay?.stats };
  }

  mediaLiveness(): { sip: number | undefined; browser: number | undefined } {
    const w = this.#winner?.webrtc;
    const c = this.#caller;
    const callerSide = this.#fromBrowser ? latest(c?.lastPacketAt, c?.lastRtcpAt) : latest(this.#rtp?.lastPacketAt, this.#rtp?.lastRtcpAt);
    return { sip: callerSide, browser: latest(w?.lastPacketAt, w?.lastRtcpAt) };
  }

  info(): CallInfo {
    const iso = (t: number | undefined) => (t ? new Date(t).toISOString() : undefined);
    const t = this.times;
    const w = this.#winner;
    const rtp = this.#rtp;
    return {
      id: this.id,
      direction: 'inbound',
      state: this.state,
      startedAt: iso(t.startedAt)!,
      ...(t.answeredAt ? { answeredAt: iso(t.answeredAt), durationMs: (t.endedAt ?? Date.now()) - t.answeredAt } : {}),
      ...(t.endedAt ? { endedAt: iso(t.endedAt) } : {}),
      ...(t.endReason ? { endReason: t.endReason } : {}),
      ...(this.#media ? { codec: this.#media.codec.name } : {}),
      legs: {
        browser: {
          callId: w?.leg?.callId ?? '',
          state: w?.leg?.state ?? (this.#forks.some((f) => !f.ended) ? 'ringing' : 'ended'),
          user: this.#user,
          source: w ? `${w.contact.source.transport}:${w.contact.source.address}:${w.contact.source.port}` : `${this.#forks.length} device(s)`,
          ...(w?.webrtc ? { media: { localPorts: w.lease?.ports ?? [], connectionState: w.webrtc.connectionState, packetsIn: w.webrtc.packetsIn, packetsOut: w.webrtc.packetsOut } } : {}),
        },
        sip: {
          callId: this.#inbound.callId,
          state: this.#inbound.state,
          target: `${this.#inbound.source.transport}:${this.#inbound.source.address}:${this.#inbound.source.port}`,
          ...(rtp ? { media: rtpMediaInfo(rtp) } : {}),
        },
      },
      ...(this.#relay ? { relay: this.#relay.stats } : {}),
    };
  }
}
