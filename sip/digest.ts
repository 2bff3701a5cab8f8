import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * SIP digest authentication (RFC 3261 §22, RFC 2617, RFC 7616), both directions, as pure functions and
 * small classes: no timers, no I/O. Only qop=auth (or no qop, client side) and MD5 / SHA-256.
 */

export type DigestAlgorithm = 'MD5' | 'SHA-256';

/** Precomputed HA1 = H(username:realm:password) per algorithm, lowercase hex. Bound to one realm. */
export interface DigestHa1 {
  md5?: string;
  sha256?: string;
}

/** What the server knows about a user: a password, or HA1 values so that the password need not be stored. */
export interface DigestUser {
  password?: string;
  ha1?: DigestHa1;
}

export interface DigestCredentials {
  username: string;
  /** Username for the digest when it differs from the SIP user (trunk "auth user"). */
  authUsername?: string;
  password?: string;
  ha1?: DigestHa1;
  /** Answer only challenges for this realm (default: any). */
  realm?: string;
}

export interface DigestRequest {
  method: string;
  /** Request-URI exactly as sent on the request line. */
  uri: string;
}

export type DigestFailure = 'missing' | 'malformed' | 'unknown-user' | 'wrong-realm' | 'bad-response' | 'stale-nonce'
  | 'replay' | 'unknown-nonce' | 'uri-mismatch' | 'unsupported';

export type DigestResult =
  | { ok: true; username: string; algorithm: DigestAlgorithm }
  | { ok: false; reason: DigestFailure; username?: string };

const HASH_NAME = { MD5: 'md5', 'SHA-256': 'sha256' } as const;
const HA1_KEY = { MD5: 'md5', 'SHA-256': 'sha256' } as const;
const PREFERENCE: readonly DigestAlgorithm[] = ['SHA-256', 'MD5'];
// Bounds on attacker-controlled header parsing.
const MAX_HEADER_LENGTH = 8192;
const MAX_PARAMS = 32;

export function digestHash(algorithm: DigestAlgorithm, data: string): string {
  return createHash(HASH_NAME[algorithm]).update(data, 'utf8').digest('hex');
}

export function digestHa1(algorithm: DigestAlgorithm, username: string, realm: string, password: string): string {
  return digestHash(algorithm, `${username}:${realm}:${password}`);
}

/** request-digest of RFC 2617 §3.2.2.1 (RFC 7616 §3.4.1); `qop` absent means the RFC 2069 form. */
export function digestResponse(p: {
  algorithm: DigestAlgorithm; ha1: string; nonce: string; method: string; uri: string; qop?: { nc: string; cnonce: string };
}): string {
  const ha2 = digestHash(p.algorithm, `${p.method}:${p.uri}`);
  const data = p.qop ? `${p.ha1}:${p.nonce}:${p.qop.nc}:${p.qop.cnonce}:auth:${ha2}` : `${p.ha1}:${p.nonce}:${ha2}`;
  return digestHash(p.algorithm, data);
}

export interface AuthHeader {
  scheme: string;
  /** Parameter names lowercased, values unquoted and unescaped. */
  params: Map<string, string>;
}

const SCHEME_RE = /\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s+/y;
const SEPARATORS_RE = /[\s,]*/y;
// name = ( quoted-string | bare ) followed by a comma or the end. Bare values are read leniently (anything
// without whitespace, comma or quote): some servers send base64 nonces unquoted.
const PARAM_RE = /([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\[\s\S])*)"|([^\s,"]+))\s*(?:,|$)/y;

/**
 * Parses `Scheme k=v, k="quoted, \"escaped\"", ...` (a challenge or credentials header value).
 * Never throws; undefined for anything malformed, including duplicate parameters (RFC 7235 §2.1).
 */
export function parseAuthHeader(value: unknown): AuthHeader | undefined {
  if (typeof value !== 'string' || value.length > MAX_HEADER_LENGTH) return undefined;
  SCHEME_RE.lastIndex = 0;
  const scheme = SCHEME_RE.exec(value)?.[1];
  if (!scheme) return undefined;
  const params = new Map<string, string>();
  let i = SCHEME_RE.lastIndex;
  for (;;) {
    SEPARATORS_RE.lastIndex = i;
    SEPARATORS_RE.exec(value);
    PARAM_RE.lastIndex = SEPARATORS_RE.lastIndex;
    if (PARAM_RE.lastIndex >= value.length) break;
    const m = PARAM_RE.exec(value);
    if (!m) return undefined;
    const name = m[1]!.toLowerCase();
    if (params.has(name) || params.size >= MAX_PARAMS) return undefined;
    params.set(name, m[2] !== undefined ? m[2].replace(/\\([\s\S])/g, '$1') : m[3]!);
    i = PARAM_RE.lastIndex;
  }
  return params.size > 0 ? { scheme, params } : undefined;
}

function parseAlgorithm(value: string | undefined): DigestAlgorithm | undefined {
  if (value === undefined) return 'MD5'; // RFC 2617 §3.2.1: absent means MD5
  const v = value.toUpperCase();
  return v === 'MD5' ? 'MD5' : v === 'SHA-256' ? 'SHA-256' : undefined;
}

function ha1For(secret: DigestUser, algorithm: DigestAlgorithm, username: string, realm: string): string | undefined {
  const given = secret.ha1?.[HA1_KEY[algorithm]];
  if (given !== undefined) return given.toLowerCase();
  return secret.password === undefined ? undefined : digestHa1(algorithm, username, realm, secret.password);
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

const quote = (s: string) => `"${s.replace(/["\\]/g, '\\$&')}"`;

function positiveInt(name: string, v: number | undefined, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new TypeError(`${name} must be a positive integer`);
  return v;
}

// ---------------------------------------------------------------- server side

export interface DigestAuthenticatorOptions {
  realm: string;
  lookup: (username: string) => DigestUser | undefined;
  /** Default 300000 (5 min). */
  nonceTtlMs?: number;
  /** Offered in this order; default ['SHA-256', 'MD5']. Some old phones only try the first challenge. */
  algorithms?: readonly DigestAlgorithm[];
  /** HMAC key for stateless nonces; share it between instances behind one address. Random by default. */
  secret?: Buffer;
  /** Bound on replay-protection records; default 10000. */
  maxNonces?: number;
  now?: () => number;
}

// Nonce = hex(issued-ms 6 bytes | random 10 bytes | HMAC-SHA256(secret, those 16 bytes | realm) first 16 bytes).
const NONCE_RE = /^[0-9a-f]{64}$/;

export class DigestAuthenticator {
  readonly realm: string;
  readonly #lookup: (username: string) => DigestUser | undefined;
  readonly #ttl: number;
  readonly #algorithms: readonly DigestAlgorithm[];
  readonly #secret: Buffer;
  readonly #maxNonces: number;
  readonly #now: () => number;
  /** Highest accepted nc per nonce, oldest first use first. */
  readonly #seen = new Map<string, { nc: number; issued: number }>();
  /**
   * Newest issue time of a still-valid nonce evicted from #seen. A nonce issued at or before it without a record
   * may have lost its replay state, so it is answered stale-nonce (forcing a fresh nonce) rather than trusted.
   */
  #evictedUpTo = -Infinity;

  constructor(opts: DigestAuthenticatorOptions) {
    if (typeof opts?.realm !== 'string' || !opts.realm) throw new TypeError('realm must be a non-empty string');
    if (typeof opts.lookup !== 'function') throw new TypeError('lookup must be a function');
    const algorithms = opts.algorithms ?? [...PREFERENCE];
    if (algorithms.length === 0 || algorithms.some((a) => !PREFERENCE.includes(a)) || new Set(algorithms).size !== algorithms.length) {
      throw new TypeError('algorithms must be a non-empty list of distinct MD5 / SHA-256');
    }
    if (opts.secret !== undefined && (!Buffer.isBuffer(opts.secret) || opts.secret.length < 16)) {
      throw new TypeError('secret must be a Buffer of at least 16 bytes');
    }
    this.realm = opts.realm;
    this.#lookup = opts.lookup;
    this.#ttl = positiveInt('nonceTtlMs', opts.nonceTtlMs, 300_000);
    this.#algorithms = [...algorithms];
    this.#secret = opts.secret ?? randomBytes(32);
    this.#maxNonces = positiveInt('maxNonces', opts.maxNonces, 10_000);
    this.#now = opts.now ?? Date.now;
  }

  /** Values for WWW-Authenticate (401) or Proxy-Authenticate (407): one per algorithm, sharing one nonce. */
  challenge(opts: { stale?: boolean } = {}): string[] {
    const nonce = this.#makeNonce();
    const tail = `qop="auth"${opts.stale ? ', stale=true' : ''}`;
    return this.#algorithms.map((a) => `Digest realm=${quote(this.realm)}, nonce="${nonce}", algorithm=${a}, ${tail}`);
  }

  /** Number of nonces holding replay state (for metrics and tests). */
  get trackedNonces(): number {
    return this.#seen.size;
  }

  /**
   * Checks Authorization / Proxy-Authorization. With several header values (one per realm, RFC 3261 §22.3) the
   * one for our realm is used. Never throws on malformed input. Answer 401/407 with challenge({ stale: true })
   * on 'stale-nonce'; the other failures get a fresh challenge or 403 at the caller's discretion.
   */
  verify(header: string | readonly string[] | undefined, req: DigestRequest): DigestResult {
    const list: readonly unknown[] = typeof header === 'string' ? [header] : Array.isArray(header) ? header : [];
    const values = list.filter((v) => typeof v !== 'string' || v.trim() !== '');
    if (values.length === 0) return { ok: false, reason: 'missing' };
    const parsed = values.map(parseAuthHeader);
    const isDigest = (p: AuthHeader | undefined): p is AuthHeader => p?.scheme.toLowerCase() === 'digest';
    const cred = parsed.find((p) => isDigest(p) && p.params.get('realm') === this.realm) ?? parsed.find(isDigest);
    if (!cred) {
      const otherScheme = values.some((v) => typeof v === 'string' && /^\s*[\w-]+(\s|$)/.test(v) && !/^\s*digest\s/i.test(v));
      return { ok: false, reason: otherScheme ? 'unsupported' : 'malformed' };
    }

    const get = (k: string) => cred.params.get(k);
    const username = get('username');
    const fail = (reason: DigestFailure): DigestResult =>
      username === undefined ? { ok: false, reason } : { ok: false, reason, username };
    const [realm, nonce, uri, response] = [get('realm'), get('nonce'), get('uri'), get('response')];
    if (username === undefined || realm === undefined || nonce === undefined || uri === undefined || response === undefined) {
      return fail('malformed');
    }
    const algorithm = parseAlgorithm(get('algorithm'));
    if (!algorithm || !this.#algorithms.includes(algorithm) || get('userhash')?.toLowerCase() === 'true') {
      return fail('unsupported');
    }
    // We always offer qop=auth, and RFC 3261 §22.4 obliges clients to use it then; accepting the RFC 2069
    // form would give up replay protection.
    if (get('qop')?.toLowerCase() !== 'auth') return fail('unsupported');
    const nc = get('nc');
    const cnonce = get('cnonce');
    if (nc === undefined || !/^[0-9a-fA-F]{8}$/.test(nc) || !cnonce) return fail('malformed');
    const count = parseInt(nc, 16);
    if (count === 0) return fail('malformed');

    if (realm !== this.realm) return fail('wrong-realm');
    if (typeof req.uri !== 'string' || uri.trim() !== req.uri.trim()) return fail('uri-mismatch');
    const issued = this.#checkNonce(nonce);
    if (issued === undefined) return fail('unknown-nonce');
    const user = this.#lookup(username);
    if (!user) return fail('unknown-user');
    const ha1 = ha1For(user, algorithm, username, realm);
    // e.g. only an MD5 HA1 is stored and the client chose SHA-256
    if (ha1 === undefined) return fail('unsupported');
    const expected = digestResponse({ algorithm, ha1, nonce, method: req.method, uri, qop: { nc, cnonce } });
    if (!safeEqual(expected, response.toLowerCase())) return fail('bad-response');

    const now = this.#now();
    if (Math.abs(now - issued) > this.#ttl) return fail('stale-nonce');
    const record = this.#seen.get(nonce);
    if (!record && issued <= this.#evictedUpTo) return fail('stale-nonce');
    if (record && count <= record.nc) return fail('replay');
    if (record) record.nc = count;
    else this.#remember(nonce, issued, count, now);
    return { ok: true, username, algorithm };
  }

  #remember(nonce: string, issued: number, nc: number, now: number): void {
    // Insertion order is first-use order, close to issue order: prune expired records from the front,
    // then evict the oldest if still full.
    for (const [key, rec] of this.#seen) {
      const expired = now - rec.issued > this.#ttl;
      if (!expired && this.#seen.size < this.#maxNonces) break;
      this.#seen.delete(key);
      if (!expired) this.#evictedUpTo = Math.max(this.#evictedUpTo, rec.issued);
    }
    // A copy, not the parsed substring: V8 may keep the whole received message alive behind a sliced string.
    this.#seen.set(Buffer.from(nonce, 'latin1').toString('latin1'), { nc, issued });
  }

  #mac(body: Buffer): Buffer {
    return createHmac('sha256', this.#secret).update(body).update(this.realm, 'utf8').digest().subarray(0, 16);
  }

  #makeNonce(): string {
    const body = Buffer.alloc(16);
    body.writeUIntBE(Math.max(0, Math.floor(this.#now())), 0, 6);
    randomBytes(10).copy(body, 6);
    return Buffer.concat([body, this.#mac(body)]).toString('hex');
  }

  /** Issue time of a nonce we signed, else undefined. Strict lowercase hex so one nonce has one spelling. */
  #checkNonce(nonce: string): number | undefined {
    if (!NONCE_RE.test(nonce)) return undefined;
    const buf = Buffer.from(nonce, 'hex');
    const body = buf.subarray(0, 16);
    return timingSafeEqual(this.#mac(body), buf.subarray(16)) ? body.readUIntBE(0, 6) : undefined;
  }
}

/** Counts authentication failures per source (IP, or IP + username) and blocks noisy ones for a while. */
export class FailureLimiter {
  readonly #maxFailures: number;
  readonly #windowMs: number;
  readonly #blockMs: number;
  readonly #maxSources: number;
  readonly #now: () => number;
  /** Least recently failed first. */
  readonly #sources = new Map<string, { failures: number[]; blockedUntil: number }>();

  constructor(opts: { maxFailures: number; windowMs: number; blockMs: number; maxSources?: number; now?: () => number }) {
    this.#maxFailures = positiveInt('maxFailures', opts?.maxFailures);
    this.#windowMs = positiveInt('windowMs', opts.windowMs);
    this.#blockMs = positiveInt('blockMs', opts.blockMs);
    this.#maxSources = positiveInt('maxSources', opts.maxSources, 10_000);
    this.#now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.#sources.size;
  }

  fail(source: string): void {
    const now = this.#now();
    const entry = this.#current(source, now) ?? { failures: [], blockedUntil: 0 };
    // Re-inserted below so that sources still failing, blocked ones included, are the last evicted.
    this.#sources.delete(source);
    if (entry.blockedUntil <= now) {
      entry.failures = entry.failures.filter((t) => now - t < this.#windowMs);
      entry.failures.push(now);
      if (entry.failures.length >= this.#maxFailures) {
        entry.blockedUntil = now + this.#blockMs; // not extended by failures while blocked
        entry.failures = [];
      }
    }
    this.#sources.set(source, entry);
    for (const key of this.#sources.keys()) {
      if (this.#sources.size <= this.#maxSources) break;
      this.#sources.delete(key);
    }
  }

  blocked(source: string): boolean {
    const now = this.#now();
    const entry = this.#current(source, now);
    return entry !== undefined && entry.blockedUntil > now;
  }

  /** Forgets the failures of a source; does not lift a block in force. */
  succeed(source: string): void {
    if (!this.blocked(source)) this.#sources.delete(source);
  }

  /** The entry for a source, dropping it once its block has run out (a fresh start). */
  #current(source: string, now: number) {
    const entry = this.#sources.get(source);
    if (entry && entry.blockedUntil !== 0 && entry.blockedUntil <= now) {
      this.#sources.delete(source);
      return undefined;
    }
    return entry;
  }
}

// ---------------------------------------------------------------- client side

export interface DigestChallenge {
  algorithm: DigestAlgorithm;
  realm: string;
  nonce: string;
  qop: boolean;
  opaque: string | undefined;
  /** The nonce of credentials we sent had expired, the rest was right: retry with this one (RFC 7616 §3.3). */
  stale: boolean;
}

/** A WWW- / Proxy-Authenticate value we can answer (Digest, MD5 or SHA-256, qop absent or auth); else undefined. */
export function parseChallenge(header: unknown): DigestChallenge | undefined {
  const h = parseAuthHeader(header);
  if (!h || h.scheme.toLowerCase() !== 'digest') return undefined;
  const algorithm = parseAlgorithm(h.params.get('algorithm'));
  const realm = h.params.get('realm');
  const nonce = h.params.get('nonce');
  if (!algorithm || realm === undefined || nonce === undefined) return undefined;
  const qopList = h.params.get('qop');
  const qop = qopList !== undefined;
  if (qop && !qopList.split(',').some((q) => q.trim().toLowerCase() === 'auth')) return undefined; // auth-int only
  return { algorithm, realm, nonce, qop, opaque: h.params.get('opaque'), stale: h.params.get('stale')?.toLowerCase() === 'true' };
}

/** Whether `creds` may and can answer `c`: its realm (when they name one) and a usable secret for its algorithm. */
export function canAnswer(c: DigestChallenge, creds: DigestCredentials): boolean {
  if (creds.realm !== undefined && creds.realm !== c.realm) return false;
  return creds.password !== undefined || creds.ha1?.[HA1_KEY[c.algorithm]] !== undefined;
}

/**
 * Builds an Authorization / Proxy-Authorization value answering one WWW- / Proxy-Authenticate value;
 * undefined when the challenge is malformed or unsupported, or the credentials cannot answer it.
 * When reusing a nonce (pre-emptive auth on later requests), pass an increasing `nc`.
 */
export function answerChallenge(
  challengeHeader: string,
  creds: DigestCredentials,
  req: DigestRequest,
  state: { nc?: number; cnonce?: string } = {},
): { header: string; algorithm: DigestAlgorithm } | undefined {
  const c = parseChallenge(challengeHeader);
  if (!c) return undefined;
  const username = creds.authUsername ?? creds.username;
  const ha1 = ha1For(creds, c.algorithm, username, c.realm);
  if (ha1 === undefined) return undefined;
  let qop: { nc: string; cnonce: string } | undefined;
  if (c.qop) {
    const count = state.nc ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > 0xffffffff) throw new TypeError('nc must be an integer in 1..2^32-1');
    qop = { nc: count.toString(16).padStart(8, '0'), cnonce: state.cnonce ?? randomBytes(12).toString('hex') };
  }
  const response = digestResponse({ algorithm: c.algorithm, ha1, nonce: c.nonce, method: req.method, uri: req.uri, qop });
  const parts = [`username=${quote(username)}`, `realm=${quote(c.realm)}`, `nonce=${quote(c.nonce)}`, `uri=${quote(req.uri)}`];
  parts.push(`response="${response}"`, `algorithm=${c.algorithm}`);
  if (qop) parts.push(`cnonce=${quote(qop.cnonce)}`, 'qop=auth', `nc=${qop.nc}`);
  if (c.opaque !== undefined) parts.push(`opaque=${quote(c.opaque)}`);
  return { header: `Digest ${parts.join(', ')}`, algorithm: c.algorithm };
}

/**
 * Picks the challenge to answer among several (RFC 7616 §3.7, RFC 8760): SHA-256 over MD5, first wins ties.
 * With `creds`, only challenges those credentials can answer (e.g. only an MD5 HA1 is configured) count.
 */
export function pickChallenge(headers: readonly string[], creds?: DigestCredentials): string | undefined {
  let best: { header: string; rank: number } | undefined;
  for (const header of headers) {
    const c = parseChallenge(header);
    if (!c || (creds && !canAnswer(c, creds))) continue;
    const rank = PREFERENCE.indexOf(c.algorithm);
    if (!best || rank < best.rank) best = { header, rank };
  }
  return best?.header;
}
