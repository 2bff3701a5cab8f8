/**
 * The gateway under test, in its own process: `node dist/src/main.js --config FILE` with a config
 * written for the run, JSON logs to a file (the bench reads them afterwards, not while measuring),
 * and its admin API for metrics, calls and ports. Optionally with `--cpu-prof` (profile written at
 * its exit) or `--inspect` on 127.0.0.1 (to force a GC before reading the heap).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { onCleanup, trackProcess } from './children.js';
import { Metrics } from './prometheus.js';
import { sampleProcess, type ProcSample } from './proc-stats.js';
import { sleep } from './stats.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = join(ROOT, 'dist/src/main.js');

export const BENCH_USER = { username: 'bench', password: 'bench-password-1' };
export const CALLEE_USER = { username: 'callee', password: 'callee-password-1' };
export const SIGNAL_USER = { username: 'signal', password: 'signal-password-1' };

export interface GatewayOptions {
  /** The SIP peer calls go to (SIPp's UAS). */
  trunkPort: number;
  maxConcurrent?: number;
  /** calls.keepEndedMax (the default 1000 keeps that many ended calls for 5 min). */
  keepEndedMax?: number;
  /** Write a V8 CPU profile into this folder when the gateway exits. */
  cpuProfDir?: string;
  /** Open the inspector on 127.0.0.1 (random port) so collectGarbage() can be used. */
  inspect?: boolean;
  logLevel?: 'info' | 'warn' | 'debug';
  /** Where its log file goes (kept after stop); default a temp folder removed by stop(). */
  logFile?: string;
}

export interface CallRecord {
  id: string;
  state: string;
  endReason?: { by: string; cause: string; status?: number };
  legs: {
    browser: { media?: { packetsIn: number; packetsOut: number } };
    sip: { media?: { packetsIn: number; packetsOut: number } };
  };
  relay?: { toSip: { packets: number; dropped: number; lost: number }; toBrowser: { packets: number; dropped: number; lost: number } };
}

export interface RtpReport {
  ranges: Array<{ range: string; inUse: number; free: number; total: number }>;
  ports: unknown[];
}

export interface LogSummary {
  lines: number;
  /** Warnings and errors by message, with a few distinct details each. */
  problems: Array<{ level: string; msg: string; count: number; samples: string[] }>;
  /** `call ended` lines by end reason (`by/cause/status`). */
  endReasons: Record<string, number>;
}

export class GatewayProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly httpPort: number;
  readonly adminPort: number;
  readonly sipPort: number;
  readonly logFile: string;
  readonly #tmp: string;
  readonly #inspectorUrl: string | undefined;
  readonly #exited: Promise<void>;
  readonly #unregister: () => void;
  #stopping: Promise<void> | undefined;

  private constructor(p: {
    child: ChildProcess; httpPort: number; adminPort: number; sipPort: number; logFile: string; tmp: string; inspectorUrl?: string; exited: Promise<void>;
  }) {
    this.child = p.child;
    this.pid = p.child.pid!;
    this.httpPort = p.httpPort;
    this.adminPort = p.adminPort;
    this.sipPort = p.sipPort;
    this.logFile = p.logFile;
    this.#tmp = p.tmp;
    this.#inspectorUrl = p.inspectorUrl;
    this.#exited = p.exited;
    // Only an abnormal exit runs this (stop() unregisters it): nobody will read the log then.
    this.#unregister = onCleanup(() => this.stop().then(() => this.dispose()));
  }

  static async start(o: GatewayOptions): Promise<GatewayProcess> {
    const tmp = mkdtempSync(join(tmpdir(), 'gw-bench-'));
    const cfgPath = join(tmp, 'config.json');
    const maxConcurrent = o.maxConcurrent ?? 500;
    writeFileSync(
      cfgPath,
      JSON.stringify({
        sip: { listen: [{ transport: 'udp', host: '127.0.0.1', port: 0 }] },
        http: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
        // Below Linux's ephemeral range (32768+), where the load generator's own sockets land.
        media: { rtpPorts: [20000, 24999], webrtcPorts: [25000, 29999] },
        users: [BENCH_USER, CALLEE_USER, SIGNAL_USER],
        trunks: [{ name: 'sipp', host: '127.0.0.1', port: o.trunkPort, transport: 'udp', optionsPingMs: 0 }],
        calls: { maxConcurrent, ...(o.keepEndedMax !== undefined ? { keepEndedMax: o.keepEndedMax } : {}) },
        shutdown: { drainMs: 2000 },
        log: { level: o.logLevel ?? 'info' },
      }),
    );
    const logFile = o.logFile ?? join(tmp, 'gateway.log');
    const errFile = join(tmp, 'stderr.log');
    const out = openSync(logFile, 'w');
    const err = openSync(errFile, 'w');
    const nodeArgs = [
      ...(o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir] : []),
      ...(o.inspect ? ['--inspect=127.0.0.1:0'] : []),
      MAIN,
      '--config',
      cfgPath,
    ];
    const child = spawn(process.execPath, nodeArgs, { stdio: ['ignore', out, err], cwd: ROOT });
    closeSync(out);
    closeSync(err);
    trackProcess(child);
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    let gone = false;
    void exited.then(() => (gone = true));
    try {
      const deadline = Date.now() + 15_000;
      for (;;) {
        if (gone) throw new Error(`gateway exited during start: ${readText(errFile).slice(-2000) || readText(logFile).slice(-2000)}`);
        if (Date.now() > deadline) throw new Error('gateway did not log "gateway started" within 15 s');
        const started = readText(logFile)
          .split('\n')
          .map(parseLine)
          .find((l) => l?.['msg'] === 'gateway started');
        const inspectorUrl = o.inspect ? /Debugger listening on (ws:\/\/\S+)/.exec(readText(errFile))?.[1] : undefined;
        if (started && (!o.inspect || inspectorUrl)) {
          const s = started as { http: { port: number }; admin: { port: number }; sip: Array<{ port: number }> };
          return new GatewayProcess({
            child, httpPort: s.http.port, adminPort: s.admin.port, sipPort: s.sip[0]!.port, logFile, tmp, exited,
            ...(inspectorUrl ? { inspectorUrl } : {}),
          });
        }
        await sleep(50);
      }
    } catch (e) {
      child.kill('SIGKILL');
      await exited;
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.httpPort}/ws`;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  sample(): ProcSample | undefined {
    return sampleProcess(this.pid);
  }

  async #get(path: string): Promise<Response> {
    const res = await fetch(`http://127.0.0.1:${this.adminPort}${path}`, { signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
    return res;
  }

  async metrics(): Promise<Metrics> {
    return Metrics.parse(await (await this.#get('/metrics')).text());
  }

  async calls(): Promise<CallRecord[]> {
    return ((await (await this.#get('/api/calls')).json()) as { calls: CallRecord[] }).calls;
  }

  async rtp(): Promise<RtpReport> {
    return (await (await this.#get('/api/rtp')).json()) as RtpReport;
  }

  /** A full GC in the gateway through the inspector (needs `inspect`), so heap figures are live objects only. */
  async collectGarbage(): Promise<void> {
    const url = this.#inspectorUrl;
    if (!url) throw new Error('collectGarbage() needs the gateway started with inspect');
    const ws = new WebSocket(url);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('inspector: no answer to HeapProfiler.collectGarbage within 10 s')), 10_000);
        ws.once('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
        ws.once('open', () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' })));
        ws.on('message', (data) => {
          const m = JSON.parse(String(data)) as { id?: number; error?: { message: string } };
          if (m.id !== 1) return;
          clearTimeout(timer);
          if (m.error) reject(new Error(`inspector: ${m.error.message}`));
          else resolve();
        });
      });
    } finally {
      ws.terminate();
    }
  }

  /** Warnings/errors and call end reasons from its log (read after the fact). */
  logSummary(): LogSummary {
    const problems = new Map<string, { level: string; msg: string; count: number; samples: Set<string> }>();
    const endReasons: Record<string, number> = {};
    let lines = 0;
    for (const raw of readText(this.logFile).split('\n')) {
      const l = parseLine(raw);
      if (!l) continue;
      lines++;
      const level = Number(l['level']);
      const msg = String(l['msg'] ?? '');
      if (msg === 'call ended') {
        const r = l['endReason'] as { by?: string; cause?: string; status?: number } | undefined;
        const key = `${r?.by ?? '?'}/${r?.cause ?? '?'}${r?.status ? `/${r.status}` : ''}`;
        endReasons[key] = (endReasons[key] ?? 0) + 1;
      }
      if (level < 40) continue;
      const name = level >= 50 ? 'error' : 'warn';
      const key = `${name} ${msg}`;
      const p = problems.get(key) ?? { level: name, msg, count: 0, samples: new Set<string>() };
      p.count++;
      const err = l['err'] as { message?: string } | string | undefined;
      const detail = typeof err === 'string' ? err : err?.message ?? (l['detail'] as string | undefined) ?? (l['reason'] as string | undefined);
      if (detail && p.samples.size < 3) p.samples.add(String(detail).slice(0, 300));
      problems.set(key, p);
    }
    return {
      lines,
      problems: [...problems.values()].sort((a, b) => b.count - a.count).map((p) => ({ ...p, samples: [...p.samples] })),
      endReasons,
    };
  }

  /** SIGTERM (the gateway drains for 2 s, then exits and writes any CPU profile), SIGKILL after 20 s. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#unregister();
      if (this.running) {
        this.child.kill('SIGTERM');
        const t = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
        await this.#exited;
        clearTimeout(t);
      }
    })();
    return this.#stopping;
  }

  /** Removes its temp folder (config, stderr, and the log unless it was placed elsewhere). */
  dispose(): void {
    rmSync(this.#tmp, { recursive: true, force: true });
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function parseLine(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}
