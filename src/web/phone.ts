/**
 * The softphone's SIP side, written against SIP.js's UserAgent / Registerer / Inviter / Invitation
 * API exactly as a third-party web softphone would use it with this gateway. It owns the status
 * object the page renders (and publishes as window.__softphone); the UI only calls its methods.
 *
 * One call at a time: a second incoming call gets 486 Busy Here.
 */
import {
  Invitation,
  Inviter,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
  Web,
  type Session,
  type URI,
} from 'sip.js';
import { sampleCallStats } from './call-stats.js';
import type { CallState, RegistrationState, SoftphoneStatus } from './status.js';
import { Tones } from './tones.js';
import { InvalidStateError, message, withTimeout } from './util.js';

export interface LoginSettings {
  /** ws:// or wss:// URL of the gateway's SIP WebSocket. */
  server: string;
  /** SIP domain (the gateway's realm): the address of record is sip:user@domain. */
  domain: string;
  user: string;
  password: string;
  /**
   * ICE servers for the browser. The gateway is ICE-lite with a public (announced) address, so
   * none are needed; SIP.js's default (a public Google STUN server) is replaced by this list.
   */
  iceServers?: RTCIceServer[];
}

const AUDIO_ONLY: MediaStreamConstraints = { audio: true, video: false };
const REGISTER_EXPIRES = 300;
const STATS_INTERVAL_MS = 500;
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
const TEARDOWN_BOUND_MS = 3000;
// SIP.js reports a lost REGISTER itself after Timer F (32 s).
const REGISTER_BOUND_MS = 35_000;
// The gateway answers a re-INVITE at once (488 today); the page should not sit in "holding…" for Timer B (32 s).
const REINVITE_BOUND_MS = 10_000;
const MAX_EVENTS = 200;
// SIP.js waits for ICE gathering to complete before sending an offer or answer. Host candidates
// come in milliseconds; this only bounds a slow or unreachable STUN/TURN server from iceServers.
const ICE_GATHERING_TIMEOUT_MS = 1000;

export class Phone {
  readonly status: SoftphoneStatus = {
    ready: false,
    registration: 'logged-out',
    registrationDetail: '',
    call: 'idle',
    muted: false,
    held: false,
    tone: null,
    dtmfSent: '',
    events: [],
  };
  readonly tones = new Tones();
  /** Called after every status change. */
  onChange: () => void = () => {};
  /** The far end's audio, or null when no call is up. */
  onRemoteStream: (stream: MediaStream | null) => void = () => {};

  #ua: UserAgent | undefined;
  #registerer: Registerer | undefined;
  #settings: LoginSettings | undefined;
  #session: Session | undefined;
  #endReason: string | undefined;
  #statsTimer: ReturnType<typeof setInterval> | undefined;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #reconnectAttempt = 0;
  #loggingOut = false;
  /** Set once the gateway refused a re-INVITE in this call: hold is then done locally. */
  #reinviteRefused = false;

  constructor() {
    this.tones.onChange = (tone) => {
      this.status.tone = tone;
      this.#event(`tone:${tone ?? 'off'}`);
      this.onChange();
    };
  }

  get session(): Session | undefined {
    return this.#session;
  }

  // ---- registration --------------------------------------------------------------------

  async login(settings: LoginSettings): Promise<void> {
    if (this.#ua) throw new InvalidStateError('already logged in; log out first');
    const uri = UserAgent.makeURI(`sip:${settings.user}@${settings.domain}`);
    if (!uri || !settings.user) throw new TypeError(`not a valid user name: ${settings.user}`);
    this.#settings = settings;
    this.#loggingOut = false;
    this.#reconnectAttempt = 0;
    this.status.aor = uri.toString();
    const ua = new UserAgent({
      uri,
      transportOptions: { server: settings.server, connectionTimeout: 5 },
      authorizationUsername: settings.user,
      authorizationPassword: settings.password,
      displayName: settings.user,
      userAgentString: 'sip-webrtc-gateway web softphone (SIP.js)',
      logLevel: 'warn',
      sessionDescriptionHandlerFactoryOptions: {
        iceGatheringTimeout: ICE_GATHERING_TIMEOUT_MS,
        peerConnectionConfiguration: { iceServers: settings.iceServers ?? [] },
      },
      delegate: {
        onInvite: (invitation) => this.#onInvite(invitation),
        onDisconnect: (error) => this.#onDisconnect(error),
      },
    });
    this.#ua = ua;
    this.#setRegistration('connecting', `connecting to ${settings.server}`);
    try {
      await ua.start();
    } catch (err) {
      this.#ua = undefined;
      await ua.stop().catch(() => undefined);
      this.#setRegistration('disconnected', `could not connect to ${settings.server}: ${message(err)}`);
      throw err;
    }
    const registerer = new Registerer(ua, { expires: REGISTER_EXPIRES });
    this.#registerer = registerer;
    registerer.stateChange.addListener((state) => {
      // A refresh that fails after a success: say so rather than pretend to be registered.
      if (state === RegistererState.Unregistered && this.status.registration === 'registered' && !this.#loggingOut) {
        this.#setRegistration('failed', 'registration lost');
      }
    });
    if (!(await this.#register())) {
      // A first registration that fails (wrong password) logs out again, keeping the reason.
      const detail = this.status.registrationDetail;
      await this.#teardown('failed', detail);
      throw new Error(`registration failed: ${detail}`);
    }
  }

  get loggedIn(): boolean {
    return this.#ua !== undefined;
  }

  /** REGISTER; resolves true on a 2xx, false on a final error (SIP.js answers 401 itself). */
  #register(): Promise<boolean> {
    const registerer = this.#registerer;
    if (!registerer) return Promise.resolve(false);
    this.#setRegistration('registering', '');
    const outcome = new Promise<boolean>((resolve) => {
      registerer
        .register({
          requestDelegate: {
            onAccept: () => {
              this.#setRegistration('registered', `as ${this.status.aor?.replace(/^sip:/, '') ?? ''}`);
              resolve(true);
            },
            onReject: (res) => {
              this.#setRegistration('failed', `${res.message.statusCode} ${res.message.reasonPhrase}`);
              resolve(false);
            },
          },
        })
        .catch((err: unknown) => {
          this.#setRegistration('failed', message(err));
          resolve(false);
        });
    });
    return withTimeout(outcome, REGISTER_BOUND_MS, 'REGISTER').catch((err: unknown) => {
      this.#setRegistration('failed', message(err));
      return false;
    });
  }

  logout(): Promise<void> {
    return this.#teardown('logged-out', '');
  }

  async #teardown(state: RegistrationState, detail: string): Promise<void> {
    const ua = this.#ua;
    if (!ua) return;
    this.#loggingOut = true;
    clearTimeout(this.#reconnectTimer);
    if (this.#session) await withTimeout(this.hangup(), TEARDOWN_BOUND_MS, 'hangup').catch(() => undefined);
    const registerer = this.#registerer;
    if (registerer && registerer.state === RegistererState.Registered && ua.isConnected()) {
      await withTimeout(registerer.unregister(), TEARDOWN_BOUND_MS, 'un-REGISTER').catch(() => undefined);
    }
    this.#registerer = undefined;
    this.#ua = undefined;
    // stop() disposes what is left (sessions, registerers) and closes the WebSocket.
    await withTimeout(ua.stop(), TEARDOWN_BOUND_MS, 'stopping the user agent').catch(() => undefined);
    delete this.status.aor;
    this.#setRegistration(state, detail);
  }

  #onDisconnect(error: Error | undefined): void {
    if (this.#loggingOut || !this.#ua) return;
    // The gateway ends a call whose WebSocket closes; end ours too instead of waiting for a BYE.
    const s = this.#session;
    if (s) {
      this.#endReason = 'connection to the gateway lost';
      void s.dispose().catch(() => undefined);
    }
    this.#setRegistration('disconnected', error ? `connection lost: ${error.message}` : 'connection lost');
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    const delay = RECONNECT_DELAYS_MS[this.#reconnectAttempt++];
    if (delay === undefined) {
      this.#setRegistration('disconnected', 'gave up reconnecting: log in again');
      return;
    }
    this.#reconnectTimer = setTimeout(() => {
      const ua = this.#ua;
      if (!ua || this.#loggingOut) return;
      this.#setRegistration('connecting', `reconnecting (attempt ${this.#reconnectAttempt})`);
      ua.reconnect().then(
        () => {
          this.#reconnectAttempt = 0;
          void this.#register();
        },
        () => {
          this.#setRegistration('disconnected', `reconnect attempt ${this.#reconnectAttempt} failed`);
          this.#scheduleReconnect();
        },
      );
    }, delay);
  }

  // ---- calls -----------------------------------------------------------------------------

  /** A number ("600", "+1 555 0100") becomes sip:number@domain; "user@host" and SIP URIs are used as they are. */
  targetUri(target: string): URI {
    const t = target.trim();
    const domain = this.#settings?.domain ?? location.hostname;
    let text: string;
    if (/^sips?:/i.test(t)) text = t;
    else if (t.includes('@')) text = `sip:${t}`;
    else text = `sip:${t.replace(/[\s().-]/g, '')}@${domain}`;
    const uri = UserAgent.makeURI(text);
    if (!uri || !t) throw new TypeError(`not a number or SIP address: ${target}`);
    return uri;
  }

  async call(target: string): Promise<void> {
    const ua = this.#ua;
    if (!ua || this.status.registration !== 'registered') throw new InvalidStateError('not registered');
    if (this.#session) throw new InvalidStateError('already in a call');
    const uri = this.targetUri(target);
    // earlyMedia: the gateway never forks towards us, so a 183's answer is the call's answer.
    const inviter = new Inviter(ua, uri, { earlyMedia: true, sessionDescriptionHandlerOptions: { constraints: AUDIO_ONLY } });
    this.#adopt(inviter, 'outgoing', uri.user ?? uri.toString());
    this.#setCall('calling');
    try {
      await inviter.invite({
        requestDelegate: {
          onProgress: (res) => {
            const code = res.message.statusCode ?? 0;
            if (this.#session !== inviter || code < 180 || code > 183) return;
            const sdh = inviter.sessionDescriptionHandler;
            if (res.message.body && sdh instanceof Web.SessionDescriptionHandler) {
              // Early media: the far end plays its own ringback or announcement; ours would mask it.
              this.tones.stop();
              if (this.status.call === 'calling') this.#setCall('ringback');
              this.#event('early-media');
              this.onRemoteStream(sdh.remoteMediaStream);
              this.#startStats(sdh);
            } else if (this.status.call === 'calling') {
              this.#setCall('ringback');
              this.tones.play('ringback');
            }
          },
          onReject: (res) => {
            this.#endReason = `${res.message.statusCode} ${res.message.reasonPhrase}`;
          },
        },
      });
    } catch (err) {
      // Before the INVITE went out (no microphone, no offer): SIP.js has ended the session or we do.
      this.#endReason = `call failed: ${message(err)}`;
      this.#error(this.#endReason);
      if (inviter.state !== SessionState.Terminated) await inviter.dispose().catch(() => undefined);
      throw err;
    }
  }

  async answer(): Promise<void> {
    const s = this.#session;
    if (!(s instanceof Invitation) || this.status.call !== 'incoming') throw new InvalidStateError('no call to answer');
    this.tones.stop();
    this.#setCall('answering');
    try {
      await s.accept({ sessionDescriptionHandlerOptions: { constraints: AUDIO_ONLY } });
    } catch (err) {
      this.#endReason = `answer failed: ${message(err)}`;
      this.#error(this.#endReason);
      throw err;
    }
  }

  async reject(): Promise<void> {
    const s = this.#session;
    if (!(s instanceof Invitation) || this.status.call !== 'incoming') throw new InvalidStateError('no call to reject');
    this.tones.stop();
    this.#endReason = 'rejected (486 Busy Here)';
    this.#setCall('ending');
    // 486 rather than 603 Decline: the caller may still reach this user's other devices.
    await s.reject({ statusCode: 486 });
  }

  /** CANCEL, BYE or a rejection, whatever the call's state needs. */
  async hangup(): Promise<void> {
    const s = this.#session;
    if (!s) return;
    this.tones.stop();
    this.#endReason ??= 'hung up';
    this.#setCall('ending');
    switch (s.state) {
      case SessionState.Initial:
      case SessionState.Establishing:
        if (s instanceof Inviter) await s.cancel();
        else if (s instanceof Invitation) await s.reject({ statusCode: 486 });
        return;
      case SessionState.Established:
        await s.bye();
        return;
      default:
        return;
    }
  }

  setMuted(muted: boolean): void {
    if (this.status.call !== 'in-call') return;
    this.status.muted = muted;
    this.#applyTracks();
    this.#event(muted ? 'muted' : 'unmuted');
    this.onChange();
  }

  /**
   * Hold asks the gateway with a re-INVITE (a=sendonly). The gateway answers re-INVITEs with 488 for
   * now; then the offer is rolled back and hold is local: our microphone is silenced and the far
   * end's audio muted, while RTP keeps flowing (so the gateway's media timers see a live call).
   */
  async setHeld(held: boolean): Promise<void> {
    const s = this.#session;
    if (!s || s.state !== SessionState.Established || this.status.call !== 'in-call') throw new InvalidStateError('no call to hold');
    if (this.status.held === held) return;
    if (this.#reinviteRefused) {
      this.#setHold(held, 'local');
      return;
    }
    const sdh = s.sessionDescriptionHandler;
    const pc = sdh instanceof Web.SessionDescriptionHandler ? sdh.peerConnection : undefined;
    const directions = pc?.getTransceivers().map((t) => [t, t.direction] as const) ?? [];
    const previousOptions = s.sessionDescriptionHandlerOptionsReInvite;
    const sdhOptions: Web.SessionDescriptionHandlerOptions = { hold: held, constraints: AUDIO_ONLY };
    const outcome = await withTimeout(
      new Promise<'accepted' | number>((resolve, reject) => {
        s.invite({
          sessionDescriptionHandlerOptions: sdhOptions,
          requestDelegate: {
            onAccept: () => resolve('accepted'),
            onReject: (res) => resolve(res.message.statusCode ?? 0),
          },
        }).catch(reject);
      }),
      REINVITE_BOUND_MS,
      're-INVITE',
    );
    if (outcome === 'accepted') {
      this.#setHold(held, 'sip');
      return;
    }
    // SIP.js 0.21's web handler has no rollbackDescription(): undo the unanswered offer ourselves,
    // or the PeerConnection stays in have-local-offer with transceivers set to sendonly.
    if (pc && pc.signalingState === 'have-local-offer') {
      await pc.setLocalDescription({ type: 'rollback' }).catch((err: unknown) => this.#error(`rollback failed: ${message(err)}`));
    }
    for (const [t, dir] of directions) if (t.direction !== dir && t.currentDirection !== 'stopped') t.direction = dir;
    // SIP.js keeps re-INVITE options on the session: a later re-INVITE from the far end must not be answered "on hold".
    s.sessionDescriptionHandlerOptionsReInvite = previousOptions;
    this.#reinviteRefused = true;
    this.#event(`reinvite-refused:${outcome}`);
    if (this.#session === s && s.state === SessionState.Established) this.#setHold(held, 'local');
  }

  #setHold(held: boolean, mode: 'sip' | 'local'): void {
    this.status.held = held;
    this.status.holdMode = mode;
    this.#applyTracks();
    this.#event(held ? `held:${mode}` : `resumed:${mode}`);
    this.onChange();
  }

  #applyTracks(): void {
    const sdh = this.#session?.sessionDescriptionHandler;
    if (!(sdh instanceof Web.SessionDescriptionHandler)) return;
    // Disabled tracks still send RTP (silence), so the call stays alive at the gateway.
    sdh.enableSenderTracks(!this.status.muted && !this.status.held);
    sdh.enableReceiverTracks(!this.status.held);
  }

  /**
   * RFC 4733 telephone-events through SIP.js (RTCDTMFSender.insertDTMF). insertDTMF replaces the
   * tones still queued, so a key pressed while others play is appended to the queue instead.
   */
  sendDtmf(key: string): void {
    if (!/^[0-9A-D*#]$/i.test(key)) throw new TypeError(`not a DTMF key: ${key}`);
    const sdh = this.#session?.sessionDescriptionHandler;
    if (this.status.call !== 'in-call' || !(sdh instanceof Web.SessionDescriptionHandler)) throw new InvalidStateError('DTMF needs a call in progress');
    const dtmf = sdh.peerConnection?.getSenders()[0]?.dtmf;
    if (!dtmf || !dtmf.canInsertDTMF) throw new InvalidStateError('DTMF is not available in this call (no telephone-event negotiated)');
    if (!sdh.sendDtmf(dtmf.toneBuffer + key, { duration: 100, interToneGap: 70 })) throw new Error('sending DTMF failed');
    this.tones.beep(key);
    this.status.dtmfSent += key;
    this.#event(`dtmf:${key}`);
    this.onChange();
  }

  // ---- session lifecycle -----------------------------------------------------------------

  #onInvite(invitation: Invitation): void {
    if (this.#session || this.#loggingOut) {
      void invitation.reject({ statusCode: 486 }).catch(() => undefined);
      return;
    }
    const id = invitation.remoteIdentity;
    const peer = id.displayName ? `${id.displayName} <${id.uri.user ?? id.uri.toString()}>` : (id.uri.user ?? id.uri.toString());
    this.#adopt(invitation, 'incoming', peer);
    this.#setCall('incoming');
    this.tones.play('ringing');
  }

  #adopt(session: Session, direction: 'outgoing' | 'incoming', peer: string): void {
    this.#session = session;
    this.#endReason = undefined;
    this.#reinviteRefused = false;
    Object.assign(this.status, { direction, peer, muted: false, held: false, dtmfSent: '' });
    delete this.status.holdMode;
    delete this.status.stats;
    delete this.status.lastEnd;
    delete this.status.lastError;
    session.delegate = {
      onBye: (bye) => {
        this.#endReason = 'the other party hung up';
        void bye.accept().catch(() => undefined);
      },
    };
    session.stateChange.addListener((state) => this.#onSessionState(session, state));
  }

  #onSessionState(session: Session, state: SessionState): void {
    if (session !== this.#session) return;
    this.#event(`session:${state}`);
    switch (state) {
      case SessionState.Established: {
        this.tones.stop();
        this.#setCall('in-call');
        const sdh = session.sessionDescriptionHandler;
        if (sdh instanceof Web.SessionDescriptionHandler) {
          this.onRemoteStream(sdh.remoteMediaStream);
          this.#startStats(sdh);
        }
        return;
      }
      case SessionState.Terminating:
        this.#setCall('ending');
        return;
      case SessionState.Terminated:
        this.tones.stop();
        clearInterval(this.#statsTimer);
        this.#statsTimer = undefined;
        this.onRemoteStream(null);
        this.#session = undefined;
        this.status.lastEnd = this.#endReason ?? (this.status.call === 'incoming' ? 'missed (the caller gave up)' : 'ended');
        Object.assign(this.status, { muted: false, held: false });
        delete this.status.holdMode;
        this.#setCall('idle');
        return;
      default:
        return;
    }
  }

  #startStats(sdh: Web.SessionDescriptionHandler): void {
    clearInterval(this.#statsTimer);
    let busy = false;
    const sample = () => {
      const pc = sdh.peerConnection;
      if (busy || !pc || pc.connectionState === 'closed') return;
      busy = true;
      sampleCallStats(pc)
        .then((s) => {
          if (this.#session?.sessionDescriptionHandler !== sdh) return;
          this.status.stats = s;
          this.onChange();
        })
        .catch(() => undefined) // the PeerConnection closed under us: the call is ending
        .finally(() => {
          busy = false;
        });
    };
    sample();
    this.#statsTimer = setInterval(sample, STATS_INTERVAL_MS);
  }

  // ---- status ----------------------------------------------------------------------------

  #setRegistration(state: RegistrationState, detail: string): void {
    const changed = this.status.registration !== state;
    this.status.registration = state;
    this.status.registrationDetail = detail;
    if (changed) this.#event(`registration:${state}`);
    this.onChange();
  }

  #setCall(state: CallState): void {
    if (this.status.call === state) return;
    this.status.call = state;
    this.#event(`call:${state}`);
    this.onChange();
  }

  #error(text: string): void {
    this.status.lastError = text;
    this.#event(`error:${text}`);
    this.onChange();
  }

  #event(text: string): void {
    const e = this.status.events;
    e.push(text);
    if (e.length > MAX_EVENTS) e.splice(0, e.length - MAX_EVENTS);
  }
}
