/**
 * The softphone's observable state, published as `window.__softphone` for tests and debugging.
 * Plain data only (no DOM types): the Node-side browser tests import these types too.
 */

export type RegistrationState =
  /** No login yet, or logged out. */
  | 'logged-out'
  /** Opening the WebSocket. */
  | 'connecting'
  /** REGISTER sent, no final answer yet. */
  | 'registering'
  | 'registered'
  /** The registrar refused (e.g. 403 wrong password); see `registrationDetail`. */
  | 'failed'
  /** The WebSocket closed; the page retries a few times. */
  | 'disconnected';

export type CallState =
  | 'idle'
  /** INVITE sent, nothing back but 100 yet. */
  | 'calling'
  /** 180/183 received: the far end rings, the page plays ringback. */
  | 'ringback'
  /** An INVITE for us: ringing, waiting for Answer or Reject. */
  | 'incoming'
  /** Answer clicked, 200 not yet acknowledged. */
  | 'answering'
  | 'in-call'
  /** BYE/CANCEL/reject sent, waiting for the session to end. */
  | 'ending';

/** One sample of the call's RTCPeerConnection statistics (audio only). */
export interface CallStats {
  /** Date.now() of the sample. */
  at: number;
  /** e.g. "PCMU/8000", from the inbound (else outbound) RTP stream's codec. */
  codec?: string;
  payloadType?: number;
  packetsSent: number;
  bytesSent: number;
  packetsReceived: number;
  bytesReceived: number;
  /** Cumulative, from the inbound RTP stream (sequence gaps). */
  packetsLost: number;
  /** Inbound jitter in ms. */
  jitterMs?: number;
  /** From RTCP (remote-inbound-rtp), else from ICE consent checks (candidate-pair). */
  rttMs?: number;
  rttSource?: 'rtcp' | 'ice';
  /** 0..1, what we hear (inbound-rtp audioLevel). */
  audioLevelIn?: number;
  /** 0..1, what we send (media-source audioLevel). */
  audioLevelOut?: number;
  /** Inbound, cumulative (sum of squared levels times duration): > 0 once sound was played out. */
  totalAudioEnergy: number;
  /** "127.0.0.1:54321 -> 127.0.0.1:30000 (udp host)" for the selected candidate pair. */
  candidatePair?: string;
  /** Our DTLS role: client (we sent ClientHello) or server. */
  dtlsRole?: string;
  dtlsState?: string;
  iceState?: string;
}

export interface SoftphoneStatus {
  /** True once the page has loaded its settings (/config.json) and can log in. */
  ready: boolean;
  registration: RegistrationState;
  /** Human-readable reason for the registration state, e.g. "403 Forbidden". */
  registrationDetail: string;
  /** The logged-in address of record, e.g. "sip:alice@127.0.0.1". */
  aor?: string;
  call: CallState;
  direction?: 'outgoing' | 'incoming';
  /** The other party (user part or URI). */
  peer?: string;
  muted: boolean;
  held: boolean;
  /**
   * How hold was done: `sip` when the gateway accepted the re-INVITE, `local` when it refused it
   * (488) and the page only silenced both directions itself.
   */
  holdMode?: 'sip' | 'local';
  /** The tone the page is playing right now. */
  tone: 'ringback' | 'ringing' | null;
  /** DTMF digits sent in the current (or last) call, in order. */
  dtmfSent: string;
  /** How the last call ended, e.g. "BYE received", "486 Busy Here". */
  lastEnd?: string;
  /** Latest getStats() sample of the current call (kept after it ends). */
  stats?: CallStats;
  lastError?: string;
  /** Recent state changes, oldest first (bounded), e.g. "call:ringback". */
  events: string[];
}
