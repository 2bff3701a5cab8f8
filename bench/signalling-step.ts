/**
 * Step 3, signalling under load: REGISTER (with its digest challenge) and OPTIONS round trips over
 * WebSocket, first against the idle gateway, then while step 1's media load runs at about 80 % of
 * the largest N that stayed within limits.
 */
import { Worker } from 'node:worker_threads';
import { BENCH_USER, SIGNAL_USER, type GatewayProcess } from './gateway-process.js';
import { MediaCalls } from './media-calls.js';
import { opt, startMediaPeers } from './media-step.js';
import { cpuPercent, machineBusyPercent, sampleMachine, sampleSelf } from './proc-stats.js';
import type { ProbeRequest, ProbeResult } from './signalling-probe-worker.js';
import { distribution, round, sleep, withTimeout, type Distribution } from './stats.js';

export interface SignallingParams {
  /** Concurrent media calls during the loaded measurement. */
  calls: number;
  idleSeconds: number;
  loadedSeconds: number;
  perSecond: number;
  warmupSeconds: number;
}

export interface SignallingFigures {
  registerChallengeMs: Distribution;
  registerAuthMs: Distribution;
  registerTotalMs: Distribution;
  optionsMs: Distribution;
  errors: string[];
  probeLoopDelayP99Ms: number;
  gatewayCpuPercentOfCore?: number;
  gatewayEventLoopLagP99Ms?: number;
  benchCpuPercentOfCore?: number;
  machineBusyPercent?: number;
}

export interface SignallingResult {
  params: SignallingParams;
  callsUp: number;
  idle: SignallingFigures;
  loaded: SignallingFigures;
}

type Log = (line: string) => void;

function probe(req: ProbeRequest): Promise<ProbeResult> {
  const worker = new Worker(new URL('./signalling-probe-worker.js', import.meta.url), { workerData: req });
  const done = new Promise<ProbeResult>((resolve, reject) => {
    worker.once('message', (m: { ok: boolean; result?: ProbeResult; error?: string }) => (m.ok ? resolve(m.result!) : reject(new Error(m.error))));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`signalling probe exited with ${code}`)));
  });
  return withTimeout(done, (req.seconds + 30) * 1000, 'signalling probe').finally(() => void worker.terminate());
}

async function measure(gw: GatewayProcess, seconds: number, perSecond: number): Promise<SignallingFigures> {
  await gw.metrics(); // event-loop histogram restarts here
  const g0 = gw.sample();
  const b0 = sampleSelf();
  const m0 = sampleMachine();
  const r = await probe({ wsUrl: gw.wsUrl, user: SIGNAL_USER, seconds, perSecond });
  const g1 = gw.sample();
  const b1 = sampleSelf();
  const m1 = sampleMachine();
  const met = await gw.metrics();
  const one = (v: number | undefined) => (v === undefined ? undefined : round(v, 1));
  return {
    registerChallengeMs: distribution(r.registerChallengeMs, 2),
    registerAuthMs: distribution(r.registerAuthMs, 2),
    registerTotalMs: distribution(r.registerTotalMs, 2),
    optionsMs: distribution(r.optionsMs, 2),
    errors: [...new Set(r.errors)].slice(0, 5),
    probeLoopDelayP99Ms: round(r.probeLoopDelayP99Ms, 1),
    ...opt('gatewayCpuPercentOfCore', one(cpuPercent(g0, g1))),
    ...opt('gatewayEventLoopLagP99Ms', one((met.value('gw_nodejs_eventloop_lag_p99_seconds') ?? 0) * 1000)),
    ...opt('benchCpuPercentOfCore', one(cpuPercent(b0, b1))),
    ...opt('machineBusyPercent', one(machineBusyPercent(m0, m1))),
  };
}

export async function runSignalling(p: SignallingParams, log: Log): Promise<SignallingResult> {
  const { gw, stop } = await startMediaPeers(p.calls, 150 + p.idleSeconds + p.loadedSeconds + 60);
  let media: MediaCalls | undefined;
  try {
    const idle = await measure(gw, p.idleSeconds, p.perSecond);
    log(`  signalling idle: REGISTER p50 ${idle.registerTotalMs.p50} ms p99 ${idle.registerTotalMs.p99} ms, OPTIONS p50 ${idle.optionsMs.p50} ms p99 ${idle.optionsMs.p99} ms`);
    media = await MediaCalls.open({ wsUrl: gw.wsUrl, user: BENCH_USER, count: p.calls, setupTimeoutMs: 150_000 });
    media.startSending();
    await sleep(p.warmupSeconds * 1000);
    const loaded = await measure(gw, p.loadedSeconds, p.perSecond);
    log(`  signalling with ${media.legs.length} calls: REGISTER p50 ${loaded.registerTotalMs.p50} ms p99 ${loaded.registerTotalMs.p99} ms, OPTIONS p50 ${loaded.optionsMs.p50} ms p99 ${loaded.optionsMs.p99} ms`);
    return { params: p, callsUp: media.legs.length, idle, loaded };
  } finally {
    await media?.close();
    await stop();
    gw.dispose();
  }
}
