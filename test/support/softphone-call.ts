/** The test softphone's calls: outgoing (SoftphoneCall) and incoming (IncomingCall), on one base. */
import { type Invitation, Inviter, SessionState, type Cancel, type Core, type Session, type SessionDelegate } from 'sip.js';
import type { RTCPeerConnection } from 'werift';
import { InvalidStateError, WeriftSessionDescriptionHandler, toError, waitWithDeadline, type AudioCodec } from './werift-sdh.js';

export interface CallOptions {
  readonly extraHeaders?: readonly string[];
  /** Override the phone's codecs for this call, e.g. `[OPUS]` to provoke "no common codec". */
  readonly codecs?: readonly AudioCodec[];
  readonly keepPeerConnectionOnClose?: boolean;
  /** Bound on `established` and `progress`. Default 15000 ms (below SIP Timer B, 32 s). */
  readonly establishTimeoutMs?: number;
  /** SIP.js `earlyMedia`: apply the SDP answer of a 183 and play its media before the 200. */
  readonly earlyMedia?: boolean;
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
