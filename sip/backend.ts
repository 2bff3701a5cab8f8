import type { EventEmitter } from 'node:events';
import type { DigestCredentials } from './digest.js';
import type { TransportKind } from './transport/flow.js';

/**
 * The edge of the SIP layer. The call controller sees only these types: SDP strings in and
 * out, and one `ended` event per leg. The embedded stack (sip.js parsing, our transactions)
 * implements it; a drachtio-srf backend can implement the same interface.
 */

export type LegEndCause =
  /** The far end sent BYE. */
  | 'bye'
  /** The far end CANCELled before answer. */
  | 'cancel'
  /** A final non-2xx response ended an outbound leg. */
  | 'rejected'
  /** Timer B/F: no final response. */
  | 'timeout'
  /** We answered and no ACK came. */
  | 'no-ack'
  /** The flow (WebSocket, TCP) closed or could not be used. */
  | 'transport'
  /** We ended it (terminate(), reject()). */
  | 'local';

export interface LegEnd {
  cause: LegEndCause;
  /** The SIP status involved: the rejection code, 408 on timeout, 487 on cancel... */
  status?: number;
  reason?: string;
}

export type LegState = 'calling' | 'early' | 'answered' | 'confirmed' | 'ended';

export interface LegEvents {
  /** A provisional response arrived (outbound legs); `sdp` is its SDP answer, if it carried one (early media). */
  progress: [status: number, reason: string, sdp?: string];
  /** A 2xx with an SDP answer arrived and was ACKed (outbound legs). */
  answered: [sdp: string];
  /** The ACK for our 2xx arrived (inbound legs). */
  confirmed: [];
  /** Emitted exactly once, on the first terminal event, whatever it is. */
  ended: [end: LegEnd];
}

export interface TerminateOptions {
  /** Final status for an unanswered inbound leg (default 487 or 480). */
  status?: number;
  reason?: string;
  /** A `Reason` header value (RFC 3326) for the BYE or CANCEL. */
  reasonHeader?: string;
}

export interface SipCallLeg extends EventEmitter<LegEvents> {
  readonly id: string;
  readonly callId: string;
  readonly state: LegState;
  /** Ends the leg whatever its state: final response or CANCEL before answer, BYE after. Idempotent. */
  terminate(opts?: TerminateOptions): void;
}

export interface InboundCall extends SipCallLeg {
  readonly fromUser: string;
  readonly fromUri: string;
  readonly toUser: string;
  readonly requestUri: string;
  readonly offer: string;
  readonly source: { transport: TransportKind; address: string; port: number; flowId: string };
  /** The user that authenticated this INVITE (digest), for calls from softphones. */
  readonly authUser: string | undefined;
  /** The configured trunk this INVITE came from, for calls from SIP peers. */
  readonly trunk: string | undefined;
  /** Sends a provisional response (180, 183), with an SDP answer for early media (the 200 must then carry the same). */
  progress(status: number, reason?: string, sdp?: string): void;
  /** Sends 200 OK with the SDP answer; `confirmed` follows on ACK, `ended` with `no-ack` otherwise. */
  accept(sdp: string): void;
  /** Sends a final non-2xx response (with extra header lines, e.g. Retry-After); the leg ends with cause `local`. */
  reject(status: number, reason?: string, headers?: string[]): void;
}

/** A registered device: where its INVITE goes is the flow it registered over (WebSocket, TCP) or its source address (UDP). */
export interface ContactTarget {
  uri: string;
  source: { transport: TransportKind; address: string; port: number; flowId: string };
}

/** Transports a SIP peer (trunk, PBX) can be reached on. */
export type PeerTransport = 'udp' | 'tcp' | 'tls';

/** A SIP peer as configured: an IP address, or a domain resolved per RFC 3263. */
export interface SipTarget {
  host: string;
  /** Absent: from SRV for a domain, else 5060 (5061 for TLS). */
  port?: number;
  /** Absent: from NAPTR for a domain without a port, else UDP. */
  transport?: PeerTransport;
}

/** One resolved place to send to; a target resolves to a list of these in order of preference. */
export interface Destination {
  transport: PeerTransport;
  address: string;
  port: number;
  /** The domain this came from (TLS server name, logs); the address itself for IP targets. */
  hostname: string;
}

/** How to reach a trunk: its domain (Request-URI, To) and, optionally, an outbound proxy to send through. */
export interface TrunkTarget {
  target: SipTarget;
  /** Requests go here with `Route: <sip:proxy;lr>` (RFC 3261 §8.1.2); the Request-URI keeps the trunk's host. */
  outboundProxy?: SipTarget;
  /** No response at all (not even 100) in this time: the next destination is tried (default 4000). */
  failoverTimeoutMs?: number;
  /** Verify the peer's TLS certificate (default true). */
  tlsVerify?: boolean;
}

export interface OutboundCallOptions {
  /** Where the INVITE goes: a SIP peer (resolved, with failover), or a registered contact. */
  target: { trunk: TrunkTarget } | { contact: ContactTarget };
  /** User part of the Request-URI and To. */
  toUser: string;
  fromUser: string;
  /** Host part of From (default: our announced address). */
  fromDomain?: string;
  fromDisplayName?: string;
  offer: string;
  /** Extra headers (full lines). */
  headers?: string[];
  /** Answers one 401/407 to the INVITE with these (a trunk's account). */
  credentials?: DigestCredentials;
  /**
   * No answer within this time after the INVITE went out: CANCEL, and the leg ends with 408 (a UA's
   * no-answer limit, like a proxy's Timer C; Timer B stops at the first provisional response). Default 180000.
   */
  ringTimeoutMs?: number;
}

export interface OutboundCall extends SipCallLeg {
  /** Where the INVITE went ("udp:10.0.0.1:5060"); undefined before it was sent or for registered contacts. */
  readonly destination: string | undefined;
}

export interface Registration {
  user: string;
  contact: string;
  expiresAt: number;
  transport: TransportKind;
  source: string;
  userAgent?: string;
  instance?: string;
}

export type OutboundRegistrationState = 'registering' | 'registered' | 'failed' | 'unregistering' | 'stopped';

export interface OutboundRegistrationOptions {
  /** Where REGISTER goes (the registrar is the trunk's domain). */
  trunk: TrunkTarget;
  /** The AOR's user (From, To) and our Contact's user. */
  username: string;
  /** The AOR's domain (default: the trunk's host). */
  domain?: string;
  credentials?: DigestCredentials;
  /** Requested expiry in seconds; the registrar may shorten it. */
  expires: number;
  /** For logs (the trunk's name). */
  name?: string;
  /** First retry delay after a failure, doubled per failure up to retryMaxMs (defaults 5000 and 300000). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** How long stop() waits for the answer to the un-REGISTER (default 2000). */
  stopTimeoutMs?: number;
}

export interface OutboundRegistrationStatus {
  state: OutboundRegistrationState;
  /** Epoch ms the current binding expires (registered). */
  expiresAt?: number;
  lastRegisteredAt?: number;
  /** The last failure ("401 Unauthorized after credentials", "timeout", ...). */
  lastError?: string;
  /** Consecutive failures (drives the backoff). */
  failures: number;
  /** Epoch ms of the next REGISTER (refresh or retry). */
  nextAttemptAt?: number;
  /** Where the last REGISTER went ("udp:10.0.0.1:5060"). */
  destination?: string;
}

export interface OutboundRegistration extends EventEmitter<{ state: [status: OutboundRegistrationStatus] }> {
  status(): OutboundRegistrationStatus;
  /** Un-REGISTERs (Expires: 0) when registered, waits (bounded) for the answer, and stops. Idempotent. */
  stop(): Promise<void>;
}

/** The answer to an OPTIONS ping: any response means reachable. */
export interface PingResult {
  status: number;
  rttMs: number;
  destination: string;
}

export interface SipBackendStats {
  transactions: number;
  dialogs: number;
  retransmissions: number;
}

/** Hooks for metrics; the SIP layer knows nothing of Prometheus. */
export interface SipObserver {
  /** `label` is the method of a request or the status code of a response. */
  message(direction: 'in' | 'out', kind: 'request' | 'response', label: string): void;
}

export type SipBackendEvents = {
  invite: [call: InboundCall];
};

export interface SipBackend extends EventEmitter<SipBackendEvents> {
  createCall(opts: OutboundCallOptions): OutboundCall;
  /** Starts keeping a registration with a trunk (outbound REGISTER). */
  register(opts: OutboundRegistrationOptions): OutboundRegistration;
  /** Sends OPTIONS to a trunk; rejects on timeout or transport failure. */
  ping(target: TrunkTarget): Promise<PingResult>;
  /** The registered contacts of a user (none when the registrar is off). */
  contactsOf(user: string): ContactTarget[];
  registrations(): Registration[];
  stats(): SipBackendStats;
  close(): Promise<void>;
}
