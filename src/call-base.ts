import type { Logger } from 'pino';
import type { PortAllocator, PortLease } from '../webrtc/port-allocator.js';
import { formatAddress, type RtpEndpoint } from '../webrtc/rtp-endpoint.js';
import type { WebRtcEndpoint } from '../webrtc/webrtc-endpoint.js';
import { SdpError } from '../webrtc/sdp.js';
import { GatewayError, errorMessage } from './util/errors.js';
import { Disposer, SafeEmitter } from './util/safe-emitter.js';

export type CallState = 'setup' | 'ringing' | 'answered' | 'ended';

export interface CallEndReason {
  /** Which side or component ended it. */
  by: 'browser' | 'sip' | 'gateway';
  cause: string;
  status?: number;
  /** What the leg said about it ("cannot resolve pbx.example: ...", a reason phrase). */
  reason?: string;
}

/** A leg's ending as the call's end reason. */
export function legEndReason(by: CallEndReason['by'], end: { cause: string; status?: number; reason?: string }): CallEndReason {
  return { by, cause: end.cause, ...(end.status ? { status: end.status } : {}), ...(end.reason ? { reason: end.reason } : {}) };
}

export interface MediaCounters {
  packetsIn: number;
  packetsOut: number;
}

/** What the admin API and the end-of-call log line show about a call. */
export interface CallInfo {
  id: string;
  /** `outbound`: from a softphone toward a SIP peer; `inbound`: from a SIP peer to registered devices. */
  direction: 'outbound' | 'inbound';
  state: CallState;
  startedAt: string;
  answeredAt?: string;
  endedAt?: string;
  durationMs?: number;
  endReason?: CallEndReason;
  codec?: string;
  legs: {
    browser: {
      callId: string;
      state: string;
      user: string;
      source: string;
      media?: MediaCounters & { localPorts: number[]; connectionState: string };
    };
    sip: {
      callId?: string;
      state?: string;
      /** The trunk (outbound calls) and the number it was sent. */
      trunk?: string;
      toUser?: string;
      target: string;
      media?: MediaCounters & {
        localPorts: number[];
        /** Where RTP is sent: the latched source when `latched`, else the SDP's address. */
        remote?: string;
        latched: boolean;
        /** The SDP's address, when RTP goes elsewhere (latched). */
        sdpRemote?: string;
        /** Where RTCP is sent (latched independently of RTP). */
        rtcpRemote?: string;
        bytesIn: number;
        bytesOut: number;
        rtcpIn: number;
        /** Packets dropped for coming from another source than the latched one. */
        strayIn: number;
      };
    };
  };
  relay?: { toSip: { packets: number; dropped: number; lost: number }; toBrowser: { packets: number; dropped: number; lost: number } };
}

/** The SIP side's media counters as CallInfo shows them. */
export function rtpMediaInfo(rtp: RtpEndpoint): NonNullable<CallInfo['legs']['sip']['media']> {
  const r = rtp.remote;
  const sdp = rtp.sdpRemote;
  const rtcp = rtp.rtcpRemote;
  return {
    localPorts: rtp.lease.ports,
    ...(r ? { remote: formatAddress(r) } : {}),
    latched: rtp.latched,
    ...(sdp && rtp.latched ? { sdpRemote: formatAddress(sdp) } : {}),
    ...(rtcp ? { rtcpRemote: formatAddress(rtcp) } : {}),
    packetsIn: rtp.packetsIn,
    packetsOut: rtp.packetsOut,
    bytesIn: rtp.bytesIn,
    bytesOut: rtp.bytesOut,
    rtcpIn: rtp.rtcpIn,
    strayIn: rtp.strayIn + rtp.rtcpStrayIn,
  };
}

/** The options every browser leg's PeerConnection shares, from the gateway's media settings. */
export function endpointBase(
  media: { bindAddress: string; announceAddress: string; webrtcSetupTimeoutMs: number },
  portRange: [number, number],
  log: Logger,
): { portRange: [number, number]; bindAddress: string; announceAddress: string; setupTimeoutMs: number; log: Logger } {
  return { portRange, bindAddress: media.bindAddress, announceAddress: media.announceAddress, setupTimeoutMs: media.webrtcSetupTimeoutMs, log };
}

/** The latest of some optional timestamps. */
export function latest(...times: Array<number | undefined>): number | undefined {
  const t = times.filter((x): x is number => x !== undefined);
  return t.length > 0 ? Math.max(...t) : undefined;
}

export type CallEvents = { '@close': []; answered: [setupMs: number] };

let nextCallNumber = 1;

/**
 * The lifecycle every call shape shares: an id and a child logger, a list of closers for what
 * the call acquired, a disposer for its listeners and timers, and the one teardown path.
 * Subclasses implement setup() and endLegs(); teardown never depends on what media was negotiated.
 */
export abstract class CallBase extends SafeEmitter<CallEvents> {
  readonly id: string;
  log: Logger;
  readonly startedAt = Date.now();
  protected readonly disposer = new Disposer();
  #answeredAt: number | undefined;
  #endedAt: number | undefined;
  #state: CallState = 'setup';
  #endReason: CallEndReason | undefined;
  #resources: Array<() => Promise<void> | void> = [];
  #ringTimer: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;

  constructor(idSeed: string, log: Logger, bindings: Record<string, string>) {
    super(log);
    this.id = `c${nextCallNumber++}-${idSeed.replace(/[^A-Za-z0-9]/g, '').slice(0, 8) || 'x'}`;
    this.log = log.child({ call: this.id, ...bindings });
  }

  get state(): CallState {
    return this.#state;
  }

  protected set state(s: CallState) {
    if (this.#state !== 'ended') this.#state = s;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  get answeredAt(): number | undefined {
    return this.#answeredAt;
  }

  protected get times(): { startedAt: number; answeredAt?: number; endedAt?: number; endReason?: CallEndReason } {
    return {
      startedAt: this.startedAt,
      ...(this.#answeredAt ? { answeredAt: this.#answeredAt } : {}),
      ...(this.#endedAt ? { endedAt: this.#endedAt } : {}),
      ...(this.#endReason ? { endReason: this.#endReason } : {}),
    };
  }

  /** Ends the call with `reason` unless it is answered within `ms` (a no-answer limit, not a call length limit). */
  protected armRingTimeout(ms: number, reason: CallEndReason): void {
    clearTimeout(this.#ringTimer);
    this.#ringTimer = this.disposer.timeout(() => {
      if (this.state !== 'answered') void this.teardown(reason);
    }, ms);
  }

  protected markAnswered(): void {
    clearTimeout(this.#ringTimer);
    this.state = 'answered';
    this.#answeredAt = Date.now();
    this.safeEmit('answered', this.#answeredAt - this.startedAt);
  }

  /** Drives setup to completion or to teardown; never rejects. */
  async run(): Promise<void> {
    try {
      await this.setup();
    } catch (err) {
      this.log.warn({ err: errorMessage(err), code: (err as GatewayError).code }, 'call setup failed');
      void this.teardown(failureReason(err));
    }
  }

  protected abstract setup(): Promise<void>;

  /** Sends each SIP leg the ending its state requires (BYE, CANCEL, final response). Idempotent legs. */
  protected abstract endLegs(reason: CallEndReason, detail?: string): void;

  abstract info(): CallInfo;

  /** The last RTP or RTCP received from each side (undefined: nothing yet). */
  abstract mediaLiveness(): { sip: number | undefined; browser: number | undefined };

  /** Fields for the one `call ended` log line. */
  protected abstract endLogFields(): Record<string, unknown>;

  /** Adds a closer to the call; if the call already ended, runs it now and returns false. */
  protected own(close: () => Promise<void> | void): boolean {
    if (this.#closing) {
      void Promise.resolve()
        .then(close)
        .catch((err: unknown) => this.log.warn({ err }, 'late release failed'));
      return false;
    }
    this.#resources.push(close);
    return true;
  }

  /**
   * A PeerConnection for one browser leg: reserves its ports, creates it, ties both to the call,
   * gives back the reserved port werift did not bind, and lets the browser's packets turn the port
   * `active`. Undefined when the call ended meanwhile (everything is already released then).
   */
  protected async openWebRtc(
    ports: PortAllocator,
    leg: string,
    create: (portRange: [number, number]) => Promise<WebRtcEndpoint>,
  ): Promise<{ endpoint: WebRtcEndpoint; lease: PortLease } | undefined> {
    // werift refuses a one-port icePortRange, so each PeerConnection reserves two and binds the first free.
    const lease = await ports.allocate({ callId: this.id, leg }, ['webrtc', 'webrtc'], { bind: false });
    if (!this.own(() => lease.release())) return undefined;
    let endpoint: WebRtcEndpoint;
    try {
      endpoint = await create([lease.ports[0]!, lease.ports[1]!]);
    } catch (err) {
      await lease.release(); // a failed leg gives its ports back now, not when the call ends
      throw err;
    }
    if (!this.own(() => endpoint.close())) return undefined;
    if (lease.ports.includes(endpoint.localPort)) lease.keepOnly(endpoint.localPort);
    this.disposer.on(endpoint, 'rtp', (p: { payload: Buffer }) => lease.touch(0, p.payload.length + 12));
    return { endpoint, lease };
  }

  /** Hangs the call up from the gateway side (admin, shutdown, timeouts). */
  hangup(cause = 'hangup', status?: number): Promise<void> {
    return this.teardown({ by: 'gateway', cause, ...(status ? { status } : {}) });
  }

  /**
   * The only way a call ends. State first, then I/O: the legs get their SIP endings, then every
   * PeerConnection and port is released, exactly once, whichever events race.
   */
  protected teardown(reason: CallEndReason, detail?: string): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#endReason = reason;
    this.#state = 'ended';
    this.#endedAt = Date.now();
    this.#closing = (async () => {
      this.disposer.dispose((err) => this.log.warn({ err }, 'dispose failed'));
      try {
        this.endLegs(reason, detail);
      } catch (err) {
        this.log.warn({ err }, 'ending the SIP legs failed');
      }
      const closers = this.#resources.reverse();
      this.#resources = [];
      const results = await Promise.allSettled(closers.map(async (c) => c()));
      for (const r of results) if (r.status === 'rejected') this.log.warn({ err: r.reason }, 'release failed');
      this.log.info({ endReason: reason, ...(detail ? { detail } : {}), ...this.endLogFields() }, 'call ended');
      this.safeEmit('@close');
    })();
    return this.#closing;
  }
}

/** The ending for an error thrown during setup. */
export function failureReason(err: unknown): CallEndReason {
  const status = err instanceof SdpError ? err.status : err instanceof GatewayError && err.code === 'GW_PORTS_EXHAUSTED' ? 503 : 500;
  return { by: 'gateway', cause: (err as GatewayError).code ?? 'error', status };
}
