/**
 * Relay cost: N bridged G.711 calls (20 ms packets both ways) through a gateway running in its own
 * process; reports the gateway's CPU (% of one core), CPU per call, CPU per relayed packet, RSS
 * per call and loss. Load: werift softphones in this process, SIPp echoing RTP. Loopback only;
 * every run is bounded in calls and seconds.
 *
 *   npm run bench                    # default steps
 *   npm run bench -- --steps 10,25 --seconds 10
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Softphone } from '../test/support/softphone.js';
import { startSipp } from '../test/support/sipp.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const { values } = parseArgs({ options: { steps: { type: 'string', default: '10,25,50' }, seconds: { type: 'string', default: '15' } } });
const steps = values.steps!.split(',').map(Number).filter((n) => n > 0 && n <= 300);
const seconds = Math.min(Math.max(Number(values.seconds), 3), 120);

const CLK_TCK = 100; // Linux USER_HZ

function procStat(pid: number): { cpuMs: number; rssKiB: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // utime + stime
  const rss = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { cpuMs: (ticks * 1000) / CLK_TCK, rssKiB: Number(rss?.[1] ?? 0) };
}

async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function runStep(n: number) {
  const sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: n, timeoutMs: (seconds + 60) * 1000 });
  const httpPort = await freePort();
  const cfgPath = join(tmpdir(), `gw-bench-${process.pid}.json`);
  writeFileSync(
    cfgPath,
    JSON.stringify({
      sip: { listen: [{ transport: 'udp', host: '127.0.0.1', port: 0 }] },
      http: { host: '127.0.0.1', port: httpPort },
      trunks: [{ name: 'sipp', host: '127.0.0.1', port: sipp.port, transport: 'udp' }],
      users: [{ username: 'bench', password: 'bench-password-1' }],
      log: { level: 'warn' },
    }),
  );
  const gw = spawn(process.execPath, [join(root, 'dist/src/main.js'), '--config', cfgPath], { stdio: ['ignore', 'ignore', 'inherit'] });
  const phones: Softphone[] = [];
  try {
    const phone = await (async () => {
      for (let i = 0; i < 50; i++) {
        try {
          return await Softphone.connect({ server: `ws://127.0.0.1:${httpPort}/ws`, user: 'bench', domain: '127.0.0.1', password: 'bench-password-1' });
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      throw new Error('gateway did not come up');
    })();
    phones.push(phone);
    const calls = [];
    for (let i = 0; i < n; i++) {
      const c = phone.call('sip:1000@127.0.0.1');
      await c.established;
      calls.push(c);
    }
    const packets = Math.round((seconds * 1000) / 20);
    const baseRx = calls.map((c) => c.rtpReceived);
    const sending = calls.map((c) => c.startSendingPcmu({ count: packets + 50, intervalMs: 20 }));
    await new Promise((r) => setTimeout(r, 1000)); // warm-up: the first second is not measured
    const before = procStat(gw.pid!);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const after = procStat(gw.pid!);
    const wallMs = performance.now() - t0;
    await Promise.allSettled(sending);
    await new Promise((r) => setTimeout(r, 500));
    const sent = (packets + 50) * n;
    const received = calls.reduce((a, c, i) => a + c.rtpReceived - baseRx[i]!, 0);
    await Promise.allSettled(calls.map((c) => c.hangup()));
    const cpuPct = ((after.cpuMs - before.cpuMs) / wallMs) * 100;
    const relayedPerSec = n * 2 * 50; // each call: 50 packets/s each way through the gateway
    return {
      calls: n,
      cpuPercentOfCore: +cpuPct.toFixed(2),
      cpuPercentPerCall: +(cpuPct / n).toFixed(3),
      cpuMicrosPerRelayedPacket: +(((after.cpuMs - before.cpuMs) * 1000) / ((relayedPerSec * wallMs) / 1000)).toFixed(1),
      rssMiB: +(after.rssKiB / 1024).toFixed(1),
      lossRoundTripPercent: +(Math.max(0, 1 - received / sent) * 100).toFixed(2),
    };
  } finally {
    await Promise.allSettled(phones.map((p) => p.close()));
    gw.kill('SIGTERM');
    await new Promise((r) => gw.once('exit', r));
    await sipp.stop();
  }
}

async function main() {
  const results = [];
  for (const n of steps) {
    const r = await runStep(n);
    console.log(JSON.stringify(r));
    results.push(r);
  }
  const first = results[0];
  const last = results[results.length - 1];
  // RSS per call from the slope between the smallest and largest N (the process's own base cancels out).
  const rssMiBPerCall = first && last && last.calls > first.calls ? +((last.rssMiB - first.rssMiB) / (last.calls - first.calls)).toFixed(3) : undefined;
  const out = { date: new Date().toISOString(), cpu: cpus()[0]?.model, cores: cpus().length, node: process.version, seconds, results, rssMiBPerCall };
  mkdirSync(join(root, 'bench/results'), { recursive: true });
  const file = join(root, 'bench/results', `relay-cost-${Date.now()}.json`);
  writeFileSync(file, JSON.stringify(out, null, 2));
  console.log(JSON.stringify(out, null, 2));
  console.log(`written ${file}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
