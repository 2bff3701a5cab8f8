/**
 * `npm run bench`: the benchmark suite of issue 7. Runs, in order, (1) concurrent calls with media
 * stepped over N, (2) call setup at stepped rates both ways, (3) REGISTER/OPTIONS round trips
 * idle and under 80 % of step 1's maximum, (4) churn, and with --profile a CPU profile of the
 * gateway; writes bench/results/<timestamp>.json, .md and .svg. Loopback only; every load is
 * bounded in count and time, and every child process is ended on every way out.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { sippAvailable } from '../test/support/sipp.js';
import { mediaChart } from './chart.js';
import { cleanupAll, installExitGuards } from './children.js';
import { runChurn } from './churn-step.js';
import { ROOT } from './gateway-process.js';
import { runMediaSeries } from './media-step.js';
import { parseOptions, USAGE, type BenchOptions } from './options.js';
import { machineFacts } from './proc-stats.js';
import { runProfile } from './profile-step.js';
import { markdown, type BenchResults } from './report.js';
import { runSetup } from './setup-step.js';
import { runSignalling } from './signalling-step.js';
import { errorText, round } from './stats.js';
import { REFERENCES, targets } from './targets.js';

const t0 = performance.now();
function log(line: string): void {
  const s = Math.floor((performance.now() - t0) / 1000);
  process.stdout.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
}

function sippVersion(): string {
  const r = spawnSync('sipp', ['-v'], { encoding: 'utf8', timeout: 5000 });
  return /SIPp v\S+/.exec(`${r.stdout}${r.stderr}`)?.[0]?.replace(/\.$/, '') ?? 'SIPp (version unknown)';
}

async function step<T>(name: string, results: BenchResults, fn: () => Promise<T>): Promise<T | undefined> {
  log(`${name}`);
  try {
    return await fn();
  } catch (e) {
    log(`${name} failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    results.errors.push({ step: name, message: errorText(e) });
    await cleanupAll();
    return undefined;
  }
}

async function run(opts: BenchOptions, argv: string[]): Promise<BenchResults> {
  const stamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  const dir = join(ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const files = { json: join(dir, `${stamp}.json`), markdown: join(dir, `${stamp}.md`), chart: join(dir, `${stamp}.svg`), profile: join(dir, `${stamp}-profile`) };
  const results: BenchResults = {
    startedAt: new Date().toISOString(),
    finishedAt: '',
    wallSeconds: 0,
    preset: opts.preset,
    argv,
    machine: { ...machineFacts(sippVersion()), loadAverageAtStart: loadavg().map((x) => round(x, 2)) },
    params: { steps: [...opts.steps], media: opts.media, setup: opts.setup, signalling: opts.signalling, churn: opts.churn, profile: opts.profile ? opts.profileParams : false },
    targets: [],
    errors: [],
    files: { json: relative(ROOT, files.json), markdown: relative(ROOT, files.markdown) },
  };
  log(`benchmark (${opts.preset}) on ${results.machine.cpuModel} x${results.machine.cores}, Node ${results.machine.node}, load average ${results.machine.loadAverageAtStart.join(' ')}`);

  if (opts.steps.has('media')) results.media = await step('1. concurrent calls with media', results, () => runMediaSeries(opts.media, log));
  if (opts.steps.has('setup')) results.setup = await step('2. call setup', results, () => runSetup(opts.setup, log));
  const maxN = results.media?.maxCallsWithinLimits ?? 0;
  const loadCalls = opts.signalling.calls ?? (maxN > 0 ? Math.max(1, Math.round(maxN * opts.signalling.loadFraction)) : opts.signalling.fallbackCalls);
  if (opts.steps.has('signalling')) {
    results.signalling = await step(`3. signalling under load (${loadCalls} calls)`, results, () =>
      runSignalling({ calls: loadCalls, idleSeconds: opts.signalling.idleSeconds, loadedSeconds: opts.signalling.loadedSeconds, perSecond: opts.signalling.perSecond, warmupSeconds: opts.signalling.warmupSeconds }, log),
    );
  }
  if (opts.steps.has('churn')) results.churn = await step(`4. churn (${opts.churn.calls} calls)`, results, () => runChurn(opts.churn, log));
  if (opts.profile) {
    results.profile = await step(`profile (${loadCalls} calls)`, results, () => runProfile({ ...opts.profileParams, calls: opts.profileParams.calls ?? loadCalls }, files.profile, log));
    if (results.profile) results.files.profile = relative(ROOT, results.profile.file);
  }

  results.targets = targets(results.media, results.setup, results.churn);
  results.finishedAt = new Date().toISOString();
  results.wallSeconds = round((performance.now() - t0) / 1000, 1);
  let chartName: string | undefined;
  if (results.media && results.media.steps.length > 0) {
    const refs = [
      { label: REFERENCES.janus.name, cpuPercentPerCall: REFERENCES.janus.cpuPercentPerCall, color: '#7f8c8d' },
      { label: REFERENCES.rtpengine.name, cpuPercentPerCall: REFERENCES.rtpengine.cpuPercentPerCall, color: '#27ae60' },
      { label: REFERENCES.nodeFloor.name, cpuPercentPerCall: REFERENCES.nodeFloor.cpuPercentPerCall, color: '#8e44ad' },
    ];
    const title = `Gateway CPU per call and loss, ${results.machine.cpuModel} x${results.machine.cores}, ${results.startedAt.slice(0, 10)}`;
    writeFileSync(files.chart, mediaChart(results.media.steps, refs, title, results.media.marginal?.cpuPercentPerCall));
    results.files.chart = relative(ROOT, files.chart);
    chartName = `${stamp}.svg`;
  }
  writeFileSync(files.json, `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(files.markdown, markdown(results, chartName));
  return results;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  let opts: BenchOptions | 'help';
  try {
    opts = parseOptions(argv);
  } catch (e) {
    process.stderr.write(`${errorText(e)}\n${USAGE}\n`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (!sippAvailable()) {
    process.stderr.write('sipp not found: install sip-tester (Debian) or set $SIPP\n');
    return 1;
  }
  if (!existsSync(join(ROOT, 'dist/src/main.js'))) {
    process.stderr.write('dist/src/main.js missing: run `npm run build` first\n');
    return 1;
  }
  const disarm = installExitGuards(opts.deadlineMinutes * 60_000, log);
  try {
    const r = await run(opts, argv);
    log(`done in ${Math.round(r.wallSeconds)} s`);
    for (const t of r.targets) {
      const c = t.comparisons.map((x) => `${x.ratio ?? '?'}x ${x.against}`).join(', ');
      log(`  ${t.metric}: ${t.ours ?? '?'} ${t.unit}${c ? ` (${c})` : ''}`);
    }
    log(`written ${r.files.markdown}, ${r.files.json}${r.files.chart ? `, ${r.files.chart}` : ''}${r.files.profile ? `, ${r.files.profile}` : ''}`);
    return r.errors.length > 0 ? 1 : 0;
  } finally {
    disarm();
    await cleanupAll();
  }
}

main().then(
  (code) => process.exit(code),
  async (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    await cleanupAll();
    process.exit(1);
  },
);
