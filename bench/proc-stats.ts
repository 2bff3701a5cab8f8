/**
 * CPU and memory of processes from /proc (Linux), so the gateway is measured from outside and
 * pays nothing for it. CPU figures are "% of one core" over a wall-clock window.
 */
import { readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';

const CLK_TCK = 100; // Linux USER_HZ, fixed at 100 on every mainstream kernel

export interface ProcSample {
  /** user + system CPU since the process started, ms (10 ms resolution). */
  cpuMs: number;
  rssBytes: number;
  at: number;
}

/** One sample of `pid`; undefined when the process is gone. */
export function sampleProcess(pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]); // utime + stime
    const rss = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { cpuMs: (ticks * 1000) / CLK_TCK, rssBytes: Number(rss?.[1] ?? 0) * 1024, at: performance.now() };
  } catch {
    return undefined;
  }
}

/** This process, at microsecond resolution. */
export function sampleSelf(): ProcSample {
  const u = process.cpuUsage();
  return { cpuMs: (u.user + u.system) / 1000, rssBytes: process.memoryUsage.rss(), at: performance.now() };
}

/** % of one core used between two samples of the same process. */
export function cpuPercent(a: ProcSample | undefined, b: ProcSample | undefined): number | undefined {
  if (!a || !b || b.at <= a.at) return undefined;
  return ((b.cpuMs - a.cpuMs) / (b.at - a.at)) * 100;
}

export interface MachineSample {
  busy: number;
  total: number;
}

/** Whole-machine jiffies from /proc/stat. */
export function sampleMachine(): MachineSample | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0); // without guest (counted in user)
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

/** Machine-wide busy share between two samples, as % of all cores (100 = every core busy). */
export function machineBusyPercent(a: MachineSample | undefined, b: MachineSample | undefined): number | undefined {
  if (!a || !b || b.total <= a.total) return undefined;
  return ((b.busy - a.busy) / (b.total - a.total)) * 100;
}

export interface MachineFacts {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  node: string;
  platform: string;
  kernel: string;
  sipp: string;
}

export function machineFacts(sippVersion: string): MachineFacts {
  const c = cpus();
  let kernel = '';
  try {
    kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // not Linux
  }
  return {
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    cores: c.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    kernel,
    sipp: sippVersion,
  };
}
