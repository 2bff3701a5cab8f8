import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import type { AccessOptions } from '../sip/access-control.js';
import { SipResolver } from '../sip/dns-resolver.js';
import { SipStack } from '../sip/sip-stack.js';
import { PortAllocator } from '../webrtc/port-allocator.js';
import { peerConnectionCounter } from '../webrtc/webrtc-endpoint.js';
import { AdminApi } from './admin-api.js';
import { CallController } from './call-controller.js';
import type { GatewayConfig } from './config.js';
import { createLogger } from './logger.js';
import { GatewayError } from './util/errors.js';
import { GatewayMetrics } from './metrics.js';
import { trunkTarget } from './router.js';
import { TestExtensions } from './test-extensions.js';
import { TrunkMonitor, type TrunkStatus } from './trunk-monitor.js';
import { serveWeb } from './web-server.js';

/** Knobs that are not configuration: tests use them to avoid waiting. */
export interface GatewayStartOptions {
  /** First retry delay of a failed trunk registration (default 5000 ms). */
  registrationRetryBaseMs?: number;
}

export interface GatewayStats {
  calls: number;
  totalCalls: number;
  rtpPortsInUse: number;
  webrtcPortsInUse: number;
  /** PeerConnections open in this process (all gateways in it). */
  peerConnections: number;
  sipTransactions: number;
  sipDialogs: number;
  sipRetransmissions: number;
  wsConnections: number;
}

/** How often trunks named by domain (without `addresses`) are resolved again for recognising their calls. */
const TRUNK_RESOLVE_INTERVAL_MS = 300_000;

const resolvedByDomain = (t: GatewayConfig['trunks'][number]) => t.addresses === undefined && !isIP(t.host);

/**
 * Where calls from each trunk come from: its `addresses`, else its host (and outbound proxy)
 * resolved (A/AAAA via RFC 3263) at start and every few minutes. A name that does not resolve
 * gives no address (at start) or keeps the last ones (later: `previous`).
 */
async function trunkSources(trunks: GatewayConfig['trunks'], resolver: SipResolver, log: Logger, previous?: Map<string, string[]>): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  await Promise.all(
    trunks.map(async (t) => {
      if (t.addresses) return void out.set(t.name, t.addresses);
      if (isIP(t.host)) return void out.set(t.name, [t.host]);
      const targets = [trunkTarget(t).target, ...(t.outboundProxy ? [t.outboundProxy] : [])];
      const found = new Set<string>();
      let failed = false;
      for (const target of targets) {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('timed out')), 5000)));
        try {
          for (const d of await Promise.race([resolver.resolve(target), timeout])) found.add(d.address);
        } catch (err) {
          failed = true;
          log.warn({ trunk: t.name, host: target.host, err: (err as Error).message }, 'trunk host did not resolve: calls from it may not be recognized (set trunks[].addresses)');
        } finally {
          clearTimeout(timer);
        }
      }
      const last = previous?.get(t.name);
      out.set(t.name, found.size === 0 && failed && last ? last : [...found]);
    }),
  );
  return out;
}

function accessOptions(config: GatewayConfig, sources: Map<string, string[]>): AccessOptions {
  const users = new Map(config.users.map((u) => [u.username, u]));
  return {
    realm: config.sip.realm ?? config.media.announceAddress,
    users: (name) => {
      const u = users.get(name);
      return u ? { ...(u.password !== undefined ? { password: u.password } : {}), ...(u.ha1 ? { ha1: u.ha1 } : {}) } : undefined;
    },
    trunks: config.trunks.map((t) => ({ name: t.name, addresses: sources.get(t.name) ?? [], ...(t.matchPort ? { port: t.port ?? (t.transport === 'tls' ? 5061 : 5060) } : {}) })),
    registrar: config.registrar,
  };
}

interface PemFiles {
  cert?: string | undefined;
  key?: string | undefined;
  ca?: string | undefined;
}

/** Reads a `{cert?, key?, ca?}` config block; a missing or unreadable file names its config key. */
async function readPem(files: PemFiles, where: string): Promise<{ cert?: Buffer; key?: Buffer; ca?: Buffer }> {
  const read = (path: string | undefined, what: string) =>
    path === undefined
      ? undefined
      : readFile(path).catch((err: unknown) => {
          throw new GatewayError('GW_CONFIG_INVALID', `${where}.${what}: cannot read ${path}: ${(err as Error).message}`, { cause: err });
        });
  const [cert, key, ca] = await Promise.all([read(files.cert, 'cert'), read(files.key, 'key'), read(files.ca, 'ca')]);
  return { ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(ca ? { ca } : {}) };
}

/** The root of the ownership tree: listeners, SIP stack, port allocators, call controller. */
export class Gateway {
  readonly log: Logger;
  readonly rtpPorts: PortAllocator;
  readonly webrtcPorts: PortAllocator;
  readonly metrics: GatewayMetrics;
  readonly config: GatewayConfig;
  #http: http.Server;
  #sip: SipStack;
  #controller: CallController;
  #admin: AdminApi | undefined;
  #trunks: TrunkMonitor | undefined;
  #closing: Promise<void> | undefined;
  #resolver: SipResolver | undefined;
  #trunkSources = new Map<string, string[]>();
  #resolveTimer: NodeJS.Timeout | undefined;
  #resolving: Promise<void> | undefined;

  #extensions: TestExtensions | undefined;

  private constructor(config: GatewayConfig, log: Logger, httpServer: http.Server, sip: SipStack, rtpPorts: PortAllocator, webrtcPorts: PortAllocator, metrics: GatewayMetrics, extensions: TestExtensions | undefined) {
    this.log = log;
    this.config = config;
    this.#http = httpServer;
    this.#sip = sip;
    this.rtpPorts = rtpPorts;
    this.webrtcPorts = webrtcPorts;
    this.metrics = metrics;
    this.#extensions = extensions;
    this.#controller = new CallController({ sip, rtpPorts, webrtcPorts, config, log, metrics, ...(extensions ? { extensions } : {}) });
  }

  static async start(config: GatewayConfig, log: Logger = createLogger(config.log.level), opts: GatewayStartOptions = {}): Promise<Gateway> {
    const bind = config.media.bindAddress ?? config.http.host;
    const rtpPorts = new PortAllocator({ host: bind, range: config.media.rtpPorts });
    const webrtcPorts = new PortAllocator({ host: bind, range: config.media.webrtcPorts });
    const onRequest: http.RequestListener = (req, res) => {
      serveWeb(req, res, config).catch((err: unknown) => {
        log.error({ err }, 'web request failed');
        if (!res.headersSent) res.writeHead(500).end();
      });
    };
    const sipTls = config.sip.tls ? await readPem(config.sip.tls, 'sip.tls') : undefined;
    // With http.tls the page is served over HTTPS and browsers speak SIP over WSS on the same port (RFC 7118).
    let server: http.Server;
    if (config.http.tls) {
      const { cert, key } = await readPem(config.http.tls, 'http.tls');
      try {
        server = https.createServer({ cert, key }, onRequest);
      } catch (err) {
        throw new GatewayError('GW_CONFIG_INVALID', `http.tls: unusable certificate or key: ${(err as Error).message}`, { cause: err });
      }
    } else {
      server = http.createServer(onRequest);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.http.port, config.http.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // Gauges read the live objects at scrape time; `gw` is set before any scrape can happen.
    let gw: Gateway | undefined;
    const metrics = new GatewayMetrics({
      callsActive: () => {
        const calls = gw?.controller.calls() ?? [];
        const inbound = calls.filter((c) => c.info().direction === 'inbound').length;
        return { outbound: calls.length - inbound, inbound };
      },
      ports: () => ({ rtp: { inUse: rtpPorts.inUse, free: rtpPorts.free }, webrtc: { inUse: webrtcPorts.inUse, free: webrtcPorts.free } }),
      peerConnections: () => peerConnectionCounter.open,
      wsConnections: () => gw?.sip.wsConnections ?? 0,
      registrations: () => gw?.sip.registrations().length ?? 0,
      sipRetransmissions: () => gw?.sip.stats().retransmissions ?? 0,
      trunks: () => gw?.trunkStatus() ?? [],
    });
    const resolver = new SipResolver(config.sip.dns.servers ? { servers: config.sip.dns.servers } : {});
    let sources = new Map<string, string[]>();
    let sip: SipStack;
    try {
      sip = await SipStack.create({
        listen: config.sip.listen,
        httpServer: server,
        announceAddress: config.media.announceAddress,
        timers: config.sip.timers,
        ...(sipTls ? { tls: sipTls } : {}),
        keepAliveMs: config.sip.keepAliveMs,
        limits: config.sip.limits,
        ...(config.sip.userAgent ? { userAgent: config.sip.userAgent } : {}),
        observer: metrics.sipObserver,
        resolver,
        access: accessOptions(config, (sources = await trunkSources(config.trunks, resolver, log))),
        log: log.child({ component: 'sip' }),
      });
    } catch (err) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw err;
    }
    let extensions: TestExtensions | undefined;
    try {
      if (config.testExtensions.enabled) extensions = await TestExtensions.start(config.testExtensions, log);
    } catch (err) {
      await sip.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw err;
    }
    gw = new Gateway(config, log, server, sip, rtpPorts, webrtcPorts, metrics, extensions);
    gw.#resolver = resolver;
    gw.#trunkSources = sources;
    if (config.trunks.some(resolvedByDomain)) {
      gw.#resolveTimer = setInterval(() => void gw!.refreshTrunkAddresses(), TRUNK_RESOLVE_INTERVAL_MS);
      gw.#resolveTimer.unref();
    }
    gw.#trunks = TrunkMonitor.start({
      sip,
      trunks: config.trunks,
      log: log.child({ component: 'trunks' }),
      ...(opts.registrationRetryBaseMs !== undefined ? { registrationRetryBaseMs: opts.registrationRetryBaseMs } : {}),
    });
    try {
      gw.#admin = await AdminApi.start({
        config,
        controller: gw.#controller,
        rtpPorts,
        webrtcPorts,
        metrics,
        registrations: () => sip.registrations(),
        trunks: () => gw!.trunkStatus(),
        ready: () => (gw!.#controller.draining ? { ready: false, reasons: ['draining'] } : { ready: true, reasons: [] }),
        log: log.child({ component: 'admin' }),
      });
    } catch (err) {
      await gw.close();
      throw err;
    }
    log.info({ http: server.address(), admin: gw.#admin.address, sip: config.sip.listen.map((l) => sip.address(l.transport)) }, 'gateway started');
    return gw;
  }

  get controller(): CallController {
    return this.#controller;
  }

  get sip(): SipStack {
    return this.#sip;
  }

  /** Where the HTTP/WebSocket listener is bound (tests listen on port 0). */
  get httpAddress(): { address: string; port: number } {
    const a = this.#http.address();
    return a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: '', port: 0 };
  }

  /** Registration and reachability of each trunk (empty before the monitor starts). */
  trunkStatus(): TrunkStatus[] {
    return this.#trunks?.status() ?? [];
  }

  get adminAddress(): { address: string; port: number } {
    return this.#admin?.address ?? { address: '', port: 0 };
  }

  sipAddress(transport: 'udp' | 'tcp' | 'tls'): { address: string; port: number } | undefined {
    return this.#sip.address(transport);
  }

  stats(): GatewayStats {
    const s = this.#sip.stats();
    return {
      calls: this.#controller.size,
      totalCalls: this.#controller.totalCalls,
      rtpPortsInUse: this.rtpPorts.inUse,
      webrtcPortsInUse: this.webrtcPorts.inUse,
      peerConnections: peerConnectionCounter.open,
      sipTransactions: s.transactions,
      sipDialogs: s.dialogs,
      sipRetransmissions: s.retransmissions,
      wsConnections: this.#sip.wsConnections,
    };
  }

  /**
   * Graceful shutdown: new calls get 503 with Retry-After, calls in progress get up to `drainMs`
   * to end by themselves, the rest are ended with BYE; then everything closes.
   */
  shutdown(drainMs = this.config.shutdown.drainMs): Promise<void> {
    this.#closing ??= (async () => {
      await this.#controller.drain(drainMs);
      await this.#closeRest();
    })();
    return this.#closing;
  }

  /** Ends every call at once, then closes the SIP stack and listeners. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#controller.close();
      await this.#closeRest();
    })();
    return this.#closing;
  }

  /**
   * Resolves trunks named by domain again (also every few minutes) so calls from them are still
   * recognised when their addresses change; a failed lookup keeps the last addresses.
   */
  refreshTrunkAddresses(): Promise<void> {
    this.#resolving ??= (async () => {
      try {
        const resolver = this.#resolver;
        if (!resolver || this.#closing) return;
        const trunks = this.config.trunks.filter(resolvedByDomain);
        const next = await trunkSources(trunks, resolver, this.log, this.#trunkSources);
        for (const [name, addresses] of next) {
          const before = this.#trunkSources.get(name) ?? [];
          if (before.join() !== addresses.join()) this.log.info({ trunk: name, before, addresses }, 'trunk addresses changed');
          this.#trunkSources.set(name, addresses);
          this.#sip.setTrunkAddresses(name, addresses);
        }
      } finally {
        this.#resolving = undefined;
      }
    })();
    return this.#resolving;
  }

  async #closeRest(): Promise<void> {
    clearInterval(this.#resolveTimer);
    // Un-REGISTER while the SIP stack can still send (each registration bounds its own wait).
    await this.#trunks?.stop();
    await this.#admin?.close();
    await this.#extensions?.close();
    await this.#sip.close();
    this.#http.closeAllConnections();
    await new Promise<void>((resolve) => this.#http.close(() => resolve()));
    this.log.info('gateway stopped');
  }
}
