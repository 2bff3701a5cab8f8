/** Command-line flags and the three presets (quick about 1 minute, default about 10, long). */
import { parseArgs } from 'node:util';
import type { ChurnParams } from './churn-step.js';
import type { MediaParams } from './media-step.js';
import type { SetupParams } from './setup-step.js';

export type Step = 'media' | 'setup' | 'signalling' | 'churn';
export const STEPS: readonly Step[] = ['media', 'setup', 'signalling', 'churn'];

export interface SignallingPreset {
  idleSeconds: number;
  loadedSeconds: number;
  perSecond: number;
  warmupSeconds: number;
  /** Share of step 1's largest N within limits used as the background load. */
  loadFraction: number;
  /** Background calls when step 1 did not run (or found nothing), unless --signalling-calls is given. */
  fallbackCalls: number;
}

export interface ProfilePreset {
  warmupSeconds: number;
  windowSeconds: number;
  churnCalls: number;
  churnConcurrency: number;
}

export interface BenchOptions {
  preset: 'quick' | 'default' | 'long';
  steps: Set<Step>;
  profile: boolean;
  media: MediaParams;
  setup: SetupParams;
  signalling: SignallingPreset & { calls?: number };
  churn: ChurnParams;
  profileParams: ProfilePreset & { calls?: number };
  /** The whole run is killed (children included) after this long. */
  deadlineMinutes: number;
}

const PRESETS: Record<BenchOptions['preset'], Omit<BenchOptions, 'preset' | 'steps' | 'profile'>> = {
  quick: {
    media: { steps: [10, 30], warmupSeconds: 1.5, windowSeconds: 5 },
    setup: { rates: [5, 10], secondsPerRate: 3, holdMs: 500, phones: 4, warmupCalls: 4 },
    signalling: { idleSeconds: 3, loadedSeconds: 5, perSecond: 10, warmupSeconds: 1, loadFraction: 0.8, fallbackCalls: 20 },
    churn: { calls: 100, concurrency: 4, maxSeconds: 40, warmupCalls: 8, packetsPerCall: 5, keepEndedMax: 10, settleSeconds: 0 },
    profileParams: { warmupSeconds: 1.5, windowSeconds: 5, churnCalls: 40, churnConcurrency: 4 },
    deadlineMinutes: 6,
  },
  default: {
    media: { steps: [10, 25, 50, 75, 100], warmupSeconds: 3, windowSeconds: 20 },
    setup: { rates: [2, 5, 10, 20], secondsPerRate: 10, holdMs: 1000, phones: 8, warmupCalls: 6 },
    signalling: { idleSeconds: 10, loadedSeconds: 20, perSecond: 10, warmupSeconds: 3, loadFraction: 0.8, fallbackCalls: 50 },
    churn: { calls: 1000, concurrency: 4, maxSeconds: 240, warmupCalls: 20, packetsPerCall: 5, keepEndedMax: 10, settleSeconds: 35 },
    profileParams: { warmupSeconds: 3, windowSeconds: 15, churnCalls: 200, churnConcurrency: 4 },
    deadlineMinutes: 30,
  },
  long: {
    media: { steps: [25, 50, 100, 150, 200, 250, 300], warmupSeconds: 5, windowSeconds: 30 },
    setup: { rates: [5, 10, 20, 30, 40, 60], secondsPerRate: 20, holdMs: 1000, phones: 16, warmupCalls: 10 },
    signalling: { idleSeconds: 20, loadedSeconds: 60, perSecond: 10, warmupSeconds: 5, loadFraction: 0.8, fallbackCalls: 80 },
    churn: { calls: 5000, concurrency: 4, maxSeconds: 900, warmupCalls: 40, packetsPerCall: 5, keepEndedMax: 10, settleSeconds: 35 },
    profileParams: { warmupSeconds: 5, windowSeconds: 30, churnCalls: 500, churnConcurrency: 4 },
    deadlineMinutes: 120,
  },
};

export const USAGE = `usage: npm run bench -- [options]
  --quick              about 1 minute (2 media steps, 2 setup rates, 100 churn calls)
  --long               longer windows, N up to 300, rates up to 60/s, 5000 churn calls
  --profile            also profile the gateway (node --cpu-prof) under media load and churn
  --only LIST          steps to run: media,setup,signalling,churn (default all)
  --steps LIST         concurrent calls for step 1, e.g. 10,25,50
  --window SECONDS     measured window per step-1 N
  --rates LIST         calls per second for step 2, e.g. 2,5,10,20
  --churn N            calls for step 4
  --signalling-calls N background calls for step 3 (default 80% of step 1's maximum)
  --help`;

function list(v: string | undefined, what: string, max: number): number[] | undefined {
  if (v === undefined) return undefined;
  const out = v.split(',').map((x) => Number(x.trim()));
  if (out.length === 0 || out.some((n) => !Number.isFinite(n) || n <= 0 || n > max)) throw new TypeError(`--${what}: positive numbers up to ${max}, comma-separated`);
  return out;
}

function int(v: string | undefined, what: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new TypeError(`--${what}: an integer 1..${max}`);
  return n;
}

export function parseOptions(argv: string[]): BenchOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: 'boolean' },
      long: { type: 'boolean' },
      profile: { type: 'boolean' },
      only: { type: 'string' },
      steps: { type: 'string' },
      window: { type: 'string' },
      rates: { type: 'string' },
      churn: { type: 'string' },
      'signalling-calls': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  if (values.quick && values.long) throw new TypeError('--quick and --long exclude each other');
  const preset = values.quick ? 'quick' : values.long ? 'long' : 'default';
  const base = structuredClone(PRESETS[preset]);
  const steps = new Set<Step>(STEPS);
  if (values.only !== undefined) {
    steps.clear();
    for (const s of values.only.split(',').map((x) => x.trim())) {
      if (!(STEPS as readonly string[]).includes(s)) throw new TypeError(`--only: unknown step '${s}' (${STEPS.join(', ')})`);
      steps.add(s as Step);
    }
  }
  const mediaSteps = list(values.steps, 'steps', 1000);
  if (mediaSteps) base.media.steps = mediaSteps.map(Math.round);
  const window = values.window === undefined ? undefined : Number(values.window);
  if (window !== undefined) {
    if (!(window >= 2 && window <= 300)) throw new TypeError('--window: seconds, 2..300');
    base.media.windowSeconds = window;
  }
  const rates = list(values.rates, 'rates', 200);
  if (rates) base.setup.rates = rates;
  const churn = int(values.churn, 'churn', 100_000);
  if (churn !== undefined) {
    base.churn.calls = churn;
    // Stays bounded: about 0.25 s per call at the default concurrency, with room to spare.
    base.churn.maxSeconds = Math.max(base.churn.maxSeconds, Math.ceil(churn * 0.3));
  }
  const sigCalls = int(values['signalling-calls'], 'signalling-calls', 1000);
  return {
    preset,
    steps,
    profile: values.profile === true,
    ...base,
    signalling: { ...base.signalling, ...(sigCalls !== undefined ? { calls: sigCalls } : {}) },
    deadlineMinutes: base.deadlineMinutes + Math.ceil(base.churn.maxSeconds / 60),
  };
}
