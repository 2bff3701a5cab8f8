import type { Logger } from 'pino';
import type { InboundCall, SipBackend } from '../sip/backend.js';
import { sipUserProblem } from '../sip/sip-user.js';
import type { PortAllocator } from '../webrtc/port-allocator.js';
import type { CallBase, CallInfo } from './call-base.js';
import { CallToBrowser } from './call-to-browser.js';
import { Call, type CallDeps } from './call.js';
import type { GatewayConfig } from './config.js';
import type { GatewayMetrics } from './metrics.js';
import { OutboundRouter } from './router.js';
import type { TestExtensions } from './test-extensions.js';

/** How often live calls are checked for media timeouts and ports for orphans. */
const SWEEP_INTERVAL_MS = 1000;

/**
 * The B2BUA: turns each INVITE from a softphone into a Call toward the trunk, and owns every
 * live Call until it reports `@close`. Calls never call back into the controller otherwise.
 */
export class CallController {
  #calls = new Map<string, CallBase>();
  /** Recently ended calls for the admin API, oldest first, bounded in count and age. */
  #ended: CallInfo[] = [];
  #deps: Omit<CallDeps, 'log' | 'trunk' | 'toUser'>;
  #router: OutboundRouter;
  #log: Logger;
  #config: GatewayConfig;
  #metrics: GatewayMetrics | undefined;
  #sweeper: NodeJS.Timeout;
  #draining = false;
  #closing = false;
  totalCalls = 0;

  #extensions: TestExtensions | undefined;

  constructor(opts: { sip: SipBackend; rtpPorts: PortAllocator; webrtcPorts: PortAllocator; config: GatewayConfig; log: Logger; metrics?: GatewayMetrics; extensions?: TestExtensions }) {
    const { config } = opts;
    this.#router = new OutboundRouter(config);
    this.#deps = {
      sip: opts.sip,
      rtpPorts: opts.rtpPorts,
      webrtcPorts: opts.webrtcPorts,
      media: {
        announceAddress: config.media.announceAddress,
        bindAddress: config.media.bindAddress ?? config.http.host,
        codecs: config.media.codecs,
        webrtcSetupTimeoutMs: config.media.webrtcSetupTimeoutMs,
        symmetricRtp: config.media.symmetricRtp,
      },
      ringTimeoutMs: config.calls.ringTimeoutMs,
    };
    this.#config = config;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#extensions = opts.extensions;
    opts.sip.on('invite', (inbound) => this.#onInvite(inbound));
    this.#sweeper = setInterval(() => void this.#sweep(), Math.min(SWEEP_INTERVAL_MS, config.media.rtpTimeoutMs / 2, config.media.noMediaTimeoutMs / 2));
    this.#sweeper.unref();
  }

  get size(): number {
    return this.#calls.size;
  }

  get draining(): boolean {
    return this.#draining;
  }

  calls(): CallBase[] {
    return [...this.#calls.values()];
  }

  get(id: string): CallBase | undefined {
    return this.#calls.get(id);
  }

  /** Live calls first, then recently ended ones (newest first). */
  list(): CallInfo[] {
    this.#pruneEnded();
    return [...this.calls().map((c) => c.info()), ...[...this.#ended].reverse()];
  }

  find(id: string): CallInfo | undefined {
    this.#pruneEnded();
    return this.#calls.get(id)?.info() ?? this.#ended.find((c) => c.id === id);
  }

  #onInvite(inbound: InboundCall): void {
    if (this.#draining || this.#closing) {
      inbound.reject(503, 'Service Unavailable (shutting down)', ['Retry-After: 30']);
      return;
    }
    if (this.#calls.size >= this.#config.calls.maxConcurrent) {
      inbound.reject(503, 'Service Unavailable (call limit)');
      return;
    }
    const call = this.#route(inbound);
    if (!call) return;
    this.#calls.set(call.id, call);
    this.totalCalls++;
    call.once('answered', (setupMs) => this.#metrics?.callSetup.observe({ direction: call.info().direction }, setupMs / 1000));
    call.once('@close', () => {
      this.#calls.delete(call.id);
      const info = call.info();
      this.#metrics?.callsTotal.inc({ direction: info.direction, end_reason: info.endReason?.cause ?? 'unknown' });
      if (this.#config.calls.keepEndedMax > 0 && this.#config.calls.keepEndedMs > 0) {
        this.#ended.push(info);
        this.#pruneEnded();
      }
    });
    call.log.info({ from: inbound.fromUser, to: inbound.toUser, trunk: inbound.trunk, source: `${inbound.source.transport}:${inbound.source.address}:${inbound.source.port}` }, 'new call');
    void call.run();
  }

  /**
   * From a trunk: to the user the DID map (or the Request-URI user) names, ringing all of its
   * devices. From a softphone: a built-in extension, a local user, else the first matching route. Answers the INVITE itself when it routes nowhere.
   */
  #route(inbound: InboundCall): CallBase | undefined {
    const trunkName = inbound.trunk;
    // Users arrive percent-decoded: a dialled "%0D%0A" is a line break that must never reach a trunk.
    for (const [what, value] of [['dialled number', inbound.toUser], ['calling user', inbound.fromUser]] as const) {
      const problem = sipUserProblem(value);
      if (problem) {
        this.#log.info({ what, length: value.length, problem }, 'refused a call with an unusable user');
        inbound.reject(400, `Bad Request (${what} ${problem})`);
        return undefined;
      }
    }
    const isUser = (name: string) => this.#config.users.some((u) => u.username === name);
    let user: string;
    if (trunkName === undefined) {
      // A softphone: the built-in extensions, then local users, then the trunk.
      const ext = this.#extensions?.target(inbound.toUser);
      if (ext) return new Call(inbound, { ...this.#deps, trunk: ext, log: this.#log });
      if (!isUser(inbound.toUser)) {
        const route = this.#router.route(inbound.toUser, inbound.fromUser);
        if (!route) {
          this.#log.info({ from: inbound.fromUser, to: inbound.toUser }, 'no route matches the dialled number');
          inbound.reject(404, 'Not Found (no route)');
          return undefined;
        }
        if (route.toUser === '') {
          this.#log.info({ from: inbound.fromUser, to: inbound.toUser, rule: route.rule }, 'nothing left to dial after the route rewrote the number');
          inbound.reject(484, 'Address Incomplete');
          return undefined;
        }
        return new Call(inbound, { ...this.#deps, trunk: route.trunk, toUser: route.toUser, log: this.#log });
      }
      user = inbound.toUser;
    } else {
      const trunk = this.#config.trunks.find((t) => t.name === trunkName);
      user = trunk?.dids[inbound.toUser] ?? inbound.toUser;
      if (!isUser(user)) {
        inbound.reject(404, 'Not Found');
        return undefined;
      }
    }
    const contacts = this.#deps.sip.contactsOf(user);
    if (contacts.length === 0) {
      inbound.reject(480, 'Temporarily Unavailable (not registered)');
      return undefined;
    }
    return new CallToBrowser(inbound, user, contacts, {
      sip: this.#deps.sip,
      rtpPorts: this.#deps.rtpPorts,
      webrtcPorts: this.#deps.webrtcPorts,
      media: this.#deps.media,
      ringTimeoutMs: this.#config.calls.ringTimeoutMs,
      log: this.#log,
    });
  }

  #pruneEnded(now = Date.now()): void {
    const { keepEndedMs, keepEndedMax } = this.#config.calls;
    while (this.#ended.length > keepEndedMax) this.#ended.shift();
    while (this.#ended.length > 0 && now - Date.parse(this.#ended[0]!.endedAt ?? '') > keepEndedMs) this.#ended.shift();
  }

  /**
   * Ends answered calls that never got media (nothing from either side within noMediaTimeoutMs of
   * answer) or whose media stopped (one side silent, RTP and RTCP, for rtpTimeoutMs: a dead trunk
   * behind a live browser is the case that matters), and reclaims any port no live call owns.
   */
  async #sweep(now = Date.now()): Promise<void> {
    const { rtpTimeoutMs, noMediaTimeoutMs } = this.#config.media;
    for (const call of this.#calls.values()) {
      const answeredAt = call.answeredAt;
      if (answeredAt === undefined || call.closed) continue;
      const live = call.mediaLiveness();
      if (live.sip === undefined && live.browser === undefined) {
        if (now - answeredAt >= noMediaTimeoutMs) void call.hangup('no-media', 408);
        continue;
      }
      const silentSide = now - (live.sip ?? answeredAt) >= rtpTimeoutMs ? 'sip' : now - (live.browser ?? answeredAt) >= rtpTimeoutMs ? 'browser' : undefined;
      if (silentSide) {
        call.log.info({ silentSide, rtpTimeoutMs }, 'media timeout');
        void call.hangup('media-timeout', 408);
      }
    }
    this.#pruneEnded(now);
    const isLive = (owner: { callId: string }) => this.#calls.has(owner.callId);
    // A lease is only orphaned by a bug; give setup time to finish before calling it one.
    const minAge = this.#config.media.webrtcSetupTimeoutMs + 5000;
    for (const [name, ports] of [['rtp', this.#deps.rtpPorts], ['webrtc', this.#deps.webrtcPorts]] as const) {
      const reclaimed = await ports.reclaimOrphans(isLive, minAge, now).catch(() => []);
      if (reclaimed.length > 0) this.#log.error({ range: name, ports: reclaimed }, 'reclaimed ports that no live call owned');
    }
  }

  /** Stops taking calls (503), waits up to `drainMs` for calls in progress to end, then ends the rest. */
  async drain(drainMs: number): Promise<void> {
    this.#draining = true;
    if (this.#calls.size > 0) {
      this.#log.info({ calls: this.#calls.size, drainMs }, 'draining calls');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, drainMs);
        const check = setInterval(() => this.#calls.size === 0 && done(), 100);
        function done() {
          clearTimeout(timer);
          clearInterval(check);
          resolve();
        }
      });
    }
    await this.close();
  }

  /** Ends every call; one failing close never stops the others. */
  async close(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#sweeper);
    await Promise.allSettled(this.calls().map((c) => c.hangup('shutdown')));
  }
}
