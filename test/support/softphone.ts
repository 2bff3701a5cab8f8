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
  RegistererState,
  UserAgent,
  type Core,
  type LogConnector,
  type Session,
} from 'sip.js';
import {
  InvalidStateError,
  WeriftSessionDescriptionHandler,
  createWeriftSdhFactory,
  toError,
  waitWithDeadline,
  type AudioCodec,
  type WeriftSdhOptions,
} from './werift-sdh.js';
import { ObservedRegisterer, Rfc7616Credentials } from './softphone-register.js';
import { IncomingCall, SoftphoneCall, type CallOptions } from './softphone-call.js';

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
    const inviter = new Inviter(this.userAgent, uri, { extraHeaders: [...(options.extraHeaders ?? [])], ...(options.earlyMedia ? { earlyMedia: true } : {}) });
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

export { SoftphoneCall, IncomingCall, SoftphoneCallBase, CallRejectedError } from './softphone-call.js';
export type { CallOptions, AnswerOptions, CancelInfo, CallEnd, HangupResult } from './softphone-call.js';
