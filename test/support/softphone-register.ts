/** SIP.js registration internals for the test softphone: a Registerer that reports every REGISTER's outcome, and RFC 7616 digest. */
import { Registerer, RegistererState, type Core, type Emitter, type RegistererOptions, type RegistererRegisterOptions, type UserAgent } from 'sip.js';
import { answerChallenge } from '../../sip/digest.js';
import { InvalidStateError, waitWithDeadline } from './werift-sdh.js';

export interface RegistererInternals {
  waiting: boolean;
  readonly waitingChange: Emitter<boolean>;
  expires: number;
  waitingToggle(waiting: boolean): void;
  clearTimers(): void;
}

export interface RegisterObserver {
  onAccept(response: Core.IncomingResponse): void;
  onReject(response: Core.IncomingResponse): void;
  onRedirect(response: Core.IncomingResponse): void;
  /** A 423 made SIP.js re-REGISTER with Min-Expires `minExpires`; return false to stop that. */
  onIntervalTooBrief(minExpires: number): boolean;
  /** SIP.js ended the attempt without telling any delegate (e.g. a 200 without our Contact, a 423 without Min-Expires). */
  onDropped(): void;
}

/**
 * A Registerer that reports the outcome of every REGISTER it sends. SIP.js re-sends by calling
 * `this.register()` with no delegate (refreshes, and the retry after a 423, whose 423 it never
 * reports), so the override is the one place that sees them all.
 */
export class ObservedRegisterer extends Registerer {
  observer: RegisterObserver | undefined;
  /** A REGISTER of ours has no final response yet. */
  #open = false;
  /** The open REGISTER is SIP.js's own refresh. */
  #refreshing = false;

  constructor(userAgent: UserAgent, options: RegistererOptions) {
    super(userAgent, options);
    // SIP.js moves state, then calls the delegate, then clears `waiting`; so an attempt still open
    // a microtask after `waiting` cleared got no delegate call. Its 423 retry sets `waiting` again at once.
    this.#internals.waitingChange.addListener((waiting) => {
      if (waiting) return;
      queueMicrotask(() => {
        if (this.#open && !this.pending) this.#dropped();
      });
    });
    // After a 2xx without any Contact SIP.js goes Unregistered with no contacts and never clears
    // `waiting`. (Unregistered with contacts is the expiry timer, which may fire during a refresh.)
    this.stateChange.addListener((state) => {
      if (state !== RegistererState.Unregistered) return;
      queueMicrotask(() => {
        if (this.#open && this.contacts.length === 0) this.#dropped();
      });
    });
  }

  #dropped(): void {
    this.#open = false;
    // Left set, every later REGISTER (and a graceful UserAgent.stop()) would wait forever.
    if (this.pending) this.#internals.waitingToggle(false);
    this.observer?.onDropped();
  }

  /** A REGISTER awaits its final response (SIP.js allows one at a time). */
  get pending(): boolean {
    return this.#internals.waiting;
  }

  get refreshing(): boolean {
    return this.#open && this.#refreshing;
  }

  /** Resolves once no REGISTER is pending. */
  whenSettled(timeoutMs: number): Promise<void> {
    return waitWithDeadline<void>(
      timeoutMs,
      () => `REGISTER refresh not answered within ${timeoutMs} ms`,
      (resolve) => {
        const check = (): void => {
          if (!this.pending) resolve();
        };
        this.#internals.waitingChange.addListener(check);
        check();
        return () => this.#internals.waitingChange.removeListener(check);
      },
    );
  }

  /** SIP.js reads the expires it asks for from a private field set once in its constructor. */
  setExpires(expires: number): void {
    this.#internals.expires = expires;
  }

  /** Forgets a REGISTER still in flight and stops the refresh timers, for a stop that will not wait for it. */
  abandon(): void {
    this.#open = false;
    this.observer = undefined;
    this.#internals.clearTimers();
  }

  /** Members SIP.js's typings mark private. */
  get #internals(): RegistererInternals {
    return this as unknown as RegistererInternals;
  }

  override register(options: RegistererRegisterOptions = {}): Promise<Core.OutgoingRegisterRequest> {
    if (this.#open) {
      // Only SIP.js's 423 handler re-enters while our request is open; it has set the new expires.
      const minExpires = this.#internals.expires;
      if (this.observer && !this.observer.onIntervalTooBrief(minExpires)) {
        this.#open = false;
        // SIP.js ignores this promise; rejecting would be an unhandled rejection.
        return new Promise<Core.OutgoingRegisterRequest>(() => undefined);
      }
    }
    // The refresh timer and the 423 retry call with no options; Softphone.register() sets an observer first.
    if (!this.#open) this.#refreshing = this.observer === undefined;
    this.#open = true;
    const theirs = options.requestDelegate;
    const settle = (): void => {
      this.#open = false;
    };
    return super.register({
      ...options,
      requestDelegate: {
        ...theirs,
        onAccept: (response) => {
          settle();
          theirs?.onAccept?.(response);
          this.observer?.onAccept(response);
        },
        onReject: (response) => {
          settle();
          theirs?.onReject?.(response);
          this.observer?.onReject(response);
        },
        onRedirect: (response) => {
          settle();
          theirs?.onRedirect?.(response);
          this.observer?.onRedirect(response);
        },
      },
    });
  }
}

/**
 * Digest credentials for SIP.js's core answering MD5 or SHA-256 (RFC 7616, qop=auth) with
 * sip/digest.ts. SIP.js hands over the first challenge, already parsed.
 */
export class Rfc7616Credentials {
  #header: string | undefined;

  constructor(
    readonly username: string,
    readonly password: string,
  ) {}

  authenticate(
    request: { method: string; ruri: { toString(): string } },
    challenge: { algorithm?: string; realm?: string; nonce?: string; opaque?: string; qop?: readonly string[] },
  ): boolean {
    const { algorithm = 'MD5', realm, nonce, opaque, qop } = challenge;
    if (realm === undefined || nonce === undefined) return false;
    if (qop && !qop.includes('auth')) return false;
    const quote = (value: string): string => `"${value.replace(/[\\"]/g, '\\$&')}"`;
    const parts = [`realm=${quote(realm)}`, `nonce=${quote(nonce)}`, `algorithm=${algorithm}`];
    if (qop) parts.push('qop="auth"');
    if (opaque !== undefined) parts.push(`opaque=${quote(opaque)}`);
    const answer = answerChallenge(
      `Digest ${parts.join(', ')}`,
      { username: this.username, password: this.password },
      { method: request.method, uri: request.ruri.toString() },
    );
    this.#header = answer?.header;
    return answer !== undefined;
  }

  toString(): string {
    if (this.#header === undefined) throw new InvalidStateError('no digest challenge answered yet');
    return this.#header;
  }
}
