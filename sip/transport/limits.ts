/**
 * Bounds on what one peer can make a connection-oriented transport (TCP, TLS, WebSocket) hold.
 * Every field is optional; the defaults suit a gateway serving a few thousand softphones.
 */
export interface ConnectionLimits {
  /** Inbound connections accepted at once per listener; more are closed on arrival (default 4096). */
  maxConnections?: number;
  /** Inbound connections at once from one IP address (default 64). */
  maxConnectionsPerIp?: number;
  /** An inbound connection that begins a message and has not finished it this long after is closed (default 10 s). */
  messageTimeoutMs?: number;
  /**
   * TCP/TLS: an inbound connection that has carried no message either way this long after it was
   * accepted is closed (default 300 s; 0: never). Once it has carried one it is never closed for
   * being quiet: a trunk's connection can idle for a long call.
   */
  idleTimeoutMs?: number;
  /** Unsent bytes queued to one connection past which its peer counts as not reading; the connection is closed (default 1 MiB). */
  maxWriteBufferBytes?: number;
}

export const DEFAULT_LIMITS: Readonly<Required<ConnectionLimits>> = {
  maxConnections: 4096,
  maxConnectionsPerIp: 64,
  messageTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  maxWriteBufferBytes: 1024 * 1024,
};

/** Node's timers overflow past this; also far beyond any sensible bound here. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The limits with defaults filled in; a TypeError for a value that is not a positive integer (idleTimeoutMs may be 0). */
export function resolveLimits(opts: ConnectionLimits): Required<ConnectionLimits> {
  const out = { ...DEFAULT_LIMITS };
  for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof ConnectionLimits>) {
    const v = opts[key];
    if (v === undefined) continue;
    const min = key === 'idleTimeoutMs' ? 0 : 1;
    if (!Number.isInteger(v) || v < min || v > MAX_TIMER_MS) throw new TypeError(`${key} must be an integer from ${min} to ${MAX_TIMER_MS}, got ${v}`);
    out[key] = v;
  }
  return out;
}
