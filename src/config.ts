import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { GatewayError } from './util/errors.js';

function isLoopback(h: string): boolean {
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

const DOMAIN = /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
const host = z
  .string()
  .min(1)
  .refine((s) => isIP(s) !== 0 || DOMAIN.test(s), 'must be a host name or IP address (a port goes in its own key)');
const port = z.number().int().min(0).max(65535);
const filePath = z.string().min(1).max(4096);
/** `{ cert, key }` file paths (PEM); `ca` adds trusted roots for verifying peers. */
const tlsFiles = z.strictObject({ cert: filePath, key: filePath, ca: filePath.optional() });
/** A SIP peer: an IP address or a domain resolved per RFC 3263 (NAPTR, SRV, A/AAAA). */
const sipTransport = z.enum(['udp', 'tcp', 'tls']);
const userMatch = z
  .strictObject({ prefix: z.string().regex(/^[0-9A-Za-z*#+._~-]{1,64}$/).optional(), regex: z.string().min(1).max(500).optional() })
  .refine((m) => (m.prefix === undefined) !== (m.regex === undefined), 'needs exactly one of prefix or regex');
const range = z
  .tuple([z.number().int().min(1).max(65535), z.number().int().min(1).max(65535)])
  .refine(([a, b]) => a <= b, 'first port must not be above the second');

export const configSchema = z.strictObject({
  sip: z.strictObject({
    listen: z
      .array(z.strictObject({ transport: sipTransport, host, port }))
      .min(1)
      .refine((l) => new Set(l.map((x) => x.transport)).size === l.length, 'one listener per transport'),
    timers: z
      .strictObject({ t1: z.number().int().min(10).max(10_000), t2: z.number().int().min(10).max(60_000), t4: z.number().int().min(10).max(60_000) })
      .default({ t1: 500, t2: 4000, t4: 5000 }),
    userAgent: z.string().max(200).optional(),
    /** Digest realm and the domain of our users; defaults to media.announceAddress. */
    realm: z.string().min(1).max(200).optional(),
    /**
     * Certificate and key of the TLS listener (also presented to trunks asking for a client
     * certificate); `ca` is trusted, on top of the system's roots, when verifying trunks.
     */
    tls: z
      .strictObject({ cert: filePath.optional(), key: filePath.optional(), ca: filePath.optional() })
      .refine((t) => (t.cert === undefined) === (t.key === undefined), 'cert and key go together')
      .optional(),
    /** DNS servers for RFC 3263 lookups ("ip" or "ip:port"); default: the system's. */
    dns: z
      .strictObject({ servers: z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[0-9.]+|[0-9a-fA-F:]+)(:\d{1,5})?$/, 'must be an IP address with an optional :port')).min(1).optional() })
      .prefault({}),
    /** RFC 5626 CRLF keep-alive on TCP/TLS connections we open, and WebSocket pings to browsers (a browser that stops answering is dropped) (0: off). */
    keepAliveMs: z.number().int().min(0).max(3_600_000).default(30_000),
    /** Bounds on inbound TCP, TLS and WebSocket connections: what one peer can make us hold. */
    limits: z
      .strictObject({
        maxConnections: z.number().int().min(1).max(1_000_000).default(4096),
        maxConnectionsPerIp: z.number().int().min(1).max(1_000_000).default(64),
        messageTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
        idleTimeoutMs: z.number().int().min(0).max(86_400_000).default(300_000),
        maxWriteBufferBytes: z.number().int().min(64 * 1024).max(1024 * 1024 * 1024).default(1024 * 1024),
      })
      .prefault({}),
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
  /** The web softphone and SIP over WebSocket; with `tls`, HTTPS and WSS on the same port. */
  http: z.strictObject({ host, port, tls: tlsFiles.optional() }),
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
    /** Symmetric RTP (NAT): send to where a SIP peer's RTP actually comes from, once it comes. */
    symmetricRtp: z.boolean().default(true),
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
      z
        .strictObject({
          name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'letters, digits and . _ - only'),
          /** IP address or domain; a domain is resolved per RFC 3263 (NAPTR, SRV, A/AAAA). */
          host,
          /** Default: from SRV for a domain, else 5060 (5061 for TLS). */
          port: z.number().int().min(1).max(65535).optional(),
          /** Default: from NAPTR for a domain without a port, else UDP. */
          transport: sipTransport.optional(),
          /** Send requests here with a loose Route, keeping the trunk's domain in the Request-URI. */
          outboundProxy: z.strictObject({ host, port: z.number().int().min(1).max(65535).optional(), transport: sipTransport.optional() }).optional(),
          /** Our account on the trunk: answers its 401/407 challenges, and REGISTERs when `register` is set. */
          username: z.string().min(1).max(128).optional(),
          authUsername: z.string().min(1).max(128).optional(),
          password: z.string().min(1).max(256).optional(),
          ha1: z.strictObject({ md5: z.string().regex(/^[0-9a-f]{32}$/).optional(), sha256: z.string().regex(/^[0-9a-f]{64}$/).optional() }).optional(),
          /** Only answer challenges for this realm (default: any). */
          realm: z.string().min(1).max(200).optional(),
          /** From header of our calls to the trunk (default: the caller's user, our announced address). */
          fromUser: z.string().min(1).max(128).optional(),
          fromDomain: z.string().min(1).max(200).optional(),
          /** Keep a registration with the trunk (RFC 3261 §10), refreshed before it expires. */
          register: z.boolean().default(false),
          registerExpires: z.number().int().min(2).max(86_400).default(600),
          /** Codecs offered to this trunk (default: media.codecs). */
          codecs: z.array(z.enum(['pcmu', 'pcma', 'g722', 'opus'])).min(1).optional(),
          /** How DTMF goes to this trunk. */
          dtmfMode: z.enum(['rfc4733', 'info']).default('rfc4733'),
          /** Source addresses calls from this trunk come from (default: what its host resolves to, refreshed every 5 minutes). */
          addresses: z.array(host).min(1).optional(),
          /** Tell the trunk apart by source port as well (several peers on one host). */
          matchPort: z.boolean().default(false),
          /** Inbound routing: dialled number (Request-URI user) to local user. */
          dids: z.record(z.string().min(1).max(64), z.string().min(1)).default({}),
          /** OPTIONS ping for reachability (0: off). */
          optionsPingMs: z.number().int().min(0).max(3_600_000).default(30_000),
          /** No response at all (not even 100 Trying) in this time: try the next DNS target. */
          failoverTimeoutMs: z.number().int().min(100).max(32_000).default(4000),
          /** Verify the trunk's TLS certificate (against system roots plus sip.tls.ca). */
          tlsVerify: z.boolean().default(true),
        })
        .refine((t) => !t.register || (t.username !== undefined && (t.password !== undefined || t.ha1 !== undefined)), {
          message: 'register needs username and password (or ha1)',
          path: ['register'],
        }),
    )
    .min(1)
    .refine((ts) => new Set(ts.map((t) => t.name)).size === ts.length, 'trunk names must be unique'),
  /**
   * Outbound routing for calls from softphones that are neither a built-in extension nor a local
   * user, first match wins; no match is 404. Without `routes`, every such call goes to the first trunk.
   */
  routes: z
    .array(
      z.strictObject({
        name: z.string().min(1).max(64).optional(),
        /** The dialled user (Request-URI user). */
        to: userMatch.optional(),
        /** The calling user. */
        from: userMatch.optional(),
        trunk: z.string().min(1),
        /** Digits removed from the front of the dialled number, then `prepend` added. */
        strip: z.number().int().min(0).max(32).default(0),
        prepend: z.string().regex(/^[0-9A-Za-z*#+]{0,32}$/).default(''),
      }),
    )
    .optional(),
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
  const trunks = new Set(c.trunks.map((t) => t.name));
  c.routes?.forEach((r, i) => {
    if (!trunks.has(r.trunk)) errors.push(`  routes.${i}.trunk: no trunk "${r.trunk}" in trunks`);
    for (const side of ['to', 'from'] as const) {
      const re = r[side]?.regex;
      if (re === undefined) continue;
      try {
        new RegExp(re);
      } catch (err) {
        errors.push(`  routes.${i}.${side}.regex: ${(err as Error).message}`);
      }
    }
  });
  c.sip.listen.forEach((l, i) => {
    if (l.transport === 'tls' && !c.sip.tls?.cert) errors.push(`  sip.listen.${i}: a TLS listener needs sip.tls (cert and key)`);
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
