import { TransportError, type TransportErrorCode } from './errors.js';

/** A flood of refusals or timeouts is reported once per this interval per kind, with a count. */
const REPORT_EVERY_MS = 10_000;

/**
 * Reports of one kind at most once per interval: a flood of refused connections must not become a
 * flood of log lines. The next report tells how many were held back.
 */
export class RateLimitedReports {
  #last = new Map<string, { at: number; held: number }>();

  constructor(private readonly emit: (err: TransportError) => void) {}

  report(code: TransportErrorCode, message: string, flowId?: string): void {
    const now = Date.now();
    const last = this.#last.get(code);
    if (last && now - last.at < REPORT_EVERY_MS) {
      last.held++;
      return;
    }
    const held = last?.held ?? 0;
    this.#last.set(code, { at: now, held: 0 });
    const more = held > 0 ? ` (${held} more since the last report)` : '';
    this.emit(new TransportError(code, message + more, flowId === undefined ? {} : { flowId }));
  }
}

/** Counts one listener's inbound connections, in total and per source address, and refuses those over the caps. */
export class ConnectionLimiter {
  #total = 0;
  #perIp = new Map<string, number>();

  constructor(
    private readonly limits: { maxConnections: number; maxConnectionsPerIp: number },
    private readonly label: string,
    private readonly reports: RateLimitedReports,
  ) {}

  /** Counts a new connection from `ip`, or reports it and returns false when a cap is reached. */
  admit(ip: string): boolean {
    const fromIp = this.#perIp.get(ip) ?? 0;
    const { maxConnections, maxConnectionsPerIp } = this.limits;
    if (this.#total >= maxConnections || fromIp >= maxConnectionsPerIp) {
      const why = fromIp >= maxConnectionsPerIp ? `${fromIp} open from that address (limit ${maxConnectionsPerIp})` : `${this.#total} open (limit ${maxConnections})`;
      this.reports.report('GW_SIP_CONNECTION_LIMIT', `${this.label} refused a connection from ${ip}: ${why}`);
      return false;
    }
    this.#total++;
    this.#perIp.set(ip, fromIp + 1);
    return true;
  }

  /** An admitted connection from `ip` closed. */
  release(ip: string): void {
    const n = this.#perIp.get(ip) ?? 0;
    if (n <= 1) this.#perIp.delete(ip);
    else this.#perIp.set(ip, n - 1);
    if (n > 0) this.#total--;
  }
}
