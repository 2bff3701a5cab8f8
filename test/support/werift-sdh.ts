/**
 * Browser stand-in for integration tests: a SIP.js SessionDescriptionHandler backed by a werift
 * RTCPeerConnection that behaves like a browser does towards the gateway: full ICE (controlling
 * when it offers), DTLS-SRTP, one sendrecv audio m-line, no trickle. It only ever uses 127.0.0.1.
 */
import { randomInt } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  MediaStreamTrack,
  RTCPeerConnection,
  RTCRtpCodecParameters,
  RtpHeader,
  RtpPacket,
  type RTCDtlsTransport,
  type RTCRtpTransceiver,
} from 'werift';
import type {
  BodyAndContentType,
  Session,
  SessionDescriptionHandler,
  SessionDescriptionHandlerFactory,
  SessionDescriptionHandlerModifier,
  SessionDescriptionHandlerOptions,
} from 'sip.js';
import {
  type AudioCodec,
  type ConnectionStates,
  DEFAULT_AUDIO_CODECS,
  InvalidStateError,
  parseSdhOptions,
  type SendPacedRtpOptions,
  type SendRtpOptions,
  TELEPHONE_EVENT,
  toError,
  validateCodecs,
  waitWithDeadline,
  type WeriftSdhOptions,
} from './werift-sdh-options.js';

export {
  type AudioCodec,
  type ConnectionStates,
  DEFAULT_AUDIO_CODECS,
  type IceConnectionState,
  InvalidStateError,
  OPUS,
  PCMA,
  PCMU,
  type PeerConnectionState,
  type SendPacedRtpOptions,
  type SendRtpOptions,
  TELEPHONE_EVENT,
  TimeoutError,
  toError,
  waitWithDeadline,
  type WeriftSdhOptions,
} from './werift-sdh-options.js';

const live = new Set<WeriftSessionDescriptionHandler>();

/** Handlers whose PeerConnection is not yet closed: tests assert this is empty in `afterEach`. */
export function liveSessionDescriptionHandlers(): ReadonlySet<WeriftSessionDescriptionHandler> {
  return live;
}

const DTMF_EVENTS = '0123456789*#ABCD';

export class WeriftSessionDescriptionHandler implements SessionDescriptionHandler {
  readonly peerConnection: RTCPeerConnection;
  readonly transceiver: RTCRtpTransceiver;
  readonly #keepPeerConnectionOnClose: boolean;
  readonly #operationTimeoutMs: number;
  readonly #localTrack = new MediaStreamTrack({ kind: 'audio' });
  readonly #disposers: Array<() => void> = [];
  /** Rejecters of every pending wait, sleep and operation; teardown calls them all. */
  readonly #pending = new Set<(error: Error) => void>();
  /** Rejecters of pending offer/answer operations only; close() calls them (media waits may outlive it). */
  readonly #pendingOperations = new Set<(error: Error) => void>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #rtpWaiters = new Set<() => void>();
  readonly #stateWaiters = new Set<() => void>();
  readonly #subscribedTracks = new Set<MediaStreamTrack>();
  readonly #subscribedTransports = new Set<RTCDtlsTransport>();
  readonly #receivedByPayloadType = new Map<number, number>();
  #sipClosed = false;
  #teardown: Promise<Error | undefined> | undefined;
  #rtpReceived = 0;
  #rtpAtTransport = 0;
  #rtpSent = 0;
  #lastBackgroundError: Error | undefined;
  readonly #closed: Promise<void>;
  readonly #resolveClosed: () => void;
  #sequenceNumber = randomInt(0, 0x1_0000);
  #timestamp = randomInt(0, 0x1_0000_0000);

  constructor(options: WeriftSdhOptions = {}) {
    const codecs = validateCodecs(options.codecs ?? DEFAULT_AUDIO_CODECS);
    let resolveClosed!: () => void;
    this.#closed = new Promise<void>((resolve) => (resolveClosed = resolve));
    this.#resolveClosed = resolveClosed;
    this.#keepPeerConnectionOnClose = options.keepPeerConnectionOnClose ?? false;
    this.#operationTimeoutMs = options.operationTimeoutMs ?? 10_000;
    this.peerConnection = new RTCPeerConnection({
      iceServers: [],
      iceUseIpv4: false,
      iceUseIpv6: false,
      iceAdditionalHostAddresses: [options.hostAddress ?? '127.0.0.1'],
      codecs: { audio: codecs.map((codec) => new RTCRtpCodecParameters({ ...codec })), video: [] },
      headerExtensions: { audio: [], video: [] },
    });
    // A track on the sender gives the m-line an msid, as a browser's microphone track would.
    this.transceiver = this.peerConnection.addTransceiver(this.#localTrack, { direction: 'sendrecv' });
    const notifyStateWaiters = (): void => this.#stateWaiters.forEach((check) => check());
    this.#disposers.push(
      this.peerConnection.connectionStateChange.subscribe(notifyStateWaiters).unSubscribe,
      this.peerConnection.iceConnectionStateChange.subscribe(notifyStateWaiters).unSubscribe,
    );
    this.#subscribeRtp();
    live.add(this);
  }

  /** Packets delivered to the receiver's track: signalled SSRC and negotiated payload type. */
  get rtpReceived(): number {
    return this.#rtpReceived;
  }

  /** Every SRTP packet decrypted by the transport, including ones werift then drops (unsignalled SSRC, unknown PT). */
  get rtpReceivedAtTransport(): number {
    return this.#rtpAtTransport;
  }

  get rtpReceivedByPayloadType(): ReadonlyMap<number, number> {
    return this.#receivedByPayloadType;
  }

  /** The last failure of work started by sendDtmf(), which cannot report it. */
  get lastBackgroundError(): Error | undefined {
    return this.#lastBackgroundError;
  }

  get rtpSent(): number {
    return this.#rtpSent;
  }

  /** `close()` was called (by SIP.js): no more offer/answer; the PeerConnection may still run. */
  get isClosed(): boolean {
    return this.#sipClosed;
  }

  /** The PeerConnection has been (or is being) closed. */
  get isPeerConnectionClosed(): boolean {
    return this.#teardown !== undefined;
  }

  get connectionStates(): ConnectionStates {
    return {
      connectionState: this.peerConnection.connectionState,
      iceConnectionState: this.peerConnection.iceConnectionState,
    };
  }

  /** Codecs agreed in the last offer/answer, with the remote side's payload types; empty before. */
  get negotiatedCodecs(): readonly AudioCodec[] {
    if (!this.transceiver.sender.codec) return [];
    return this.transceiver.codecs.map((c) => ({
      mimeType: c.mimeType,
      clockRate: c.clockRate,
      channels: c.channels,
      payloadType: c.payloadType,
      parameters: c.parameters,
    }));
  }

  payloadTypeOf(mimeType: string): number | undefined {
    const wanted = mimeType.toLowerCase();
    return this.negotiatedCodecs.find((c) => c.mimeType.toLowerCase() === wanted)?.payloadType;
  }

  hasDescription(contentType: string): boolean {
    return contentType.split(';')[0]?.trim().toLowerCase() === 'application/sdp';
  }

  /**
   * Creates the offer, or the answer when a remote offer is set, and waits for gathering. SIP.js
   * modifiers edit the SDP that is sent, not what werift applied (werift rejects a munged offer).
   */
  getDescription(
    _options?: SessionDescriptionHandlerOptions,
    modifiers?: SessionDescriptionHandlerModifier[],
  ): Promise<BodyAndContentType> {
    return this.#operation('getDescription', async () => {
      const pc = this.peerConnection;
      const description = pc.signalingState === 'have-remote-offer' ? await pc.createAnswer() : await pc.createOffer();
      // werift falls back to stun.l.google.com:19302 when no STUN server is configured, even with
      // iceServers: [] (NOTES); a test browser must stay on 127.0.0.1 and not wait on a lookup.
      for (const iceTransport of pc.iceTransports) iceTransport.connection.stunServer = undefined;
      // Resolves once gathering has finished: the SDP carries every candidate (no trickle).
      await pc.setLocalDescription(description);
      if (pc.iceGatheringState !== 'complete') {
        throw new Error(`ICE gathering not complete after setLocalDescription (${pc.iceGatheringState})`);
      }
      const local = pc.localDescription;
      if (!local) throw new Error('werift produced no local description');
      const sdp = await applyModifiers(local.type, local.sdp, modifiers);
      return { body: sdp, contentType: 'application/sdp' };
    });
  }

  setDescription(
    sdp: string,
    _options?: SessionDescriptionHandlerOptions,
    modifiers?: SessionDescriptionHandlerModifier[],
  ): Promise<void> {
    if (typeof sdp !== 'string' || sdp.length === 0) {
      return Promise.reject(new TypeError('setDescription needs a non-empty SDP string'));
    }
    return this.#operation('setDescription', async () => {
      const pc = this.peerConnection;
      const type = pc.signalingState === 'have-local-offer' ? 'answer' : 'offer';
      const modified = await applyModifiers(type, sdp, modifiers);
      // Throws "negotiate codecs failed." when nothing is in common, as a browser rejects the answer.
      await pc.setRemoteDescription({ type, sdp: modified });
      // werift creates the receiving track (one per signalled SSRC) inside setRemoteDescription.
      this.#subscribeRtp();
    });
  }

  rollbackDescription(): Promise<void> {
    return this.#operation('rollbackDescription', async () => {
      const pc = this.peerConnection;
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
      else if (pc.signalingState === 'have-remote-offer') await pc.setRemoteDescription({ type: 'rollback' });
    });
  }

  /** RFC 4733 events on the negotiated telephone-event payload type; false if none or not connected. */
  sendDtmf(tones: string): boolean {
    if (this.isPeerConnectionClosed || this.payloadTypeOf(TELEPHONE_EVENT.mimeType) === undefined) return false;
    if (this.peerConnection.connectionState !== 'connected' || !isDtmf(tones)) return false;
    // The interface is synchronous: keep a late failure (closed or disconnected mid-way) for tests to read.
    this.sendDtmfRtp(tones).catch((error: unknown) => (this.#lastBackgroundError = toError(error)));
    return true;
  }

  /** Sends RFC 4733 events, one per tone; resolves after the last end packet. */
  async sendDtmfRtp(tones: string, options: { durationMs?: number; gapMs?: number } = {}): Promise<void> {
    if (!isDtmf(tones)) throw new TypeError(`not DTMF tones: ${JSON.stringify(tones)}`);
    const durationMs = options.durationMs ?? 100;
    const gapMs = options.gapMs ?? 50;
    const payloadType = this.payloadTypeOf(TELEPHONE_EVENT.mimeType);
    if (payloadType === undefined) throw new InvalidStateError('telephone-event was not negotiated');
    const clockRate = this.negotiatedCodecs.find((c) => c.payloadType === payloadType)?.clockRate ?? 8000;
    const step = clockRate / 50;
    const total = Math.max(step, Math.round((clockRate * durationMs) / 1000));
    for (const tone of tones.toUpperCase()) {
      const event = DTMF_EVENTS.indexOf(tone);
      const start = this.#timestamp;
      for (let duration = step; duration < total; duration += step) {
        await this.#sendEvent(payloadType, start, event, duration, false, duration === step);
        await this.#sleep(20);
      }
      for (let i = 0; i < 3; i++) await this.#sendEvent(payloadType, start, event, total, true, false);
      this.#timestamp = (start + total) >>> 0;
      await this.#sleep(gapMs);
    }
  }

  /**
   * Sends one RTP packet with this handler's own sequence number and timestamp (consecutive across
   * calls), on the sender's SSRC. The first negotiated codec goes through werift's sender (stats,
   * RTCP SR); any other payload type is written to the DTLS transport, because the sender would
   * relabel it with the first codec's payload type (NOTES).
   */
  async sendRtp(payload: Buffer, options: SendRtpOptions = {}): Promise<void> {
    if (!Buffer.isBuffer(payload)) throw new TypeError('payload must be a Buffer');
    this.#assertPeerConnectionOpen('sendRtp');
    const sender = this.transceiver.sender;
    const first = sender.codec;
    if (!first) throw new InvalidStateError('sendRtp before any codec was negotiated');
    const payloadType = options.payloadType ?? first.payloadType;
    const codec = this.negotiatedCodecs.find((c) => c.payloadType === payloadType);
    if (!codec) {
      const negotiated = this.negotiatedCodecs.map((c) => `${c.payloadType} ${c.mimeType}`).join(', ');
      throw new TypeError(`payload type ${payloadType} was not negotiated (negotiated: ${negotiated})`);
    }
    const dtls = this.transceiver.dtlsTransport;
    if (dtls.state !== 'connected') {
      throw new InvalidStateError(`sendRtp while DTLS is ${dtls.state} (${describeStates(this.connectionStates)})`);
    }
    const header = new RtpHeader({
      payloadType,
      sequenceNumber: this.#sequenceNumber,
      timestamp: this.#timestamp,
      ssrc: sender.ssrc,
      marker: options.marker ?? false,
    });
    this.#sequenceNumber = (this.#sequenceNumber + 1) & 0xffff;
    this.#timestamp = (this.#timestamp + (options.timestampAdvance ?? codec.clockRate / 50)) >>> 0;
    if (payloadType === first.payloadType) await sender.sendRtp(new RtpPacket(header, payload));
    else await dtls.sendRtp(payload, header);
    this.#rtpSent++;
  }

  /** Sends `count` packets every `intervalMs` (drift-free), marker on the first; waits for `connected` first. */
  async sendPacedRtp(options: SendPacedRtpOptions): Promise<void> {
    const { payload, count } = options;
    const intervalMs = options.intervalMs ?? 20;
    if (!Number.isInteger(count) || count < 1 || count > 100_000) throw new TypeError(`bad count ${count}`);
    if (!Number.isFinite(intervalMs) || intervalMs < 1 || intervalMs > 1000) {
      throw new TypeError(`bad intervalMs ${intervalMs}`);
    }
    await this.waitForConnected(options.connectTimeoutMs ?? 10_000);
    const startedAt = performance.now();
    for (let i = 0; i < count; i++) {
      await this.sendRtp(payload, { payloadType: options.payloadType, marker: i === 0 });
      if (i + 1 < count) await this.#sleep(startedAt + (i + 1) * intervalMs - performance.now());
    }
  }

  /** Resolves once at least `count` packets reached the receiver's track. */
  waitForRtp(count: number, timeoutMs: number): Promise<void> {
    return this.#wait(
      timeoutMs,
      () =>
        `received ${this.#rtpReceived} of ${count} RTP packets within ${timeoutMs} ms ` +
        `(${this.#rtpAtTransport} decrypted at the transport; ${describeStates(this.connectionStates)})`,
      (resolve) => {
        const check = (): void => {
          if (this.#rtpReceived >= count) resolve();
        };
        this.#rtpWaiters.add(check);
        check();
        return () => this.#rtpWaiters.delete(check);
      },
    );
  }

  /** Resolves when ICE and DTLS are up; rejects at once on `failed`/`closed`. */
  async waitForConnected(timeoutMs: number): Promise<void> {
    await this.#waitForStates(timeoutMs, 'connected', (s) => {
      if (s.connectionState === 'connected') return true;
      if (s.connectionState === 'failed' || s.connectionState === 'closed') {
        throw new Error(`PeerConnection ${s.connectionState} before connecting (${describeStates(s)})`);
      }
      return false;
    });
  }

  /**
   * Resolves when the connection or ICE state is `disconnected`, `failed` or `closed`. When the far
   * end just goes away this takes about 30 s (ICE consent expiry); see waitForRemoteTransportClosed().
   */
  waitForConnectionLost(timeoutMs: number): Promise<ConnectionStates> {
    const lost = new Set<string>(['disconnected', 'failed', 'closed']);
    return this.#waitForStates(
      timeoutMs,
      'disconnected, failed or closed',
      (s) => lost.has(s.connectionState) || lost.has(s.iceConnectionState),
    );
  }

  /** The remote ICE address media flows to: the nominated pair's, else the first remote candidate's. */
  get remoteIceAddress(): { readonly address: string; readonly port: number } | undefined {
    const connection = this.peerConnection.iceTransports[0]?.connection;
    const candidate = connection?.nominated?.remoteCandidate ?? connection?.remoteCandidates[0];
    return candidate ? { address: candidate.host, port: candidate.port } : undefined;
  }

  /**
   * Resolves once no socket on this host holds the remote ICE port any more, i.e. the far end (the
   * gateway) closed its PeerConnection. waitForConnectionLost() is no use for that in a test:
   * werift notices a vanished peer only when RFC 7675 consent expires, 30 s (fixed) later, and
   * ignores DTLS close_notify. Probes by binding the port for an instant, so 127.0.0.1/::1 only.
   */
  waitForRemoteTransportClosed(timeoutMs: number, pollMs = 50): Promise<void> {
    const remote = this.remoteIceAddress;
    if (!remote) return Promise.reject(new InvalidStateError('no remote ICE candidate yet'));
    if (remote.address !== '127.0.0.1' && remote.address !== '::1') {
      return Promise.reject(new TypeError(`can only probe a loopback port, not ${remote.address}`));
    }
    const where = `${remote.address}:${remote.port}`;
    return this.#wait(
      timeoutMs,
      () => `remote ICE port ${where} still bound after ${timeoutMs} ms (${describeStates(this.connectionStates)})`,
      (resolve, reject) => {
        let stopped = false;
        let timer: NodeJS.Timeout | undefined;
        const probe = (): void => {
          isUdpPortFree(remote.address, remote.port).then((free) => {
            if (stopped) return;
            if (free) resolve();
            else timer = setTimeout(probe, pollMs);
          }, reject);
        };
        probe();
        return () => {
          stopped = true;
          clearTimeout(timer);
        };
      },
    );
  }

  /**
   * SIP.js calls this when the session ends (and may call it more than once). Unless
   * `keepPeerConnectionOnClose` is set, it closes the PeerConnection too.
   */
  close(): void {
    if (!this.#sipClosed) {
      this.#sipClosed = true;
      rejectAll(this.#pendingOperations, new InvalidStateError('session description handler closed'));
    }
    // The interface is synchronous: forceClose() reports close failures.
    if (!this.#keepPeerConnectionOnClose) void this.#closePeerConnection();
  }

  /** Closes everything, whatever the options; idempotent; resolves after `pc.close()` finished. */
  async forceClose(): Promise<void> {
    if (!this.#sipClosed) this.close();
    const error = await this.#closePeerConnection();
    if (error) throw error;
  }

  /**
   * Resolves once the PeerConnection has been closed (by close() or forceClose()) and pc.close()
   * has settled; never rejects (forceClose() reports close errors). Bound it yourself.
   */
  whenClosed(): Promise<void> {
    return this.#closed;
  }

  #closePeerConnection(): Promise<Error | undefined> {
    this.#teardown ??= this.#runTeardown();
    return this.#teardown;
  }

  async #runTeardown(): Promise<Error | undefined> {
    rejectAll(this.#pending, new InvalidStateError('PeerConnection closed'));
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    for (const dispose of this.#disposers.splice(0)) dispose();
    this.#rtpWaiters.clear();
    this.#localTrack.stop();
    try {
      await this.#letDtlsHandshakeSettle(1000);
      await this.peerConnection.close();
      return undefined;
    } catch (error) {
      return toError(error);
    } finally {
      live.delete(this);
      this.#resolveClosed();
    }
  }

  /**
   * werift cannot cancel a DTLS handshake: closed mid-way, its flight retransmission timers run on
   * for about 33 s and keep Node (and mocha) alive, on whichever side did not finish. So give a
   * live peer up to `timeoutMs` to finish, then a few ms for our last flight to leave the socket.
   */
  async #letDtlsHandshakeSettle(timeoutMs: number): Promise<void> {
    const dtls = this.transceiver.dtlsTransport;
    if (dtls.state !== 'connecting') return;
    const settled = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => done(false), timeoutMs);
      const { unSubscribe } = dtls.onStateChange.subscribe((state) => {
        if (state !== 'connecting') done(state === 'connected');
      });
      function done(connected: boolean): void {
        clearTimeout(timer);
        unSubscribe();
        resolve(connected);
      }
    });
    if (settled) await new Promise<void>((resolve) => setTimeout(resolve, 20));
  }

  #assertPeerConnectionOpen(what: string): void {
    if (this.isPeerConnectionClosed) throw new InvalidStateError(`${what} after the PeerConnection was closed`);
  }

  /** An offer/answer step: bounded, and rejected if the handler closes meanwhile (werift may never settle then). */
  #operation<T>(what: string, run: () => Promise<T>): Promise<T> {
    if (this.#sipClosed) return Promise.reject(new InvalidStateError(`${what} after close`));
    return this.#wait(
      this.#operationTimeoutMs,
      () => `${what} did not finish within ${this.#operationTimeoutMs} ms (${describeStates(this.connectionStates)})`,
      (resolve, reject) => {
        this.#pendingOperations.add(reject);
        run().then(resolve, (error: unknown) => reject(toError(error)));
        return () => this.#pendingOperations.delete(reject);
      },
    );
  }

  #wait<T>(
    timeoutMs: number,
    timeoutMessage: () => string,
    start: (resolve: (value: T) => void, reject: (error: Error) => void) => (() => void) | void,
  ): Promise<T> {
    if (this.isPeerConnectionClosed) return Promise.reject(new InvalidStateError('PeerConnection closed'));
    return waitWithDeadline<T>(timeoutMs, timeoutMessage, (resolve, reject) => {
      this.#pending.add(reject);
      const cleanup = start(resolve, reject);
      return () => {
        this.#pending.delete(reject);
        cleanup?.();
      };
    });
  }

  #waitForStates(
    timeoutMs: number,
    wanted: string,
    accept: (states: ConnectionStates) => boolean,
  ): Promise<ConnectionStates> {
    return this.#wait(
      timeoutMs,
      () => `PeerConnection not ${wanted} within ${timeoutMs} ms (${describeStates(this.connectionStates)})`,
      (resolve, reject) => {
        const check = (): void => {
          try {
            const states = this.connectionStates;
            if (accept(states)) resolve(states);
          } catch (error) {
            reject(toError(error));
          }
        };
        this.#stateWaiters.add(check);
        check();
        return () => this.#stateWaiters.delete(check);
      },
    );
  }

  #sleep(ms: number): Promise<void> {
    if (this.isPeerConnectionClosed) return Promise.reject(new InvalidStateError('PeerConnection closed'));
    return new Promise<void>((resolve, reject) => {
      const onClose = (error: Error): void => {
        clearTimeout(timer);
        this.#timers.delete(timer);
        reject(error);
      };
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#pending.delete(onClose);
        resolve();
      }, Math.max(0, ms));
      this.#timers.add(timer);
      this.#pending.add(onClose);
    });
  }

  #sendEvent(payloadType: number, timestamp: number, event: number, duration: number, end: boolean, marker: boolean) {
    const payload = Buffer.alloc(4);
    payload.writeUInt8(event, 0);
    payload.writeUInt8((end ? 0x80 : 0) | 10, 1); // volume -10 dBm0
    payload.writeUInt16BE(duration, 2);
    this.#timestamp = timestamp;
    return this.sendRtp(payload, { payloadType, marker, timestampAdvance: 0 });
  }

  /** Counts RTP on every receiving track and transport not yet watched (new ones appear per negotiation). */
  #subscribeRtp(): void {
    const dtls = this.transceiver.dtlsTransport;
    if (!this.#subscribedTransports.has(dtls)) {
      this.#subscribedTransports.add(dtls);
      this.#disposers.push(dtls.onRtp.subscribe(() => void this.#rtpAtTransport++).unSubscribe);
    }
    for (const track of this.transceiver.receiver.tracks) {
      if (this.#subscribedTracks.has(track)) continue;
      this.#subscribedTracks.add(track);
      const { unSubscribe } = track.onReceiveRtp.subscribe((packet) => {
        this.#rtpReceived++;
        const pt = packet.header.payloadType;
        this.#receivedByPayloadType.set(pt, (this.#receivedByPayloadType.get(pt) ?? 0) + 1);
        this.#rtpWaiters.forEach((check) => check());
      });
      this.#disposers.push(unSubscribe);
    }
  }
}

/**
 * A `sessionDescriptionHandlerFactory` for SIP.js `UserAgent` options. Options come from, in
 * increasing precedence: `defaults`, the UA's `sessionDescriptionHandlerFactoryOptions`, and
 * `perSession(session)`. `onCreated` sees every handler made (SIP.js also makes them for early media).
 */
export function createWeriftSdhFactory(
  defaults: WeriftSdhOptions = {},
  hooks: {
    perSession?: (session: Session) => WeriftSdhOptions | undefined;
    onCreated?: (sdh: WeriftSessionDescriptionHandler, session: Session) => void;
  } = {},
): SessionDescriptionHandlerFactory {
  return (session: Session, options?: object) => {
    const sdh = new WeriftSessionDescriptionHandler({
      ...defaults,
      ...parseSdhOptions(options),
      ...hooks.perSession?.(session),
    });
    hooks.onCreated?.(sdh, session);
    return sdh;
  };
}

async function applyModifiers(
  type: string,
  sdp: string,
  modifiers: SessionDescriptionHandlerModifier[] | undefined,
): Promise<string> {
  let description: { type: string; sdp: string } = { type, sdp };
  for (const modify of modifiers ?? []) {
    const result: unknown = await modify(description);
    const modified = (result as { sdp?: unknown } | undefined)?.sdp;
    if (typeof modified !== 'string') throw new TypeError('a description modifier returned no SDP');
    description = { type, sdp: modified };
  }
  return description.sdp;
}

function rejectAll(rejecters: Set<(error: Error) => void>, error: Error): void {
  const pending = [...rejecters];
  rejecters.clear();
  for (const reject of pending) reject(error);
}

/** True if `port` can be bound on `address` now (nobody holds it); EADDRINUSE means someone does. */
function isUdpPortFree(address: string, port: number): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    const socket = createSocket({ type: isIPv6(address) ? 'udp6' : 'udp4', reuseAddr: false });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      socket.close();
      if (error.code === 'EADDRINUSE') resolve(false);
      else reject(error);
    });
    socket.once('listening', () => socket.close(() => resolve(true)));
    socket.bind({ address, port, exclusive: true });
  });
}

function isDtmf(tones: string): boolean {
  return typeof tones === 'string' && /^[0-9*#A-D]+$/i.test(tones);
}

function describeStates(s: ConnectionStates): string {
  return `connectionState ${s.connectionState}, iceConnectionState ${s.iceConnectionState}`;
}
