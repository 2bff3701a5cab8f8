import { lookup, Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { GatewayError } from '../src/util/errors.js';
import type { Destination, PeerTransport, SipTarget } from './backend.js';

export interface ResolverOptions {
  /** DNS servers ("ip", "ip:port", "[ipv6]:port"); default: the system's. */
  servers?: string[];
  /** First-try timeout of one query in ms (c-ares backs off on later tries: 500 ms and 2 tries wait about 2 s; default 500). */
  timeoutMs?: number;
  /** Tries per query and server (default 2). */
  tries?: number;
  /**
   * Longest a whole resolve() waits in ms (default 4000): NAPTR, SRV and A/AAAA run one after
   * the other, so a dead server would otherwise cost each step's full timeout.
   */
  budgetMs?: number;
  /** Longest time an answer is reused, in ms (A/AAAA also honour their TTL; default 30000; 0: no cache). */
  cacheTtlMs?: number;
  /** Most answers kept (default 512); the oldest go first. */
  cacheSize?: number;
  /** Most destinations one target resolves to (default 16): each can cost a failover timeout. */
  maxDestinations?: number;
  /** Uniform in [0, 1): the SRV weight draw (default Math.random). */
  random?: () => number;
}

type QueryType = 'NAPTR' | 'SRV' | 'A' | 'AAAA';

interface Srv {
  priority: number;
  weight: number;
  port: number;
  name: string;
}

interface Naptr {
  order: number;
  preference: number;
  flags: string;
  service: string;
  replacement: string;
}

/** One resolve() call: what failed, and until when it may wait. */
/** How long AAAA may lag behind an answered A before we go on without it (like RFC 8305's resolution delay, with room for a busy event loop). */
const AAAA_GRACE_MS = 250;

interface Attempt {
  failures: string[];
  deadline: number;
  outOfTime: boolean;
}

interface CacheEntry {
  expires: number;
  value: Promise<unknown[]>;
}

/** RFC 3263 §4.1 NAPTR services we can use, and the transport each means. */
const NAPTR_SERVICES: Readonly<Record<string, PeerTransport>> = { 'SIP+D2U': 'udp', 'SIP+D2T': 'tcp', 'SIPS+D2T': 'tls' };
const SRV_PREFIX: Readonly<Record<PeerTransport, string>> = { udp: '_sip._udp.', tcp: '_sip._tcp.', tls: '_sips._tcp.' };
const TRANSPORTS: readonly PeerTransport[] = ['udp', 'tcp', 'tls'];
/** c-ares codes that mean "no such records": the next step goes on. */
const NO_RECORDS = new Set(['ENOTFOUND', 'ENODATA']);

const defaultPort = (t: PeerTransport): number => (t === 'tls' ? 5061 : 5060);

/**
 * RFC 3263 §4 (client side): a SIP target to destinations in order of preference. IP literals
 * stand for themselves; a domain with a port is looked up as A/AAAA; with a transport only, as
 * SRV; with neither, NAPTR first, then SRV for UDP, TCP and TLS, then A/AAAA on 5060. SRV sets
 * are ordered by priority and weighted random choice (RFC 2782), and each target expands to
 * all its addresses, A before AAAA. Lookups that find nothing move on to the next step; timeouts
 * and server failures reject only when nothing resolved at all.
 */
export class SipResolver {
  readonly #dns: Resolver;
  readonly #budgetMs: number;
  readonly #cacheTtlMs: number;
  readonly #cacheSize: number;
  readonly #maxDestinations: number;
  readonly #random: () => number;
  readonly #cache = new Map<string, CacheEntry>();

  constructor(opts: ResolverOptions = {}) {
    const int = (v: number | undefined, name: string, min: number, max: number, dflt: number): number => {
      if (v === undefined) return dflt;
      if (!Number.isInteger(v) || v < min || v > max) throw new TypeError(`${name} must be an integer ${min}-${max}, got ${String(v)}`);
      return v;
    };
    const timeout = int(opts.timeoutMs, 'timeoutMs', 1, 60_000, 500);
    this.#budgetMs = int(opts.budgetMs, 'budgetMs', 1, 600_000, 4000);
    const tries = int(opts.tries, 'tries', 1, 10, 2);
    this.#cacheTtlMs = int(opts.cacheTtlMs, 'cacheTtlMs', 0, 86_400_000, 30_000);
    this.#cacheSize = int(opts.cacheSize, 'cacheSize', 1, 1_000_000, 512);
    this.#maxDestinations = int(opts.maxDestinations, 'maxDestinations', 1, 1000, 16);
    if (opts.random !== undefined && typeof opts.random !== 'function') throw new TypeError('random must be a function');
    this.#random = opts.random ?? Math.random;
    this.#dns = new Resolver({ timeout, tries });
    this.#systemDns = opts.servers === undefined;
    if (opts.servers !== undefined) {
      if (!Array.isArray(opts.servers) || opts.servers.length === 0) throw new TypeError('servers must be a non-empty array');
      try {
        this.#dns.setServers(opts.servers);
      } catch (err) {
        throw new TypeError(`invalid DNS servers ${JSON.stringify(opts.servers)}: ${(err as Error).message}`);
      }
    }
  }

  readonly #systemDns: boolean;

  async resolve(target: SipTarget): Promise<Destination[]> {
    const { host, port, transport } = checkTarget(target);
    if (isIP(host)) return [{ transport: transport ?? 'udp', address: host, port: port ?? defaultPort(transport ?? 'udp'), hostname: host }];
    // RFC 6761 §6.3: localhost names are loopback, without asking DNS (which does not know them).
    if (/^(.+\.)?localhost\.?$/i.test(host)) {
      const t = transport ?? 'udp';
      return ['127.0.0.1', '::1'].map((address) => ({ transport: t, address, port: port ?? defaultPort(t), hostname: host }));
    }

    const at: Attempt = { failures: [], deadline: Date.now() + this.#budgetMs, outOfTime: false };
    const dests = await this.#resolveDomain(host, port, transport, at);
    const seen = new Set<string>();
    const unique = dests.filter((d) => {
      const key = `${d.transport}:${d.address}:${d.port}`;
      return !seen.has(key) && seen.add(key);
    });
    if (unique.length === 0 && at.failures.length > 0) {
      throw new GatewayError('GW_DNS_FAILED', `DNS resolution of ${host} failed (${at.failures.join('; ')})`);
    }
    return unique.slice(0, this.#maxDestinations);
  }

  async #resolveDomain(host: string, port: number | undefined, transport: PeerTransport | undefined, at: Attempt): Promise<Destination[]> {
    // RFC 3263 §4.2: an explicit port means no SRV.
    if (port !== undefined) return this.#addresses(host, transport ?? 'udp', port, host, at);
    if (transport) {
      const viaSrv = await this.#srv(SRV_PREFIX[transport] + host, transport, host, at);
      return viaSrv.length > 0 ? viaSrv : this.#addresses(host, transport, defaultPort(transport), host, at);
    }
    // RFC 3263 §4.1: NAPTR first; usable records point at SRV names.
    const naptrs = await this.#query<Naptr>('NAPTR', host, at);
    const usable = naptrs
      .filter((n) => n.flags.toLowerCase() === 's' && Object.hasOwn(NAPTR_SERVICES, n.service.toUpperCase()) && n.replacement !== '')
      .sort((a, b) => a.order - b.order || a.preference - b.preference);
    const fromNaptr = await Promise.all(usable.map((n) => this.#srv(n.replacement, NAPTR_SERVICES[n.service.toUpperCase()]!, host, at)));
    if (fromNaptr.flat().length > 0) return fromNaptr.flat();
    // No (usable) NAPTR: SRV for every transport we support, in our order of preference.
    const fromSrv = await Promise.all(TRANSPORTS.map((t) => this.#srv(SRV_PREFIX[t] + host, t, host, at)));
    if (fromSrv.flat().length > 0) return fromSrv.flat();
    return this.#addresses(host, 'udp', 5060, host, at);
  }

  /** One SRV set, ordered (RFC 2782), each target expanded to its addresses. */
  async #srv(name: string, transport: PeerTransport, hostname: string, at: Attempt): Promise<Destination[]> {
    const records = await this.#query<Srv>('SRV', name, at);
    // A target of "." says the service is not offered there (RFC 2782); port 0 cannot be dialled.
    const ordered = orderSrv(records.filter((r) => r.name !== '' && r.name !== '.' && r.port > 0), this.#random);
    const expanded = await Promise.all(ordered.map((r) => this.#addresses(r.name, transport, r.port, hostname, at)));
    return expanded.flat();
  }

  /** A then AAAA of `name`; `hostname` is the domain of the original target (RFC 5922 for TLS). */
  async #addresses(name: string, transport: PeerTransport, port: number, hostname: string, at: Attempt): Promise<Destination[]> {
    // AAAA on an attempt of its own: once A has answered we wait only AAAA_GRACE_MS more for it
    // (as RFC 8305 does), and a late AAAA timeout must not mark this attempt out of time.
    const side: Attempt = { failures: [], deadline: at.deadline, outOfTime: false };
    const aaaa = this.#query<string>('AAAA', name, side).then((r) => ({ r }));
    const v4 = await this.#query<string>('A', name, at);
    let v6: string[] = [];
    if (v4.length === 0) {
      v6 = (await aaaa).r;
      at.failures.push(...side.failures);
      at.outOfTime ||= side.outOfTime;
    } else {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), AAAA_GRACE_MS)));
      const got = await Promise.race([aaaa, grace]);
      clearTimeout(timer);
      if (got) v6 = got.r;
    }
    let addresses = [...v4, ...v6];
    // On the system's DNS, also what the OS resolver knows (/etc/hosts), as PBXs and proxies do.
    // Never with configured servers: tests must not send queries beyond them.
    if (addresses.length === 0 && this.#systemDns && at.deadline > Date.now()) addresses = await this.#hostsLookup(name, at.deadline - Date.now());
    return addresses.map((address) => ({ transport, address, port, hostname }));
  }

  async #hostsLookup(name: string, ms: number): Promise<string[]> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<[]>((resolve) => (timer = setTimeout(() => resolve([]), ms)));
    try {
      const found = lookup(name, { all: true }).then(
        (r) => r.map((a) => a.address),
        () => [],
      );
      return await Promise.race([found, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One lookup, cached; "no records" is an empty list, other failures are noted and give one too. */
  async #query<T>(type: QueryType, name: string, at: Attempt): Promise<T[]> {
    const left = at.deadline - Date.now();
    if (left <= 0 || at.outOfTime) {
      if (!at.outOfTime) at.failures.push(`out of time (${this.#budgetMs} ms)`);
      at.outOfTime = true;
      return [];
    }
    let timer: NodeJS.Timeout | undefined;
    // The query itself is bounded by c-ares; this only stops waiting for it.
    const expired = new Promise<'expired'>((resolve) => (timer = setTimeout(() => resolve('expired'), left)));
    try {
      const result = await Promise.race([this.#cached(type, name), expired]);
      if (result !== 'expired') return result as T[];
      at.failures.push(`${type} ${name}: no answer within the ${this.#budgetMs} ms budget`);
      at.outOfTime = true;
      return [];
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      at.failures.push(`${type} ${name}: ${code ?? (err as Error).message}`);
      return [];
    } finally {
      clearTimeout(timer);
    }
  }

  #cached(type: QueryType, name: string): Promise<unknown[]> {
    if (this.#cacheTtlMs === 0) return this.#lookup(type, name).then((r) => r.records);
    const key = `${type} ${name.toLowerCase()}`;
    const now = Date.now();
    const hit = this.#cache.get(key);
    if (hit && hit.expires > now) return hit.value;
    if (hit) this.#cache.delete(key);
    // Concurrent calls to one domain share a query in flight (expires: never, until it settles).
    const entry: CacheEntry = { expires: Infinity, value: Promise.resolve([]) };
    entry.value = this.#lookup(type, name).then(
      ({ records, ttlMs }) => {
        entry.expires = Date.now() + Math.min(ttlMs, this.#cacheTtlMs);
        return records;
      },
      (err: unknown) => {
        if (this.#cache.get(key) === entry) this.#cache.delete(key);
        throw err;
      },
    );
    this.#evict(now);
    this.#cache.set(key, entry);
    return entry.value;
  }

  #evict(now: number): void {
    if (this.#cache.size < this.#cacheSize) return;
    for (const [k, e] of this.#cache) if (e.expires <= now) this.#cache.delete(k);
    // Map order is insertion order: the oldest answers go first.
    for (const k of this.#cache.keys()) {
      if (this.#cache.size < this.#cacheSize) break;
      this.#cache.delete(k);
    }
  }

  /** The query itself; `ttlMs` is how long the answer may be kept (Infinity: no TTL known, use the cap). */
  async #lookup(type: QueryType, name: string): Promise<{ records: unknown[]; ttlMs: number }> {
    try {
      switch (type) {
        case 'NAPTR':
          return { records: await this.#dns.resolveNaptr(name), ttlMs: Infinity };
        case 'SRV':
          return { records: await this.#dns.resolveSrv(name), ttlMs: Infinity };
        case 'A':
        case 'AAAA': {
          const rs = type === 'A' ? await this.#dns.resolve4(name, { ttl: true }) : await this.#dns.resolve6(name, { ttl: true });
          return { records: rs.map((r) => r.address), ttlMs: Math.min(...rs.map((r) => r.ttl * 1000)) };
        }
      }
    } catch (err) {
      if (NO_RECORDS.has((err as NodeJS.ErrnoException).code ?? '')) return { records: [], ttlMs: Infinity };
      throw err;
    }
  }
}

/** Priority ascending; within one priority, RFC 2782's weighted random order. */
export function orderSrv<T extends { priority: number; weight: number }>(records: readonly T[], random: () => number = Math.random): T[] {
  const byPriority = new Map<number, T[]>();
  for (const r of records) byPriority.set(r.priority, [...(byPriority.get(r.priority) ?? []), r]);
  const out: T[] = [];
  for (const priority of [...byPriority.keys()].sort((a, b) => a - b)) {
    // Weight 0 first, so that it is picked only when the draw is 0 (RFC 2782).
    const left = byPriority.get(priority)!.sort((a, b) => (a.weight === 0 ? 0 : 1) - (b.weight === 0 ? 0 : 1));
    while (left.length > 0) {
      const total = left.reduce((s, r) => s + r.weight, 0);
      let index = 0;
      if (total === 0) {
        index = Math.floor(random() * left.length); // all weight 0: equal chances
      } else {
        const draw = Math.floor(random() * (total + 1)); // 0..total inclusive
        let sum = 0;
        index = left.findIndex((r) => (sum += r.weight) >= draw);
      }
      out.push(...left.splice(Math.min(Math.max(index, 0), left.length - 1), 1));
    }
  }
  return out;
}

/** Bad targets are a programming error at this edge (config is validated before). */
function checkTarget(t: SipTarget): { host: string; port: number | undefined; transport: PeerTransport | undefined } {
  if (!t || typeof t.host !== 'string' || t.host.trim() === '') throw new TypeError('target.host must be a non-empty string');
  if (t.port !== undefined && (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535)) throw new TypeError(`target.port must be 1-65535, got ${String(t.port)}`);
  if (t.transport !== undefined && !TRANSPORTS.includes(t.transport)) throw new TypeError(`target.transport must be udp, tcp or tls, got ${String(t.transport)}`);
  const raw = t.host.trim();
  const host = raw.startsWith('[') && raw.endsWith(']') ? raw.slice(1, -1) : raw.replace(/\.$/, '');
  if (!isIP(host) && !/^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*$/.test(host)) {
    throw new TypeError(`target.host is neither an IP address nor a domain name: ${JSON.stringify(t.host)}`);
  }
  return { host, port: t.port, transport: t.transport };
}
