/**
 * Step 4, churn: many short calls back to back (a few in parallel), each set up, its PeerConnection
 * connected, a few packets echoed, hung up. The gateway's memory is read after a forced full GC
 * (through its inspector on 127.0.0.1) before and after; afterwards no call, port or
 * PeerConnection may remain.
 */
import { readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Softphone } from '../test/support/softphone.js';
import { startSipp } from '../test/support/sipp.js';
import { onCleanup } from './children.js';
import { BENCH_USER, GatewayProcess } from './gateway-process.js';
import { opt } from './media-step.js';
import { cpuPercent, sampleMachine, machineBusyPercent, sampleSelf } from './proc-stats.js';
import { distribution, errorText, round, sleep, withTimeout, type Distribution } from './stats.js';

const MiB = 2 ** 20;

export interface ChurnParams {
  calls: number;
  /** Calls in flight at once. */
  concurrency: number;
  /** Stop starting calls after this long (the run reports how many it did). */
  maxSeconds: number;
  warmupCalls: number;
  /** Packets each call sends (20 ms apart) and expects back. */
  packetsPerCall: number;
  /** calls.keepEndedMax for this gateway (ended calls it keeps listing). */
  keepEndedMax: number;
  /**
   * Wait this long after the last call before the final reading: RFC 3261 keeps completed UDP
   * transactions for 64*T1 = 32 s (Timers D, J), so a reading right away still holds the last
   * half minute of calls' transactions. 0: only the immediate reading.
   */
  settleSeconds: number;
}

export interface MemoryReading {
  rssMiB: number;
  heapUsedMiB: number;
  openFds: number;
}

export interface ChurnResult {
  params: ChurnParams;
  completed: number;
  failed: number;
  failures: string[];
  seconds: number;
  callsPerSecond: number;
  /** Per call as the client saw it: call() to hung up. */
  callMs: Distribution;
  gatewayCpuPercentOfCore?: number;
  gatewayCpuMsPerCall?: number;
  benchCpuPercentOfCore?: number;
  machineBusyPercent?: number;
  memory: {
    atStart: MemoryReading;
    before: MemoryReading;
    /** Right after the last call ended. */
    after: MemoryReading;
    /** After settleSeconds (transaction timers expired); the deltas use it when present. */
    settled?: MemoryReading;
    rssDeltaMiB: number;
    heapDeltaMiB: number;
    heapDeltaBytesPerCall: number;
  };
  leftover: {
    callsActive: number;
    peerConnectionsOpen: number;
    portsInUse: Record<string, number>;
    portEntries: number;
    fdDelta: number;
  };
  clean: boolean;
  gatewayLog: { problems: Array<{ level: string; msg: string; count: number; samples: string[] }>; endReasons: Record<string, number> };
}

type Log = (line: string) => void;

function openFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

async function memory(gw: GatewayProcess): Promise<MemoryReading> {
  await gw.collectGarbage();
  const m = await gw.metrics();
  return {
    rssMiB: round((m.value('gw_process_resident_memory_bytes') ?? 0) / MiB, 1),
    heapUsedMiB: round((m.value('gw_nodejs_heap_size_used_bytes') ?? 0) / MiB, 2),
    openFds: openFds(gw.pid),
  };
}

/** One short call: set up, PeerConnection connected, `packets` sent and echoed, hung up. */
export async function shortCall(phone: Softphone, packets: number): Promise<void> {
  const call = phone.call('sip:1000@127.0.0.1', { establishTimeoutMs: 10_000 });
  try {
    await call.established;
    if (packets > 0) {
      await call.startSendingPcmu({ count: packets, intervalMs: 20, connectTimeoutMs: 10_000 });
      await call.waitForRtp(packets, 5000);
    }
  } finally {
    await call.hangup().catch(() => undefined);
    await call.waitTerminated(10_000);
  }
}

export async function runChurn(p: ChurnParams, log: Log, gatewayExtra: { cpuProfDir?: string } = {}): Promise<ChurnResult> {
  const total = p.calls + p.warmupCalls;
  const sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: total, timeoutMs: (p.maxSeconds + p.settleSeconds + 120) * 1000 });
  const unregister = onCleanup(() => sipp.stop());
  let gw: GatewayProcess | undefined;
  const phones = new Set<Softphone>();
  let result: Omit<ChurnResult, 'gatewayLog'>;
  try {
    gw = await GatewayProcess.start({ trunkPort: sipp.port, inspect: true, keepEndedMax: p.keepEndedMax, ...gatewayExtra });
    const g = gw;
    const atStart = await memory(g);
    const connect = async () => {
      const ph = await Softphone.connect({ server: g.wsUrl, user: BENCH_USER.username, domain: '127.0.0.1', password: BENCH_USER.password });
      phones.add(ph);
      return ph;
    };
    // Each worker is one "browser tab" placing calls one after another; every 100 calls it is
    // closed and a new one connects, as tabs come and go (and the bench's own memory stays flat).
    const worker = async (calls: number, deadline: number, record: (ms: number | Error) => void) => {
      let phone = await connect();
      for (let i = 0; i < calls && performance.now() < deadline; i++) {
        if (i > 0 && i % 100 === 0) {
          await withTimeout(phone.close(), 15_000, 'closing a softphone').catch(() => undefined);
          phones.delete(phone);
          phone = await connect();
        }
        const t = performance.now();
        try {
          await shortCall(phone, p.packetsPerCall);
          record(performance.now() - t);
        } catch (e) {
          record(e instanceof Error ? e : new Error(String(e)));
        }
      }
      await withTimeout(phone.close(), 15_000, 'closing a softphone').catch(() => undefined);
      phones.delete(phone);
    };
    const share = (n: number, i: number) => Math.floor(n / p.concurrency) + (i < n % p.concurrency ? 1 : 0);

    await Promise.all(Array.from({ length: p.concurrency }, (_, i) => worker(share(p.warmupCalls, i), Infinity, () => undefined)));
    await sleep(500);
    const before = await memory(g);

    const callMs: number[] = [];
    const failures: string[] = [];
    const g0 = g.sample();
    const b0 = sampleSelf();
    const m0 = sampleMachine();
    const t0 = performance.now();
    const deadline = t0 + p.maxSeconds * 1000;
    let done = 0;
    const progress = setInterval(() => log(`    churn: ${done} calls`), 15_000);
    try {
      await Promise.all(
        Array.from({ length: p.concurrency }, (_, i) =>
          worker(share(p.calls, i), deadline, (r) => {
            done++;
            if (r instanceof Error) failures.push(errorText(r));
            else callMs.push(r);
          }),
        ),
      );
    } finally {
      clearInterval(progress);
    }
    const seconds = (performance.now() - t0) / 1000;
    const g1 = g.sample();
    const b1 = sampleSelf();
    const m1 = sampleMachine();

    // Let the last teardowns finish (closing PeerConnections is asynchronous).
    for (let i = 0; i < 50; i++) {
      const m = await g.metrics();
      if ((m.value('gw_calls_active') ?? 0) === 0 && (m.value('gw_peer_connections_open') ?? 0) === 0) break;
      await sleep(200);
    }
    await sleep(500);
    const after = await memory(g);
    let settled: MemoryReading | undefined;
    if (p.settleSeconds > 0) {
      log(`    churn: ${done} calls; waiting ${p.settleSeconds} s for SIP transaction timers before the last reading`);
      await sleep(p.settleSeconds * 1000);
      settled = await memory(g);
    }
    const final = settled ?? after;
    const m = await g.metrics();
    const rtp = await g.rtp();
    const portsInUse = Object.fromEntries(rtp.ranges.map((r) => [r.range, r.inUse]));
    const completed = callMs.length;
    const leftover = {
      callsActive: m.value('gw_calls_active') ?? 0,
      peerConnectionsOpen: m.value('gw_peer_connections_open') ?? 0,
      portsInUse,
      portEntries: rtp.ports.length,
      fdDelta: final.openFds - before.openFds,
    };
    const cpu = cpuPercent(g0, g1);
    result = {
      params: p,
      completed,
      failed: failures.length,
      failures: [...new Set(failures)].slice(0, 5),
      seconds: round(seconds, 1),
      callsPerSecond: round((completed + failures.length) / seconds, 1),
      callMs: distribution(callMs, 1),
      ...opt('gatewayCpuPercentOfCore', cpu === undefined ? undefined : round(cpu, 1)),
      ...opt('gatewayCpuMsPerCall', g0 && g1 && done > 0 ? round((g1.cpuMs - g0.cpuMs) / done, 2) : undefined),
      ...opt('benchCpuPercentOfCore', round(cpuPercent(b0, b1) ?? 0, 1)),
      ...opt('machineBusyPercent', machineBusyPercent(m0, m1) === undefined ? undefined : round(machineBusyPercent(m0, m1)!, 1)),
      memory: {
        atStart,
        before,
        after,
        ...(settled ? { settled } : {}),
        rssDeltaMiB: round(final.rssMiB - before.rssMiB, 1),
        heapDeltaMiB: round(final.heapUsedMiB - before.heapUsedMiB, 2),
        heapDeltaBytesPerCall: done > 0 ? Math.round(((final.heapUsedMiB - before.heapUsedMiB) * MiB) / done) : 0,
      },
      leftover,
      clean: leftover.callsActive === 0 && leftover.peerConnectionsOpen === 0 && Object.values(portsInUse).every((v) => v === 0) && leftover.portEntries === 0,
    };
  } finally {
    await Promise.allSettled([...phones].map((ph) => withTimeout(ph.close(), 15_000, 'closing a softphone')));
    await gw?.stop();
    unregister();
    await sipp.stop();
  }
  const summary = gw.logSummary();
  gw.dispose();
  return { ...result, gatewayLog: { problems: summary.problems, endReasons: summary.endReasons } };
}
