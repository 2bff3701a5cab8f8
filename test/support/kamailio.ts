/**
 * Kamailio as a real SIP proxy and registrar for interop tests: runs
 * `kamailio -DD -E` (foreground, logging to stderr) with the config in
 * test/kamailio/kamailio.cfg on 127.0.0.1 (UDP and TCP on one free port),
 * the account and next hop given as `-A` defines. Resolves once it answers
 * an OPTIONS probe over UDP and accepts a TCP connection.
 *
 * Every run is bounded (a kill guard); stop() ends the whole process group
 * (Kamailio forks its workers) and removes the runtime dir.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { accessSync, constants as fsConstants, existsSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bindUdp, closeUdp } from './ports.js';

export interface KamailioOptions {
  /** The one account (the gateway's), challenged with 401 on REGISTER and 407 on INVITEs to other domains. */
  user?: string;
  password: string;
  /** Next hop ($du) for authenticated INVITEs to other domains, e.g. "sip:127.0.0.1:5070". */
  uasTarget?: string;
  /** Bound on the whole run (default 120000). */
  timeoutMs?: number;
}

export interface KamailioExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when stop() or the guard had to end it. */
  killed: boolean;
}

export interface KamailioProxy {
  readonly pid: number;
  /** UDP and TCP port on 127.0.0.1. */
  readonly port: number;
  readonly args: readonly string[];
  /** Kamailio's stderr so far (bounded; the oldest part is dropped). */
  log(): string;
  /** Resolves with the first log line matching `re` (already logged or to come); rejects after timeoutMs. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /**
   * Resolves with every log line matching `re` once there are at least `count` of them. Kamailio's
   * stderr reaches us through a pipe, so a line can arrive after the SIP message it describes.
   */
  waitForLogLines(re: RegExp, count: number, timeoutMs?: number): Promise<string[]>;
  /** Ends Kamailio and its workers (SIGTERM, then SIGKILL), reaps it. Safe to call twice. */
  stop(): Promise<KamailioExit>;
}

const HERE = dirname(fileURLToPath(import.meta.url));
// Compiled to dist/test/support/; the config stays in the source tree.
const CONFIG_CANDIDATES = [resolve(HERE, '../../../test/kamailio/kamailio.cfg'), resolve(HERE, '../kamailio/kamailio.cfg')];
const READY_TIMEOUT_MS = 5_000;
const TERM_GRACE_MS = 3_000;
const MAX_LOG = 512 * 1024;
// Goes inside a quoted -A define, read by Kamailio as a format string: no quote, backslash,
// dollar (a pseudo-variable), space or control character.
const SAFE_TOKEN = /^[\x21\x23\x25-\x5b\x5d-\x7e]{1,128}$/;

let binCache: string | null | undefined;

function findKamailio(): string | null {
  if (binCache !== undefined) return binCache;
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter).filter(Boolean), '/usr/sbin', '/usr/local/sbin'];
  const candidates = process.env['KAMAILIO'] ? [process.env['KAMAILIO']] : dirs.map((d) => join(d, 'kamailio'));
  binCache = null;
  for (const c of candidates) {
    try {
      accessSync(c, fsConstants.X_OK);
      binCache = c;
      break;
    } catch {
      // not this one
    }
  }
  return binCache;
}

/** True when a kamailio executable is found ($KAMAILIO, else PATH or /usr/sbin). */
export function kamailioAvailable(): boolean {
  return findKamailio() !== null;
}

/** A mocha `before` hook: skip without Kamailio locally, fail in CI. */
export function requireKamailio(this: Mocha.Context): void {
  if (kamailioAvailable()) return;
  if (process.env['CI']) throw new Error('kamailio is required in CI (apt-get install kamailio)');
  process.stderr.write('kamailio not found (apt-get install kamailio, or set $KAMAILIO): skipping the Kamailio interop tests\n');
  this.skip();
}

function configPath(): string {
  const p = CONFIG_CANDIDATES.find((c) => existsSync(c));
  if (!p) throw new Error(`kamailio.cfg not found (looked in ${CONFIG_CANDIDATES.join(', ')})`);
  return p;
}

function validate(o: KamailioOptions): void {
  if (typeof o.password !== 'string' || !SAFE_TOKEN.test(o.password)) throw new TypeError('password: 1-128 printable characters, no quote, backslash, dollar or space');
  if (o.user !== undefined && !/^[A-Za-z0-9._~+-]{1,64}$/.test(o.user)) throw new TypeError('user: letters, digits and . _ ~ + - only');
  if (o.uasTarget !== undefined && !/^sip:[A-Za-z0-9.-]+:\d{1,5}(;transport=(udp|tcp))?$/.test(o.uasTarget)) {
    throw new TypeError(`uasTarget must look like sip:127.0.0.1:5070, got ${String(o.uasTarget)}`);
  }
  if (o.timeoutMs !== undefined && !(Number.isInteger(o.timeoutMs) && o.timeoutMs > 0)) throw new TypeError('timeoutMs must be a positive integer');
}

/** A port free on 127.0.0.1 for both TCP and UDP right now (bounded attempts). */
async function freeSipPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const server = createServer();
    const port = await new Promise<number>((res, rej) => {
      server.once('error', rej);
      server.listen(0, '127.0.0.1', () => res((server.address() as { port: number }).port));
    });
    try {
      await closeUdp(await bindUdp(port));
      return port;
    } catch {
      // UDP side taken: another one
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  }
  throw new Error('no port free for both UDP and TCP on 127.0.0.1');
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is gone already
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test run that dies mid-way must not leave Kamailio behind.
  process.once('exit', () => {
    for (const c of live) killGroup(c, 'SIGKILL');
  });
}

/** One OPTIONS over UDP; true when Kamailio answers it with 200. */
function probeUdp(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createSocket('udp4');
    const branch = `z9hG4bK-probe-${randomBytes(6).toString('hex')}`;
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      s.close();
      res(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('error', () => finish(false));
    s.on('message', (m) => {
      if (m.toString('utf8').includes(branch)) finish(/^SIP\/2\.0 200 /.test(m.toString('utf8')));
    });
    s.bind(0, '127.0.0.1', () => {
      const local = s.address().port;
      const msg = [
        `OPTIONS sip:127.0.0.1:${port} SIP/2.0`,
        `Via: SIP/2.0/UDP 127.0.0.1:${local};branch=${branch};rport`,
        `From: <sip:probe@127.0.0.1:${local}>;tag=${branch.slice(-8)}`,
        `To: <sip:127.0.0.1:${port}>`,
        `Call-ID: ${branch}@127.0.0.1`,
        'CSeq: 1 OPTIONS',
        'Max-Forwards: 70',
        'Content-Length: 0',
        '',
        '',
      ].join('\r\n');
      s.send(msg, port, '127.0.0.1');
    });
  });
}

function probeTcp(port: number): Promise<boolean> {
  return new Promise((res) => {
    const c = connect({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.end();
      res(true);
    });
    c.once('error', () => res(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Starts Kamailio on 127.0.0.1 (UDP and TCP) and resolves once it answers. */
export async function startKamailio(options: KamailioOptions): Promise<KamailioProxy> {
  validate(options);
  const bin = findKamailio();
  if (bin === null) throw new Error('kamailio not found (apt-get install kamailio, or set $KAMAILIO)');
  installExitHook();
  const cfg = configPath();
  const runDir = await mkdtemp(join(tmpdir(), 'kamailio-'));
  let lastError = '';
  for (let tries = 0; tries < 3; tries++) {
    const port = await freeSipPort();
    const args = [
      '-f', cfg,
      '-DD', '-E',
      '-m', '32', '-M', '4',
      '-Y', runDir, '-w', runDir,
      '-l', `udp:127.0.0.1:${port}`, '-l', `tcp:127.0.0.1:${port}`,
      '-A', `TRUNK_USER="${options.user ?? 'webrtc-gw'}"`,
      '-A', `TRUNK_PASSWORD="${options.password}"`,
      ...(options.uasTarget !== undefined ? ['-A', `UAS_DST="${options.uasTarget}"`] : []),
    ];
    // Its own process group: stop() reaches the workers Kamailio forks.
    const child = spawn(bin, args, { cwd: runDir, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    live.add(child);
    let stderr = '';
    const waiters = new Set<() => void>();
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      stderr = (stderr + d).slice(-MAX_LOG);
      for (const w of waiters) w();
    });
    let exitedFlag = false;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
      child.once('error', (err) => {
        stderr += `\nspawn failed: ${err.message}`;
        exitedFlag = true;
        live.delete(child);
        res({ code: null, signal: null });
      });
      child.once('close', (code, signal) => {
        exitedFlag = true;
        live.delete(child);
        for (const w of waiters) w();
        res({ code, signal });
      });
    });

    let killed = false;
    const terminate = async (): Promise<void> => {
      if (!exitedFlag) {
        killGroup(child, 'SIGTERM');
        const t = setTimeout(() => killGroup(child, 'SIGKILL'), TERM_GRACE_MS);
        await exited;
        clearTimeout(t);
      }
      // Workers outlive a main process killed hard: end the group in any case.
      killGroup(child, 'SIGKILL');
    };

    const deadline = Date.now() + READY_TIMEOUT_MS;
    let ready = false;
    while (!exitedFlag && Date.now() < deadline) {
      if ((await probeUdp(port, 200)) && (await probeTcp(port))) {
        ready = true;
        break;
      }
      await Promise.race([sleep(50), exited]);
    }
    if (!ready) {
      await terminate();
      lastError = `kamailio did not start on port ${port}: ${stderr.trim().split('\n').slice(-15).join('\n') || '(no output)'}\n  kamailio ${args.join(' ')}`;
      // A lost port race shows as a bind error: try another port.
      if (/bind|address already in use/i.test(stderr)) continue;
      break;
    }

    const guard = setTimeout(() => {
      killed = true;
      void terminate();
    }, options.timeoutMs ?? 120_000);
    let stopping: Promise<KamailioExit> | undefined;
    const waitForLogLines = (re: RegExp, count: number, timeoutMs = 10_000): Promise<string[]> =>
      new Promise((res, rej) => {
        const check = () => {
          const lines = stderr.split('\n').filter((l) => re.test(l));
          if (lines.length >= count) done(() => res(lines));
          else if (exitedFlag) done(() => rej(new Error(`kamailio exited after logging ${lines.length} of ${count} lines matching ${String(re)}`)));
        };
        const timer = setTimeout(
          () => done(() => rej(new Error(`timed out waiting for kamailio to log ${count} lines matching ${String(re)}\n${stderr.split('\n').slice(-30).join('\n')}`))),
          timeoutMs,
        );
        const done = (f: () => void) => {
          clearTimeout(timer);
          waiters.delete(check);
          f();
        };
        waiters.add(check);
        check();
      });
    return {
      pid: child.pid!,
      port,
      args,
      log: () => stderr,
      async waitForLog(re: RegExp, timeoutMs = 10_000): Promise<string> {
        const [line] = await waitForLogLines(re, 1, timeoutMs);
        return line!;
      },
      waitForLogLines,
      stop() {
        stopping ??= (async () => {
          clearTimeout(guard);
          if (!exitedFlag) killed = true;
          await terminate();
          const { code, signal } = await exited;
          rmSync(runDir, { recursive: true, force: true });
          return { code, signal, killed };
        })();
        return stopping;
      },
    };
  }
  rmSync(runDir, { recursive: true, force: true });
  throw new Error(lastError);
}
