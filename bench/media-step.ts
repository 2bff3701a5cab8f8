/**
 * Step 1, concurrent calls with media (what bench/relay-cost.ts measured, extended): for each N,
 * a fresh gateway and SIPp (UAS with RTP echo), N bridged G.711 calls with 20 ms packets both
 * ways, a warm-up, then a measured window. Stepping stops once round-trip loss exceeds 1 % or the
 * gateway's event-loop lag p99 exceeds 50 ms (or calls fail to set up).
 */
import { cpus, loadavg } from 'node:os';
import { startSipp, type SippPeer } from '../test/support/sipp.js';
import { onCleanup } from './children.js';
import { BENCH_USER, GatewayProcess, type CallRecord } from './gateway-process.js';
import type { Metrics } from './prometheus.js';
import { MediaCalls } from './media-calls.js';
import { cpuPercent, machineBusyPercent, sampleMachine, sampleProcess, sampleSelf } from './proc-stats.js';
import { distribution, linearFit, round, sleep, type Distribution } from './stats.js';

export const LOSS_LIMIT_PERCENT = 1;
/** A step that fails while other processes on the machine used more than this (% of one core) is repeated once. */
export const NOISY_NEIGHBOUR_PERCENT = 25;
export const LAG_LIMIT_MS = 50;
const MiB = 2 ** 20;

export interface MediaParams {
  steps: number[];
  warmupSeconds: number;
  windowSeconds: number;
}

export interface MediaStepResult {
  calls: number;
  established: number;
  setupFailures: string[];
  setupSeconds: number;
  windowSeconds: number;
  gateway: {
    cpuPercentOfCore: number;
    cpuPercentPerCall: number;
    /** Gateway CPU in the window divided by the packets it relayed in the window (both directions). */
    cpuMicrosPerRelayedPacket?: number;
    relayedPacketsPerSecond: number;
    rssMiB: number;
    heapUsedMiB: number;
    /** Before any call, in the same process. */
    rssBaseMiB: number;
    heapBaseMiB: number;
    rssPerCallMiB: number;
    heapPerCallMiB: number;
    /** prom-client's monitorEventLoopDelay p99 over the window; it includes the 10 ms sampling interval. */
    eventLoopLagP99Ms: number;
    eventLoopLagMaxMs: number;
    peerConnectionsOpen: number;
  };
  loss: {
    /** Packets sent in the window whose echo never came back (both gateway passes plus SIPp's echo). */
    roundTripPercent: number;
    /** Over the whole sending period, from counters: phone -> gateway's WebRTC leg. */
    browserToGatewayPercent?: number;
    /** Gateway's RTP leg -> SIPp -> back (SIPp's echo, outside the gateway). */
    sipEchoPercent?: number;
    /** Gateway's WebRTC leg -> phone. */
    gatewayToBrowserPercent?: number;
    /** Packets the relay dropped (not negotiated etc.) either way. */
    relayDropped: number;
  };
  rttMs: Distribution;
  loadGenerator: {
    benchCpuPercentOfCore: number;
    sippCpuPercentOfCore?: number;
    machineBusyPercent?: number;
    /** CPU used by everything but the gateway, this process and SIPp (other tenants), % of one core. */
    otherProcessesPercentOfCore?: number;
    loadAverage1m: number;
    sendLatenessMs: Distribution;
    benchLoopDelayP99Ms: number;
  };
  withinLimits: boolean;
  stopReason?: string;
  /** Set when a first attempt failed while other processes loaded the machine, and this is the repeat. */
  repeatOf?: { stopReason?: string; otherProcessesPercentOfCore?: number };
  gatewayLog: { problems: Array<{ level: string; msg: string; count: number; samples: string[] }> };
}

export interface MediaSeriesResult {
  params: MediaParams;
  steps: MediaStepResult[];
  /** Largest N within the limits. */
  maxCallsWithinLimits: number;
  stoppedBecause: string;
  /** Least-squares slopes over the steps within limits (the process's own base cancels out). */
  marginal?: {
    cpuPercentPerCall?: number;
    /** Slope of gateway CPU (µs/s) over relayed packets per second. */
    cpuMicrosPerRelayedPacket?: number;
    rssMiBPerCall?: number;
    heapMiBPerCall?: number;
  };
}

type Log = (line: string) => void;

function sum(calls: CallRecord[], pick: (c: CallRecord) => number | undefined): number {
  return calls.reduce((a, c) => a + (pick(c) ?? 0), 0);
}

function relayed(calls: CallRecord[]): number {
  return sum(calls, (c) => (c.relay ? c.relay.toSip.packets + c.relay.toBrowser.packets : 0));
}

const lossPct = (out: number, back: number) => (out > 0 ? round(Math.max(0, 1 - back / out) * 100, 3) : undefined);

/** Starts the SIPp UAS (RTP echo) and a gateway trunked to it; both are stopped by the caller (or the cleanup hooks). */
export async function startMediaPeers(
  calls: number,
  boundSeconds: number,
  gatewayExtra: { cpuProfDir?: string } = {},
  sippCalls = calls,
): Promise<{ sipp: SippPeer; gw: GatewayProcess; stop: () => Promise<void> }> {
  const sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: sippCalls, timeoutMs: boundSeconds * 1000 });
  const unregister = onCleanup(() => sipp.stop());
  let gw: GatewayProcess;
  try {
    gw = await GatewayProcess.start({ trunkPort: sipp.port, maxConcurrent: Math.max(500, calls * 2), ...gatewayExtra });
  } catch (e) {
    unregister();
    await sipp.stop();
    throw e;
  }
  const stop = async () => {
    await gw.stop();
    unregister();
    await sipp.stop();
  };
  return { sipp, gw, stop };
}

export async function runMediaStep(n: number, p: MediaParams, log: Log): Promise<MediaStepResult> {
  const bound = 150 + p.warmupSeconds + p.windowSeconds + 60;
  const { sipp, gw, stop } = await startMediaPeers(n, bound);
  let media: MediaCalls | undefined;
  let result: Omit<MediaStepResult, 'gatewayLog'>;
  try {
    const base = await gw.metrics();
    media = await MediaCalls.open({ wsUrl: gw.wsUrl, user: BENCH_USER, count: n, setupTimeoutMs: 150_000 });
    log(`    ${media.legs.length}/${n} calls up in ${(media.setupMs / 1000).toFixed(1)} s`);
    result = await measureWindow(n, p, gw, sipp, media, base);
  } finally {
    if (media) {
      const errors = await media.close();
      if (errors.length > 0) log(`    teardown: ${errors.length} softphone errors, e.g. ${errors[0]}`);
    }
    await stop();
  }
  const summary = gw.logSummary();
  gw.dispose();
  return { ...result, gatewayLog: { problems: summary.problems } };
}

async function measureWindow(n: number, p: MediaParams, gw: GatewayProcess, sipp: SippPeer, media: MediaCalls, base: Metrics): Promise<Omit<MediaStepResult, 'gatewayLog'>> {
  media.startSending();
  await sleep(p.warmupSeconds * 1000);

  const calls0 = await gw.calls();
  await gw.metrics(); // resets the event-loop histogram: the next scrape covers the window only
  const g0 = gw.sample();
  const self0 = sampleSelf();
  const s0 = sampleProcess(sipp.pid);
  const m0 = sampleMachine();
  media.openWindow(p.windowSeconds * 1000);
  await sleep(p.windowSeconds * 1000);
  const g1 = gw.sample();
  const self1 = sampleSelf();
  const s1 = sampleProcess(sipp.pid);
  const m1 = sampleMachine();
  const met = await gw.metrics();
  const calls1 = await gw.calls();
  media.stopSending();
  await sleep(1000); // echoes of the window's last packets
  const w = media.windowStats();
  const callsEnd = await gw.calls();
  const totals = media.totals;

  const windowMs = g0 && g1 ? g1.at - g0.at : p.windowSeconds * 1000;
  const gwCpu = cpuPercent(g0, g1) ?? 0;
  const relayedInWindow = relayed(calls1) - relayed(calls0);
  const established = media.legs.length;
  const rss = met.value('gw_process_resident_memory_bytes') ?? 0;
  const heap = met.value('gw_nodejs_heap_size_used_bytes') ?? 0;
  const rssBase = base.value('gw_process_resident_memory_bytes') ?? 0;
  const heapBase = base.value('gw_nodejs_heap_size_used_bytes') ?? 0;
  const lagP99 = (met.value('gw_nodejs_eventloop_lag_p99_seconds') ?? 0) * 1000;
  const roundTrip = w.sent > 0 ? round(Math.max(0, 1 - w.echoed / w.sent) * 100, 3) : 100;

  const fromBrowser = sum(callsEnd, (c) => c.legs.browser.media?.packetsIn);
  const toBrowser = sum(callsEnd, (c) => c.legs.browser.media?.packetsOut);
  const toSip = sum(callsEnd, (c) => c.legs.sip.media?.packetsOut);
  const fromSip = sum(callsEnd, (c) => c.legs.sip.media?.packetsIn);
  const dropped = sum(callsEnd, (c) => (c.relay ? c.relay.toSip.dropped + c.relay.toBrowser.dropped : 0));

  let stopReason: string | undefined;
  if (established < n) stopReason = `${n - established} of ${n} calls failed to set up`;
  else if (roundTrip > LOSS_LIMIT_PERCENT) stopReason = `round-trip loss ${roundTrip}% > ${LOSS_LIMIT_PERCENT}%`;
  else if (lagP99 > LAG_LIMIT_MS) stopReason = `event-loop lag p99 ${lagP99.toFixed(1)} ms > ${LAG_LIMIT_MS} ms`;

  return {
    calls: n,
    established,
    setupFailures: [...new Set(media.setupFailures)].slice(0, 5),
    setupSeconds: round(media.setupMs / 1000, 1),
    windowSeconds: round(windowMs / 1000, 2),
    gateway: {
      cpuPercentOfCore: round(gwCpu, 1),
      cpuPercentPerCall: round(gwCpu / Math.max(1, established), 3),
      ...opt('cpuMicrosPerRelayedPacket', relayedInWindow > 0 && g0 && g1 ? round(((g1.cpuMs - g0.cpuMs) * 1000) / relayedInWindow, 1) : undefined),
      relayedPacketsPerSecond: round(relayedInWindow / (windowMs / 1000), 0),
      rssMiB: round(rss / MiB, 1),
      heapUsedMiB: round(heap / MiB, 1),
      rssBaseMiB: round(rssBase / MiB, 1),
      heapBaseMiB: round(heapBase / MiB, 1),
      rssPerCallMiB: round((rss - rssBase) / MiB / Math.max(1, established), 3),
      heapPerCallMiB: round((heap - heapBase) / MiB / Math.max(1, established), 3),
      eventLoopLagP99Ms: round(lagP99, 1),
      eventLoopLagMaxMs: round((met.value('gw_nodejs_eventloop_lag_max_seconds') ?? 0) * 1000, 1),
      peerConnectionsOpen: met.value('gw_peer_connections_open') ?? 0,
    },
    loss: {
      roundTripPercent: roundTrip,
      ...opt('browserToGatewayPercent', lossPct(totals.sent, fromBrowser)),
      ...opt('sipEchoPercent', lossPct(toSip, fromSip)),
      ...opt('gatewayToBrowserPercent', lossPct(toBrowser, totals.received)),
      relayDropped: dropped,
    },
    rttMs: distribution(w.rttMs, 2),
    loadGenerator: {
      benchCpuPercentOfCore: round(cpuPercent(self0, self1) ?? 0, 1),
      ...opt('sippCpuPercentOfCore', maybeRound(cpuPercent(s0, s1), 1)),
      ...opt('machineBusyPercent', maybeRound(machineBusyPercent(m0, m1), 1)),
      ...opt('otherProcessesPercentOfCore', others(machineBusyPercent(m0, m1), [gwCpu, cpuPercent(self0, self1), cpuPercent(s0, s1)])),
      loadAverage1m: round(loadavg()[0] ?? 0, 2),
      sendLatenessMs: distribution(w.sendLatenessMs, 2),
      benchLoopDelayP99Ms: round(w.benchLoopDelayP99Ms, 1),
    },
    withinLimits: stopReason === undefined,
    ...(stopReason ? { stopReason } : {}),
  };
}

export async function runMediaSeries(p: MediaParams, log: Log): Promise<MediaSeriesResult> {
  const steps: MediaStepResult[] = [];
  let stoppedBecause = 'all steps within limits';
  for (const n of p.steps) {
    log(`  media: ${n} calls`);
    let r = await runMediaStep(n, p, log);
    const others = r.loadGenerator.otherProcessesPercentOfCore ?? 0;
    if (!r.withinLimits && others > NOISY_NEIGHBOUR_PERCENT) {
      log(`    ${r.stopReason}, while other processes used ${others}% of a core: repeating ${n} calls once`);
      await sleep(5000);
      const first = r;
      r = await runMediaStep(n, p, log);
      r.repeatOf = { ...opt('stopReason', first.stopReason), otherProcessesPercentOfCore: others };
    }
    steps.push(r);
    log(
      `    gateway ${r.gateway.cpuPercentOfCore}% of a core (${r.gateway.cpuPercentPerCall}%/call, ${r.gateway.cpuMicrosPerRelayedPacket ?? '?'} µs/packet), ` +
        `RSS ${r.gateway.rssMiB} MiB, lag p99 ${r.gateway.eventLoopLagP99Ms} ms, loss ${r.loss.roundTripPercent}%, rtt p50 ${r.rttMs.p50 ?? '?'} ms; ` +
        `bench ${r.loadGenerator.benchCpuPercentOfCore}%, sipp ${r.loadGenerator.sippCpuPercentOfCore ?? '?'}%, others ${r.loadGenerator.otherProcessesPercentOfCore ?? '?'}% of a core`,
    );
    if (!r.withinLimits) {
      stoppedBecause = `${n} calls: ${r.stopReason}`;
      log(`    stop: ${r.stopReason}`);
      break;
    }
  }
  const ok = steps.filter((s) => s.withinLimits);
  const fit = (pick: (s: MediaStepResult) => number) => {
    const f = linearFit(ok.map((s) => [s.established, pick(s)] as const));
    return f ? f.slope : undefined;
  };
  const cpu = fit((s) => s.gateway.cpuPercentOfCore);
  const perPacket = linearFit(ok.map((s) => [s.gateway.relayedPacketsPerSecond, s.gateway.cpuPercentOfCore * 1e4] as const))?.slope;
  const rss = fit((s) => s.gateway.rssMiB);
  const heap = fit((s) => s.gateway.heapUsedMiB);
  return {
    params: p,
    steps,
    maxCallsWithinLimits: ok.length > 0 ? Math.max(...ok.map((s) => s.calls)) : 0,
    stoppedBecause,
    ...(ok.length >= 2
      ? {
          marginal: {
            ...opt('cpuPercentPerCall', maybeRound(cpu, 3)),
            ...opt('cpuMicrosPerRelayedPacket', maybeRound(perPacket, 1)),
            ...opt('rssMiBPerCall', maybeRound(rss, 3)),
            ...opt('heapMiBPerCall', maybeRound(heap, 3)),
          },
        }
      : {}),
  };
}

/** Machine busy (% of all cores) as % of one core, less what our own processes used; never below 0. */
export function others(machineBusy: number | undefined, ours: Array<number | undefined>): number | undefined {
  if (machineBusy === undefined) return undefined;
  const total = (machineBusy * cpus().length) - ours.reduce<number>((a, b) => a + (b ?? 0), 0);
  return round(Math.max(0, total), 1);
}

export function opt<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

export function maybeRound(v: number | undefined, digits: number): number | undefined {
  return v === undefined || !Number.isFinite(v) ? undefined : round(v, digits);
}
