/**
 * A tiny authoritative DNS server over UDP on 127.0.0.1 for resolver tests: A, AAAA, SRV and
 * NAPTR records set per test, NXDOMAIN for names it does not know, NOERROR with no answer for
 * a known name without records of the asked type, and names that never get an answer (to
 * time a client out) or get SERVFAIL. Every query is logged so tests can prove which lookups
 * a client made.
 */
import dgram from 'node:dgram';
import dnsPacket from 'dns-packet';
import { InvalidStateError } from '../../src/util/errors.js';

export interface SrvRecord {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

export interface NaptrRecord {
  order: number;
  preference: number;
  /** "s" for SIP (the replacement is an SRV name). */
  flags: string;
  /** "SIP+D2U", "SIP+D2T", "SIPS+D2T", ... */
  services: string;
  regexp?: string;
  replacement: string;
}

export interface DnsQuery {
  name: string;
  type: string;
}

type RecordType = 'A' | 'AAAA' | 'SRV' | 'NAPTR';

interface StoredRecord {
  type: RecordType;
  ttl: number;
  data: string | SrvRecord | NaptrRecord;
}

const RCODE_SERVFAIL = 2;
const RCODE_NXDOMAIN = 3;

const norm = (name: string): string => name.toLowerCase().replace(/\.$/, '');

export class TestDnsServer {
  readonly #socket: dgram.Socket;
  readonly #records = new Map<string, StoredRecord[]>();
  readonly #silent = new Set<string>();
  readonly #servfail = new Set<string>();
  readonly #queries: DnsQuery[] = [];
  #closed: Promise<void> | undefined;

  private constructor(socket: dgram.Socket) {
    this.#socket = socket;
    socket.on('message', (msg, rinfo) => this.#onQuery(msg, rinfo));
  }

  /** A server on 127.0.0.1, port 0 (any free one). */
  static async start(): Promise<TestDnsServer> {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    return new TestDnsServer(socket);
  }

  get port(): number {
    return this.#socket.address().port;
  }

  /** "127.0.0.1:port", as the resolver's `servers` option takes it. */
  get server(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Every query answered or not, in arrival order. */
  get queries(): readonly DnsQuery[] {
    return this.#queries;
  }

  a(name: string, addresses: string[], ttl = 60): this {
    for (const address of addresses) this.#add(name, { type: 'A', ttl, data: address });
    return this;
  }

  aaaa(name: string, addresses: string[], ttl = 60): this {
    for (const address of addresses) this.#add(name, { type: 'AAAA', ttl, data: address });
    return this;
  }

  srv(name: string, records: SrvRecord[], ttl = 60): this {
    for (const r of records) this.#add(name, { type: 'SRV', ttl, data: { ...r } });
    return this;
  }

  naptr(name: string, records: NaptrRecord[], ttl = 60): this {
    for (const r of records) this.#add(name, { type: 'NAPTR', ttl, data: { ...r } });
    return this;
  }

  /** Queries for `name` (of `type`, default any) are dropped: the client times out. */
  silence(name: string, type?: string): this {
    this.#silent.add(type ? `${type} ${norm(name)}` : norm(name));
    return this;
  }

  /** Queries for `name` (any type) get SERVFAIL. */
  serverFailure(name: string): this {
    this.#servfail.add(norm(name));
    return this;
  }

  /** Forgets every record, rule and logged query. */
  reset(): void {
    this.#records.clear();
    this.#silent.clear();
    this.#servfail.clear();
    this.#queries.length = 0;
  }

  close(): Promise<void> {
    this.#closed ??= new Promise((resolve) => this.#socket.close(() => resolve()));
    return this.#closed;
  }

  #add(name: string, record: StoredRecord): void {
    if (this.#closed) throw new InvalidStateError('the DNS server is closed');
    const key = norm(name);
    const list = this.#records.get(key) ?? [];
    list.push(record);
    this.#records.set(key, list);
  }

  #onQuery(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    let query: dnsPacket.DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return; // not DNS: nothing sensible to answer
    }
    const question = query.questions?.[0];
    if (query.type !== 'query' || !question) return;
    const name = norm(question.name);
    this.#queries.push({ name, type: question.type });
    if (this.#silent.has(name) || this.#silent.has(`${question.type} ${name}`)) return;

    let rcode = 0;
    let answers: dnsPacket.Answer[] = [];
    if (this.#servfail.has(name)) rcode = RCODE_SERVFAIL;
    else if (!this.#records.has(name)) rcode = RCODE_NXDOMAIN;
    else answers = this.#records.get(name)!.filter((r) => r.type === question.type).map((r) => toAnswer(question.name, r));

    const response = dnsPacket.encode({
      type: 'response',
      id: query.id ?? 0,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) | rcode,
      questions: [question],
      answers,
    });
    this.#socket.send(response, rinfo.port, rinfo.address);
  }
}

function toAnswer(name: string, r: StoredRecord): dnsPacket.Answer {
  switch (r.type) {
    case 'A':
    case 'AAAA':
      return { type: r.type, name, ttl: r.ttl, data: r.data as string };
    case 'SRV':
      return { type: 'SRV', name, ttl: r.ttl, data: r.data as SrvRecord };
    case 'NAPTR': {
      const n = r.data as NaptrRecord;
      return { type: 'NAPTR', name, ttl: r.ttl, data: { ...n, regexp: n.regexp ?? '' } };
    }
  }
}
