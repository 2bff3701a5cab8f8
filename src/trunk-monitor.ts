import type { Logger } from 'pino';
import type { OutboundRegistration, OutboundRegistrationStatus, SipBackend } from '../sip/backend.js';
import type { GatewayConfig } from './config.js';
import { trunkCredentials, trunkTarget } from './router.js';
import { errorMessage } from './util/errors.js';

type TrunkConfig = GatewayConfig['trunks'][number];

export type Reachability = 'reachable' | 'unreachable' | 'unknown';

export interface TrunkStatus {
  name: string;
  host: string;
  port: number | undefined;
  transport: TrunkConfig['transport'];
  /** null: the trunk does not register. */
  registration: OutboundRegistrationStatus | null;
  /** From OPTIONS pings; 'unknown' before the first answer or with pings off. */
  reachability: Reachability;
  lastPingAt: number | undefined;
  rttMs: number | undefined;
  /** The last ping failure. */
  lastError: string | undefined;
}

export interface TrunkMonitorOptions {
  sip: Pick<SipBackend, 'register' | 'ping'>;
  trunks: readonly TrunkConfig[];
  log: Logger;
  /** First retry delay of a failed registration (default 5000; tests make it small). */
  registrationRetryBaseMs?: number;
  /** Bound on un-REGISTERing at stop (default 2000). */
  stopTimeoutMs?: number;
}

interface Monitored {
  config: TrunkConfig;
  registration: OutboundRegistration | undefined;
  reachability: Reachability;
  lastPingAt: number | undefined;
  rttMs: number | undefined;
  lastError: string | undefined;
  pingTimer: NodeJS.Timeout | undefined;
}

/**
 * Keeps each trunk's registration (when `register` is set) and pings it with OPTIONS every
 * `optionsPingMs` (when > 0). One per gateway, started after the SIP stack, stopped before it:
 * stop() un-REGISTERs every trunk at once and waits (bounded) for the answers.
 */
export class TrunkMonitor {
  readonly #opts: TrunkMonitorOptions;
  readonly #trunks: Monitored[];
  #stopping: Promise<void> | undefined;

  private constructor(opts: TrunkMonitorOptions) {
    this.#opts = opts;
    this.#trunks = opts.trunks.map((config) => ({
      config,
      registration: undefined,
      reachability: 'unknown',
      lastPingAt: undefined,
      rttMs: undefined,
      lastError: undefined,
      pingTimer: undefined,
    }));
  }

  static start(opts: TrunkMonitorOptions): TrunkMonitor {
    const m = new TrunkMonitor(opts);
    for (const t of m.#trunks) {
      m.#register(t);
      // First ping soon after start, then every optionsPingMs after each answer (never two at once).
      if (t.config.optionsPingMs > 0) m.#schedulePing(t, 0);
    }
    return m;
  }

  #register(t: Monitored): void {
    const c = t.config;
    if (!c.register || !c.username) return;
    const credentials = trunkCredentials(c);
    try {
      t.registration = this.#opts.sip.register({
        name: c.name,
        trunk: trunkTarget(c),
        username: c.username,
        ...(c.fromDomain ? { domain: c.fromDomain } : {}),
        ...(credentials ? { credentials } : {}),
        expires: c.registerExpires,
        ...(this.#opts.registrationRetryBaseMs !== undefined ? { retryBaseMs: this.#opts.registrationRetryBaseMs } : {}),
        ...(this.#opts.stopTimeoutMs !== undefined ? { stopTimeoutMs: this.#opts.stopTimeoutMs } : {}),
      });
    } catch (err) {
      this.#opts.log.error({ err, trunk: c.name }, 'cannot start the trunk registration');
    }
  }

  #schedulePing(t: Monitored, ms: number): void {
    if (this.#stopping) return;
    t.pingTimer = setTimeout(() => {
      t.pingTimer = undefined;
      void this.#ping(t);
    }, ms);
  }

  async #ping(t: Monitored): Promise<void> {
    const log = this.#opts.log;
    const before = t.reachability;
    try {
      const r = await this.#opts.sip.ping(trunkTarget(t.config));
      t.reachability = 'reachable';
      t.rttMs = r.rttMs;
      t.lastError = undefined;
    } catch (err) {
      t.reachability = 'unreachable';
      t.rttMs = undefined;
      t.lastError = errorMessage(err);
    }
    t.lastPingAt = Date.now();
    if (this.#stopping) return;
    if (t.reachability !== before) {
      const level = t.reachability === 'reachable' ? 'info' : 'warn';
      log[level]({ trunk: t.config.name, reachability: t.reachability, rttMs: t.rttMs, lastError: t.lastError }, 'trunk reachability');
    }
    this.#schedulePing(t, t.config.optionsPingMs);
  }

  status(): TrunkStatus[] {
    return this.#trunks.map((t) => ({
      name: t.config.name,
      host: t.config.host,
      port: t.config.port,
      transport: t.config.transport,
      registration: t.registration ? t.registration.status() : null,
      reachability: t.reachability,
      lastPingAt: t.lastPingAt,
      rttMs: t.rttMs,
      lastError: t.lastError,
    }));
  }

  /** Stops pinging and un-REGISTERs every trunk (each bounded by the registration itself). Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      for (const t of this.#trunks) {
        clearTimeout(t.pingTimer);
        t.pingTimer = undefined;
      }
      const results = await Promise.allSettled(this.#trunks.map((t) => t.registration?.stop()));
      for (const r of results) if (r.status === 'rejected') this.#opts.log.warn({ err: r.reason }, 'trunk registration stop failed');
    })();
    return this.#stopping;
  }
}
