/** The Markdown summary of one run, written next to its JSON. */
import { relative } from 'node:path';
import { ROOT } from './gateway-process.js';
import type { ChurnResult } from './churn-step.js';
import type { MediaSeriesResult } from './media-step.js';
import type { MachineFacts } from './proc-stats.js';
import type { ProfileResult } from './profile-step.js';
import type { SetupDirectionResult, SetupResult } from './setup-step.js';
import type { SignallingFigures, SignallingResult } from './signalling-step.js';
import type { Distribution } from './stats.js';
import type { TargetRow } from './targets.js';

export interface BenchResults {
  startedAt: string;
  finishedAt: string;
  wallSeconds: number;
  preset: string;
  argv: string[];
  machine: MachineFacts & { loadAverageAtStart: number[] };
  params: Record<string, unknown>;
  media?: MediaSeriesResult;
  setup?: SetupResult;
  signalling?: SignallingResult;
  churn?: ChurnResult;
  profile?: ProfileResult;
  targets: TargetRow[];
  errors: Array<{ step: string; message: string }>;
  files: { json: string; markdown: string; chart?: string; profile?: string };
}

const v = (x: number | undefined, suffix = '') => (x === undefined ? '–' : `${x}${suffix}`);
const d = (x: Distribution | undefined, digits = 1) => (x && x.count > 0 ? `${x.p50?.toFixed(digits)} / ${x.p95?.toFixed(digits)} / ${x.p99?.toFixed(digits)}` : '–');
const d2 = (x: Distribution | undefined, digits = 1) => (x && x.count > 0 ? `${x.p50?.toFixed(digits)} / ${x.p95?.toFixed(digits)}` : '–');

function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function mediaSection(m: MediaSeriesResult, chart?: string): string {
  const out: string[] = ['## 1. Concurrent calls with media', ''];
  out.push(
    `Each N: a fresh gateway and SIPp (UAS, \`-rtp_echo\`); N softphones (SIP.js + werift, one WebSocket each) in the bench process, one call each, a 160-byte PCMU packet every 20 ms each way; ` +
      `${m.params.warmupSeconds} s warm-up, then a ${m.params.windowSeconds} s window. Gateway CPU is utime+stime from /proc over the window, as % of one core; "per packet" divides it by the packets the relay forwarded in the window (both directions). ` +
      'Memory is from /metrics at the end of the window; "per call" is (value − value before any call) / N. Loss: round trip from timestamps in the payload; per hop from the gateway\'s counters over the whole sending period.',
    '',
  );
  out.push(
    table(
      ['N', 'up', 'gw CPU % core', '% / call', 'µs / pkt', 'RSS MiB', 'heap MiB', 'RSS / call MiB', 'lag p99 ms', 'loss RT %', 'loss in / echo / out %', 'RTT p50/p95/p99 ms', 'bench CPU %', 'SIPp %', 'others %'],
      m.steps.map((s) => [
        `${s.calls}${s.withinLimits ? '' : ' ✗'}${s.repeatOf ? ' ↻' : ''}`,
        `${s.established}`,
        `${s.gateway.cpuPercentOfCore}`,
        `${s.gateway.cpuPercentPerCall}`,
        v(s.gateway.cpuMicrosPerRelayedPacket),
        `${s.gateway.rssMiB}`,
        `${s.gateway.heapUsedMiB}`,
        `${s.gateway.rssPerCallMiB}`,
        `${s.gateway.eventLoopLagP99Ms}`,
        `${s.loss.roundTripPercent}`,
        `${v(s.loss.browserToGatewayPercent)} / ${v(s.loss.sipEchoPercent)} / ${v(s.loss.gatewayToBrowserPercent)}`,
        d(s.rttMs),
        `${s.loadGenerator.benchCpuPercentOfCore}`,
        v(s.loadGenerator.sippCpuPercentOfCore),
        v(s.loadGenerator.otherProcessesPercentOfCore),
      ]),
    ),
    '',
  );
  out.push(`- Largest N within limits: **${m.maxCallsWithinLimits}** (${m.stoppedBecause}). ✗: outside the limits, stepping stopped there.`);
  for (const s of m.steps.filter((x) => x.repeatOf)) {
    out.push(`- ↻ N=${s.calls} was run twice: the first attempt failed (${s.repeatOf?.stopReason ?? '?'}) while other processes used ${s.repeatOf?.otherProcessesPercentOfCore ?? '?'}% of a core; the table shows the repeat.`);
  }
  if (m.marginal) {
    out.push(
      `- Marginal cost per call (least-squares slope over the steps within limits): **${v(m.marginal.cpuPercentPerCall)}% of a core** (${v(m.marginal.cpuMicrosPerRelayedPacket)} µs per relayed packet), RSS **${v(m.marginal.rssMiBPerCall)} MiB**, heap ${v(m.marginal.heapMiBPerCall)} MiB. ` +
        'The slope leaves out what does not grow with N (the idle process, and per-wake-up costs that more packets per event-loop turn amortise); "% / call" in the table includes them.',
    );
  }
  const base = m.steps[0];
  if (base) out.push(`- Idle gateway before calls: RSS ${base.gateway.rssBaseMiB} MiB, heap ${base.gateway.heapBaseMiB} MiB.`);
  const worst = m.steps.reduce((a, s) => Math.max(a, s.loadGenerator.benchCpuPercentOfCore), 0);
  out.push(
    `- Load generator: the bench process (softphones) peaked at ${worst}% of a core; its send-timer lateness p99 was ${v(m.steps[m.steps.length - 1]?.loadGenerator.sendLatenessMs.p99)} ms at the last N. ` +
      'The gateway, the bench and SIPp share the 2 cores; "others" is CPU used meanwhile by processes outside this benchmark (other tenants of the machine), as % of one core. RTT includes both werift stacks (bench and gateway) and SIPp\'s echo.',
  );
  out.push('- "lag p99" is prom-client\'s `gw_nodejs_eventloop_lag_p99_seconds`, which includes its 10 ms sampling interval (an idle gateway reads about 10–11 ms).');
  if (chart) out.push('', `![CPU per call and loss against N](${chart})`);
  return out.join('\n');
}

function setupTable(d: SetupDirectionResult): string {
  const inbound = d.direction === 'inbound';
  return table(
    ['rate /s', 'ok / tried', 'INVITE→200 p50 / p95 ms', inbound ? 'callee answer p50 / p95 ms' : 'client offer p50 / p95 ms', 'gw histogram mean / p50 / p95 ms', inbound ? 'gw own (mean) ms' : '', 'gw CPU ms / call', 'gw CPU %', 'bench %', 'others %'].filter(Boolean),
    d.rates.map((r) =>
      [
        `${r.rate}${r.withinLimits ? '' : ' ✗'}${r.repeatOf ? ' ↻' : ''}`,
        `${r.succeeded} / ${r.attempted}`,
        d2(r.clientSetupMs),
        d2(inbound ? r.calleeAnswerMs : r.clientOfferMs),
        `${v(r.gatewaySetupMs.mean)} / ${v(r.gatewaySetupMs.p50)} / ${v(r.gatewaySetupMs.p95)}`,
        inbound ? v(r.gatewayOwnMeanMs) : '',
        v(r.gatewayCpuMsPerCall),
        v(r.gatewayCpuPercentOfCore),
        v(r.benchCpuPercentOfCore),
        v(r.otherProcessesPercentOfCore),
      ].filter((c, i) => inbound || i !== 5),
    ),
  );
}

function setupSection(s: SetupResult): string {
  const out: string[] = ['## 2. Call setup', ''];
  out.push(
    `Short calls (${s.params.holdMs} ms after the answer), started on schedule at each rate for ${s.params.secondsPerRate} s (open loop), after ${s.params.warmupCalls} unmeasured warm-up calls each way. ` +
      'Outbound, INVITE→200 runs from the first INVITE (which the gateway challenges with 407) to the 200, at the softphone\'s WebSocket; "client offer" is the softphone building its werift offer before that. Inbound, SIPp times INVITE→200 (whole ms) and the softphone its own answer. ' +
      'The gateway histogram is `gw_call_setup_seconds` (INVITE received to 200 sent; buckets 10/25/50/100/250 ms, so its quantiles are coarse): it includes building the WebRTC PeerConnection and, inbound, the softphone\'s answer, but not ICE/DTLS, which complete after the 200. ' +
      '"gw CPU ms / call" is all gateway CPU over the rate\'s run divided by its calls: SIP, PeerConnection, the ICE/DTLS handshake, teardown.',
    '',
  );
  for (const dir of [s.outbound, s.inbound]) {
    out.push(`**${dir.direction}**: ${dir.description}. Highest rate within limits: **${dir.maxRateWithinLimits}/s** (${dir.stoppedBecause}).`, '', setupTable(dir), '');
    for (const r of dir.rates.filter((x) => x.repeatOf)) {
      out.push(`↻ ${r.rate}/s was run twice: the first attempt failed (${r.repeatOf?.stopReason ?? '?'}) while other processes used ${r.repeatOf?.otherProcessesPercentOfCore ?? '?'}% of a core; the table shows the repeat.`, '');
    }
    const failures = dir.rates.flatMap((r) => r.failures);
    if (failures.length > 0) out.push(`Failures, e.g.: ${failures.slice(0, 3).map((f) => `\`${f.slice(0, 200)}\``).join('; ')}`, '');
  }
  return out.join('\n');
}

function sigRow(label: string, f: SignallingFigures): string[] {
  return [label, d(f.registerChallengeMs, 2), d(f.registerAuthMs, 2), d(f.registerTotalMs, 2), d(f.optionsMs, 2), v(f.gatewayCpuPercentOfCore), v(f.gatewayEventLoopLagP99Ms), `${f.probeLoopDelayP99Ms}`, f.errors.length ? f.errors.join('; ') : '0'];
}

function signallingSection(s: SignallingResult): string {
  return [
    '## 3. Signalling under load',
    '',
    `A raw WebSocket client (subprotocol \`sip\`, in a worker thread with its own event loop) sends ${s.params.perSecond} REGISTER cycles (REGISTER → 401, REGISTER with digest → 200) and ${s.params.perSecond} OPTIONS per second: ` +
      `first to the idle gateway for ${s.params.idleSeconds} s, then for ${s.params.loadedSeconds} s while ${s.callsUp} media calls run (step 1's load at about 80% of its maximum). Round trips in ms, p50 / p95 / p99.`,
    '',
    table(['gateway', 'REGISTER → 401', 'REGISTER (auth) → 200', 'both', 'OPTIONS → 200', 'gw CPU %', 'gw lag p99 ms', 'probe loop p99 ms', 'errors'], [sigRow('idle', s.idle), sigRow(`${s.callsUp} calls`, s.loaded)]),
  ].join('\n');
}

function churnSection(c: ChurnResult): string {
  const m = c.memory;
  return [
    '## 4. Churn',
    '',
    `${c.completed + c.failed} short calls (${c.params.concurrency} at a time, each: set up, PeerConnection connected, ${c.params.packetsPerCall} packets echoed, hung up; every 100 calls a softphone's WebSocket is replaced), after ${c.params.warmupCalls} warm-up calls. ` +
      `Memory after a full GC forced through the gateway's inspector. The gateway ran with \`calls.keepEndedMax: ${c.params.keepEndedMax}\` so that its list of ended calls (1000 by default, kept 5 min) does not hide a leak.`,
    '',
    table(
      ['calls ok', 'failed', 'seconds', 'calls/s', 'call p50 / p95 ms', 'gw CPU ms / call', `RSS MiB start → before → after${m.settled ? ' → settled' : ''}`, `heap MiB start → before → after${m.settled ? ' → settled' : ''}`, 'heap Δ / call', 'fds Δ'],
      [[`${c.completed}`, `${c.failed}`, `${c.seconds}`, `${c.callsPerSecond}`, d2(c.callMs), v(c.gatewayCpuMsPerCall), `${m.atStart.rssMiB} → ${m.before.rssMiB} → ${m.after.rssMiB}${m.settled ? ` → ${m.settled.rssMiB}` : ''}`, `${m.atStart.heapUsedMiB} → ${m.before.heapUsedMiB} → ${m.after.heapUsedMiB}${m.settled ? ` → ${m.settled.heapUsedMiB}` : ''}`, `${m.heapDeltaBytesPerCall} B`, `${c.leftover.fdDelta}`]],
    ),
    '',
    m.settled
      ? `"start": the fresh gateway; "before": after the warm-up calls; "after": right after the last call; "settled": ${c.params.settleSeconds} s later, once RFC 3261's 32 s transaction timers (D, J) have let go of the last calls' transactions. Deltas are settled − before.`
      : '"start": the fresh gateway; "before": after the warm-up calls; "after": right after the last call, so it still holds the transactions of the last 32 s of calls (RFC 3261 Timers D and J); the default preset also reads it once they have expired.',
    '',
    `After: ${c.leftover.callsActive} calls active, ${c.leftover.peerConnectionsOpen} PeerConnections open, ports in use ${Object.entries(c.leftover.portsInUse).map(([k, n]) => `${k} ${n}`).join(', ')} (${c.leftover.portEntries} entries in /api/rtp): **${c.clean ? 'clean' : 'NOT CLEAN'}**.`,
    ...(c.failures.length ? ['', `Failures, e.g.: ${c.failures.slice(0, 3).map((f) => `\`${f.slice(0, 200)}\``).join('; ')}`] : []),
  ].join('\n');
}

function targetsSection(rows: TargetRow[]): string {
  const out = ['## Targets', '', 'Ratios are ours ÷ theirs: for costs, above 1 means we spend more; for capacities, below 1 means we carry less.', ''];
  out.push(
    table(
      ['metric', 'ours', 'vs Janus SIP plugin', 'vs rtpengine', "vs Node's floor"],
      rows.map((r) => {
        const cell = (name: string) => {
          const c = r.comparisons.find((x) => x.against.startsWith(name));
          return c ? `${c.value} → **${v(c.ratio)}×**` : '–';
        };
        return [`${r.metric} (${r.unit})`, `${v(r.ours)} <br><sub>${r.oursNote}</sub>`, cell('Janus'), cell('rtpengine'), cell("Node's floor")];
      }),
    ),
  );
  return out.join('\n');
}

function profileSection(p: ProfileResult): string {
  const out = ['## CPU profile (`--profile`)', ''];
  out.push(
    `One gateway under \`node --cpu-prof\` (sampling overhead included; absolute figures come from the steps above): ${p.params.calls} calls with media for ${p.params.windowSeconds} s (${p.media.relayedPackets} packets relayed, ${p.media.busyMicrosPerPacket} µs of non-idle samples per packet), then ${p.churn.calls} short calls (${p.churn.busyMsPerCall} ms per call). Self time summed by function (name + script + position). Profile: \`${relative(ROOT, p.file)}\` (open it in Chrome DevTools or speedscope).`,
    '',
    '**Per relayed packet (media window)**',
    '',
    table(['function', 'where', 'µs / packet', '% of busy'], p.media.functions.slice(0, 10).map((f, i) => [`\`${f.function}\``, `${f.location || f.area}`, `${p.media.perPacket[i]?.micros ?? '–'}`, `${f.percentOfBusy}`])),
    '',
    `By area: ${p.media.areas.slice(0, 6).map((a) => `${a.area} ${a.percentOfBusy}%`).join(', ')}.`,
    '',
    '**Per call (churn window)**',
    '',
    table(['function', 'where', 'ms / call', '% of busy'], p.churn.functions.slice(0, 10).map((f, i) => [`\`${f.function}\``, `${f.location || f.area}`, `${p.churn.perCall[i]?.ms ?? '–'}`, `${f.percentOfBusy}`])),
    '',
    `By area: ${p.churn.areas.slice(0, 6).map((a) => `${a.area} ${a.percentOfBusy}%`).join(', ')}.`,
  );
  return out.join('\n');
}

function logSection(r: BenchResults): string {
  const lines: string[] = [];
  const add = (step: string, problems: Array<{ level: string; msg: string; count: number; samples: string[] }> | undefined) => {
    for (const p of problems ?? []) lines.push(`- ${step}: ${p.count}× ${p.level} "${p.msg}"${p.samples.length ? ` (e.g. ${p.samples.slice(0, 2).map((s) => `\`${s.slice(0, 160)}\``).join(', ')})` : ''}`);
  };
  for (const s of r.media?.steps ?? []) add(`media N=${s.calls}`, s.gatewayLog.problems);
  add('setup', r.setup?.gatewayLog.problems);
  add('churn', r.churn?.gatewayLog.problems);
  const ends = { ...(r.setup?.gatewayLog.endReasons ?? {}) };
  const churnEnds = r.churn?.gatewayLog.endReasons ?? {};
  return [
    '## Gateway log',
    '',
    lines.length ? lines.join('\n') : 'No warning or error lines in the gateway logs.',
    '',
    `Call end reasons (by/cause/status): setup ${JSON.stringify(ends)}; churn ${JSON.stringify(churnEnds)}.`,
  ].join('\n');
}

export function markdown(r: BenchResults, chartFile?: string): string {
  const m = r.machine;
  const out: string[] = [
    `# sip-webrtc-gateway benchmark, ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC`,
    '',
    `Machine: ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, Linux ${m.kernel}; Node ${m.node}; ${m.sipp}. Load average at start ${m.loadAverageAtStart.map((x) => x.toFixed(2)).join(' ')}. ` +
      `Preset \`${r.preset}\` (\`${['npm run bench', ...(r.argv.length ? ['--', ...r.argv] : [])].join(' ')}\`), ${Math.round(r.wallSeconds)} s. Everything on 127.0.0.1; gateway, SIPp and the bench (softphones) are separate processes sharing the machine.`,
    '',
  ];
  if (r.errors.length) out.push('**Steps that failed:** ' + r.errors.map((e) => `${e.step}: ${e.message}`).join('; '), '');
  if (r.targets.length) out.push(targetsSection(r.targets), '');
  if (r.media) out.push(mediaSection(r.media, chartFile), '');
  if (r.setup) out.push(setupSection(r.setup), '');
  if (r.signalling) out.push(signallingSection(r.signalling), '');
  if (r.churn) out.push(churnSection(r.churn), '');
  if (r.profile) out.push(profileSection(r.profile), '');
  out.push(logSection(r), '');
  return out.join('\n');
}
