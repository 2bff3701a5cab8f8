/** Reads the gateway's /metrics (Prometheus text format 0.0.4): samples, and histograms with their quantiles. */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, '$1');
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

export class Metrics {
  constructor(readonly samples: readonly Sample[]) {}

  static parse(text: string): Metrics {
    return new Metrics(parseMetrics(text));
  }

  /** The sum over every sample of `name` whose labels include `labels` (undefined when there is none). */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    let found = false;
    let sum = 0;
    for (const s of this.samples) {
      if (s.name !== name || !matches(s.labels, labels)) continue;
      found = true;
      sum += s.value;
    }
    return found ? sum : undefined;
  }

  /** Cumulative buckets, sum and count of a histogram, summed over matching label sets. */
  histogram(name: string, labels: Record<string, string> = {}): Histogram {
    const buckets = new Map<number, number>();
    for (const s of this.samples) {
      if (s.name !== `${name}_bucket` || !matches(s.labels, labels)) continue;
      const le = s.labels['le'] === '+Inf' ? Infinity : Number(s.labels['le']);
      buckets.set(le, (buckets.get(le) ?? 0) + s.value);
    }
    return {
      buckets: [...buckets.entries()].sort((a, b) => a[0] - b[0]),
      sum: this.value(`${name}_sum`, labels) ?? 0,
      count: this.value(`${name}_count`, labels) ?? 0,
    };
  }
}

function matches(have: Record<string, string>, want: Record<string, string>): boolean {
  return Object.entries(want).every(([k, v]) => have[k] === v);
}

export interface Histogram {
  /** [upper bound, cumulative count], ascending, ending with +Inf. */
  buckets: Array<[number, number]>;
  sum: number;
  count: number;
}

/** What was observed between two scrapes of the same histogram. */
export function histogramDelta(before: Histogram, after: Histogram): Histogram {
  const prev = new Map(before.buckets);
  return {
    buckets: after.buckets.map(([le, c]) => [le, c - (prev.get(le) ?? 0)]),
    sum: after.sum - before.sum,
    count: after.count - before.count,
  };
}

/**
 * A quantile estimated as Prometheus's histogram_quantile() does: linear within the bucket that
 * holds it. Coarse by nature (the gateway's buckets are 10, 25, 50, 100, 250 ms...).
 */
export function histogramQuantile(h: Histogram, q: number): number | undefined {
  if (h.count === 0 || h.buckets.length === 0) return undefined;
  const rank = q * h.count;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, c] of h.buckets) {
    if (c >= rank) {
      if (le === Infinity) return prevLe; // above the last finite bucket: its bound is all we know
      const inBucket = c - prevCount;
      return inBucket === 0 ? le : prevLe + ((le - prevLe) * (rank - prevCount)) / inBucket;
    }
    prevLe = le;
    prevCount = c;
  }
  return prevLe;
}
