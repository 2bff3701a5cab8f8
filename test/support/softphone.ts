/**
 * A browser softphone stand-in for integration tests: a SIP.js UserAgent over WebSocket, running in
 * Node, whose media is a werift PeerConnection (see werift-sdh.ts). Promise-based; every wait is
 * bounded and rejects with an Error that says what was missing.
 *
 *   const phone = await Softphone.connect({ server: 'ws://127.0.0.1:PORT/ws', user: 'alice', domain: '127.0.0.1', password: 'secret' });
 *   const call = phone.call('sip:1000@127.0.0.1');
 *   await call.established;
 *   await call.startSendingPcmu({ count: 50 });
 *   await call.hangup();
 *
 *   await phone.register({ expires: 60 });
 *   const incoming = await phone.nextIncoming(10_000);
 *   await incoming.ringing();
 *   await incoming.answer();
 *   await incoming.waitForRtp(10, 5000);
 *   await phone.close(); // hangs up, unregisters, closes every PeerConnection
 */
import { WebSocket, type ClientOptions } from 'ws';
import tls from 'node:tls';
import {
  type Invitation,
  Inviter,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
  type Cancel,
  type Core,
  type Emitter,
  type LogConnector,
  type RegistererOptions,
  type RegistererRegisterOptions,
  type Session,
  type SessionDelegate,
} from 'sip.js';
import type { RTCPeerConnection } from 'werift';
import { answerChallenge } from '../../sip/digest.js';
import {
  InvalidStateError,
  WeriftSessionDescriptionHandler,
  createWeriftSdhFactory,
  toError,
  waitWithDeadline,
  type AudioCodec,
  type WeriftSdhOptions,
} from './werift-sdh.js';

export interface SoftphoneOptions {
  /** WebSocket URL of the gateway, e.g. `ws://127.0.0.1:8080/ws`. */
  readonly server: string;
  readonly user: string;
  readonly domain: string;
  /** Digest credentials: SIP.js answers 401 (REGISTER) and 407 (INVITE) challenges with them. */
  readonly password?: string;
  /** Digest username when it differs from `user`. */
  readonly authorizationUser?: string;
  /**
   * Also answer `algorithm=SHA-256` challenges (with sip/digest.ts). SIP.js 0.21 itself refuses
   * anything but MD5, as browsers running it do. Either way SIP.js keeps only the LAST
   * WWW-/Proxy-Authenticate header of a 401/407, so the server's order decides.
   */
  readonly sha256Digest?: boolean;
  /**
   * RFC 5626 instance ID (a UUID, with or without `urn:uuid:`). When set, REGISTER's Contact carries
   * `;reg-id=1;+sip.instance="<urn:uuid:...>"`; without it SIP.js sends neither.
   */
  readonly instanceId?: string;
  readonly displayName?: string;
  /** Codecs offered by every call (see werift-sdh.ts for the default, Chrome's order). */
  readonly codecs?: readonly AudioCodec[];
  /** Leave each call's PeerConnection open after SIP teardown; phone.close() still closes it. */
  readonly keepPeerConnectionOnClose?: boolean;
  /** Bound on the WebSocket connection. Default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** wss:// only: a CA (PEM) to trust besides Node's bundled roots, as a browser trusting a private CA would. */
  readonly tlsCa?: string | Buffer;
  /** Bound on each teardown step in close() and hangup(). Default 5000 ms. */
  readonly teardownTimeoutMs?: number;
  /** Receives every SIP.js log line (with traceSip, every SIP message). Warnings and errors also go to `sipErrors`. */
  readonly log?: LogConnector;
  readonly traceSip?: boolean;
}

export interface CallOptions {
  readonly extraHeaders?: readonly string[];
  /** Override the phone's codecs for this call, e.g. `[OPUS]` to provoke "no common codec". */
  readonly codecs?: readonly AudioCodec[];
  readonly keepPeerConnectionOnClose?: boolean;
  /** Bound on `established` and `progress`. Default 15000 ms (below SIP Timer B, 32 s). */
  readonly establishTimeoutMs?: number;
}

export interface AnswerOptions {
  /** Codecs accepted for this call. Default: the phone's. */
  readonly codecs?: readonly AudioCodec[];
  readonly keepPeerConnectionOnClose?: boolean;
  readonly extraHeaders?: readonly string[];
  /** Bound on answering (building the answer and sending 200). Default 15000 ms. */
  readonly timeoutMs?: number;
}

/** A CANCEL received for an incoming call before it was answered. */
export interface CancelInfo {
  /** The first Reason header, raw, e.g. `SIP;cause=200;text="Call completed elsewhere"`. */
  readonly reason?: string;
  /** Every Reason header value (RFC 3326 allows one per protocol). */
  readonly reasons: readonly string[];
  /** cause and text of the first `SIP` Reason. */
  readonly cause?: number;
  readonly text?: string;
}

/** How a call ended; `terminated` resolves with it once the PeerConnection is closed too. */
export interface CallEnd {
  /** The far end ended the established call with BYE. */
  readonly byeReceived: boolean;
  readonly wasEstablished: boolean;
  /**
   * The INVITE's final non-2xx response, if there was one. Outgoing calls: the one received (487
   * after CANCEL, 408 on timeout). Incoming calls: what reject() or hangup() sent, or 487 after
   * CANCEL; not the 480 SIP.js sends itself when answering fails (see `error`) or after 60 s unanswered.
   */
  readonly statusCode?: number;
  readonly reasonPhrase?: string;
  /** Incoming calls: the caller cancelled before the call was answered. */
  readonly cancel?: CancelInfo;
  /** Why the INVITE could not be sent or answered (e.g. no offer), or the 200 to a BYE failed. */
  readonly error?: Error;
}

export interface HangupResult {
  /** What hangup() sent: nothing when the call had already ended; `reject` is 480 to an unanswered incoming call. */
  readonly method: 'BYE' | 'CANCEL' | 'reject' | 'none';
  /** The BYE's final response, the INVITE's after CANCEL (487, or undefined if a 2xx won the race), or the status we rejected with. */
  readonly statusCode?: number;
}

export interface RegisterOptions {
  /** Expires asked for. Default 600 (SIP.js's). SIP.js re-registers at 99 % of what the registrar grants. */
  readonly expires?: number;
  readonly extraHeaders?: readonly string[];
  /**
   * On 423 Interval Too Brief, let SIP.js re-send with the Min-Expires value (what a browser does)
   * instead of rejecting with the 423. Default false.
   */
  readonly followIntervalTooBrief?: boolean;
  /** Default 10000 ms (below Timer F, 32 s, after which SIP.js reports 408 itself). */
  readonly timeoutMs?: number;
}

/** A 2xx to REGISTER. */
export interface Registration {
  readonly statusCode: number;
  /** What the registrar granted our binding (its Contact `expires`, else the Expires header); 0 after unregister. */
  readonly expires: number;
  /** Our binding as the registrar listed it, if it did. */
  readonly contact?: string;
  /** Every Contact value of the 2xx: all current bindings of the address of record. */
  readonly contacts: readonly string[];
  /** Set when a 423 made SIP.js retry with this Min-Expires (`followIntervalTooBrief`). */
  readonly minExpires?: number;
  readonly response: Core.IncomingResponseMessage;
}

/** register()/unregister() reject with this on a final non-2xx response (or one SIP.js dropped). */
export class RegistrationError extends Error {
  override readonly name = 'RegistrationError';
  constructor(
    message: string,
    readonly statusCode: number | undefined,
    readonly reasonPhrase: string,
    readonly response?: Core.IncomingResponseMessage,
    readonly minExpires?: number,
  ) {
    super(message);
  }
}

/** `established` rejects with this on a final non-2xx response. */
export class CallRejectedError extends Error {
  override readonly name = 'CallRejectedError';
  constructor(
    readonly target: string,
    readonly statusCode: number,
    readonly reasonPhrase: string,
    detail = '',
  ) {
    super(`INVITE to ${target} rejected: ${statusCode} ${reasonPhrase}${detail}`);
  }
}

interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: Error): void;
  settled: boolean;
}

function deferred<T>(markHandled: boolean): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A test may never await e.g. `progress`; the rejection still reaches whoever does await it.
  if (markHandled) promise.catch(() => undefined);
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve: (value) => {
      if (d.settled) return;
      d.settled = true;
      resolve(value);
    },
    reject: (error) => {
      if (d.settled) return;
      d.settled = true;
      reject(error);
    },
  };
  return d;
}

/**
 * Per-URL `ws` client options (trusted CA for wss://). SIP.js calls `new WebSocket(url, 'sip')`
 * with no options, so the global below looks them up by URL.
 */
const wsClientOptions = new Map<string, ClientOptions>();

/** `ws`'s WebSocket with the options registered for its URL. */
class NodeWebSocket extends WebSocket {
  constructor(address: string | URL, protocols?: string | string[]) {
    super(address, protocols, wsClientOptions.get(String(address)));
  }
}

/** Node 20 has no global WebSocket, which SIP.js's transport needs (NOTES). */
function ensureWebSocketGlobal(): void {
  if (typeof globalThis.WebSocket === 'undefined' || (globalThis.WebSocket as unknown) === WebSocket) {
    globalThis.WebSocket = NodeWebSocket as unknown as typeof globalThis.WebSocket;
  }
}

export class Softphone {
  readonly userAgent: UserAgent;
  readonly options: SoftphoneOptions;
  readonly #calls = new Set<SoftphoneCall>();
  readonly #incomingCalls = new Set<IncomingCall>();
  /** Incoming calls nobody has taken with nextIncoming() yet, oldest first. */
  readonly #incomingQueue: IncomingCall[] = [];
  readonly #incomingWaiters = new Set<{ resolve(call: IncomingCall): void; reject(error: Error): void }>();
  readonly #handlers = new Set<WeriftSessionDescriptionHandler>();
  readonly #perSession = new WeakMap<Session, WeriftSdhOptions>();
  /** SIP.js warnings and errors, newest last, numbered so a call can pick out its own. */
  readonly #sipErrors: Array<{ readonly seq: number; readonly text: string }> = [];
  #sipErrorSeq = 0;
  #registerer: ObservedRegisterer | undefined;
  #closing: Promise<void> | undefined;
  #disconnectError: Error | undefined;

  /** Connects the UserAgent's WebSocket (subprotocol `sip`); does not REGISTER. */
  static async connect(options: SoftphoneOptions): Promise<Softphone> {
    ensureWebSocketGlobal();
    const phone = new Softphone(options);
    const timeoutMs = options.connectTimeoutMs ?? 5000;
    try {
      await waitWithDeadline<void>(
        timeoutMs,
        () => `WebSocket to ${options.server} not connected within ${timeoutMs} ms`,
        (resolve, reject) => {
          phone.userAgent.start().then(resolve, (error: unknown) => reject(toError(error)));
        },
      );
    } catch (error) {
      const closeError = await phone.close().then(() => undefined, toError);
      throw new Error(`Softphone ${options.user} could not connect to ${options.server}: ${toError(error).message}`, {
        cause: closeError ? new AggregateError([error, closeError]) : error,
      });
    }
    return phone;
  }

  private constructor(options: SoftphoneOptions) {
    if (!/^wss?:\/\//.test(options.server)) throw new TypeError(`server must be a ws:// or wss:// URL: ${options.server}`);
    if (options.tlsCa !== undefined) {
      if (!options.server.startsWith('wss://')) throw new TypeError('tlsCa needs a wss:// server');
      wsClientOptions.set(options.server, { ca: [...tls.rootCertificates, options.tlsCa.toString()] });
    }
    const uri = UserAgent.makeURI(`sip:${options.user}@${options.domain}`);
    if (!uri) throw new TypeError(`bad user/domain: ${options.user}@${options.domain}`);
    const instanceId = options.instanceId?.replace(/^urn:uuid:/i, '');
    if (instanceId !== undefined && !/^[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$/i.test(instanceId)) {
      throw new TypeError(`instanceId must be a UUID: ${options.instanceId}`);
    }
    this.options = { ...options, ...(instanceId !== undefined && { instanceId }) };
    const sdhDefaults: WeriftSdhOptions = {
      codecs: options.codecs,
      keepPeerConnectionOnClose: options.keepPeerConnectionOnClose,
    };
    const authorizationUsername = options.authorizationUser ?? options.user;
    this.userAgent = new UserAgent({
      uri,
      displayName: options.displayName,
      authorizationUsername: options.password === undefined ? undefined : authorizationUsername,
      authorizationPassword: options.password,
      instanceId,
      transportOptions: {
        server: options.server,
        connectionTimeout: Math.ceil((options.connectTimeoutMs ?? 5000) / 1000),
        traceSip: options.traceSip ?? false,
      },
      sessionDescriptionHandlerFactory: createWeriftSdhFactory(sdhDefaults, {
        perSession: (session) => this.#perSession.get(session),
        onCreated: (sdh) => this.#handlers.add(sdh),
      }),
      // Otherwise SIP.js sends 180 before a test sees the INVITE; tests decide with ringing().
      sendInitialProvisionalResponse: false,
      logBuiltinEnabled: false,
      logLevel: options.log ? 'debug' : 'warn',
      // SIP.js drops bad messages with only a log line (e.g. a 180 without Contact): keep those for error messages.
      logConnector: (level, category, label, content) => {
        if (level === 'error' || level === 'warn') this.#noteError(`${category}: ${content}`);
        options.log?.(level, category, label, content);
      },
      userAgentString: 'sip-webrtc-gateway test softphone',
      delegate: {
        onDisconnect: (error) => (this.#disconnectError = error),
        onInvite: (invitation) => this.#onInvite(invitation),
      },
    });
    if (options.sha256Digest && options.password !== undefined) {
      const { password } = options;
      // SIP.js offers no option for this; the core asks this factory for fresh credentials per request.
      this.userAgent.userAgentCore.configuration.authenticationFactory = () =>
        new Rfc7616Credentials(authorizationUsername, password) as unknown as Core.DigestAuthentication;
    }
  }

  /** Outgoing calls placed with call(). */
  get calls(): readonly SoftphoneCall[] {
    return [...this.#calls];
  }

  /** Every incoming call received, taken with nextIncoming() or not. */
  get incomingCalls(): readonly IncomingCall[] {
    return [...this.#incomingCalls];
  }

  /** The last 50 SIP.js warnings and errors. */
  get sipErrors(): readonly string[] {
    return this.#sipErrors.map((e) => e.text);
  }

  /** Set when the WebSocket dropped without us closing it. */
  get disconnectError(): Error | undefined {
    return this.#disconnectError;
  }

  /** SIP.js holds a registration (it refreshes it until unregister() or close()). */
  get registered(): boolean {
    return this.#registerer?.state === RegistererState.Registered;
  }

  /** The Contact URI SIP.js registers and answers INVITEs on, e.g. `sip:abcd1234@xyz.invalid;transport=ws`. */
  get contactUri(): string {
    return this.userAgent.contact.uri.toString();
  }

  /** Sends an INVITE now (the offer is gathered first); follow it through the returned call. */
  call(target: string, options: CallOptions = {}): SoftphoneCall {
    if (this.#closing) throw new InvalidStateError('Softphone is closed');
    const uri = UserAgent.makeURI(target);
    if (!uri) throw new TypeError(`bad target URI: ${target}`);
    const inviter = new Inviter(this.userAgent, uri, { extraHeaders: [...(options.extraHeaders ?? [])] });
    this.#setSdhOptions(inviter, options);
    const call = new SoftphoneCall(inviter, target, options, this.options.teardownTimeoutMs ?? 5000, this.#diagnostics());
    this.#calls.add(call);
    return call;
  }

  /**
   * Sends REGISTER (SIP.js Registerer; one per phone, so one Call-ID) and resolves on its 2xx, after
   * any digest challenge. Rejects with RegistrationError on a final non-2xx (401 again means the
   * credentials were refused), TimeoutError when unanswered, InvalidStateError while another
   * REGISTER is pending (RFC 3261 §10.2; this includes one that timed out here until SIP.js gives up, 32 s).
   */
  register(options: RegisterOptions = {}): Promise<Registration> {
    if (this.#closing) return Promise.reject(new InvalidStateError('Softphone is closed'));
    const expires = options.expires ?? 600;
    // SIP.js would silently turn 0 into its default 600: unregister() is the way to send 0.
    if (!Number.isInteger(expires) || expires < 1 || expires > 0x7fffffff) {
      return Promise.reject(new TypeError(`expires must be a positive integer, got ${expires}`));
    }
    const timeoutMs = options.timeoutMs ?? 10_000;
    const registerer = (this.#registerer ??= new ObservedRegisterer(this.userAgent, {
      expires,
      logConfiguration: false,
      ...(this.options.instanceId !== undefined && { instanceId: this.options.instanceId, regId: 1 }),
    }));
    if (registerer.pending) return Promise.reject(new InvalidStateError('a REGISTER is still pending'));
    registerer.setExpires(expires);
    const aor = `${this.options.user}@${this.options.domain}`;
    const diagnostics = this.#diagnostics();
    return waitWithDeadline<Registration>(
      timeoutMs,
      () => `REGISTER for ${aor} not answered within ${timeoutMs} ms (state ${registerer.state})${diagnostics()}`,
      (resolve, reject) => {
        let minExpires: number | undefined;
        const rejected = (response: Core.IncomingResponse): void => {
          const { statusCode, reasonPhrase = '' } = response.message;
          reject(
            new RegistrationError(
              `REGISTER for ${aor} rejected: ${statusCode} ${reasonPhrase}${diagnostics()}`,
              statusCode,
              reasonPhrase,
              response.message,
            ),
          );
        };
        registerer.observer = {
          onAccept: (response) => resolve(this.#registration(response.message, minExpires)),
          onReject: rejected,
          onRedirect: rejected,
          onIntervalTooBrief: (min) => {
            if (options.followIntervalTooBrief) {
              minExpires = min;
              return true;
            }
            const message = `REGISTER for ${aor} rejected: 423 Interval Too Brief (Min-Expires ${min})`;
            reject(new RegistrationError(message, 423, 'Interval Too Brief', undefined, min));
            return false;
          },
          onDropped: () =>
            reject(new RegistrationError(`SIP.js dropped the final response to REGISTER for ${aor}${diagnostics()}`, undefined, '')),
        };
        registerer
          .register({ requestOptions: { extraHeaders: [...(options.extraHeaders ?? [])] } })
          .catch((error: unknown) => reject(toError(error)));
        return () => (registerer.observer = undefined);
      },
    );
  }

  /** REGISTER with `expires=0` for our Contact (`all`: `Contact: *`); resolves on the 2xx. */
  unregister(options: { all?: boolean; timeoutMs?: number } = {}): Promise<Registration> {
    const registerer = this.#registerer;
    if (!registerer) return Promise.reject(new InvalidStateError('unregister() before register()'));
    if (registerer.pending) return Promise.reject(new InvalidStateError('a REGISTER is still pending'));
    const timeoutMs = options.timeoutMs ?? 10_000;
    const aor = `${this.options.user}@${this.options.domain}`;
    const diagnostics = this.#diagnostics();
    return waitWithDeadline<Registration>(
      timeoutMs,
      () => `un-REGISTER for ${aor} not answered within ${timeoutMs} ms${diagnostics()}`,
      (resolve, reject) => {
        const rejected = (response: Core.IncomingResponse): void => {
          const { statusCode, reasonPhrase = '' } = response.message;
          const message = `un-REGISTER for ${aor} rejected: ${statusCode} ${reasonPhrase}${diagnostics()}`;
          reject(new RegistrationError(message, statusCode, reasonPhrase, response.message));
        };
        registerer
          .unregister({
            all: options.all ?? false,
            requestDelegate: {
              onAccept: (response) => resolve(this.#registration(response.message, undefined)),
              onReject: rejected,
              onRedirect: rejected,
            },
          })
          .catch((error: unknown) => reject(toError(error)));
      },
    );
  }

  /** The next incoming call not yet taken (oldest first), waiting up to `timeoutMs` for an INVITE. */
  nextIncoming(timeoutMs = 10_000): Promise<IncomingCall> {
    if (this.#closing) return Promise.reject(new InvalidStateError('Softphone is closed'));
    const queued = this.#incomingQueue.shift();
    if (queued) return Promise.resolve(queued);
    return waitWithDeadline<IncomingCall>(
      timeoutMs,
      () =>
        `${this.options.user}: no INVITE within ${timeoutMs} ms (registered: ${this.registered}, ` +
        `connected: ${this.userAgent.isConnected()})`,
      (resolve, reject) => {
        const waiter = { resolve, reject };
        this.#incomingWaiters.add(waiter);
        return () => this.#incomingWaiters.delete(waiter);
      },
    );
  }

  /**
   * Hangs up every call (BYE, CANCEL, or 480 to unanswered incoming ones, so the gateway sees a
   * proper end), unregisters, stops the UserAgent and closes every PeerConnection, kept ones
   * included. Idempotent. Rejects with an AggregateError after the whole teardown if any step failed.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  #onInvite(invitation: Invitation): void {
    if (this.#closing) {
      invitation.reject({ statusCode: 480 }).catch((error: unknown) => this.#noteError(`softphone: ${toError(error).message}`));
      return;
    }
    const call = new IncomingCall(
      invitation,
      this.options.teardownTimeoutMs ?? 5000,
      this.#diagnostics(),
      (options) => this.#setSdhOptions(invitation, options),
    );
    this.#incomingCalls.add(call);
    const [waiter] = this.#incomingWaiters;
    if (waiter) {
      this.#incomingWaiters.delete(waiter);
      waiter.resolve(call);
    } else {
      this.#incomingQueue.push(call);
    }
  }

  #setSdhOptions(session: Session, options: { codecs?: readonly AudioCodec[]; keepPeerConnectionOnClose?: boolean }): void {
    this.#perSession.set(session, {
      ...(options.codecs && { codecs: options.codecs }),
      ...(options.keepPeerConnectionOnClose !== undefined && {
        keepPeerConnectionOnClose: options.keepPeerConnectionOnClose,
      }),
    });
  }

  #registration(response: Core.IncomingResponseMessage, minExpires: number | undefined): Registration {
    const contacts = response.getHeaders('contact');
    const header = response.getHeader('expires');
    let expires = 0;
    let contact: string | undefined;
    // Find our binding as SIP.js does with its random contact user; unlisted means not bound.
    const ours = this.userAgent.contact.uri.user;
    for (let i = 0; i < contacts.length; i++) {
      const parsed = response.parseHeader('contact', i) as Core.NameAddrHeader | undefined;
      if (!parsed || parsed.uri.user !== ours) continue;
      contact = contacts[i];
      expires = Number(parsed.getParam('expires') ?? header ?? 0);
      break;
    }
    return {
      statusCode: response.statusCode ?? 0,
      expires,
      contact,
      contacts,
      ...(minExpires !== undefined && { minExpires }),
      response,
    };
  }

  /** A function giving the SIP.js warnings logged since now, for error messages. */
  #diagnostics(): () => string {
    const since = this.#sipErrorSeq;
    return () => {
      const mine = this.#sipErrors.filter((e) => e.seq > since).slice(-3);
      return mine.length === 0 ? '' : `; SIP.js said: ${mine.map((e) => e.text).join(' | ')}`;
    };
  }

  #noteError(text: string): void {
    this.#sipErrors.push({ seq: ++this.#sipErrorSeq, text });
    if (this.#sipErrors.length > 50) this.#sipErrors.shift();
  }

  async #close(): Promise<void> {
    const timeoutMs = this.options.teardownTimeoutMs ?? 5000;
    const errors: Error[] = [];
    for (const waiter of this.#incomingWaiters) waiter.reject(new InvalidStateError('Softphone closed'));
    this.#incomingWaiters.clear();
    this.#incomingQueue.length = 0;
    const unregister = async (): Promise<void> => {
      const registerer = this.#registerer;
      if (!registerer || !this.userAgent.isConnected()) return;
      try {
        // A refresh in flight must finish before the un-REGISTER (one at a time). A register() of
        // a test still pending here has already failed for the test, or is racing close(): not waited for.
        if (registerer.refreshing) await registerer.whenSettled(timeoutMs);
        if (this.registered) await this.unregister({ timeoutMs });
      } catch (error) {
        errors.push(toError(error));
      }
    };
    await Promise.all([
      unregister(),
      ...[...this.#calls, ...this.#incomingCalls].map(async (call) => {
        try {
          await call.hangup();
          await call.waitTerminated(timeoutMs);
        } catch (error) {
          errors.push(toError(error));
        }
      }),
    ]);
    if (this.#registerer?.pending) {
      // A graceful stop waits, unbounded, for the REGISTER's final response (up to Timer F, 32 s).
      // Calls were hung up and the registration removed above: nothing graceful is left to do.
      this.#registerer.abandon();
      (this.userAgent as unknown as { options: { gracefulShutdown: boolean } }).options.gracefulShutdown = false;
    }
    try {
      await waitWithDeadline<void>(
        timeoutMs,
        () => `UserAgent.stop() did not finish within ${timeoutMs} ms`,
        (resolve, reject) => {
          this.userAgent.stop().then(resolve, (error: unknown) => reject(toError(error)));
        },
      );
    } catch (error) {
      errors.push(toError(error));
      // Drop the socket and the transactions' timers anyway.
      try {
        this.userAgent.userAgentCore.dispose();
        await this.userAgent.transport.dispose();
      } catch (disposeError) {
        errors.push(toError(disposeError));
      }
    }
    for (const sdh of this.#handlers) {
      try {
        await sdh.forceClose();
      } catch (error) {
        errors.push(toError(error));
      }
    }
    if (errors.length > 0) {
      const detail = errors.map((e) => e.message).join('; ');
      throw new AggregateError(errors, `Softphone ${this.options.user} closed with errors: ${detail}`);
    }
  }
}

interface RegistererInternals {
  waiting: boolean;
  readonly waitingChange: Emitter<boolean>;
  expires: number;
  waitingToggle(waiting: boolean): void;
  clearTimers(): void;
}

interface RegisterObserver {
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
class ObservedRegisterer extends Registerer {
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
class Rfc7616Credentials {
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

/**
 * What outgoing and incoming calls share: the SIP.js session's end, BYE in both directions, and
 * the media helpers. Subclasses supply what differs before the call is answered.
 */
export abstract class SoftphoneCallBase {
  /** The SIP.js session (an Inviter or an Invitation). */
  readonly session: Session;
  /**
   * Outgoing: resolves on 2xx, rejects with CallRejectedError on a final non-2xx. Incoming:
   * resolves once answered (200 sent), rejects if the call ends first.
   */
  readonly established: Promise<void>;
  /** Resolves when the session is Terminated and (unless kept) its PeerConnection closed. Never rejects. */
  readonly terminated: Promise<CallEnd>;
  /** `call to <target>` / `call from <uri>`, for messages. */
  protected readonly label: string;
  protected readonly diagnostics: () => string;
  protected readonly teardownTimeoutMs: number;
  readonly #established = deferred<void>(true);
  readonly #terminated = deferred<CallEnd>(false);
  #sdh: WeriftSessionDescriptionHandler | undefined;
  #byeReceived = false;
  #wasEstablished = false;
  /** First failure SIP.js could only report to a callback (offer or answer failed, 200 to BYE not sent). */
  #error: Error | undefined;
  #hangup: Promise<HangupResult> | undefined;

  protected constructor(
    session: Session,
    label: string,
    teardownTimeoutMs: number,
    diagnostics: () => string,
    delegate: SessionDelegate = {},
  ) {
    this.session = session;
    this.label = label;
    this.diagnostics = diagnostics;
    this.teardownTimeoutMs = teardownTimeoutMs;
    this.established = this.#established.promise;
    this.terminated = this.#terminated.promise;
    session.delegate = {
      ...delegate,
      onBye: (bye) => {
        this.#byeReceived = true;
        // Having a delegate means SIP.js leaves the 200 to us.
        bye.accept().catch((error: unknown) => this.recordError(error));
      },
      onSessionDescriptionHandler: (sdh, provisional) => {
        if (!provisional && sdh instanceof WeriftSessionDescriptionHandler) this.#sdh = sdh;
      },
    };
    const onState = (state: SessionState): void => {
      if (state === SessionState.Established) {
        this.#wasEstablished = true;
        this.onEstablished();
        this.#established.resolve();
      } else if (state === SessionState.Terminated) {
        session.stateChange.removeListener(onState);
        // SIP.js emits Terminated before it hands the final response to our request delegate and
        // before dispose() closes the handler; both happen synchronously right after.
        queueMicrotask(() => void this.#ended());
      }
    };
    session.stateChange.addListener(onState);
  }

  get state(): SessionState {
    return this.session.state;
  }

  /** The call's media handler: an outgoing call has one from the start, an incoming one once answered. */
  get sessionDescriptionHandler(): WeriftSessionDescriptionHandler {
    if (!this.#sdh) throw new InvalidStateError(`${this.label} has no session description handler yet`);
    return this.#sdh;
  }

  get peerConnection(): RTCPeerConnection {
    return this.sessionDescriptionHandler.peerConnection;
  }

  get rtpReceived(): number {
    return this.#sdh?.rtpReceived ?? 0;
  }

  waitForRtp(count: number, timeoutMs: number): Promise<void> {
    return this.sessionDescriptionHandler.waitForRtp(count, timeoutMs);
  }

  /**
   * Sends `count` 20 ms PCMU frames (160 bytes of 0xff, digital silence) on the negotiated PCMU
   * payload type, consecutive seq, timestamp +160 each; resolves after the last one. Waits for the
   * call to be established and the PeerConnection connected first.
   */
  async startSendingPcmu(options: { count?: number; intervalMs?: number; connectTimeoutMs?: number } = {}): Promise<void> {
    await this.established;
    const sdh = this.sessionDescriptionHandler;
    const payloadType = sdh.payloadTypeOf('audio/PCMU');
    if (payloadType === undefined) {
      const negotiated = sdh.negotiatedCodecs.map((c) => `${c.payloadType} ${c.mimeType}`).join(', ');
      throw new InvalidStateError(`PCMU was not negotiated (negotiated: ${negotiated})`);
    }
    await sdh.sendPacedRtp({
      payload: Buffer.alloc(160, 0xff),
      count: options.count ?? 150,
      intervalMs: options.intervalMs ?? 20,
      payloadType,
      connectTimeoutMs: options.connectTimeoutMs,
    });
  }

  /**
   * BYE when established (resolves with its final response), nothing once ended; before that,
   * CANCEL (outgoing) or 480 (incoming). Concurrent calls share one promise.
   */
  hangup(): Promise<HangupResult> {
    this.#hangup ??= this.#doHangup();
    return this.#hangup;
  }

  /** `terminated`, bounded. */
  waitTerminated(timeoutMs: number): Promise<CallEnd> {
    return waitWithDeadline<CallEnd>(
      timeoutMs,
      () => `${this.label} not terminated within ${timeoutMs} ms (state ${this.session.state})${this.diagnostics()}`,
      (resolve) => {
        void this.terminated.then(resolve);
      },
    );
  }

  protected get error(): Error | undefined {
    return this.#error;
  }

  /** Rejects `established` now (e.g. on a timeout), whatever happens to the session later. */
  protected failEstablishment(error: Error): void {
    this.#established.reject(error);
  }

  protected recordError(error: unknown): void {
    this.#error ??= toError(error);
  }

  /** hangup() before the call is established. */
  protected abstract hangupUnanswered(): Promise<HangupResult>;
  /** Why the call ended unanswered: `established` rejects with it. */
  protected abstract endReason(): Error;
  /** The subclass's part of CallEnd. */
  protected abstract endDetails(): Pick<CallEnd, 'statusCode' | 'reasonPhrase' | 'cancel'>;
  protected abstract onEstablished(): void;
  /** Runs once when the session is Terminated, before the PeerConnection is awaited. */
  protected abstract onTerminated(reason: Error): void;

  async #doHangup(): Promise<HangupResult> {
    const timeoutMs = this.teardownTimeoutMs;
    switch (this.session.state) {
      case SessionState.Initial:
      case SessionState.Establishing:
        return this.hangupUnanswered();
      case SessionState.Established: {
        const statusCode = await waitWithDeadline<number>(
          timeoutMs,
          () => `BYE for the ${this.label} not answered within ${timeoutMs} ms`,
          (resolve, reject) => {
            const answered = (response: Core.IncomingResponse): void => resolve(response.message.statusCode ?? 0);
            this.session
              .bye({ requestDelegate: { onAccept: answered, onReject: answered, onRedirect: answered } })
              .catch((error: unknown) => reject(toError(error)));
          },
        );
        return { method: 'BYE', statusCode };
      }
      default:
        return { method: 'none' };
    }
  }

  async #ended(): Promise<void> {
    const reason = this.endReason();
    this.#established.reject(reason);
    this.onTerminated(reason);
    // The handler was closed by SIP.js's dispose(); wait for pc.close() unless it is being kept.
    const sdh = this.#sdh;
    if (sdh && sdh.isPeerConnectionClosed) await sdh.whenClosed();
    const details = this.endDetails();
    this.#terminated.resolve({
      byeReceived: this.#byeReceived,
      wasEstablished: this.#wasEstablished,
      ...(details.statusCode !== undefined && { statusCode: details.statusCode, reasonPhrase: details.reasonPhrase }),
      ...(details.cancel && { cancel: details.cancel }),
      ...(this.#error && { error: this.#error }),
    });
  }
}

/** One outgoing call (a SIP.js Inviter) and its media. */
export class SoftphoneCall extends SoftphoneCallBase {
  readonly inviter: Inviter;
  readonly target: string;
  /** Status of the first provisional response above 100 (e.g. 180); rejects if the call ends or is answered first. */
  readonly progress: Promise<number>;
  readonly #progress = deferred<number>(true);
  readonly #establishTimer: NodeJS.Timeout;
  #gotProvisional = false;
  #final: { statusCode: number; reasonPhrase: string } | undefined;

  /** @internal Made by Softphone.call(). */
  constructor(
    inviter: Inviter,
    target: string,
    options: CallOptions,
    teardownTimeoutMs: number,
    diagnostics: () => string,
  ) {
    super(inviter, `call to ${target}`, teardownTimeoutMs, diagnostics);
    this.inviter = inviter;
    this.target = target;
    this.progress = this.#progress.promise;
    const establishTimeoutMs = options.establishTimeoutMs ?? 15_000;
    this.#establishTimer = setTimeout(() => {
      const error = new Error(
        `call to ${target} not established within ${establishTimeoutMs} ms (state ${inviter.state})${diagnostics()}`,
      );
      this.failEstablishment(error);
      this.#progress.reject(error);
    }, establishTimeoutMs);
    const recordFinal = (response: Core.IncomingResponse): void => {
      this.#final = { statusCode: response.message.statusCode ?? 0, reasonPhrase: response.message.reasonPhrase ?? '' };
    };
    inviter
      .invite({
        requestDelegate: {
          onProgress: (response) => {
            this.#gotProvisional = true;
            this.#progress.resolve(response.message.statusCode ?? 0);
          },
          onReject: recordFinal,
          onRedirect: recordFinal,
        },
      })
      .catch((error: unknown) => this.recordError(error));
  }

  protected override async hangupUnanswered(): Promise<HangupResult> {
    const hadProvisional = this.#gotProvisional;
    await this.inviter.cancel();
    try {
      const end = await this.waitTerminated(this.teardownTimeoutMs);
      return { method: 'CANCEL', statusCode: end.statusCode };
    } catch (error) {
      if (hadProvisional) throw error;
      // RFC 3261 §9.1: SIP.js holds the CANCEL back until a provisional response arrives.
      throw new Error(`${toError(error).message} (no provisional response yet, so no CANCEL was sent)`, { cause: error });
    }
  }

  protected override endReason(): Error {
    const final = this.#final;
    return final
      ? new CallRejectedError(this.target, final.statusCode, final.reasonPhrase, this.diagnostics())
      : new Error(
          `call to ${this.target} ended before it was established${this.error ? `: ${this.error.message}` : ''}` +
            this.diagnostics(),
        );
  }

  protected override endDetails(): Pick<CallEnd, 'statusCode' | 'reasonPhrase'> {
    return this.#final ?? {};
  }

  protected override onEstablished(): void {
    clearTimeout(this.#establishTimer);
    this.#progress.reject(new Error(`call to ${this.target} was answered before any provisional response`));
  }

  protected override onTerminated(reason: Error): void {
    clearTimeout(this.#establishTimer);
    this.#progress.reject(reason);
  }

}

/** One incoming call (a SIP.js Invitation): an INVITE from the gateway, normally with its WebRTC offer. */
export class IncomingCall extends SoftphoneCallBase {
  readonly invitation: Invitation;
  /** The From URI, e.g. `sip:+15551234@127.0.0.1`. */
  readonly from: string;
  readonly fromUser: string | undefined;
  readonly fromDisplayName: string | undefined;
  readonly to: string;
  /** The INVITE's Request-URI: our registered Contact, e.g. `sip:abcd1234@xyz.invalid;transport=ws`. */
  readonly requestUri: string;
  readonly callId: string;
  /**
   * Resolves when the caller CANCELs before the call is answered (SIP.js then sends 487 itself);
   * rejects once the call is answered or ends some other way. See waitCancelled().
   */
  readonly cancelled: Promise<CancelInfo>;
  readonly #cancelled = deferred<CancelInfo>(true);
  readonly #setSdhOptions: (options: AnswerOptions) => void;
  #cancel: CancelInfo | undefined;
  /** The final non-2xx we sent (reject(), 487 after CANCEL). */
  #finalSent: { statusCode: number; reasonPhrase?: string } | undefined;
  #answer: Promise<void> | undefined;

  /** @internal Made by the Softphone for each INVITE. */
  constructor(
    invitation: Invitation,
    teardownTimeoutMs: number,
    diagnostics: () => string,
    setSdhOptions: (options: AnswerOptions) => void,
  ) {
    const request = invitation.request;
    const from = request.from.uri.toString();
    super(invitation, `call from ${from}`, teardownTimeoutMs, diagnostics);
    this.invitation = invitation;
    this.from = from;
    this.fromUser = request.from.uri.user;
    this.fromDisplayName = request.from.displayName || undefined;
    this.to = request.to.uri.toString();
    this.requestUri = request.ruri?.toString() ?? '';
    this.callId = request.callId;
    this.cancelled = this.#cancelled.promise;
    this.#setSdhOptions = setSdhOptions;
    invitation.delegate = { ...invitation.delegate, onCancel: (cancel) => this.#onCancel(cancel) };
  }

  /** The offer in the INVITE, if it had one. */
  get sdpOffer(): string | undefined {
    return this.invitation.request.body || undefined;
  }

  /** Every value of an INVITE header (case-insensitive name). */
  headers(name: string): string[] {
    return this.invitation.request.getHeaders(name);
  }

  header(name: string): string | undefined {
    return this.invitation.request.getHeader(name);
  }

  /**
   * Sends 180 Ringing (or another 1xx without SDP). Nothing is sent automatically: the phone turns
   * off SIP.js's initial 180. Resolves once sent.
   */
  ringing(statusCode = 180): Promise<void> {
    if (!Number.isInteger(statusCode) || statusCode <= 100 || statusCode > 199 || statusCode === 183) {
      return Promise.reject(new TypeError(`ringing() sends 101-199 except 183 (early media), not ${statusCode}`));
    }
    if (this.invitation.state !== SessionState.Initial) {
      return Promise.reject(new InvalidStateError(`ringing() on the ${this.label} in state ${this.invitation.state}`));
    }
    const sent = this.invitation.progress({ statusCode });
    // Often called without await; a failure still reaches whoever awaits it.
    sent.catch(() => undefined);
    return sent;
  }

  /**
   * Accepts (SIP.js builds the answer with the werift handler and sends 200); resolves once the
   * session is Established. Rejects if the caller cancels meanwhile, the answer fails (SIP.js then
   * sends 480) or it takes longer than `timeoutMs`. Concurrent calls share one promise.
   */
  answer(options: AnswerOptions = {}): Promise<void> {
    this.#answer ??= this.#doAnswer(options);
    return this.#answer;
  }

  /** Sends a final non-2xx (default 486 Busy Here) before the call is answered. */
  async reject(statusCode = 486, options: { reasonPhrase?: string; extraHeaders?: readonly string[] } = {}): Promise<void> {
    if (!Number.isInteger(statusCode) || statusCode < 300 || statusCode > 699) {
      throw new TypeError(`reject() needs a 3xx-6xx status, not ${statusCode}`);
    }
    const state = this.invitation.state;
    if (state !== SessionState.Initial && state !== SessionState.Establishing) {
      const why = this.#cancel ? ' (the caller cancelled it)' : '';
      throw new InvalidStateError(`cannot reject the ${this.label} in state ${state}${why}`);
    }
    this.#finalSent = { statusCode, ...(options.reasonPhrase !== undefined && { reasonPhrase: options.reasonPhrase }) };
    await this.invitation.reject({
      statusCode,
      reasonPhrase: options.reasonPhrase,
      extraHeaders: [...(options.extraHeaders ?? [])],
    });
  }

  /** `cancelled`, bounded. */
  waitCancelled(timeoutMs: number): Promise<CancelInfo> {
    return waitWithDeadline<CancelInfo>(
      timeoutMs,
      () => `${this.label} not cancelled within ${timeoutMs} ms (state ${this.invitation.state})${this.diagnostics()}`,
      (resolve, reject) => {
        this.cancelled.then(resolve, reject);
      },
    );
  }

  protected override async hangupUnanswered(): Promise<HangupResult> {
    await this.reject(480);
    return { method: 'reject', statusCode: 480 };
  }

  protected override endReason(): Error {
    if (this.#cancel) {
      const reason = this.#cancel.reason === undefined ? '' : ` (Reason: ${this.#cancel.reason})`;
      return new Error(`${this.label} was cancelled by the caller${reason}`);
    }
    if (this.#finalSent) return new Error(`${this.label} was rejected with ${this.#finalSent.statusCode}`);
    return new Error(
      `${this.label} ended before it was answered${this.error ? `: ${this.error.message}` : ''}${this.diagnostics()}`,
    );
  }

  protected override endDetails(): Pick<CallEnd, 'statusCode' | 'reasonPhrase' | 'cancel'> {
    return { ...this.#finalSent, ...(this.#cancel && { cancel: this.#cancel }) };
  }

  protected override onEstablished(): void {
    this.#cancelled.reject(new Error(`${this.label} was answered before any CANCEL`));
  }

  protected override onTerminated(reason: Error): void {
    this.#cancelled.reject(reason);
  }

  async #doAnswer(options: AnswerOptions): Promise<void> {
    const state = this.invitation.state;
    if (state !== SessionState.Initial) {
      const why = this.#cancel ? ' (the caller cancelled it)' : this.#finalSent ? ` (rejected with ${this.#finalSent.statusCode})` : '';
      throw new InvalidStateError(`cannot answer the ${this.label} in state ${state}${why}`);
    }
    this.#setSdhOptions(options);
    const timeoutMs = options.timeoutMs ?? 15_000;
    await waitWithDeadline<void>(
      timeoutMs,
      () => `${this.label} not answered within ${timeoutMs} ms (state ${this.invitation.state})${this.diagnostics()}`,
      (resolve, reject) => {
        this.invitation
          .accept({ extraHeaders: [...(options.extraHeaders ?? [])] })
          .catch((error: unknown) => {
            this.recordError(error);
            throw error;
          })
          // After a CANCEL race SIP.js resolves accept() without establishing: `established` says why.
          .then(() => this.established)
          .then(resolve, (error: unknown) => reject(toError(error)));
      },
    );
  }

  #onCancel(cancel: Cancel): void {
    const reasons = cancel.request.getHeaders('reason');
    const sip = parseSipReason(reasons);
    this.#cancel = {
      reasons,
      ...(reasons[0] !== undefined && { reason: reasons[0] }),
      ...sip,
    };
    // SIP.js answers 487 right after this delegate returns.
    this.#finalSent = { statusCode: 487, reasonPhrase: 'Request Terminated' };
    this.#cancelled.resolve(this.#cancel);
  }
}

/** cause and text of the first RFC 3326 `SIP` reason among Reason header values. */
function parseSipReason(values: readonly string[]): { cause?: number; text?: string } {
  for (const value of values) {
    // protocol ; params, protocols separated by commas outside quoted text
    const match = /(?:^|,)\s*SIP\s*;((?:[^,"]|"(?:[^"\\]|\\.)*")*)/i.exec(value);
    if (!match) continue;
    const params = match[1] ?? '';
    const cause = /(?:^|;)\s*cause\s*=\s*(\d+)/i.exec(params)?.[1];
    const text = /(?:^|;)\s*text\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(params);
    return {
      ...(cause !== undefined && { cause: Number(cause) }),
      ...(text && { text: text[1] !== undefined ? text[1].replace(/\\(.)/g, '$1') : text[2] }),
    };
  }
  return {};
}
