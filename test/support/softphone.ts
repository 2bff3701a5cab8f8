/**
 * A browser softphone stand-in for integration tests: a SIP.js UserAgent over WebSocket, running in
 * Node, whose media is a werift PeerConnection (see werift-sdh.ts). Promise-based; every wait is
 * bounded and rejects with an Error that says what was missing.
 *
 *   const phone = await Softphone.connect({ server: 'ws://127.0.0.1:PORT/ws', user: 'alice', domain: '127.0.0.1' });
 *   const call = phone.call('sip:1000@127.0.0.1');
 *   await call.established;
 *   await call.startSendingPcmu({ count: 50 });
 *   await call.hangup();
 *   await phone.close();
 */
import { WebSocket } from 'ws';
import { Inviter, SessionState, UserAgent, type Core, type LogConnector, type Session } from 'sip.js';
import type { RTCPeerConnection } from 'werift';
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
  /** Digest credentials, if the gateway challenges. */
  readonly password?: string;
  readonly displayName?: string;
  /** Codecs offered by every call (see werift-sdh.ts for the default, Chrome's order). */
  readonly codecs?: readonly AudioCodec[];
  /** Leave each call's PeerConnection open after SIP teardown; phone.close() still closes it. */
  readonly keepPeerConnectionOnClose?: boolean;
  /** Bound on the WebSocket connection. Default 5000 ms. */
  readonly connectTimeoutMs?: number;
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

/** How a call ended; `terminated` resolves with it once the PeerConnection is closed too. */
export interface CallEnd {
  /** The far end ended the established call with BYE. */
  readonly byeReceived: boolean;
  readonly wasEstablished: boolean;
  /** Final non-2xx response to the INVITE (487 after CANCEL, 408 on timeout), if there was one. */
  readonly statusCode?: number;
  readonly reasonPhrase?: string;
  /** Why the INVITE could not be sent (e.g. no offer), or the 200 to a BYE failed. */
  readonly error?: Error;
}

export interface HangupResult {
  /** What hangup() sent: nothing when the call had already ended. */
  readonly method: 'BYE' | 'CANCEL' | 'none';
  /** The BYE's final response, or the INVITE's after CANCEL (487, or undefined if a 2xx won the race). */
  readonly statusCode?: number;
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

/** Node 20 has no global WebSocket, which SIP.js's transport needs (NOTES). */
function ensureWebSocketGlobal(): void {
  if (typeof globalThis.WebSocket === 'undefined') {
    globalThis.WebSocket = WebSocket as unknown as typeof globalThis.WebSocket;
  }
}

export class Softphone {
  readonly userAgent: UserAgent;
  readonly options: SoftphoneOptions;
  readonly #calls = new Set<SoftphoneCall>();
  readonly #handlers = new Set<WeriftSessionDescriptionHandler>();
  readonly #perSession = new WeakMap<Session, WeriftSdhOptions>();
  /** SIP.js warnings and errors, newest last, numbered so a call can pick out its own. */
  readonly #sipErrors: Array<{ readonly seq: number; readonly text: string }> = [];
  #sipErrorSeq = 0;
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
    const uri = UserAgent.makeURI(`sip:${options.user}@${options.domain}`);
    if (!uri) throw new TypeError(`bad user/domain: ${options.user}@${options.domain}`);
    this.options = options;
    const sdhDefaults: WeriftSdhOptions = {
      codecs: options.codecs,
      keepPeerConnectionOnClose: options.keepPeerConnectionOnClose,
    };
    this.userAgent = new UserAgent({
      uri,
      displayName: options.displayName,
      authorizationUsername: options.password === undefined ? undefined : options.user,
      authorizationPassword: options.password,
      transportOptions: {
        server: options.server,
        connectionTimeout: Math.ceil((options.connectTimeoutMs ?? 5000) / 1000),
        traceSip: options.traceSip ?? false,
      },
      sessionDescriptionHandlerFactory: createWeriftSdhFactory(sdhDefaults, {
        perSession: (session) => this.#perSession.get(session),
        onCreated: (sdh) => this.#handlers.add(sdh),
      }),
      logBuiltinEnabled: false,
      logLevel: options.log ? 'debug' : 'warn',
      // SIP.js drops bad messages with only a log line (e.g. a 180 without Contact): keep those for error messages.
      logConnector: (level, category, label, content) => {
        if (level === 'error' || level === 'warn') {
          this.#sipErrors.push({ seq: ++this.#sipErrorSeq, text: `${category}: ${content}` });
          if (this.#sipErrors.length > 50) this.#sipErrors.shift();
        }
        options.log?.(level, category, label, content);
      },
      userAgentString: 'sip-webrtc-gateway test softphone',
      delegate: { onDisconnect: (error) => (this.#disconnectError = error) },
    });
  }

  get calls(): readonly SoftphoneCall[] {
    return [...this.#calls];
  }

  /** The last 50 SIP.js warnings and errors. */
  get sipErrors(): readonly string[] {
    return this.#sipErrors.map((e) => e.text);
  }

  /** Set when the WebSocket dropped without us closing it. */
  get disconnectError(): Error | undefined {
    return this.#disconnectError;
  }

  /** Sends an INVITE now (the offer is gathered first); follow it through the returned call. */
  call(target: string, options: CallOptions = {}): SoftphoneCall {
    if (this.#closing) throw new InvalidStateError('Softphone is closed');
    const uri = UserAgent.makeURI(target);
    if (!uri) throw new TypeError(`bad target URI: ${target}`);
    const inviter = new Inviter(this.userAgent, uri, { extraHeaders: [...(options.extraHeaders ?? [])] });
    this.#perSession.set(inviter, {
      ...(options.codecs && { codecs: options.codecs }),
      ...(options.keepPeerConnectionOnClose !== undefined && {
        keepPeerConnectionOnClose: options.keepPeerConnectionOnClose,
      }),
    });
    const since = this.#sipErrorSeq;
    const diagnostics = (): string => {
      const mine = this.#sipErrors.filter((e) => e.seq > since).slice(-3);
      return mine.length === 0 ? '' : `; SIP.js said: ${mine.map((e) => e.text).join(' | ')}`;
    };
    const call = new SoftphoneCall(inviter, target, options, this.options.teardownTimeoutMs ?? 5000, diagnostics);
    this.#calls.add(call);
    return call;
  }

  /**
   * Hangs up every call (BYE or CANCEL, so the gateway sees a proper end), stops the UserAgent and
   * closes every PeerConnection, kept ones included. Idempotent. Rejects with an AggregateError
   * after the whole teardown if any step failed.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const timeoutMs = this.options.teardownTimeoutMs ?? 5000;
    const errors: Error[] = [];
    await Promise.all(
      [...this.#calls].map(async (call) => {
        try {
          await call.hangup();
          await call.waitTerminated(timeoutMs);
        } catch (error) {
          errors.push(toError(error));
        }
      }),
    );
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

/** One outgoing call (a SIP.js Inviter) and its media. */
export class SoftphoneCall {
  readonly inviter: Inviter;
  readonly target: string;
  /** Resolves on 2xx (session Established); rejects with CallRejectedError on a final non-2xx. */
  readonly established: Promise<void>;
  /** Status of the first provisional response above 100 (e.g. 180); rejects if the call ends or is answered first. */
  readonly progress: Promise<number>;
  /** Resolves when the session is Terminated and (unless kept) its PeerConnection closed. Never rejects. */
  readonly terminated: Promise<CallEnd>;
  readonly #established = deferred<void>(true);
  readonly #progress = deferred<number>(true);
  readonly #terminated = deferred<CallEnd>(false);
  readonly #teardownTimeoutMs: number;
  readonly #diagnostics: () => string;
  readonly #establishTimer: NodeJS.Timeout;
  #sdh: WeriftSessionDescriptionHandler | undefined;
  #byeReceived = false;
  #wasEstablished = false;
  #gotProvisional = false;
  #final: { statusCode: number; reasonPhrase: string } | undefined;
  /** First failure SIP.js could only report to a callback (offer failed, 200 to BYE not sent). */
  #error: Error | undefined;
  #hangup: Promise<HangupResult> | undefined;

  /** @internal Made by Softphone.call(). */
  constructor(
    inviter: Inviter,
    target: string,
    options: CallOptions,
    teardownTimeoutMs: number,
    diagnostics: () => string,
  ) {
    this.inviter = inviter;
    this.#diagnostics = diagnostics;
    this.target = target;
    this.established = this.#established.promise;
    this.progress = this.#progress.promise;
    this.terminated = this.#terminated.promise;
    this.#teardownTimeoutMs = teardownTimeoutMs;
    inviter.delegate = {
      onBye: (bye) => {
        this.#byeReceived = true;
        // Having a delegate means SIP.js leaves the 200 to us.
        bye.accept().catch((error: unknown) => (this.#error ??= toError(error)));
      },
      onSessionDescriptionHandler: (sdh, provisional) => {
        if (!provisional && sdh instanceof WeriftSessionDescriptionHandler) this.#sdh = sdh;
      },
    };
    const onState = (state: SessionState): void => {
      if (state === SessionState.Established) {
        this.#wasEstablished = true;
        clearTimeout(this.#establishTimer);
        this.#established.resolve();
        this.#progress.reject(new Error(`call to ${target} was answered before any provisional response`));
      } else if (state === SessionState.Terminated) {
        inviter.stateChange.removeListener(onState);
        // SIP.js emits Terminated before it hands the final response to our request delegate and
        // before dispose() closes the handler; both happen synchronously right after.
        queueMicrotask(() => void this.#ended());
      }
    };
    inviter.stateChange.addListener(onState);
    const establishTimeoutMs = options.establishTimeoutMs ?? 15_000;
    this.#establishTimer = setTimeout(() => {
      const error = new Error(
        `call to ${target} not established within ${establishTimeoutMs} ms (state ${inviter.state})${diagnostics()}`,
      );
      this.#established.reject(error);
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
      .catch((error: unknown) => (this.#error ??= toError(error)));
  }

  get state(): SessionState {
    return this.inviter.state;
  }

  /** The call's media handler; exists from the moment the call is placed. */
  get sessionDescriptionHandler(): WeriftSessionDescriptionHandler {
    if (!this.#sdh) throw new InvalidStateError(`call to ${this.target} has no session description handler yet`);
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
   * BYE when established (resolves with its final response), CANCEL before (resolves once the
   * INVITE is finished, normally 487), nothing once ended. Concurrent calls share one promise.
   */
  hangup(): Promise<HangupResult> {
    this.#hangup ??= this.#doHangup();
    return this.#hangup;
  }

  /** `terminated`, bounded. */
  waitTerminated(timeoutMs: number): Promise<CallEnd> {
    return waitWithDeadline<CallEnd>(
      timeoutMs,
      () => `call to ${this.target} not terminated within ${timeoutMs} ms (state ${this.inviter.state})${this.#diagnostics()}`,
      (resolve) => {
        void this.terminated.then(resolve);
      },
    );
  }

  async #doHangup(): Promise<HangupResult> {
    const timeoutMs = this.#teardownTimeoutMs;
    switch (this.inviter.state) {
      case SessionState.Initial:
      case SessionState.Establishing: {
        const hadProvisional = this.#gotProvisional;
        await this.inviter.cancel();
        try {
          const end = await this.waitTerminated(timeoutMs);
          return { method: 'CANCEL', statusCode: end.statusCode };
        } catch (error) {
          if (hadProvisional) throw error;
          // RFC 3261 §9.1: SIP.js holds the CANCEL back until a provisional response arrives.
          throw new Error(`${toError(error).message} (no provisional response yet, so no CANCEL was sent)`, { cause: error });
        }
      }
      case SessionState.Established: {
        const statusCode = await waitWithDeadline<number>(
          timeoutMs,
          () => `BYE for the call to ${this.target} not answered within ${timeoutMs} ms`,
          (resolve, reject) => {
            const answered = (response: Core.IncomingResponse): void => resolve(response.message.statusCode ?? 0);
            this.inviter
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
    clearTimeout(this.#establishTimer);
    const final = this.#final;
    const reason = final
      ? new CallRejectedError(this.target, final.statusCode, final.reasonPhrase, this.#diagnostics())
      : new Error(
          `call to ${this.target} ended before it was established${this.#error ? `: ${this.#error.message}` : ''}` +
            this.#diagnostics(),
        );
    this.#established.reject(reason);
    this.#progress.reject(reason);
    // The handler was closed by SIP.js's dispose(); wait for pc.close() unless it is being kept.
    const sdh = this.#sdh;
    if (sdh && sdh.isPeerConnectionClosed) await sdh.whenClosed();
    this.#terminated.resolve({
      byeReceived: this.#byeReceived,
      wasEstablished: this.#wasEstablished,
      ...(final && { statusCode: final.statusCode, reasonPhrase: final.reasonPhrase }),
      ...(this.#error && { error: this.#error }),
    });
  }
}
