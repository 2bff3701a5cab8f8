/**
 * Step 2, call setup: short calls at stepped rates, open loop (calls start on schedule whether or
 * not earlier ones finished), in both directions through one gateway:
 *   outbound: softphones -> gateway -> SIPp UAS (uas-answer); timed at the softphone's WebSocket;
 *   inbound:  SIPp UAC (uac-call) -> gateway -> a registered softphone; timed by SIPp (-trace_rtt).
 * Stepping stops at the first rate with a failed call or a p95 above 1 s.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Softphone, type IncomingCall, type SoftphoneCall } from '../test/support/softphone.js';
import { startSipp, type SippPeer } from '../test/support/sipp.js';
import { onCleanup } from './children.js';
import { BENCH_USER, CALLEE_USER, GatewayProcess } from './gateway-process.js';
import { NOISY_NEIGHBOUR_PERCENT, opt, others } from './media-step.js';
import { histogramDelta, histogramQuantile, type Metrics } from './prometheus.js';
import { cpuPercent, machineBusyPercent, sampleMachine, sampleProcess, sampleSelf } from './proc-stats.js';
import { SipTimings } from './sip-timing.js';
import { distribution, errorText, mapLimit, round, sleep, withTimeout, type Distribution } from './stats.js';

export const SETUP_P95_LIMIT_MS = 1000;

export interface SetupParams {
  rates: number[];
  secondsPerRate: number;
  /** How long each answered call lasts before the caller hangs up. */
  holdMs: number;
  /** Softphones (WebSockets) the outbound calls are spread over. */
  phones: number;
  /** Calls each way before the first measured rate (JIT, lazy initialisation), at 2/s. */
  warmupCalls: number;
}

export interface SetupRateResult {
  rate: number;
  attempted: number;
  succeeded: number;
  failed: number;
  failures: string[];
  /** Calls started per second as actually launched. */
  launchedPerSecond: number;
  /** INVITE sent to 200 received, at the caller (outbound: includes the 407 digest round trip). */
  clientSetupMs: Distribution;
  /** Outbound only: call() to the INVITE on the wire, i.e. the load generator's werift offer. */
  clientOfferMs?: Distribution;
  /** Inbound only: INVITE received to 200 sent at the answering softphone (its werift answer). */
  calleeAnswerMs?: Distribution;
  /** gw_call_setup_seconds over this rate: INVITE received to 200 sent, as the gateway saw it (bucketed). */
  gatewaySetupMs: { count: number; mean?: number; p50?: number; p95?: number };
  /** Inbound: the gateway's histogram mean less the callee's mean answer time, an estimate of its own share. */
  gatewayOwnMeanMs?: number;
  gatewayCpuPercentOfCore?: number;
  /** Gateway CPU per call over the rate window (setup, the ICE/DTLS handshake, a short hold, teardown). */
  gatewayCpuMsPerCall?: number;
  benchCpuPercentOfCore?: number;
  machineBusyPercent?: number;
  /** CPU of everything but the gateway, this process and SIPp, % of one core. */
  otherProcessesPercentOfCore?: number;
  withinLimits: boolean;
  stopReason?: string;
  /** Set when a first attempt failed while other processes loaded the machine, and this is the repeat. */
  repeatOf?: { stopReason?: string; otherProcessesPercentOfCore?: number };
}

export interface SetupDirectionResult {
  direction: 'outbound' | 'inbound';
  description: string;
  rates: SetupRateResult[];
  maxRateWithinLimits: number;
  stoppedBecause: string;
}

export interface SetupResult {
  params: SetupParams;
  outbound: SetupDirectionResult;
  inbound: SetupDirectionResult;
  gatewayLog: { problems: Array<{ level: string; msg: string; count: number; samples: string[] }>; endReasons: Record<string, number> };
}

type Log = (line: string) => void;

function gatewayFigures(before: Metrics, after: Metrics, direction: string): SetupRateResult['gatewaySetupMs'] {
  const h = histogramDelta(before.histogram('gw_call_setup_seconds', { direction }), after.histogram('gw_call_setup_seconds', { direction }));
  const ms = (v: number | undefined) => (v === undefined ? undefined : round(v * 1000, 1));
  return {
    count: h.count,
    ...opt('mean', h.count > 0 ? round((h.sum / h.count) * 1000, 1) : undefined),
    ...opt('p50', ms(histogramQuantile(h, 0.5))),
    ...opt('p95', ms(histogramQuantile(h, 0.95))),
  };
}

function limits(r: Pick<SetupRateResult, 'failed' | 'clientSetupMs'>): string | undefined {
  if (r.failed > 0) return `${r.failed} failed calls`;
  if ((r.clientSetupMs.p95 ?? 0) > SETUP_P95_LIMIT_MS) return `p95 setup ${r.clientSetupMs.p95} ms > ${SETUP_P95_LIMIT_MS} ms`;
  return undefined;
}

/** Starts `count` tasks at `rate` per second (drift-free schedule); resolves when all have settled or the bound passed. */
async function openLoop(rate: number, count: number, boundMs: number, task: (i: number) => Promise<void>): Promise<{ launchedPerSecond: number }> {
  const t0 = performance.now();
  const running: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    await sleep(t0 + (i * 1000) / rate - performance.now());
    running.push(task(i).catch(() => undefined));
  }
  const span = (performance.now() - t0) / 1000;
  await withTimeout(Promise.all(running), boundMs, 'calls of this rate').catch(() => undefined);
  return { launchedPerSecond: round(count > 1 ? (count - 1) / span : count, 1) };
}

type RateRun = Omit<SetupRateResult, 'gatewaySetupMs' | 'withinLimits' | 'gatewayCpuPercentOfCore' | 'gatewayCpuMsPerCall' | 'benchCpuPercentOfCore' | 'machineBusyPercent'>;

/** measureRate, repeated once when it failed while other processes loaded the machine. */
async function measureRateOnce(gw: GatewayProcess, direction: 'outbound' | 'inbound', uasPid: number, run: () => Promise<RateRun & { uacCpuMs?: number }>, log: Log): Promise<SetupRateResult> {
  const r = await measureRate(gw, direction, uasPid, run);
  const others = r.otherProcessesPercentOfCore ?? 0;
  if (r.withinLimits || others <= NOISY_NEIGHBOUR_PERCENT) return r;
  log(`  setup ${direction} ${r.rate}/s: ${r.stopReason}, while other processes used ${others}% of a core: repeating once`);
  await sleep(5000);
  const again = await measureRate(gw, direction, uasPid, run);
  return { ...again, repeatOf: { ...opt('stopReason', r.stopReason), otherProcessesPercentOfCore: others } };
}

async function measureRate(
  gw: GatewayProcess,
  direction: 'outbound' | 'inbound',
  uasPid: number,
  run: () => Promise<RateRun & { uacCpuMs?: number }>,
): Promise<SetupRateResult> {
  const before = await gw.metrics();
  const u0 = sampleProcess(uasPid);
  const g0 = gw.sample();
  const b0 = sampleSelf();
  const m0 = sampleMachine();
  const { uacCpuMs, ...r } = await run();
  const u1 = sampleProcess(uasPid);
  const g1 = gw.sample();
  const b1 = sampleSelf();
  const m1 = sampleMachine();
  const after = await gw.metrics();
  const gatewaySetupMs = gatewayFigures(before, after, direction);
  const stopReason = limits(r);
  const cpu = cpuPercent(g0, g1);
  return {
    ...r,
    gatewaySetupMs,
    ...opt('gatewayOwnMeanMs', r.calleeAnswerMs?.mean !== undefined && gatewaySetupMs.mean !== undefined ? round(gatewaySetupMs.mean - r.calleeAnswerMs.mean, 1) : undefined),
    ...opt('gatewayCpuPercentOfCore', cpu === undefined ? undefined : round(cpu, 1)),
    ...opt('gatewayCpuMsPerCall', g0 && g1 && r.attempted > 0 ? round((g1.cpuMs - g0.cpuMs) / r.attempted, 1) : undefined),
    ...opt('benchCpuPercentOfCore', maybe(cpuPercent(b0, b1))),
    ...opt('machineBusyPercent', maybe(machineBusyPercent(m0, m1))),
    ...opt('otherProcessesPercentOfCore', others(machineBusyPercent(m0, m1), [cpu, cpuPercent(b0, b1), cpuPercent(u0, u1), g0 && g1 && uacCpuMs !== undefined ? (uacCpuMs / (g1.at - g0.at)) * 100 : undefined])),
    withinLimits: stopReason === undefined,
    ...(stopReason ? { stopReason } : {}),
  };
}

const maybe = (v: number | undefined) => (v === undefined ? undefined : round(v, 1));

async function outboundRate(phones: Softphone[], timings: SipTimings, rate: number, p: SetupParams): Promise<RateRun> {
  const count = Math.max(1, Math.round(rate * p.secondsPerRate));
  const setup: number[] = [];
  const offer: number[] = [];
  const failures: string[] = [];
  let succeeded = 0;
  const { launchedPerSecond } = await openLoop(rate, count, p.holdMs + 40_000, async (i) => {
    const phone = phones[i % phones.length]!;
    const tCall = performance.now();
    let call: SoftphoneCall | undefined;
    try {
      call = phone.call('sip:1000@127.0.0.1', { establishTimeoutMs: 10_000 });
      await call.established;
      const callId = call.inviter.request.callId;
      const t = timings.get(callId);
      const ms = timings.setupMs(callId);
      if (ms !== undefined) setup.push(ms);
      if (t) offer.push(t.inviteAt - tCall);
      timings.forget(callId);
      succeeded++;
      await sleep(p.holdMs);
    } catch (e) {
      failures.push(errorText(e));
    } finally {
      if (call) {
        await call.hangup().catch((e: unknown) => failures.push(`hangup: ${errorText(e)}`));
        await call.waitTerminated(10_000).catch(() => undefined);
      }
    }
  });
  return {
    rate,
    attempted: count,
    succeeded,
    failed: count - succeeded,
    failures: [...new Set(failures)].slice(0, 3),
    launchedPerSecond,
    clientSetupMs: distribution(setup, 1),
    clientOfferMs: distribution(offer, 1),
  };
}

/** The registered softphone that answers every incoming call at once and records its answer time. */
class AutoAnswer {
  readonly answerMs: number[] = [];
  readonly failures: string[] = [];
  #running = true;
  #loop: Promise<void>;
  #inFlight = new Set<Promise<void>>();

  constructor(readonly phone: Softphone, readonly timings: SipTimings) {
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    while (this.#running) {
      let call: IncomingCall;
      try {
        call = await this.phone.nextIncoming(500);
      } catch {
        continue;
      }
      const p = this.#answer(call);
      this.#inFlight.add(p);
      void p.finally(() => this.#inFlight.delete(p));
    }
  }

  async #answer(call: IncomingCall): Promise<void> {
    try {
      await call.answer({ timeoutMs: 10_000 });
      const ms = this.timings.setupMs(call.callId);
      if (ms !== undefined) this.answerMs.push(ms);
      this.timings.forget(call.callId);
      await call.waitTerminated(60_000);
    } catch (e) {
      this.failures.push(errorText(e));
    }
  }

  take(): { answerMs: number[]; failures: string[] } {
    const out = { answerMs: [...this.answerMs], failures: [...this.failures] };
    this.answerMs.length = 0;
    this.failures.length = 0;
    return out;
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
    await withTimeout(Promise.allSettled([...this.#inFlight]), 15_000, 'answered calls ending').catch(() => undefined);
  }
}

async function inboundRate(gw: GatewayProcess, callee: AutoAnswer, rate: number, p: SetupParams): Promise<RateRun & { uacCpuMs?: number }> {
  const count = Math.max(1, Math.round(rate * p.secondsPerRate));
  const boundMs = p.secondsPerRate * 1000 + p.holdMs + 40_000;
  const sipp = await startSipp({
    scenario: 'uac-call',
    remote: `127.0.0.1:${gw.sipPort}`,
    rate,
    calls: count,
    keys: { to_user: CALLEE_USER.username, hangup_ms: String(p.holdMs), bye_wait_ms: '0', linger_ms: '0' },
    extraArgs: ['-trace_rtt', '-rtt_freq', '1'],
    keepLogs: true,
    timeoutMs: boundMs,
  });
  const unregister = onCleanup(() => sipp.stop());
  const t0 = performance.now();
  // SIPp's CPU: the last /proc reading before it exits.
  const first = sampleProcess(sipp.pid);
  let last = first;
  const poll = setInterval(() => (last = sampleProcess(sipp.pid) ?? last), 250);
  try {
    const result = await withTimeout(sipp.done, boundMs + 5000, 'SIPp UAC').catch(async () => sipp.stop());
    clearInterval(poll);
    const span = (performance.now() - t0) / 1000;
    const rtd = readRtd(sipp);
    const { answerMs, failures } = callee.take();
    const succeeded = result.stats?.successful ?? 0;
    const failed = result.stats ? result.stats.failed + Math.max(0, count - result.stats.created) : count;
    const sippErrors = result.errors.split('\n').filter((l) => /error|fail|unexpected|timeout/i.test(l)).slice(0, 2);
    return {
      rate,
      attempted: count,
      succeeded,
      failed,
      failures: [...new Set([...failures, ...sippErrors])].slice(0, 3),
      launchedPerSecond: round(count / Math.max(span - p.holdMs / 1000, 0.001), 1),
      clientSetupMs: distribution(rtd, 1),
      calleeAnswerMs: distribution(answerMs, 1),
      ...opt('uacCpuMs', first && last ? last.cpuMs - first.cpuMs : undefined),
    };
  } finally {
    clearInterval(poll);
    unregister();
    await sipp.stop();
    rmSync(sipp.logDir, { recursive: true, force: true });
  }
}

/** SIPp's per-call response times (ms, whole ms) from its -trace_rtt file. */
function readRtd(sipp: SippPeer): number[] {
  const out: number[] = [];
  for (const f of readdirSync(sipp.logDir).filter((n) => n.endsWith('_rtt.csv'))) {
    for (const line of readFileSync(join(sipp.logDir, f), 'utf8').split('\n').slice(1)) {
      const v = Number(line.split(';')[1]);
      if (line.trim() !== '' && Number.isFinite(v)) out.push(v);
    }
  }
  return out;
}

function summarise(direction: 'outbound' | 'inbound', description: string, rates: SetupRateResult[]): SetupDirectionResult {
  const ok = rates.filter((r) => r.withinLimits);
  const stop = rates.find((r) => !r.withinLimits);
  return {
    direction,
    description,
    rates,
    maxRateWithinLimits: ok.length > 0 ? Math.max(...ok.map((r) => r.rate)) : 0,
    stoppedBecause: stop ? `${stop.rate}/s: ${stop.stopReason}` : 'all rates within limits',
  };
}

export async function runSetup(p: SetupParams, log: Log): Promise<SetupResult> {
  const totalOutbound = p.rates.reduce((a, r) => a + Math.round(r * p.secondsPerRate), 0);
  const boundS = p.rates.length * 2 * (p.secondsPerRate + 60) + 60;
  const uas = await startSipp({ scenario: 'uas-answer', calls: 2 * totalOutbound + p.warmupCalls + 10, timeoutMs: boundS * 1000 });
  const unregisterUas = onCleanup(() => uas.stop());
  let gw: GatewayProcess | undefined;
  const phones: Softphone[] = [];
  let callee: AutoAnswer | undefined;
  let result: Omit<SetupResult, 'gatewayLog'>;
  try {
    gw = await GatewayProcess.start({ trunkPort: uas.port, maxConcurrent: 1000 });
    const g = gw;
    const timings = new SipTimings();
    const connected = await mapLimit(Array.from({ length: p.phones }), 8, () =>
      Softphone.connect({ server: g.wsUrl, user: BENCH_USER.username, domain: '127.0.0.1', password: BENCH_USER.password }),
    );
    for (const c of connected) {
      if (c.status === 'rejected') throw c.reason;
      timings.attach(c.value);
      phones.push(c.value);
    }

    const warm = { ...p, secondsPerRate: p.warmupCalls / 2 };
    if (p.warmupCalls > 0) await outboundRate(phones, timings, 2, warm);
    const outbound: SetupRateResult[] = [];
    for (const rate of p.rates) {
      const r = await measureRateOnce(g, 'outbound', uas.pid, () => outboundRate(phones, timings, rate, p), log);
      outbound.push(r);
      log(`  setup outbound ${rate}/s: ${r.succeeded}/${r.attempted} ok, INVITE->200 p50 ${r.clientSetupMs.p50 ?? '?'} ms p95 ${r.clientSetupMs.p95 ?? '?'} ms, gateway mean ${r.gatewaySetupMs.mean ?? '?'} ms, ${r.gatewayCpuMsPerCall ?? '?'} ms CPU/call`);
      if (!r.withinLimits) break;
      await sleep(1000);
    }

    const calleePhone = await Softphone.connect({ server: g.wsUrl, user: CALLEE_USER.username, domain: '127.0.0.1', password: CALLEE_USER.password });
    phones.push(calleePhone);
    const calleeTimings = new SipTimings();
    calleeTimings.attach(calleePhone);
    await calleePhone.register({ expires: 600 });
    callee = new AutoAnswer(calleePhone, calleeTimings);
    if (p.warmupCalls > 0) {
      await inboundRate(g, callee, 2, warm);
      callee.take();
    }
    const inbound: SetupRateResult[] = [];
    for (const rate of p.rates) {
      const r = await measureRateOnce(g, 'inbound', uas.pid, () => inboundRate(g, callee!, rate, p), log);
      inbound.push(r);
      log(`  setup inbound ${rate}/s: ${r.succeeded}/${r.attempted} ok, INVITE->200 p50 ${r.clientSetupMs.p50 ?? '?'} ms p95 ${r.clientSetupMs.p95 ?? '?'} ms, callee answer p50 ${r.calleeAnswerMs?.p50 ?? '?'} ms, gateway mean ${r.gatewaySetupMs.mean ?? '?'} ms`);
      if (!r.withinLimits) break;
      await sleep(1000);
    }
    await callee.stop();
    callee = undefined;
    result = {
      params: p,
      outbound: summarise('outbound', 'softphones (SIP.js + werift, WebSocket) -> gateway -> SIPp UAS; timed at the softphone', outbound),
      inbound: summarise('inbound', 'SIPp UAC -> gateway -> one registered softphone; timed by SIPp (INVITE to 200)', inbound),
    };
  } finally {
    await callee?.stop();
    await mapLimit(phones, 8, (ph) => withTimeout(ph.close(), 20_000, 'closing a softphone'));
    await gw?.stop();
    unregisterUas();
    await uas.stop();
  }
  const summary = gw.logSummary();
  gw.dispose();
  return { ...result, gatewayLog: { problems: summary.problems, endReasons: summary.endReasons } };
}
