/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and sums self time by function (callFrame functionName
 * + url + position), optionally only over samples taken inside a time window. Profile timestamps are
 * CLOCK_MONOTONIC microseconds, the clock of process.hrtime(), so the bench can cut windows from
 * its own clock.
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionCost {
  function: string;
  location: string;
  area: string;
  selfMs: number;
  /** Share of the non-idle time in the window. */
  percentOfBusy: number;
}

export interface ProfileSummary {
  windowMs: number;
  busyMs: number;
  idleMs: number;
  functions: FunctionCost[];
  areas: Array<{ area: string; selfMs: number; percentOfBusy: number }>;
}

export function readProfile(path: string): CpuProfile {
  return JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
}

const ROOT_URL = /^file:\/\/.*?\/dist\//;

/** Short location: dist/... for our code, <package>/... for dependencies, node:... for Node's. */
function location(frame: CallFrame): string {
  const url = frame.url;
  if (!url) return '';
  const nm = url.lastIndexOf('/node_modules/');
  const short = nm >= 0 ? url.slice(nm + '/node_modules/'.length) : url.replace(ROOT_URL, '');
  return `${short}:${frame.lineNumber + 1}`;
}

function area(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) {
    if (functionName === '(garbage collector)') return 'garbage collector';
    if (functionName === '(program)') return 'V8/native (program)';
    if (functionName === '(idle)') return 'idle';
    return 'native';
  }
  if (url.startsWith('node:')) return 'Node core';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const m = /\/dist\/(src|sip|webrtc)\//.exec(url);
  return m ? `gateway ${m[1]}/` : 'other';
}

/** Self time per function over samples taken in [startUs, endUs) (the whole profile without a window). */
export function summariseProfile(profile: CpuProfile, window?: { startUs: number; endUs: number }, top = 15): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const fnTime = new Map<string, { frame: CallFrame; us: number }>();
  const areaTime = new Map<string, number>();
  let idleUs = 0;
  let busyUs = 0;
  const n = profile.samples.length;
  const times: number[] = new Array(n);
  let t = profile.startTime;
  for (let i = 0; i < n; i++) {
    t += profile.timeDeltas[i] ?? 0;
    times[i] = t;
  }
  const from = window?.startUs ?? profile.startTime;
  const to = window?.endUs ?? profile.endTime;
  for (let i = 0; i < n; i++) {
    const at = times[i]!;
    if (at < from || at >= to) continue;
    // A sample stands for the time until the next one.
    const dur = (i + 1 < n ? times[i + 1]! : profile.endTime) - at;
    if (dur <= 0) continue;
    const node = byId.get(profile.samples[i]!);
    if (!node) continue;
    const frame = node.callFrame;
    if (frame.functionName === '(idle)') {
      idleUs += dur;
      continue;
    }
    busyUs += dur;
    // Name + script, and the position too: a bundle (werift's index.mjs) holds many anonymous functions.
    const key = `${frame.functionName}\u0000${frame.url}\u0000${frame.lineNumber}:${frame.columnNumber}`;
    const f = fnTime.get(key) ?? { frame, us: 0 };
    f.us += dur;
    fnTime.set(key, f);
    const a = area(frame);
    areaTime.set(a, (areaTime.get(a) ?? 0) + dur);
  }
  const pct = (us: number) => (busyUs > 0 ? Math.round((us / busyUs) * 1000) / 10 : 0);
  const ms = (us: number) => Math.round(us / 100) / 10;
  return {
    windowMs: ms(to - from),
    busyMs: ms(busyUs),
    idleMs: ms(idleUs),
    functions: [...fnTime.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ function: f.frame.functionName || '(anonymous)', location: location(f.frame), area: area(f.frame), selfMs: ms(f.us), percentOfBusy: pct(f.us) })),
    areas: [...areaTime.entries()].sort((a, b) => b[1] - a[1]).map(([a, us]) => ({ area: a, selfMs: ms(us), percentOfBusy: pct(us) })),
  };
}

/** CLOCK_MONOTONIC now, µs: the clock of the profile's timestamps. */
export function monotonicMicros(): number {
  return Number(process.hrtime.bigint() / 1000n);
}
