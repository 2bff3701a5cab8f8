import { EventEmitter } from 'node:events';
import type { Flow } from './transport/flow.js';
import type { ParsedRequest, ParsedResponse } from './message.js';

/**
 * RFC 3261 §17 transactions with every timer (A/B/D/E/F/G/H/I/J/K, and RFC 6026's L/M).
 * sip.js core's own transactions treat every transport as reliable (no Timer A/E/G, D/I/J/K = 0),
 * so a gateway talking UDP owns this layer; sip.js still parses and grammar-checks every message.
 */
export interface SipTimers {
  t1: number;
  t2: number;
  t4: number;
}

export const DEFAULT_TIMERS: SipTimers = { t1: 500, t2: 4000, t4: 5000 };

export type TransactionState = 'calling' | 'trying' | 'proceeding' | 'accepted' | 'completed' | 'confirmed' | 'terminated';

type TxEvents = {
  terminated: [];
};

abstract class Transaction<E extends Record<keyof E, unknown[]>> extends EventEmitter<E & TxEvents> {
  state: TransactionState;
  readonly #timers = new Map<string, NodeJS.Timeout>();

  constructor(
    readonly key: string,
    public flow: Flow,
    protected readonly timers: SipTimers,
    initial: TransactionState,
  ) {
    super();
    this.state = initial;
  }

  protected timer(name: string, ms: number, fn: () => void): void {
    this.clearTimer(name);
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        fn();
      }, ms),
    );
  }

  protected clearTimer(name: string): void {
    const t = this.#timers.get(name);
    if (t) clearTimeout(t);
    this.#timers.delete(name);
  }

  /** Sends on the flow; a failure is reported to the subclass instead of thrown. */
  protected transmit(data: string): boolean {
    try {
      this.flow.send(data);
      return true;
    } catch (err) {
      this.onTransportError(err as Error);
      return false;
    }
  }

  protected abstract onTransportError(err: Error): void;

  /** Wait the given time in `completed`/`confirmed` (0 on reliable transports), then end. */
  protected linger(name: string, ms: number): void {
    if (this.flow.reliable || ms <= 0) this.terminate();
    else this.timer(name, ms, () => this.terminate());
  }

  terminate(): void {
    if (this.state === 'terminated') return;
    this.state = 'terminated';
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    (this.emit as unknown as (e: 'terminated') => boolean)('terminated');
  }
}

export type ClientTxEvents = {
  response: [res: ParsedResponse];
  /** Timer B or F fired with no final response. */
  timeout: [];
  transportError: [err: Error];
};

/** INVITE and non-INVITE client transactions (RFC 3261 §17.1, RFC 6026). */
export class ClientTransaction extends Transaction<ClientTxEvents> {
  readonly isInvite: boolean;
  retransmissions = 0;

  constructor(
    key: string,
    flow: Flow,
    timers: SipTimers,
    readonly method: string,
    readonly request: string,
    /** Builds the ACK for a non-2xx final response (same branch; RFC 3261 §17.1.1.3). */
    private readonly buildAck: ((res: ParsedResponse) => string) | undefined,
  ) {
    super(key, flow, timers, method === 'INVITE' ? 'calling' : 'trying');
    this.isInvite = method === 'INVITE';
  }

  start(): void {
    if (!this.transmit(this.request)) return;
    const { t1, t2 } = this.timers;
    if (!this.flow.reliable) this.#scheduleRetransmit(t1, this.isInvite ? Infinity : t2);
    // Timer B runs in 'calling' only (a 1xx clears it: ringing is bounded by the TU), Timer F in
    // 'trying' and 'proceeding' (RFC 3261 §17.1.1.2, §17.1.2.2).
    this.timer(this.isInvite ? 'B' : 'F', 64 * t1, () => {
      if (this.isInvite ? this.state === 'calling' : this.state === 'trying' || this.state === 'proceeding') {
        this.emit('timeout');
        this.terminate();
      }
    });
  }

  /**
   * The TU moved on without this INVITE (failover after silence): stop retransmitting it, but keep matching
   * responses, so that a late 1xx can be CANCELled and a late 2xx ACKed and ended, until Timer B ends it.
   */
  abandon(): void {
    if (this.isInvite && this.state === 'calling') this.clearTimer('A');
  }

  /**
   * The TU sent CANCEL for this INVITE: if no final response comes within 64*T1, the transaction is
   * considered cancelled and destroyed (RFC 3261 §9.1), so that it does not wait forever in 'proceeding'.
   */
  cancelled(): void {
    if (!this.isInvite || (this.state !== 'calling' && this.state !== 'proceeding')) return;
    this.timer('cancel', 64 * this.timers.t1, () => {
      if (this.state === 'calling' || this.state === 'proceeding') this.terminate();
    });
  }

  #scheduleRetransmit(interval: number, cap: number): void {
    this.timer(this.isInvite ? 'A' : 'E', interval, () => {
      const retransmit = this.isInvite ? this.state === 'calling' : this.state === 'trying' || this.state === 'proceeding';
      if (!retransmit) return;
      this.retransmissions++;
      if (!this.transmit(this.request)) return;
      // Non-INVITE in `proceeding` retransmits every T2 (§17.1.2.2).
      const next = this.state === 'proceeding' ? this.timers.t2 : Math.min(interval * 2, cap);
      this.#scheduleRetransmit(next, cap);
    });
  }

  receive(res: ParsedResponse): void {
    const s = res.status;
    switch (this.state) {
      case 'calling':
      case 'trying':
      case 'proceeding':
        if (s < 200) {
          if (this.isInvite) {
            this.clearTimer('A');
            this.clearTimer('B');
          }
          this.state = 'proceeding';
          this.emit('response', res);
          return;
        }
        this.clearTimer('A');
        this.clearTimer('B');
        this.clearTimer('E');
        this.clearTimer('F');
        this.clearTimer('cancel');
        if (this.isInvite && s < 300) {
          this.state = 'accepted';
          this.timer('M', 64 * this.timers.t1, () => this.terminate());
          this.emit('response', res);
          return;
        }
        this.state = 'completed';
        if (this.isInvite && this.buildAck) this.transmit(this.buildAck(res));
        this.emit('response', res);
        if (this.state === 'completed') this.linger(this.isInvite ? 'D' : 'K', this.isInvite ? 32000 : this.timers.t4);
        return;
      case 'accepted':
        // Retransmitted 2xx (or a 2xx from another fork): the TU re-sends its ACK.
        if (s >= 200 && s < 300) this.emit('response', res);
        return;
      case 'completed':
        if (this.isInvite && s >= 300 && this.buildAck) this.transmit(this.buildAck(res));
        return;
      default:
        return;
    }
  }

  protected onTransportError(err: Error): void {
    if (this.state === 'terminated') return;
    this.emit('transportError', err);
    this.terminate();
  }
}

export type ServerTxEvents = {
  /** No ACK arrived for our final response to an INVITE (Timer H, or 64*T1 after a 2xx). */
  ackTimeout: [];
  transportError: [err: Error];
};

/** INVITE and non-INVITE server transactions (RFC 3261 §17.2, RFC 6026). */
export class ServerTransaction extends Transaction<ServerTxEvents> {
  readonly isInvite: boolean;
  #lastResponse: string | undefined;
  finalStatus = 0;

  constructor(
    key: string,
    flow: Flow,
    timers: SipTimers,
    readonly request: ParsedRequest,
  ) {
    super(key, flow, timers, request.method === 'INVITE' ? 'proceeding' : 'trying');
    this.isInvite = request.method === 'INVITE';
  }

  get hasFinalResponse(): boolean {
    return this.finalStatus >= 200;
  }

  /** Sends a response built by the TU. Responses after the final one are ignored. */
  respond(status: number, data: string): void {
    if (this.finalStatus >= 200 || this.state === 'terminated') return;
    this.#lastResponse = data;
    if (status < 200) {
      if (this.state === 'trying') this.state = 'proceeding';
      this.transmit(data);
      return;
    }
    this.finalStatus = status;
    const { t1, t2, t4 } = this.timers;
    if (!this.isInvite) {
      this.state = 'completed';
      if (this.transmit(data)) this.linger('J', 64 * t1);
      return;
    }
    this.state = status < 300 ? 'accepted' : 'completed';
    if (!this.transmit(data)) return;
    // 2xx retransmission (§13.3.1.4) and Timer G for non-2xx share the same schedule.
    if (!this.flow.reliable) this.#scheduleRetransmit(t1, t2);
    this.timer(status < 300 ? 'L' : 'H', 64 * t1, () => {
      if (this.state === 'accepted' || this.state === 'completed') {
        this.emit('ackTimeout');
        this.terminate();
      }
    });
    void t4;
  }

  #scheduleRetransmit(interval: number, cap: number): void {
    this.timer('G', interval, () => {
      if ((this.state !== 'accepted' && this.state !== 'completed') || !this.#lastResponse) return;
      if (!this.transmit(this.#lastResponse)) return;
      this.#scheduleRetransmit(Math.min(interval * 2, cap), cap);
    });
  }

  /** A retransmission of the request, or the ACK for a non-2xx final response. */
  receive(req: ParsedRequest): void {
    if (req.method === 'ACK') {
      if (this.state === 'completed' && this.isInvite) {
        this.state = 'confirmed';
        this.clearTimer('G');
        this.clearTimer('H');
        this.linger('I', this.timers.t4);
      }
      return;
    }
    // Absorb the retransmission, repeating our last response if we sent one (§17.2.1, §17.2.2).
    if (this.#lastResponse && this.state !== 'confirmed') this.transmit(this.#lastResponse);
  }

  /** The TU matched the ACK for our 2xx (it has its own branch): stop retransmitting. */
  ackReceived(): void {
    if (this.state !== 'accepted') return;
    this.state = 'confirmed';
    this.terminate();
  }

  protected onTransportError(err: Error): void {
    if (this.state === 'terminated') return;
    this.emit('transportError', err);
    this.terminate();
  }
}

/** RFC 3261 §17.2.3: branch + sent-by + method, with ACK matching its INVITE. */
export function serverKey(req: ParsedRequest): string {
  const v = req.topVia;
  const method = req.method === 'ACK' ? 'INVITE' : req.method;
  const branch = v.branch ?? '';
  if (branch.startsWith('z9hG4bK')) return `${branch}|${v.host}:${v.port ?? ''}|${method}`;
  // RFC 2543 peers: fall back to the dialog and CSeq identifiers (§17.2.3, second part, simplified).
  const m = req.msg;
  return `2543|${m.callId}|${m.fromTag}|${m.cseq}|${v.host}:${v.port ?? ''}|${method}`;
}

/** RFC 3261 §17.1.3: top Via branch + CSeq method. */
export function clientKey(branch: string, method: string): string {
  return `${branch}|${method}`;
}
