import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { GatewayError } from './util/errors.js';

function isLoopback(h: string): boolean {
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

const host = z.string().min(1).refine((s) => !/\s/.test(s), 'must be a host name or IP address');
const port = z.number().int().min(0).max(65535);
const range = z
  .tuple([z.number().int().min(1).max(65535), z.number().int().min(1).max(65535)])
  .refine(([a, b]) => a <= b, 'first port must not be above the second');

export const configSchema = z.strictObject({
  sip: z.strictObject({
    listen: z
      .array(z.strictObject({ transport: z.enum(['udp', 'tcp']), host, port }))
      .min(1)
      .refine((l) => new Set(l.map((x) => x.transport)).size === l.length, 'one listener per transport'),
    timers: z
      .strictObject({ t1: z.number().int().min(10).max(10_000), t2: z.number().int().min(10).max(60_000), t4: z.number().int().min(10).max(60_000) })
      .default({ t1: 500, t2: 4000, t4: 5000 }),
    userAgent: z.string().max(200).optional(),
    /** Digest realm and the domain of our users; defaults to media.announceAddress. */
    realm: z.string().min(1).max(200).optional(),
  }),
  registrar: z
    .strictObject({
      minExpires: z.number().int().min(1).max(86_400).default(60),
      maxExpires: z.number().int().min(1).max(86_400).default(3600),
      defaultExpires: z.number().int().min(1).max(86_400).default(600),
    })
    .prefault({})
    .refine((r) => r.minExpires <= r.defaultExpires && r.defaultExpires <= r.maxExpires, 'needs minExpires <= defaultExpires <= maxExpires'),
  users: z
    .array(
      z
        .strictObject({
          username: z.string().regex(/^[A-Za-z0-9._~+-]{1,64}$/, 'letters, digits and . _ ~ + - only'),
          password: z.string().min(1).max(256).optional(),
          ha1: z.strictObject({ md5: z.string().regex(/^[0-9a-f]{32}$/).optional(), sha256: z.string().regex(/^[0-9a-f]{64}$/).optional() }).optional(),
        })
        .refine((u) => u.password !== undefined || u.ha1 !== undefined, 'needs a password or ha1'),
    )
    .default([])
    .refine((us) => new Set(us.map((u) => u.username)).size === us.length, 'usernames must be unique'),
  http: z.strictObject({ host, port }),
  media: z.strictObject({
    announceAddress: host,
    bindAddress: host.optional(),
    rtpPorts: range.refine(([a, b]) => b - a >= 1, 'needs at least two ports (RTP and RTCP)'),
    webrtcPorts: range,
    codecs: z.array(z.enum(['pcmu', 'pcma', 'g722', 'opus'])).min(1).default(['pcmu', 'pcma', 'g722', 'opus']),
    webrtcSetupTimeoutMs: z.number().int().min(100).max(60_000).default(10_000),
    /** An answered call whose RTP and RTCP stop in both directions for this long is ended (rtpengine's default). */
    rtpTimeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
    /** An answered call that never receives any media in this time is ended and its ports reclaimed. */
    noMediaTimeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
  }),
  calls: z
    .strictObject({
      maxConcurrent: z.number().int().min(1).max(100_000).default(500),
      /** Calls to browsers that nobody answers in this time get 480. */
      ringTimeoutMs: z.number().int().min(1000).max(600_000).default(60_000),
      /** How long ended calls stay visible in the admin API. */
      keepEndedMs: z.number().int().min(0).max(86_400_000).default(300_000),
      keepEndedMax: z.number().int().min(0).max(100_000).default(1000),
    })
    .prefault({}),
  admin: z
    .strictObject({ host: host.default('127.0.0.1'), port: port.default(8089), token: z.string().min(16, 'must be at least 16 characters').optional() })
    .prefault({})
    .refine((a) => a.token !== undefined || isLoopback(a.host), { message: 'a token is required when the admin API listens on a non-loopback address', path: ['token'] }),
  /** Built-in echo and tone numbers, reached through the trunk path (for trying the gateway without a PBX). */
  testExtensions: z
    .strictObject({ enabled: z.boolean().default(true), echo: z.string().regex(/^[0-9*#+]{1,32}$/).default('600'), tone: z.string().regex(/^[0-9*#+]{1,32}$/).default('601') })
    .prefault({})
    .refine((t) => t.echo !== t.tone, 'echo and tone need different numbers'),
  shutdown: z.strictObject({ drainMs: z.number().int().min(0).max(3_600_000).default(30_000) }).prefault({}),
  trunks: z
    .array(
      z.strictObject({
        name: z.string().min(1),
        host,
        port: z.number().int().min(1).max(65535),
        transport: z.enum(['udp', 'tcp']),
        /** Source addresses calls from this trunk come from (default: its host). */
        addresses: z.array(host).min(1).optional(),
        /** Tell the trunk apart by source port as well (several peers on one host). */
        matchPort: z.boolean().default(false),
        /** Our account on the trunk: answers its 401/407 challenges to our INVITEs. */
        username: z.string().min(1).max(128).optional(),
        authUsername: z.string().min(1).max(128).optional(),
        password: z.string().min(1).max(256).optional(),
        ha1: z.strictObject({ md5: z.string().regex(/^[0-9a-f]{32}$/).optional(), sha256: z.string().regex(/^[0-9a-f]{64}$/).optional() }).optional(),
        /** Inbound routing: dialled number (Request-URI user) to local user. */
        dids: z.record(z.string().min(1).max(64), z.string().min(1)).default({}),
      }),
    )
    .min(1),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) }).default({ level: 'info' }),
});

export type GatewayConfig = z.infer<typeof configSchema>;

/** Checks that span sections (zod refines one value at a time). */
function crossCheck(c: GatewayConfig): string[] {
  const errors: string[] = [];
  const users = new Set(c.users.map((u) => u.username));
  c.trunks.forEach((t, i) => {
    for (const [did, user] of Object.entries(t.dids)) if (!users.has(user)) errors.push(`  trunks.${i}.dids.${did}: no user "${user}" in users`);
  });
  const exposed = [c.http.host, ...c.sip.listen.map((l) => l.host)].some((h) => !isLoopback(h));
  c.users.forEach((u, i) => {
    if (exposed && u.password !== undefined && u.password.length < 12) errors.push(`  users.${i}.password: must be at least 12 characters when a listener is not on loopback`);
  });
  return errors;
}

export class ConfigError extends GatewayError {
  constructor(message: string) {
    super('GW_CONFIG_INVALID', message);
    this.name = 'ConfigError';
  }
}

export const DEFAULT_CONFIG_PATH = fileURLToPath(new URL('../../config/default.json', import.meta.url));

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; arrays and scalars in `over` replace those in `base`. */
export function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

/** Validates a config object; the error names every bad key by its path. */
export function parseConfig(raw: unknown): GatewayConfig {
  const r = configSchema.safeParse(raw);
  if (r.success) {
    const errors = crossCheck(r.data);
    if (errors.length > 0) throw new ConfigError(`invalid configuration:\n${errors.join('\n')}`);
    return r.data;
  }
  const lines = r.error.issues.map((i) => {
    const keys = 'keys' in i && Array.isArray(i.keys) ? `.${i.keys.join(', .')}` : '';
    const path = [...i.path.map(String)].join('.');
    return `  ${path || '(root)'}${keys ? ` (${keys.replace(/^\./, '')})` : ''}: ${i.message}`;
  });
  throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
}

/** config/default.json, with `overridePath` (from --config) merged over it. */
export function loadConfig(overridePath?: string, overrides?: unknown): GatewayConfig {
  let raw = readJson(DEFAULT_CONFIG_PATH);
  if (overridePath) raw = deepMerge(raw, readJson(overridePath));
  if (overrides !== undefined) raw = deepMerge(raw, overrides);
  return parseConfig(raw);
}
