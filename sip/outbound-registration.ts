import { SafeEmitter } from '../src/util/safe-emitter.js';
import type {
  OutboundRegistration,
  OutboundRegistrationOptions,
  OutboundRegistrationState,
  OutboundRegistrationStatus,
} from './backend.js';
import { authorizationFor, buildRequest, newBranch, parseUri, randomToken, splitHeaderList, type ParsedResponse } from './message.js';
import type { FlowBound, StackContext } from './stack-context.js';
import type { ClientTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';
import { destinationName, flowToDestination, nextHop, targetUri, trunkRoutes } from './trunk-target.js';

const DEFAULT_RETRY_BASE_MS = 5000;
const DEFAULT_RETRY_MAX_MS = 300_000;
const DEFAULT_STOP_TIMEOUT_MS = 2000;
/** Retry-After and Min-Expires come from the network: bounded. */
const MAX_RETRY_AFTER_S = 3600;
const MAX_MIN_EXPIRES_S = 86_400;
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * When to refresh a binding granted for `grantedS` seconds. Short bindings at half-time; long ones
 * 30 s before expiry, which leaves room for a whole non-INVITE transaction (Timer F, 32 s with the
 * default T1) to run out before the binding does. Both give 30 s at 60 s, so the curve is continuous.
 */
export function refreshDelayMs(grantedS: number): number {
  return grantedS <= 60 ? grantedS * 500 : (grantedS - 30) * 1000;
}

/** Exponential backoff with ±20 % jitter: base, 2·base, 4·base... capped at `maxMs`. */
export function backoffDelayMs(failures: number, baseMs: number, maxMs: number, random = Math.random): number {
  const d = Math.min(maxMs, baseMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(d * (0.8 + 0.4 * random()));
}

/** The expiry the registrar granted our Contact: its `expires` param, else the Expires header, else undefined. */
export function grantedExpires(res: ParsedResponse, ourContact: string): number | undefined {
  const ours = parseUri(/<([^>]*)>/.exec(ourContact)?.[1] ?? ourContact);
  for (const value of res.msg.getHeaders('contact').flatMap(splitHeaderList)) {
    const m = /^[^<]*<([^>]*)>(.*)$/.exec(value);
    const uri = m ? parseUri(m[1]!) : undefined;
    if (!uri || !ours) continue;
    const same = uri.user === ours.user && uri.host.toLowerCase() === ours.host.toLowerCase() && (uri.port ?? 5060) === (ours.port ?? 5060);
    const e = same ? /;\s*expires\s*=\s*(\d{1,10})/i.exec(m![2]!) : null;
    if (e) return Number(e[1]);
  }
  const h = res.msg.getHeader('expires');
  return h !== undefined && /^\s*\d{1,10}\s*$/.test(h) ? Number(h) : undefined;
}

function leadingInt(h: string | undefined, max: number): number | undefined {
  const m = h === undefined ? null : /^\s*(\d{1,10})/.exec(h);
  return m ? Math.min(max, Number(m[1])) : undefined;
}

type Outcome =
  | { kind: 'registered'; granted: number }
  | { kind: 'unregistered' }
  /** Counted as a failure; `retryAfterS` from a 503. */
  | { kind: 'failed'; error: string; retryAfterS?: number }
  /** Superseded by stop() or a newer attempt: nothing to record. */
  | { kind: 'aborted' };

type Exchange = ParsedResponse | { error: string; transport: boolean };

/**
 * One outbound registration (RFC 3261 §10.2) with a trunk: REGISTER, answer the challenge, refresh
 * before expiry, retry failures with backoff, re-register when the connection drops, un-REGISTER
 * on stop(). One Call-ID for its lifetime, CSeq increasing (§10.2.4).
 */
export class OutboundRegistrationClient extends SafeEmitter<{ state: [status: OutboundRegistrationStatus] }> implements OutboundRegistration, FlowBound {
  readonly #ctx: StackContext;
  readonly #opts: OutboundRegistrationOptions;
  readonly #log;
  readonly #callId = randomToken(12);
  readonly #fromTag = randomToken(6);
  readonly #aor: string;
  readonly #onDone: () => void;
  #cseq = 0;
  #expires: number;
  #state: OutboundRegistrationState = 'registering';
  #expiresAt: number | undefined;
  #lastRegisteredAt: number | undefined;
  #lastError: string | undefined;
  #failures = 0;
  #nextAttemptAt: number | undefined;
  #destination: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #flow: Flow | undefined;
  /** Connections lost since the last refresh that kept its connection. */
  #drops = 0;
  /** The flow of the last successful REGISTER. */
  #registeredFlowId: string | undefined;
  /** The REGISTER in flight and how to settle its waiter early (flow closed, stop). */
  #pending: { txn: ClientTransaction; settle: (r: Exchange) => void } | undefined;
  /** Bumped by every new attempt and by stop(): older attempts see it and give up. */
  #generation = 0;
  #stopping: Promise<void> | undefined;
  #disposed = false;
  #tornDown = false;

  constructor(ctx: StackContext, opts: OutboundRegistrationOptions, onDone: () => void) {
    super(ctx.log);
    if (typeof opts.username !== 'string' || opts.username === '' || /[\s<>@;]/.test(opts.username)) throw new TypeError('username must be a SIP user');
    if (!Number.isInteger(opts.expires) || opts.expires < 1) throw new TypeError('expires must be a positive integer');
    for (const k of ['retryBaseMs', 'retryMaxMs', 'stopTimeoutMs'] as const) {
      const v = opts[k];
      if (v !== undefined && (!Number.isFinite(v) || v <= 0)) throw new TypeError(`${k} must be a positive number`);
    }
    this.#ctx = ctx;
    this.#opts = opts;
    this.#expires = opts.expires;
    this.#onDone = onDone;
    this.#aor = `sip:${opts.username}@${opts.domain ?? opts.trunk.target.host}`;
    this.#log = ctx.log.child({ trunk: opts.name, aor: this.#aor });
    // Let the caller attach listeners before the first outcome.
    this.#schedule(0);
  }

  status(): OutboundRegistrationStatus {
    return {
      state: this.#state,
      failures: this.#failures,
      ...(this.#expiresAt !== undefined ? { expiresAt: this.#expiresAt } : {}),
      ...(this.#lastRegisteredAt !== undefined ? { lastRegisteredAt: this.#lastRegisteredAt } : {}),
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
      ...(this.#nextAttemptAt !== undefined ? { nextAttemptAt: this.#nextAttemptAt } : {}),
      ...(this.#destination !== undefined ? { destination: this.#destination } : {}),
    };
  }

  #setState(state: OutboundRegistrationState): void {
    const changed = state !== this.#state;
    this.#state = state;
    if (changed) {
      const s = this.status();
      this.#log.info({ state, lastError: s.lastError, failures: s.failures, destination: s.destination }, 'trunk registration state');
    }
    this.safeEmit('state', this.status());
  }

  #schedule(ms: number): void {
    // Node fires a timer longer than 2^31-1 ms after 1 ms instead.
    ms = Math.min(ms, MAX_TIMER_MS);
    clearTimeout(this.#timer);
    this.#nextAttemptAt = Date.now() + ms;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#nextAttemptAt = undefined;
      void this.#attempt();
    }, ms);
  }

  async #attempt(): Promise<void> {
    if (this.#stopping || this.#disposed) return;
    const gen = ++this.#generation;
    this.#abortPending();
    if (this.#state !== 'registered') this.#setState('registering');
    let outcome: Outcome;
    try {
      outcome = await this.#exchange(this.#expires, gen);
    } catch (err) {
      outcome = { kind: 'failed', error: (err as Error).message };
    }
    if (gen !== this.#generation || this.#stopping || this.#disposed) return;
    switch (outcome.kind) {
      case 'registered': {
        const now = Date.now();
        this.#failures = 0;
        this.#lastError = undefined;
        if (this.#flow && this.#flow.id === this.#registeredFlowId) this.#drops = 0;
        this.#registeredFlowId = this.#flow?.id;
        this.#lastRegisteredAt = now;
        this.#expiresAt = now + outcome.granted * 1000;
        this.#schedule(refreshDelayMs(outcome.granted));
        this.#setState('registered');
        return;
      }
      case 'failed': {
        this.#failures++;
        this.#lastError = outcome.error;
        const o = this.#opts;
        const delay = outcome.retryAfterS !== undefined
          ? outcome.retryAfterS * 1000
          : backoffDelayMs(this.#failures, o.retryBaseMs ?? DEFAULT_RETRY_BASE_MS, o.retryMaxMs ?? DEFAULT_RETRY_MAX_MS);
        this.#schedule(delay);
        this.#setState('failed');
        return;
      }
      default:
        return;
    }
  }

  /**
   * One REGISTER (or un-REGISTER with `expires` 0) to completion: the resolved destinations in order
   * on transport failure, silence or 503; one answer per challenge; 423 raises the expiry and retries.
   */
  async #exchange(expires: number, gen: number): Promise<Outcome> {
    const trunk = this.#opts.trunk;
    const next = nextHop(trunk);
    const dests = await this.#ctx.resolve(next);
    if (gen !== this.#generation) return { kind: 'aborted' };
    if (dests.length === 0) return { kind: 'failed', error: `no address for ${next.host}` };
    let lastError = `no destination for ${next.host}`;
    for (const [i, dest] of dests.entries()) {
      const destination = destinationName(dest);
      let flow: Flow;
      try {
        flow = await flowToDestination(this.#ctx, trunk, dest);
      } catch (err) {
        lastError = `cannot reach ${destination}: ${(err as Error).message}`;
        continue;
      }
      if (gen !== this.#generation) return { kind: 'aborted' };
      this.#useFlow(flow);
      this.#destination = destination;
      let auth: string | undefined;
      let challenged = false;
      let minExpiresTries = 0;
      for (;;) {
        const r = await this.#send(flow, expires, auth);
        if (gen !== this.#generation) return { kind: 'aborted' };
        if ('error' in r) {
          lastError = r.error;
          break; // next destination
        }
        const s = r.status;
        const reason = `${s} ${r.msg.reasonPhrase ?? ''}`.trim();
        if (s >= 200 && s < 300) {
          if (expires === 0) return { kind: 'unregistered' };
          // A registrar may shorten the expiry we asked for, never lengthen it (RFC 3261 §10.3): a larger
          // value is a registrar bug, and trusting it could overflow the refresh timer.
          const granted = Math.min(expires, grantedExpires(r, this.#ctx.contact(flow, this.#opts.username)) ?? expires);
          if (granted <= 0) return { kind: 'failed', error: `${reason} without a binding for our Contact` };
          return { kind: 'registered', granted };
        }
        if (s === 401 || s === 407) {
          if (challenged) return { kind: 'failed', error: `${reason} after credentials` };
          auth = this.#answer(r);
          if (!auth) return { kind: 'failed', error: this.#opts.credentials ? `${reason}: cannot answer the challenge` : `${reason}: no credentials` };
          challenged = true;
          continue;
        }
        if (s === 423 && expires > 0) {
          const min = leadingInt(r.msg.getHeader('min-expires'), MAX_MIN_EXPIRES_S);
          if (min === undefined || min <= expires || ++minExpiresTries > 3) return { kind: 'failed', error: `${reason} (Min-Expires ${min ?? 'missing'})` };
          this.#log.info({ from: expires, to: min }, 'registrar asks for a longer expiry');
          this.#expires = expires = min;
          auth = undefined;
          challenged = false;
          continue;
        }
        if (s === 503 && i < dests.length - 1) {
          lastError = reason;
          break;
        }
        const retryAfter = s === 503 ? leadingInt(r.msg.getHeader('retry-after'), MAX_RETRY_AFTER_S) : undefined;
        return { kind: 'failed', error: reason, ...(retryAfter !== undefined && retryAfter > 0 ? { retryAfterS: retryAfter } : {}) };
      }
    }
    return { kind: 'failed', error: lastError };
  }

  #answer(res: ParsedResponse): string | undefined {
    const creds = this.#opts.credentials;
    return creds ? authorizationFor(res, creds, { method: 'REGISTER', uri: this.#ruri() }) : undefined;
  }

  #ruri(): string {
    return targetUri(this.#opts.trunk.target);
  }

  /** Sends one REGISTER in a new client transaction and waits for its final response or failure. */
  #send(flow: Flow, expires: number, auth: string | undefined): Promise<Exchange> {
    const branch = newBranch();
    const text = buildRequest({
      method: 'REGISTER',
      ruri: this.#ruri(),
      via: this.#ctx.via(flow, branch),
      routes: trunkRoutes(this.#opts.trunk),
      from: `<${this.#aor}>;tag=${this.#fromTag}`,
      to: `<${this.#aor}>`,
      callId: this.#callId,
      cseq: ++this.#cseq,
      contact: this.#ctx.contact(flow, this.#opts.username),
      headers: [`Expires: ${expires}`, ...(auth ? [auth] : [])],
    });
    return new Promise<Exchange>((resolve) => {
      const txn = this.#ctx.sendRequest(flow, 'REGISTER', branch, text);
      const settle = (r: Exchange) => {
        if (this.#pending?.txn === txn) this.#pending = undefined;
        txn.removeAllListeners('response').removeAllListeners('timeout').removeAllListeners('transportError');
        resolve(r);
      };
      this.#pending = { txn, settle };
      txn.on('response', (res) => {
        if (res.status >= 200) settle(res);
      });
      txn.on('timeout', () => settle({ error: `no response from ${flow.transport}:${flow.remote.address}:${flow.remote.port}`, transport: false }));
      txn.on('transportError', (err) => settle({ error: err.message, transport: true }));
      txn.start();
    });
  }

  /** Ends the REGISTER in flight; its attempt sees `error` (stale attempts just drop it). */
  #abortPending(error = 'aborted', transport = false): void {
    const p = this.#pending;
    if (!p) return;
    this.#pending = undefined;
    p.txn.terminate();
    p.settle({ error, transport });
  }

  #useFlow(flow: Flow): void {
    if (this.#flow?.id === flow.id) return;
    if (this.#flow?.reliable) this.#ctx.unbindFlow(this.#flow, this);
    this.#flow = flow;
    if (flow.reliable) this.#ctx.bindFlow(flow, this);
  }

  /** Our TCP/TLS connection to the registrar closed: the binding's Contact is dead, register again at once. */
  onFlowClosed(): void {
    const flow = this.#flow;
    this.#flow = undefined;
    const lost = `connection ${flow?.id ?? ''} closed`;
    // A REGISTER in flight on it will never be answered: that attempt fails as a transport error
    // (next destination, else the usual backoff).
    if (this.#pending) return this.#abortPending(lost, true);
    if (this.#stopping || this.#disposed) return;
    this.#generation++;
    this.#lastError = lost;
    // The first drop re-registers at once. A registrar that drops every connection right after
    // answering must not get a REGISTER loop: further drops with no refresh in between back off.
    this.#drops++;
    if (this.#drops <= 1) {
      this.#log.info({ flow: flow?.id }, 'connection to the registrar closed, registering again');
      this.#schedule(0);
      this.#setState('registering');
      return;
    }
    this.#failures++;
    const delay = backoffDelayMs(this.#drops - 1, this.#opts.retryBaseMs ?? DEFAULT_RETRY_BASE_MS, this.#opts.retryMaxMs ?? DEFAULT_RETRY_MAX_MS);
    this.#log.info({ flow: flow?.id, delay }, 'connection to the registrar closed again, backing off');
    this.#schedule(delay);
    this.#setState('failed');
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#nextAttemptAt = undefined;
    const mayBeBound = this.#pending !== undefined || (this.#expiresAt ?? 0) > Date.now();
    const gen = ++this.#generation;
    this.#abortPending();
    if (mayBeBound && !this.#disposed) {
      this.#setState('unregistering');
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<Outcome>((resolve) => {
        timer = setTimeout(() => resolve({ kind: 'failed', error: 'no answer to the un-REGISTER in time' }), this.#opts.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
      });
      const outcome = await Promise.race([this.#exchange(0, gen).catch((err: Error): Outcome => ({ kind: 'failed', error: err.message })), timeout]);
      clearTimeout(timer);
      if (outcome.kind === 'failed') {
        this.#lastError = outcome.error;
        this.#log.warn({ err: outcome.error }, 'un-REGISTER failed');
      }
      this.#generation++;
      this.#abortPending();
    }
    this.#teardown();
  }

  /** The stack is closing: no more I/O, just let go of everything. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#generation++;
    clearTimeout(this.#timer);
    this.#abortPending();
    this.#teardown();
  }

  #teardown(): void {
    if (this.#tornDown) return;
    this.#tornDown = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#nextAttemptAt = undefined;
    this.#expiresAt = undefined;
    if (this.#flow?.reliable) this.#ctx.unbindFlow(this.#flow, this);
    this.#flow = undefined;
    if (this.#state !== 'stopped') this.#setState('stopped');
    this.removeAllListeners('state');
    this.#onDone();
  }
}
