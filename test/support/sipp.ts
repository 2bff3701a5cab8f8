/**
 * SIPp peers for integration tests: spawns `sipp` on 127.0.0.1 with one of
 * the scenarios in test/sipp/, waits until it listens, and hands back its
 * ports, its exit (code and call counts) and, on request, its message log.
 *
 * Every run is bounded: SIPp's own -timeout (with -timeout_error, see
 * below) and a kill guard here. Logs go to a temp dir removed by stop().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, rmSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidStateError } from '../../src/util/errors.js';
import { parseSippMessageLog, parseStats, type SippMessage, type SippStats } from './sipp-log.js';
import { boundBy, pickPorts, type Ports } from './sipp-ports.js';
import { tcpToTls, tlsToTcp, type TlsTunnel } from './tls-tunnel.js';

export type { SippMessage, SippStats } from './sipp-log.js';

export type SippScenarioName =
  | 'uas-answer'
  | 'uas-answer-then-bye'
  | 'uas-reject'
  | 'uas-ring-no-answer'
  | 'uas-ring-then-answer'
  | 'uas-ring-ignore-cancel'
  | 'uas-auth-then-ring'
  | 'uas-auth-chain'
  | 'uas-auth-stale'
  | 'uas-late-ring'
  | 'uas-late-answer'
  | 'uas-fork-answer'
  | 'uas-silent'
  | 'uas-registrar'
  | 'uas-registrar-busy'
  | 'uas-options'
  | 'uas-answer-elsewhere'
  | 'uas-bye'
  | 'uac-require'
  | 'uac-cseq-order'
  | 'uas-cseq-order'
  | 'uac-self-test';

export interface SippOptions {
  /** A scenario in test/sipp/ by name, or a path to a scenario file. */
  scenario: SippScenarioName | (string & {});
  /**
   * 'tls': Debian's SIPp has no TLS (built without OpenSSL), so SIPp runs over TCP behind a TLS
   * tunnel (tls-tunnel.ts): `port` is then the tunnel's (UAS), or `remote` is reached through one (UAC).
   */
  transport?: 'udp' | 'tcp' | 'tls';
  /**
   * transport 'tls', PEM file paths: `cert`/`key` that a UAS presents (required for UAS scenarios);
   * `ca`/`servername` a UAC verifies the remote against.
   */
  tls?: { cert?: string; key?: string; ca?: string; servername?: string };
  /** -rtp_echo: echo RTP arriving on mediaPort (and mediaPort + 2). */
  rtpEcho?: boolean;
  /** -lost: percentage (0-100) of SIP messages SIPp drops, both ways. UDP only. */
  lost?: number;
  /** -m: SIPp exits after this many calls ended (default 1). */
  calls?: number;
  /** -key name value: the scenario's [name] keywords, over its defaults. */
  keys?: Readonly<Record<string, string>>;
  /** Bound on the whole run (default 30000); SIPp's -timeout counts whole seconds. */
  timeoutMs?: number;
  /** -trace_msg, read back with messages(). */
  traceMsg?: boolean;
  /** UAC scenarios only: where to send calls, "host:port". */
  remote?: string;
  /** UAC scenarios only: -r, new calls per second (SIPp's default is 10). */
  rate?: number;
  /** Keep the log dir after stop() (also when SIPP_KEEP_LOGS is set). */
  keepLogs?: boolean;
  /** Anything else for the command line, appended last. */
  extraArgs?: readonly string[];
}

export interface SippResult {
  /**
   * 0: every call succeeded; 1: some failed; 97: stopped early; 99: no call;
   * 254: bind failure; 255: fatal error or -timeout reached. After a SIGTERM
   * from stop() or the guard SIPp exits 0: check `killed`.
   */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the kill guard or stop() had to end the process. */
  killed: boolean;
  /** null when SIPp wrote no final statistics (killed, or failed at start). */
  stats: SippStats | null;
  /** The -trace_err log (unexpected messages, aborted calls), possibly truncated. */
  errors: string;
  /** SIPp's stderr, possibly truncated. */
  stderr: string;
  args: readonly string[];
}

export interface SippPeer {
  readonly pid: number;
  /** SIP port on 127.0.0.1. */
  readonly port: number;
  /** RTP port on 127.0.0.1 (SIPp also binds mediaPort + 2). */
  readonly mediaPort: number;
  readonly transport: 'udp' | 'tcp' | 'tls';
  /** transport 'tls': the tunnel in front of SIPp (SNI seen, failed handshakes). */
  readonly tls?: TlsTunnel;
  readonly args: readonly string[];
  readonly logDir: string;
  /** Settles when SIPp exits, never rejects. */
  readonly done: Promise<SippResult>;
  /** The -trace_msg log so far (complete once done settled). */
  messages(): Promise<SippMessage[]>;
  /** Ends SIPp if still running (SIGTERM, then SIGKILL), reaps it, removes the logs. Safe to call twice. */
  stop(): Promise<SippResult>;
}

/** Status codes uas-reject.xml can answer with (SIPp needs them literal in the scenario). */
export const SIPP_REJECT_REASONS: Readonly<Record<string, string>> = {
  '403': 'Forbidden',
  '404': 'Not Found',
  '408': 'Request Timeout',
  '480': 'Temporarily Unavailable',
  '486': 'Busy Here',
  '488': 'Not Acceptable Here',
  '500': 'Server Internal Error',
  '503': 'Service Unavailable',
  '600': 'Busy Everywhere',
  '603': 'Decline',
};

interface ScenarioDefaults {
  keys: (o: SippOptions) => Record<string, string>;
  args?: readonly string[];
}

// Whether a UAS call stays 8 s after its last transaction to answer
// retransmissions (see the scenarios): only packet loss makes any on
// loopback, none come over TCP, and there a call still lingering when the
// peer closes the connection fails ("FailedTcpClosed").
const linger = (o: SippOptions): string => (o.transport !== 'tcp' && (o.lost ?? 0) > 0 ? '1' : '0');
// The same for the self-test UAC, as a pause in ms.
const lingerMs = (o: SippOptions): string => (linger(o) === '1' ? '8000' : '0');

const SCENARIO_DEFAULTS: Readonly<Record<SippScenarioName, ScenarioDefaults>> = {
  'uas-answer': { keys: (o) => ({ pt: '0', codec: 'PCMU', linger: linger(o) }) },
  'uas-answer-then-bye': { keys: () => ({ hold_ms: '3000', pt: '0', codec: 'PCMU' }) },
  'uas-reject': {
    keys: (o) => {
      const status = o.keys?.['status'] ?? '486';
      return { status, reason: Object.hasOwn(SIPP_REJECT_REASONS, status) ? SIPP_REJECT_REASONS[status]! : 'Rejected' };
    },
  },
  'uas-ring-no-answer': { keys: (o) => ({ linger: linger(o) }) },
  'uas-ring-then-answer': { keys: () => ({ ring_ms: '4000', pt: '0', codec: 'PCMU' }) },
  'uas-ring-ignore-cancel': { keys: () => ({}) },
  'uas-auth-then-ring': { keys: () => ({ ring_delay_ms: '1000' }) },
  // The nonces and expected digests come from each test.
  'uas-auth-chain': { keys: () => ({ pt: '0', codec: 'PCMU' }) },
  'uas-auth-stale': { keys: () => ({ pt: '0', codec: 'PCMU' }) },
  'uas-late-ring': { keys: () => ({ delay_ms: '1500' }) },
  'uas-late-answer': { keys: () => ({ delay_ms: '1500', pt: '0', codec: 'PCMU' }) },
  'uas-fork-answer': { keys: () => ({ pt: '0', codec: 'PCMU' }) },
  // -nd: nothing at all may be sent, not even for a call SIPp aborts.
  'uas-silent': { keys: () => ({ silent_ms: '5000' }), args: ['-nd'] },
  'uac-self-test': { keys: (o) => ({ mode: 'answer', hold_ms: '500', linger_ms: lingerMs(o) }) },
  'uas-registrar': { keys: () => ({ user: 'gwtrunk', password: 'trunk-secret', expires: '3' }) },
  'uas-registrar-busy': { keys: () => ({ retry_after: '1', min_expires: '5', expires: '5' }) },
  'uas-options': { keys: () => ({}) },
  // contact_port has no default: the test names where the Contact points.
  'uas-answer-elsewhere': { keys: () => ({}) },
  'uas-bye': { keys: () => ({}) },
  'uac-require': { keys: () => ({ to_user: 'alice' }) },
  'uac-cseq-order': { keys: () => ({ to_user: 'alice' }) },
  'uas-cseq-order': { keys: () => ({}) },
};

const HERE = dirname(fileURLToPath(import.meta.url));
// Compiled to dist/test/support/; the XML files stay in the source tree.
const SCENARIO_DIRS = [resolve(HERE, '../../../test/sipp'), resolve(HERE, '../sipp')];

const DEFAULT_TIMEOUT_MS = 30_000;
const READY_TIMEOUT_MS = 5_000;
const KILL_GRACE_MS = 3_000;
const TERM_GRACE_MS = 2_000;
const MAX_CAPTURE = 64 * 1024;
const EXIT_BIND_FAILED = 254;

let sippPathCache: string | null | undefined;

function findSipp(): string | null {
  if (sippPathCache !== undefined) return sippPathCache;
  const candidates = process.env['SIPP']
    ? [process.env['SIPP']]
    : (process.env['PATH'] ?? '').split(delimiter).filter(Boolean).map((d) => join(d, 'sipp'));
  sippPathCache = null;
  for (const c of candidates) {
    try {
      accessSync(c, fsConstants.X_OK);
      sippPathCache = c;
      break;
    } catch {
      // not this one
    }
  }
  return sippPathCache;
}

/** True when a sipp executable is found ($SIPP, else on PATH): integration tests skip without it. */
export function sippAvailable(): boolean {
  return findSipp() !== null;
}

function scenarioPath(scenario: string): string {
  if (scenario.endsWith('.xml') || scenario.includes('/')) {
    const p = isAbsolute(scenario) ? scenario : resolve(scenario);
    if (!existsSync(p)) throw new TypeError(`SIPp scenario file not found: ${p}`);
    return p;
  }
  for (const dir of SCENARIO_DIRS) {
    const p = join(dir, `${scenario}.xml`);
    if (existsSync(p)) return p;
  }
  throw new TypeError(`unknown SIPp scenario '${scenario}' (looked in ${SCENARIO_DIRS.join(', ')})`);
}

function scenarioName(scenario: string): string {
  const base = scenario.split('/').pop() ?? scenario;
  return base.endsWith('.xml') ? base.slice(0, -4) : base;
}

function validate(o: SippOptions): void {
  if (o.transport !== undefined && o.transport !== 'udp' && o.transport !== 'tcp' && o.transport !== 'tls') {
    throw new TypeError(`transport must be 'udp', 'tcp' or 'tls', got ${String(o.transport)}`);
  }
  if (o.tls !== undefined && o.transport !== 'tls') throw new TypeError("the tls option needs transport 'tls'");
  if (o.transport === 'tls' && !scenarioName(o.scenario).startsWith('uac') && (!o.tls?.cert || !o.tls.key)) {
    throw new TypeError('a UAS over TLS needs tls.cert and tls.key');
  }
  if (o.lost !== undefined) {
    if (!Number.isInteger(o.lost) || o.lost < 0 || o.lost > 100) throw new TypeError('lost must be an integer 0-100');
    // SIPp would drop messages a reliable transport never retransmits.
    if (o.lost > 0 && o.transport !== undefined && o.transport !== 'udp') throw new TypeError('lost needs UDP');
  }
  if (o.calls !== undefined && (!Number.isInteger(o.calls) || o.calls < 1)) throw new TypeError('calls must be an integer >= 1');
  if (o.timeoutMs !== undefined && (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0)) {
    throw new TypeError('timeoutMs must be a positive number');
  }
  if (o.rate !== undefined && (!Number.isFinite(o.rate) || o.rate <= 0)) throw new TypeError('rate must be positive');
  for (const [k, v] of Object.entries(o.keys ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new TypeError(`bad keyword name '${k}'`);
    if (typeof v !== 'string') throw new TypeError(`keyword '${k}' must be a string`);
  }
  const name = scenarioName(o.scenario);
  if (name === 'uas-reject') {
    const status = o.keys?.['status'];
    if (status !== undefined && !Object.hasOwn(SIPP_REJECT_REASONS, status)) {
      throw new TypeError(`uas-reject answers only ${Object.keys(SIPP_REJECT_REASONS).join(', ')}; got ${status}`);
    }
  }
  const uac = name.startsWith('uac');
  if (uac && o.remote === undefined) throw new TypeError(`scenario '${name}' is a UAC: give remote "host:port"`);
  if (!uac && (o.remote !== undefined || o.rate !== undefined)) {
    throw new TypeError('remote and rate are for UAC scenarios only');
  }
  if (o.remote !== undefined && !/^[^\s:]+:\d+$/.test(o.remote)) throw new TypeError('remote must be "host:port"');
}

// ---- readiness --------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- process ----------------------------------------------------------------

const live = new Set<ChildProcess>();
const logDirsToRemove = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test run that dies mid-way must not leave SIPp behind.
  process.once('exit', () => {
    for (const c of live) c.kill('SIGKILL');
    for (const d of logDirsToRemove) rmSync(d, { recursive: true, force: true });
  });
}

async function readTail(path: string): Promise<string> {
  const s = await readFile(path, 'utf8').catch(() => '');
  return s.length > MAX_CAPTURE ? `...${s.slice(-MAX_CAPTURE)}` : s;
}

interface Attempt {
  child: ChildProcess;
  args: string[];
  ports: Ports;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
}

function buildArgs(o: SippOptions, ports: Ports, logDir: string, name: string): string[] {
  const transport = o.transport ?? 'udp';
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const defaults = SCENARIO_DEFAULTS[name as SippScenarioName];
  const keys = { ...(defaults?.keys(o) ?? {}), ...(o.keys ?? {}) };
  const args = [
    '-sf', scenarioPath(o.scenario),
    ...(o.remote !== undefined ? [o.remote] : []),
    '-t', transport === 'tcp' ? 't1' : 'u1',
    '-i', '127.0.0.1',
    '-bind_local',
    '-p', String(ports.sip),
    '-mi', '127.0.0.1',
    '-mp', String(ports.media),
    // Remote-control socket: on loopback, SIPp picks a free port from 8888.
    '-ci', '127.0.0.1',
    '-m', String(o.calls ?? 1),
    '-nostdin',
    // -timeout counts whole seconds. Without -timeout_error SIPp only stops
    // placing calls at the timeout and waits for the ones running (measured:
    // a UAC call after a 100 Trying kept it alive indefinitely).
    '-timeout', `${Math.max(1, Math.ceil(timeoutMs / 1000))}s`,
    '-timeout_error',
    '-trace_err', '-error_file', join(logDir, 'errors.log'),
    '-trace_stat', '-stf', join(logDir, 'stats.csv'),
    '-trace_screen', '-screen_file', join(logDir, 'screen.log'),
    ...(o.traceMsg ? ['-trace_msg', '-message_file', join(logDir, 'messages.log')] : []),
    ...(o.rtpEcho ? ['-rtp_echo'] : []),
    ...(o.lost !== undefined && o.lost > 0 ? ['-lost', String(o.lost)] : []),
    ...(o.rate !== undefined ? ['-r', String(o.rate)] : []),
    ...(defaults?.args ?? []),
  ];
  for (const [k, v] of Object.entries(keys)) args.push('-key', k, v);
  args.push(...(o.extraArgs ?? []));
  return args;
}

function launch(bin: string, args: string[], logDir: string, ports: Ports): Attempt {
  const child = spawn(bin, args, { cwd: logDir, stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    stderr = (stderr + d).slice(-MAX_CAPTURE);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('error', (err) => {
      stderr += `\nspawn failed: ${err.message}`;
      live.delete(child);
      res({ code: null, signal: null });
    });
    child.once('close', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    });
  });
  return { child, args, ports, exited, stderr: () => stderr };
}

/** Resolves true when SIPp listens, false if it exited first. */
async function waitReady(a: Attempt, transport: 'udp' | 'tcp', uac: boolean): Promise<boolean> {
  let exited = false;
  void a.exited.then(() => {
    exited = true;
  });
  const pid = a.child.pid;
  if (pid === undefined) return false;
  if (!existsSync('/proc/net/udp')) {
    // No /proc (not Linux): a short grace instead of a probe.
    await Promise.race([sleep(300), a.exited]);
    return !exited;
  }
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!exited && Date.now() < deadline) {
    try {
      const media = await boundBy(pid, 'udp', a.ports.media);
      // A UAC's TCP socket connects rather than listens.
      const sip = uac && transport === 'tcp' ? true : await boundBy(pid, transport, a.ports.sip);
      if (media && sip) return true;
    } catch {
      // the process may be going away; checked again below
    }
    await Promise.race([sleep(15), a.exited]);
  }
  return false;
}

async function terminate(a: Attempt): Promise<void> {
  if (a.child.exitCode !== null || a.child.signalCode !== null) return;
  a.child.kill('SIGTERM');
  const t = setTimeout(() => a.child.kill('SIGKILL'), TERM_GRACE_MS);
  await a.exited;
  clearTimeout(t);
}

/**
 * Starts SIPp with a scenario from test/sipp/ and resolves once it listens
 * on 127.0.0.1 (SIP port and media ports bound, checked in /proc), so that
 * a caller can send at once.
 */
export async function startSipp(options: SippOptions): Promise<SippPeer> {
  validate(options);
  const bin = findSipp();
  if (bin === null) throw new Error('sipp not found (install sip-tester, or set $SIPP)');
  const transport = options.transport ?? 'udp';
  // SIPp itself speaks TCP where the peer sees TLS (see SippOptions.transport).
  const sippTransport = transport === 'udp' ? 'udp' : 'tcp';
  const name = scenarioName(options.scenario);
  const uac = name.startsWith('uac');
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const keepLogs = options.keepLogs === true || !!process.env['SIPP_KEEP_LOGS'];
  installExitHook();

  const logDir = await mkdtemp(join(tmpdir(), `sipp-${name}-`));
  if (!keepLogs) logDirsToRemove.add(logDir);

  let tunnel: TlsTunnel | undefined;
  let sippOptions: SippOptions = { ...options, transport: sippTransport };
  if (transport === 'tls' && uac) {
    const [host, port] = options.remote!.split(':') as [string, string];
    const ca = options.tls?.ca ? await readFile(options.tls.ca) : undefined;
    tunnel = await tcpToTls({ host, port: Number(port), ...(ca ? { ca } : {}), ...(options.tls?.servername ? { servername: options.tls.servername } : {}) });
    sippOptions = { ...sippOptions, remote: `127.0.0.1:${tunnel.port}` };
  }

  let attempt: Attempt | undefined;
  for (let tries = 0; tries < 2; tries++) {
    const ports = await pickPorts(sippTransport);
    const args = buildArgs(sippOptions, ports, logDir, name);
    const a = launch(bin, args, logDir, ports);
    if (await waitReady(a, sippTransport, uac)) {
      attempt = a;
      break;
    }
    await terminate(a);
    const { code } = await a.exited;
    if (code === EXIT_BIND_FAILED && tries === 0) continue; // lost a port race: new ports
    const errors = await readTail(join(logDir, 'errors.log'));
    await tunnel?.close();
    if (!keepLogs) {
      rmSync(logDir, { recursive: true, force: true });
      logDirsToRemove.delete(logDir);
    }
    throw new Error(
      `sipp did not start (exit ${String(code)}): ${a.stderr().trim() || errors.trim() || '(no output)'}\n  sipp ${args.join(' ')}`,
    );
  }
  if (!attempt) {
    await tunnel?.close();
    throw new Error('sipp did not start');
  }
  const a = attempt;
  if (transport === 'tls' && !uac) {
    try {
      const [cert, key] = await Promise.all([readFile(options.tls!.cert!), readFile(options.tls!.key!)]);
      tunnel = await tlsToTcp({ cert, key, targetPort: a.ports.sip });
    } catch (err) {
      await terminate(a);
      throw err;
    }
  }

  let killed = false;
  // A safety net over SIPp's own -timeout (whole seconds; without
  // -timeout_error it was seen waiting on running calls indefinitely).
  const guard = setTimeout(() => {
    killed = true;
    void terminate(a);
  }, Math.ceil(timeoutMs / 1000) * 1000 + KILL_GRACE_MS);

  const done: Promise<SippResult> = a.exited.then(async ({ code, signal }) => {
    clearTimeout(guard);
    await tunnel?.close();
    const [csv, errors] = await Promise.all([
      readFile(join(logDir, 'stats.csv'), 'utf8').catch(() => ''),
      readTail(join(logDir, 'errors.log')),
    ]);
    return { code, signal, killed, stats: parseStats(csv), errors, stderr: a.stderr(), args: a.args };
  });

  let stopping: Promise<SippResult> | undefined;
  let removed = false;
  const peer: SippPeer = {
    pid: a.child.pid!,
    port: tunnel && !uac ? tunnel.port : a.ports.sip,
    mediaPort: a.ports.media,
    transport,
    ...(tunnel ? { tls: tunnel } : {}),
    args: a.args,
    logDir,
    done,
    async messages() {
      if (!options.traceMsg) throw new TypeError('messages() needs the traceMsg option');
      if (removed) throw new InvalidStateError('SIPp peer stopped: its logs are removed');
      const log = await readFile(join(logDir, 'messages.log'), 'utf8').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return '';
        throw err;
      });
      return parseSippMessageLog(log);
    },
    stop() {
      stopping ??= (async () => {
        if (a.child.exitCode === null && a.child.signalCode === null) killed = true;
        await terminate(a);
        const result = await done;
        if (!keepLogs) {
          removed = true;
          rmSync(logDir, { recursive: true, force: true });
          logDirsToRemove.delete(logDir);
        }
        return result;
      })();
      return stopping;
    },
  };
  return peer;
}

/** One line for assertion messages: exit, counts and the start of the error log. */
export function formatSippResult(r: SippResult): string {
  const s = r.stats;
  const counts = s ? `created ${s.created}, successful ${s.successful}, failed ${s.failed}, retransmissions ${s.retransmissions}` : 'no stats';
  const errors = r.errors.trim().slice(0, 2000);
  return `sipp exit ${String(r.code)}${r.signal ? ` (${r.signal})` : ''}${r.killed ? ' killed' : ''}; ${counts}${errors ? `\n${errors}` : ''}`;
}
