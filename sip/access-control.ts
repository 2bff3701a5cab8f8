import type { Logger } from 'pino';
import type { ContactTarget, Registration } from './backend.js';
import { DigestAuthenticator, FailureLimiter, type DigestResult, type DigestUser } from './digest.js';
import { LocationService, type RegisterContact } from './location-service.js';
import { NameAddrHeader, type ParsedRequest, type ResponseOptions } from './message.js';
import type { ServerTransaction } from './transactions.js';
import type { Flow } from './transport/flow.js';

export interface TrunkIdentity {
  name: string;
  /** Source addresses requests from this trunk come from. */
  addresses: string[];
  /** Source port, when the trunk must be told apart by port too. */
  port?: number;
}

export interface AccessOptions {
  /** Digest realm (defaults to the announced address). */
  realm: string;
  users: (username: string) => DigestUser | undefined;
  trunks: TrunkIdentity[];
  registrar: { minExpires: number; maxExpires: number; defaultExpires: number };
  /** Failed authentications per source before it is blocked for a while. */
  maxAuthFailures?: number;
}

type Respond = (txn: ServerTransaction, status: number, opts?: ResponseOptions) => void;

export type InviteAccess = { ok: true; authUser?: string; trunk?: string } | { ok: false; status: number; reason: string; headers?: string[] };

/** The Request-URI exactly as sent: digest's `uri` must equal it. */
function rawRequestUri(req: ParsedRequest): string {
  return req.msg.data.slice(0, req.msg.data.indexOf('\r\n')).split(' ')[1] ?? '';
}

/**
 * Who may do what: digest authentication of softphones and phones (401 for REGISTER, 407 for
 * INVITE), trunks recognised by source address, and the registrar itself (bindings in a
 * LocationService, dropped when their WebSocket or TCP connection closes).
 */
export class AccessControl {
  readonly location: LocationService;
  #auth: DigestAuthenticator;
  #limiter: FailureLimiter;
  #opts: AccessOptions;
  #respond: Respond;
  #log: Logger;
  #expiry: NodeJS.Timeout;

  constructor(opts: AccessOptions, respond: Respond, log: Logger) {
    this.#opts = { ...opts, trunks: opts.trunks.map((t) => ({ ...t })) };
    this.#respond = respond;
    this.#log = log;
    this.#auth = new DigestAuthenticator({ realm: opts.realm, lookup: opts.users });
    this.#limiter = new FailureLimiter({ maxFailures: opts.maxAuthFailures ?? 10, windowMs: 60_000, blockMs: 60_000 });
    this.location = new LocationService(opts.registrar);
    this.#expiry = setInterval(() => {
      for (const b of this.location.expire()) this.#log.info({ user: b.aor, contact: b.uri }, 'registration expired');
    }, 1000);
    this.#expiry.unref();
  }

  /**
   * The trunk whose addresses a request comes from. The port only counts over UDP: a TCP or TLS
   * peer connects from an ephemeral port, whatever its listening port is.
   */
  trunkFor(address: string, port: number, transport = 'udp'): string | undefined {
    const portMatches = (t: { port?: number }) => t.port === undefined || transport !== 'udp' || t.port === port;
    return this.#opts.trunks.find((t) => t.addresses.includes(address) && portMatches(t))?.name;
  }
  /** New source addresses for a trunk (its domain re-resolved); unknown names are ignored. */
  setTrunkAddresses(name: string, addresses: readonly string[]): void {
    const t = this.#opts.trunks.find((x) => x.name === name);
    if (t) t.addresses = [...addresses];
  }


  /** Digest check shared by REGISTER and INVITE; answers the challenge or the refusal itself. */
  #authenticate(req: ParsedRequest, txn: ServerTransaction, flow: Flow, proxy: boolean): string | undefined {
    // Per transport: a UDP source address can be forged, and forged failures must not lock the
    // same address out of its WebSocket or TLS connections.
    const source = `${flow.transport}:${flow.remote.address}`;
    if (this.#limiter.blocked(source)) {
      this.#respond(txn, 403, { reason: 'Forbidden (too many failed attempts)' });
      return undefined;
    }
    const header = proxy ? req.msg.getHeaders('proxy-authorization') : req.msg.getHeaders('authorization');
    const result: DigestResult = this.#auth.verify(header.length > 0 ? header : undefined, { method: req.method, uri: rawRequestUri(req) });
    if (result.ok) {
      this.#limiter.succeed(source);
      return result.username;
    }
    const challenge = (stale: boolean) => {
      const name = proxy ? 'Proxy-Authenticate' : 'WWW-Authenticate';
      this.#respond(txn, proxy ? 407 : 401, { headers: this.#auth.challenge({ stale }).map((c) => `${name}: ${c}`) });
    };
    switch (result.reason) {
      case 'missing':
      case 'wrong-realm':
        return void challenge(false);
      case 'stale-nonce':
      case 'unknown-nonce':
      // A reused nonce-count is refused, but answered with a fresh challenge rather than 403:
      // SIP.js resends its last Authorization as-is (e.g. on un-REGISTER), which is no attack.
      case 'replay':
        return void challenge(true);
      case 'unknown-user':
      case 'bad-response':
        // Only a wrong answer to a nonce we issued is a guess at a password; counting malformed or
        // unsupported headers would let anyone lock a source out without ever being challenged.
        this.#limiter.fail(source);
        this.#log.warn({ source: `${flow.transport}:${flow.remote.address}:${flow.remote.port}`, user: result.username, reason: result.reason, method: req.method }, 'authentication failed');
        this.#respond(txn, 403, { reason: 'Forbidden' });
        return undefined;
      default:
        this.#log.info({ source: `${flow.transport}:${flow.remote.address}:${flow.remote.port}`, user: result.username, reason: result.reason, method: req.method }, 'malformed credentials refused');
        this.#respond(txn, 403, { reason: 'Forbidden' });
        return undefined;
    }
  }

  /** Decides whether an INVITE may create a call; responds itself when it may not be. */
  authorizeInvite(req: ParsedRequest, txn: ServerTransaction, flow: Flow): InviteAccess | undefined {
    if (flow.transport !== 'ws') {
      const trunk = this.trunkFor(flow.remote.address, flow.remote.port, flow.transport);
      if (trunk) return { ok: true, trunk };
      this.#log.warn({ source: `${flow.transport}:${flow.remote.address}:${flow.remote.port}` }, 'INVITE from an address that is not a configured trunk');
      return { ok: false, status: 403, reason: 'Forbidden (not a configured peer)' };
    }
    const user = this.#authenticate(req, txn, flow, true);
    if (!user) return undefined;
    if ((req.msg.from.uri.user ?? '') !== user) return { ok: false, status: 403, reason: 'Forbidden (From does not match the authenticated user)' };
    return { ok: true, authUser: user };
  }

  /** REGISTER (RFC 3261 §10.3): authenticate, then update the location service. */
  register(req: ParsedRequest, txn: ServerTransaction, flow: Flow): void {
    const user = this.#authenticate(req, txn, flow, false);
    if (!user) return;
    const aor = req.msg.to.uri.user ?? '';
    if (aor !== user) return this.#respond(txn, 403, { reason: 'Forbidden (To does not match the authenticated user)' });
    const expiresHeader = req.msg.getHeader('expires');
    const expires = expiresHeader === undefined ? undefined : Number(expiresHeader.trim());
    if (expires !== undefined && !(Number.isSafeInteger(expires) && expires >= 0)) return this.#respond(txn, 400, { reason: 'Bad Request (Expires)' });
    const star = (req.msg.getHeader('contact') ?? '').trim() === '*';
    const contacts: RegisterContact[] | '*' = star
      ? '*'
      : (req.msg.headers['Contact'] ?? []).flatMap((h): RegisterContact[] => {
          const p = h.parsed;
          if (!(p instanceof NameAddrHeader)) return [];
          const num = (v: unknown) => (v === undefined || v === null || v === '' ? undefined : Number(v));
          const c: RegisterContact = { uri: p.uri.toString() };
          const e = num(p.getParam('expires'));
          if (e !== undefined) c.expires = e;
          const inst = p.getParam('+sip.instance');
          if (inst) c.instance = String(inst);
          const reg = num(p.getParam('reg-id'));
          if (reg !== undefined) c.regId = reg;
          const q = num(p.getParam('q'));
          if (q !== undefined) c.q = q;
          return [c];
        });
    const ua = req.msg.getHeader('user-agent');
    const outcome = this.location.register({
      aor,
      callId: req.msg.callId,
      cseq: req.msg.cseq,
      contacts,
      ...(expires !== undefined ? { expiresHeader: expires } : {}),
      source: { transport: flow.transport, address: flow.remote.address, port: flow.remote.port, flowId: flow.id },
      ...(ua ? { userAgent: ua } : {}),
    });
    if (!outcome.ok) {
      const headers = outcome.minExpires !== undefined ? [`Min-Expires: ${outcome.minExpires}`] : [];
      return this.#respond(txn, outcome.status, { reason: outcome.reason, headers });
    }
    this.#log.info({ user: aor, contacts: outcome.bindings.length, source: `${flow.transport}:${flow.remote.address}:${flow.remote.port}` }, 'registered');
    this.#respond(txn, 200, { headers: outcome.bindings.map((b) => `Contact: <${b.uri}>;expires=${b.expires}`) });
  }

  dropFlow(flow: Flow): void {
    for (const b of this.location.dropFlow(flow.id)) this.#log.info({ user: b.aor, contact: b.uri }, 'registration dropped: connection closed');
  }

  contactsOf(user: string): ContactTarget[] {
    return this.location.lookup(user).map((b) => ({ uri: b.uri, source: { ...b.source } }));
  }

  registrations(): Registration[] {
    return this.location.all().map((b) => ({
      user: b.aor,
      contact: b.uri,
      expiresAt: b.expiresAt,
      transport: b.source.transport,
      source: `${b.source.address}:${b.source.port}`,
      ...(b.userAgent ? { userAgent: b.userAgent } : {}),
      ...(b.instance ? { instance: b.instance.replace(/^"(.*)"$/, '$1') } : {}),
    }));
  }

  close(): void {
    clearInterval(this.#expiry);
  }
}
