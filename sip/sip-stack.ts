import type http from 'node:http';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { SafeEmitter } from '../src/util/safe-emitter.js';
import { AccessControl, type AccessOptions } from './access-control.js';
import type {
  ContactTarget,
  OutboundCall,
  OutboundCallOptions,
  OutboundRegistration,
  OutboundRegistrationOptions,
  PingResult,
  Registration,
  SipBackend,
  SipBackendEvents,
  SipBackendStats,
  SipObserver,
  TrunkTarget,
} from './backend.js';
import { SipResolver } from './dns-resolver.js';
import { pingTrunk } from './options-ping.js';
import { Dialog } from './dialog.js';
import { InboundCallLeg } from './inbound-call.js';
import { buildResponse, parseSipMessage, randomToken, type ParsedRequest, type ParsedResponse, type ResponseOptions } from './message.js';
import { OutboundCallLeg } from './outbound-call.js';
import { OutboundRegistrationClient } from './outbound-registration.js';
import { InvalidStateError } from '../src/util/errors.js';
import type { DialogOwner, FlowBound, StackContext } from './stack-context.js';
import { ClientTransaction, DEFAULT_TIMERS, ServerTransaction, clientKey, serverKey, type SipTimers } from './transactions.js';
import type { Address, Flow, SipTransport, TransportKind } from './transport/flow.js';
import type { ConnectionLimits } from './transport/limits.js';
import { StreamTransport } from './transport/tcp.js';
import type { TlsMaterial } from './transport/tls.js';
import { UdpTransport } from './transport/udp.js';
import { WsTransport } from './transport/ws.js';

export interface SipListen {
  transport: 'udp' | 'tcp' | 'tls';
  host: string;
  port: number;
}

const PEER_FAULTS = new Set(['GW_SIP_TLS_HANDSHAKE', 'GW_SIP_CONNECTION_LIMIT', 'GW_SIP_CONNECTION_TIMEOUT', 'GW_SIP_WRITE_OVERFLOW']);

export interface SipStackOptions {
  listen: SipListen[];
  /** SIP over WebSocket is served on this HTTP server's upgrades (subprotocol `sip`); an HTTPS server makes it WSS. */
  httpServer?: http.Server;
  /** PEM certificate and key of the TLS listener (also offered as client certificate); `ca` is trusted besides Node's roots. */
  tls?: TlsMaterial;
  /** RFC 5626 CRLF keep-alive on TCP/TLS connections we open, every this many ms (0 or absent: off). */
  keepAliveMs?: number;
  /** Bounds on inbound TCP, TLS and WebSocket connections (caps, timeouts, write buffer); defaults in transport/limits.ts. */
  limits?: ConnectionLimits;
  /** Address put in Via and Contact; defaults to each transport's bound address. */
  announceAddress?: string;
  timers?: Partial<SipTimers>;
  userAgent?: string;
  observer?: SipObserver;
  /** RFC 3263 resolution of trunk targets (default: a SipResolver on the system's DNS servers). */
  resolver?: SipResolver;
  /** Authentication, trunk recognition and the registrar; without it every INVITE is accepted (tests of the layer only). */
  access?: AccessOptions;
  log: Logger;
}

const ALLOW = 'INVITE, ACK, CANCEL, BYE, OPTIONS, INFO';

/**
 * Option tags (RFC 3261 §19.2) of the extensions this stack implements: none yet. No 100rel (RFC
 * 3262), precondition, timer (RFC 4028), replaces (RFC 3891); RFC 5626 keep-alives are answered
 * but 'outbound' is not claimed (no Supported/Require: outbound is ever sent).
 */
const SUPPORTED_OPTIONS: ReadonlySet<string> = new Set<string>();

/** The option tags a request's Require header lists that we do not support (RFC 3261 §8.2.2.3). */
function unsupportedRequired(req: ParsedRequest): string[] {
  const tags = req.msg.getHeaders('require').flatMap((v) => v.split(',')).map((t) => t.trim()).filter((t) => t !== '');
  return [...new Set(tags.filter((t) => !SUPPORTED_OPTIONS.has(t.toLowerCase())))];
}

/**
 * The embedded SIP backend: transports, RFC 3261 transactions, message routing and dialog
 * matching. Parsing is sip.js core's; transactions are ours (see transactions.ts).
 */
export class SipStack extends SafeEmitter<SipBackendEvents> implements SipBackend {
  readonly timers: SipTimers;
  #log: Logger;
  #opts: SipStackOptions;
  #transports = new Map<TransportKind, SipTransport>();
  #client = new Map<string, ClientTransaction>();
  #server = new Map<string, ServerTransaction>();
  #dialogs = new Map<string, { dialog: Dialog; owner: DialogOwner }>();
  #inviteLegs = new Map<string, InboundCallLeg>();
  #flowLegs = new Map<string, Set<FlowBound>>();
  #retransmissions = 0;
  #outboundRegistrations = new Set<OutboundRegistrationClient>();
  #closed = false;
  readonly #ctx: StackContext;
  readonly #access: AccessControl | undefined;
  readonly #resolver: SipResolver;

  private constructor(opts: SipStackOptions) {
    super(opts.log);
    this.#opts = opts;
    this.#log = opts.log;
    this.timers = { ...DEFAULT_TIMERS, ...opts.timers };
    this.#resolver = opts.resolver ?? new SipResolver();
    this.#ctx = this.#makeContext();
    this.#access = opts.access ? new AccessControl(opts.access, this.#ctx.respond, opts.log.child({ component: 'access' })) : undefined;
  }

  static async create(opts: SipStackOptions): Promise<SipStack> {
    const stack = new SipStack(opts);
    try {
      for (const l of opts.listen) {
        if (l.transport === 'udp') stack.#addTransport(await UdpTransport.listen(l.host, l.port));
        else {
          if (l.transport === 'tls' && (!opts.tls?.cert || !opts.tls.key)) throw new TypeError('a TLS listener needs tls.cert and tls.key');
          stack.#addTransport(await StreamTransport.create(stack.#streamOptions(l.transport, { host: l.host, port: l.port })));
        }
      }
      // Trunks may be reached over TCP or TLS without our listening on it: connections go out only.
      for (const kind of ['tcp', 'tls'] as const) {
        if (!stack.#transports.has(kind)) stack.#addTransport(await StreamTransport.create(stack.#streamOptions(kind)));
      }
      if (opts.httpServer) {
        // idleTimeoutMs is for TCP/TLS only: a WebSocket's liveness is its ping frames.
        const { idleTimeoutMs: _idle, ...wsLimits } = opts.limits ?? {};
        stack.#addTransport(new WsTransport(opts.httpServer, { ...wsLimits, ...(opts.keepAliveMs ? { heartbeatMs: opts.keepAliveMs } : {}) }));
      }
    } catch (err) {
      await stack.close();
      throw err;
    }
    return stack;
  }

  #streamOptions(kind: 'tcp' | 'tls', listen?: { host: string; port: number }) {
    return {
      kind,
      ...(listen ? { listen } : {}),
      ...(kind === 'tls' && this.#opts.tls ? { tls: this.#opts.tls } : {}),
      ...(this.#opts.keepAliveMs ? { keepAliveMs: this.#opts.keepAliveMs } : {}),
      ...this.#opts.limits,
    };
  }

  #addTransport(t: SipTransport): void {
    if (this.#transports.has(t.kind)) throw new TypeError(`only one ${t.kind} listener is supported`);
    this.#transports.set(t.kind, t);
    t.on('message', (data, flow) => this.#onMessage(data, flow));
    t.on('flowClosed', (flow) => this.#onFlowClosed(flow));
    t.on('error', (err) => {
      // A client failing our TLS handshake or hitting a limit is its own problem (scanners, wrong CA,
      // floods): not a warning of ours. Limit reports are rate-limited by the transports.
      const level = PEER_FAULTS.has((err as { code?: string }).code ?? '') ? 'info' : 'warn';
      this.#log[level]({ err, transport: t.kind }, 'SIP transport error');
    });
    const observer = this.#opts.observer;
    if (observer) {
      t.on('sent', (data) => {
        if (data.startsWith('SIP/2.0 ')) observer.message('out', 'response', data.slice(8, 11));
        else observer.message('out', 'request', data.slice(0, data.indexOf(' ')));
      });
    }
    if (t instanceof StreamTransport && !t.listening) this.#log.debug({ transport: t.kind }, 'SIP transport for outgoing connections');
    else this.#log.info({ transport: t.kind, ...t.local }, 'SIP transport listening');
  }

  /** The bound address of a listening transport (tests listen on port 0). */
  address(kind: TransportKind): Address | undefined {
    const t = this.#transports.get(kind);
    if (!t || (t instanceof StreamTransport && !t.listening)) return undefined;
    return t.local;
  }

  get wsConnections(): number {
    const ws = this.#transports.get('ws');
    return ws instanceof WsTransport ? ws.connections : 0;
  }

  createCall(opts: OutboundCallOptions): OutboundCall {
    const leg = new OutboundCallLeg(this.#ctx, opts);
    void leg.start();
    return leg;
  }

  register(opts: OutboundRegistrationOptions): OutboundRegistration {
    if (this.#closed) throw new InvalidStateError('SIP stack closed');
    const reg: OutboundRegistrationClient = new OutboundRegistrationClient(this.#ctx, opts, () => this.#outboundRegistrations.delete(reg));
    this.#outboundRegistrations.add(reg);
    return reg;
  }

  ping(target: TrunkTarget): Promise<PingResult> {
    if (this.#closed) return Promise.reject(new InvalidStateError('SIP stack closed'));
    return pingTrunk(this.#ctx, target);
  }

  /** Where calls from a trunk come from, after its domain was resolved again. */
  setTrunkAddresses(name: string, addresses: readonly string[]): void {
    this.#access?.setTrunkAddresses(name, addresses);
  }

  contactsOf(user: string): ContactTarget[] {
    return this.#access?.contactsOf(user) ?? [];
  }

  registrations(): Registration[] {
    return this.#access?.registrations() ?? [];
  }

  stats(): SipBackendStats {
    return { transactions: this.#client.size + this.#server.size, dialogs: this.#dialogs.size, retransmissions: this.#retransmissions };
  }

  #onMessage(data: string, flow: Flow): void {
    if (this.#closed) return;
    const p = parseSipMessage(data);
    if (p.kind === 'invalid') {
      this.#log.warn({ reason: p.reason, from: `${flow.remote.address}:${flow.remote.port}`, transport: flow.transport }, 'bad SIP message');
      if (p.request && p.request.method !== 'ACK' && p.vias) {
        const res = buildResponse(p.request, 400, { reason: `Bad Request (${p.reason})`, vias: p.vias });
        this.#sendSafely(this.#responseFlow(flow, p.vias), res);
      }
      return;
    }
    this.#opts.observer?.message('in', p.kind, p.kind === 'request' ? p.method : String(p.status));
    try {
      if (p.kind === 'request') this.#onRequest(p, flow);
      else this.#onResponse(p);
    } catch (err) {
      // One bad message must never become an uncaught exception: log it and keep serving.
      this.#log.error({ err, from: `${flow.remote.address}:${flow.remote.port}` }, 'error handling SIP message');
      if (p.kind === 'request' && p.method !== 'ACK') {
        this.#sendSafely(flow, buildResponse(p.msg, 500, { vias: p.vias }));
      }
    }
  }

  #onRequest(req: ParsedRequest, flow: Flow): void {
    this.#fixTopVia(req, flow);
    const key = serverKey(req);
    const existing = this.#server.get(key);
    if (existing) {
      if (req.method !== 'ACK') this.#retransmissions++;
      existing.receive(req);
      // Some UACs reuse the INVITE's branch for the ACK of a 2xx.
      if (req.method === 'ACK' && existing.state === 'accepted') this.#dialogAck(req);
      return;
    }
    if (req.method === 'ACK') {
      this.#dialogAck(req);
      return;
    }
    const responseFlow = this.#responseFlow(flow, req.vias);
    const txn = new ServerTransaction(key, responseFlow, this.timers, req);
    this.#server.set(key, txn);
    txn.once('terminated', () => this.#server.delete(key));

    const mf = req.msg.getHeader('max-forwards');
    if (mf !== undefined && Number(mf) === 0) return this.#ctx.respond(txn, 483);

    if (req.method === 'CANCEL') return this.#onCancel(req, txn);
    // §8.2.2.3: an extension the request requires and we lack refuses it (never for ACK or CANCEL).
    const unsupported = unsupportedRequired(req);
    if (unsupported.length > 0) return this.#ctx.respond(txn, 420, { headers: [`Unsupported: ${unsupported.join(', ')}`] });
    if (req.msg.toTag) {
      const d = this.#dialogs.get(Dialog.key(req.msg.callId, req.msg.toTag, req.msg.fromTag));
      if (!d) return this.#ctx.respond(txn, 481);
      if (!d.dialog.acceptRemoteSeq(req.msg.cseq)) return this.#ctx.respond(txn, 500, { reason: 'Server Internal Error (CSeq out of order)' });
      return d.owner.onRequest(req, txn);
    }
    switch (req.method) {
      case 'INVITE':
        return this.#onInvite(req, txn, flow);
      case 'OPTIONS':
        return this.#ctx.respond(txn, 200, { headers: [`Allow: ${ALLOW}`, 'Accept: application/sdp'] });
      case 'BYE':
        return this.#ctx.respond(txn, 481);
      case 'REGISTER':
        if (this.#access) return this.#access.register(req, txn, flow);
        return this.#ctx.respond(txn, 405, { headers: [`Allow: ${ALLOW}`] });
      default:
        return this.#ctx.respond(txn, 405, { headers: [`Allow: ${ALLOW}`] });
    }
  }

  #onInvite(req: ParsedRequest, txn: ServerTransaction, flow: Flow): void {
    this.#ctx.respond(txn, 100);
    if (this.listenerCount('invite') === 0) return this.#ctx.respond(txn, 480);
    let identity: { authUser?: string; trunk?: string } = {};
    if (this.#access) {
      const access = this.#access.authorizeInvite(req, txn, flow);
      if (!access) return; // challenged or refused already
      if (!access.ok) return this.#ctx.respond(txn, access.status, { reason: access.reason, ...(access.headers ? { headers: access.headers } : {}) });
      identity = access;
    }
    const ctype = req.msg.getHeader('content-type');
    if (!req.msg.body || !ctype || !/^application\/sdp\b/i.test(ctype.trim())) {
      return this.#ctx.respond(txn, 488, { reason: 'Not Acceptable Here (an SDP offer is required)' });
    }
    const leg = new InboundCallLeg(this.#ctx, req, txn, flow, identity);
    this.#inviteLegs.set(txn.key, leg);
    txn.once('terminated', () => this.#inviteLegs.delete(txn.key));
    leg.once('ended', () => this.#inviteLegs.delete(txn.key));
    this.safeEmit('invite', leg);
  }

  #onCancel(req: ParsedRequest, txn: ServerTransaction): void {
    const leg = this.#inviteLegs.get(serverKey({ ...req, method: 'INVITE' }));
    if (!leg) return this.#ctx.respond(txn, 481);
    this.#ctx.respond(txn, 200);
    leg.onCancel();
  }

  #dialogAck(req: ParsedRequest): void {
    this.#dialogs.get(Dialog.key(req.msg.callId, req.msg.toTag, req.msg.fromTag))?.owner.onAck(req);
  }

  #onResponse(res: ParsedResponse): void {
    const txn = this.#client.get(clientKey(res.topVia.branch ?? '', res.method));
    if (txn) return txn.receive(res);
    if (res.method === 'INVITE' && res.status >= 200 && res.status < 300) {
      this.#dialogs.get(Dialog.key(res.msg.callId, res.msg.fromTag, res.msg.toTag))?.owner.on2xxRetransmission(res);
    }
  }

  #onFlowClosed(flow: Flow): void {
    this.#access?.dropFlow(flow);
    const legs = this.#flowLegs.get(flow.id);
    if (!legs) return;
    this.#flowLegs.delete(flow.id);
    for (const leg of legs) leg.onFlowClosed();
  }

  /** RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via of a request we received. */
  #fixTopVia(req: ParsedRequest, flow: Flow): void {
    const v = req.topVia;
    let top = req.vias[0]!;
    const hasRport = /;\s*rport(?=[;=\s]|$)/i.test(top);
    if (v.host !== flow.remote.address) top = top.replace(/;\s*received=[^;]*/i, '') + `;received=${flow.remote.address}`;
    if (hasRport) top = top.replace(/;\s*rport(=[^;]*)?/i, `;rport=${flow.remote.port}`);
    req.vias = [top, ...req.vias.slice(1)];
    req.topVia = { ...v, received: flow.remote.address, rport: hasRport ? String(flow.remote.port) : v.rport };
  }

  /** Where responses go: back on the flow for streams; UDP to received:rport, or received:Via port (RFC 3581). */
  #responseFlow(flow: Flow, vias: string[]): Flow {
    if (flow.reliable) return flow;
    const top = vias[0] ?? '';
    if (/;\s*rport=\d+/i.test(top)) return flow;
    const m = /^SIP\/2\.0\/UDP\s+(?:\[[^\]]+\]|[^:;\s]+)(?::(\d+))?/i.exec(top);
    const port = m?.[1] ? Number(m[1]) : 5060;
    const udp = this.#transports.get('udp');
    if (!(udp instanceof UdpTransport) || port === flow.remote.port) return flow;
    return udp.flowFor({ address: flow.remote.address, port });
  }

  #sendSafely(flow: Flow, data: string): void {
    try {
      flow.send(data);
    } catch (err) {
      this.#log.debug({ err, flow: flow.id }, 'send failed');
    }
  }

  #makeContext(): StackContext {
    const announce = (flow: Flow) => this.#opts.announceAddress ?? flow.local.address;
    // Via sent-by and Contact name the listening port, not a connection's ephemeral one (RFC 3261 §18.1.1, §18.2.2).
    const hostPort = (flow: Flow) => {
      const host = announce(flow);
      return `${host.includes(':') ? `[${host}]` : host}:${this.address(flow.transport)?.port ?? flow.local.port}`;
    };
    // RFC 7118: WebSocket flows over TLS are WSS.
    const wss = this.#opts.httpServer instanceof tls.Server;
    const transportParam = (flow: Flow) => (flow.transport === 'ws' && wss ? 'wss' : flow.transport);
    return {
      timers: this.timers,
      log: this.#log,
      closed: () => this.#closed,
      respond: (txn: ServerTransaction, status: number, opts: ResponseOptions = {}) => {
        const headers = [...(opts.headers ?? [])];
        if (this.#opts.userAgent) headers.push(`Server: ${this.#opts.userAgent}`);
        txn.respond(status, buildResponse(txn.request.msg, status, { ...opts, headers, vias: txn.request.vias }));
      },
      sendRequest: (flow, method, branch, text, buildAck) => {
        const key = clientKey(branch, method);
        const txn = new ClientTransaction(key, flow, this.timers, method, text, buildAck);
        this.#client.set(key, txn);
        txn.once('terminated', () => {
          this.#retransmissions += txn.retransmissions;
          this.#client.delete(key);
        });
        return txn;
      },
      sendRaw: (flow, text) => this.#sendSafely(flow, text),
      flowById: (kind, id) => this.#transports.get(kind)?.flowById(id),
      pinned: (flow) => flow.transport === 'ws' || (this.#access?.location.all().some((b) => b.source.flowId === flow.id) ?? false),
      // Connections we open come from ephemeral ports; accepted ones are on the listening port.
      accepted: (flow) => flow.transport === 'ws' || (flow.reliable && flow.local.port === this.address(flow.transport)?.port),
      domain: (flow) => announce(flow),
      resolve: (target) => this.#resolver.resolve(target),
      flowTo: async (kind, dest) => {
        const t = this.#transports.get(kind);
        if (!t) throw new Error(`no ${kind} transport configured`);
        return t.flowTo(dest);
      },
      via: (flow, branch) => {
        const proto = transportParam(flow).toUpperCase();
        const sentBy = flow.transport === 'ws' ? `${randomToken(4)}.invalid` : hostPort(flow);
        return `SIP/2.0/${proto} ${sentBy};branch=${branch};rport`;
      },
      contact: (flow, user = 'gw') => `<sip:${user}@${hostPort(flow)};transport=${transportParam(flow)}>`,
      registerDialog: (dialog, owner) => void this.#dialogs.set(dialog.id, { dialog, owner }),
      unregisterDialog: (d) => void this.#dialogs.delete(d.id),
      bindFlow: (flow, leg) => {
        let set = this.#flowLegs.get(flow.id);
        if (!set) this.#flowLegs.set(flow.id, (set = new Set()));
        set.add(leg);
      },
      unbindFlow: (flow, leg) => {
        const set = this.#flowLegs.get(flow.id);
        set?.delete(leg);
        if (set?.size === 0) this.#flowLegs.delete(flow.id);
      },
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#access?.close();
    // Un-REGISTERing is the owner's job (stop() before close()); what is left just lets go.
    for (const r of [...this.#outboundRegistrations]) r.dispose();
    this.#outboundRegistrations.clear();
    for (const t of [...this.#client.values(), ...this.#server.values()]) t.terminate();
    this.#client.clear();
    this.#server.clear();
    this.#dialogs.clear();
    this.#inviteLegs.clear();
    this.#flowLegs.clear();
    const results = await Promise.allSettled([...this.#transports.values()].map((t) => t.close()));
    for (const r of results) if (r.status === 'rejected') this.#log.warn({ err: r.reason }, 'transport close failed');
    this.#transports.clear();
  }
}
