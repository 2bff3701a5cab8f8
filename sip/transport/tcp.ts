import net from 'node:net';
import tls from 'node:tls';
import { EventEmitter, once } from 'node:events';
import type { Address, Flow, FlowDestination, SipTransport, TransportEvents } from './flow.js';
import { StreamFramer } from './stream-framer.js';
import { createTlsServer, identityName, tlsConnectOptions, trustedRoots, type TlsMaterial } from './tls.js';
import { TransportError } from './errors.js';
import { unmapIPv4 } from './address.js';
import { resolveLimits, type ConnectionLimits } from './limits.js';
import { ConnectionLimiter, RateLimitedReports } from './connection-limiter.js';

export interface StreamTransportOptions extends ConnectionLimits {
  kind: 'tcp' | 'tls';
  /** Where to listen; absent: outgoing connections only. */
  listen?: { host: string; port: number };
  /** TLS: our certificate and key (required to listen) and extra trusted roots. */
  tls?: TlsMaterial;
  /** RFC 5626 CRLF keep-alive on connections we open: a ping every this many ms (0 or absent: off). */
  keepAliveMs?: number;
  /** Bound on TCP connect plus TLS handshake, both ways (default 5000). */
  connectTimeoutMs?: number;
}

/** RFC 5626 §4.4.1: a pong is due within 10 s of a ping. */
const PONG_TIMEOUT_MS = 10_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** Kernel keep-alive on every connection: reclaims ones whose peer vanished without a FIN. */
const TCP_KEEPALIVE_MS = 60_000;

interface Connection {
  readonly flow: Flow;
  readonly socket: net.Socket;
  /** TLS connections we opened with verification on: the name the certificate was verified against. */
  readonly verifiedName: string | undefined;
  readonly framer: StreamFramer;
  keepAlive?: NodeJS.Timeout;
  pongTimer?: NodeJS.Timeout;
  /** The peer answered a ping once, so a missing pong later means it is gone. */
  answersPings: boolean;
  /** Accepted by our listener: the message and idle timeouts apply. */
  readonly inbound: boolean;
  /** Runs while a message is partly received (inbound). */
  messageTimer?: NodeJS.Timeout;
  /** Runs from accept until the first message either way (inbound). */
  idleTimer?: NodeJS.Timeout;
}

/**
 * SIP over TCP or TLS (RFC 3261 §18, Content-Length framing): an optional listener plus outgoing
 * connections, reused per remote address and port. A TLS connection is reused for a verified
 * destination only if it was opened with that destination's name verified. Inbound connections
 * are bounded by `ConnectionLimits` (counts, message and idle timeouts); all by the write bound.
 */
export class StreamTransport extends EventEmitter<TransportEvents> implements SipTransport {
  readonly kind: 'tcp' | 'tls';
  #server: net.Server | undefined;
  #local: Address = { address: '', port: 0 };
  #opts: StreamTransportOptions;
  #limits: Required<ConnectionLimits>;
  #reports = new RateLimitedReports((err) => this.emit('error', err));
  #roots: string[] | undefined;
  #byRemote = new Map<string, Set<Connection>>();
  #connections = new Set<Connection>();
  #byId = new Map<string, Flow>();
  #pending = new Map<string, Promise<Flow>>();
  #connecting = new Set<net.Socket>();
  #nextId = 1;
  #closed = false;

  private constructor(opts: StreamTransportOptions) {
    super();
    this.kind = opts.kind;
    this.#opts = opts;
    this.#limits = resolveLimits(opts);
    this.#roots = opts.kind === 'tls' ? trustedRoots(opts.tls) : undefined;
  }

  /** A transport listening on `opts.listen`, or only opening connections without it. */
  static async create(opts: StreamTransportOptions): Promise<StreamTransport> {
    if (opts.kind !== 'tcp' && opts.kind !== 'tls') throw new TypeError(`not a stream transport: ${String(opts.kind)}`);
    const keepAlive = opts.keepAliveMs ?? 0;
    if (!Number.isInteger(keepAlive) || keepAlive < 0) throw new TypeError(`keepAliveMs must be an integer >= 0, got ${keepAlive}`);
    const t = new StreamTransport(opts);
    if (!opts.listen) return t;
    const timeout = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const server = opts.kind === 'tls' ? createTlsServer(opts.tls ?? {}, timeout) : net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.listen!.port, opts.listen!.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // Counted from the TCP accept, before any TLS handshake: handshakes in progress hold memory too.
    const limiter = new ConnectionLimiter(t.#limits, `${opts.kind.toUpperCase()} listener`, t.#reports);
    const refused = new WeakSet<net.Socket>();
    server.prependListener('connection', (raw: net.Socket) => {
      const ip = unmapIPv4(raw.remoteAddress ?? '');
      if (!limiter.admit(ip)) {
        refused.add(raw);
        raw.destroy();
        return;
      }
      raw.once('close', () => limiter.release(ip));
    });
    if (opts.kind === 'tls') {
      server.on('secureConnection', (socket: tls.TLSSocket) => t.#adopt(socket, undefined));
      // A client that fails the handshake (scanner, wrong protocol, timeout) only loses its own connection.
      server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
        socket.destroy();
        // A connection refused over a limit fails its handshake too; the limit was reported already.
        // (`_parent` is the TCP socket under a server-side TLSSocket; no public accessor exists.)
        if (refused.has((socket as { _parent?: net.Socket })._parent!)) return;
        t.emit('error', new TransportError('GW_SIP_TLS_HANDSHAKE', `TLS handshake from ${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'} failed: ${err.message}`, { cause: err }));
      });
    } else {
      server.on('connection', (socket: net.Socket) => void (socket.destroyed || t.#adopt(socket, undefined)));
    }
    server.on('error', (err) => t.emit('error', err));
    t.#server = server;
    const a = server.address() as net.AddressInfo;
    t.#local = { address: a.address, port: a.port };
    return t;
  }

  /** The listening address; port 0 when this transport only opens connections. */
  get local(): Address {
    return this.#local;
  }

  get listening(): boolean {
    return this.#server !== undefined;
  }

  /** Open connections, both ways. */
  get connections(): number {
    return this.#connections.size;
  }

  #adopt(socket: net.Socket, verifiedName: string | undefined, outbound = false): Flow | undefined {
    if (this.#closed) {
      // Accepted while closing (a handshake in flight when close() began).
      socket.destroy();
      return undefined;
    }
    const remote = { address: unmapIPv4(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
    const key = `${remote.address}:${remote.port}`;
    const label = this.kind.toUpperCase();
    const flow: Flow = {
      id: `${this.kind}:${this.#nextId++}:${key}`,
      transport: this.kind,
      reliable: true,
      local: { address: unmapIPv4(socket.localAddress ?? ''), port: socket.localPort ?? 0 },
      remote,
      send: (data: string) => {
        if (socket.destroyed || !socket.writable) throw new Error(`${label} flow ${key} closed`);
        const overflow = this.#write(conn, data);
        if (overflow) throw overflow;
        this.#carried(conn);
        this.emit('sent', data, flow);
      },
    };
    const conn: Connection = { flow, socket, verifiedName, framer: new StreamFramer(), answersPings: false, inbound: !outbound };
    this.#connections.add(conn);
    let set = this.#byRemote.get(key);
    if (!set) this.#byRemote.set(key, (set = new Set()));
    set.add(conn);
    this.#byId.set(flow.id, flow);

    socket.setNoDelay(true);
    socket.setKeepAlive(true, TCP_KEEPALIVE_MS);
    socket.on('data', (chunk: Buffer) => {
      // Any bytes prove the peer alive; a lone CRLF while a ping is out is its RFC 5626 pong.
      const awaitingPong = conn.pongTimer !== undefined;
      if (awaitingPong) {
        clearTimeout(conn.pongTimer);
        conn.pongTimer = undefined;
      }
      let messages: string[];
      try {
        messages = conn.framer.push(
          chunk,
          () => void this.#write(conn, '\r\n'),
          () => void (awaitingPong && (conn.answersPings = true)),
        );
      } catch (err) {
        this.emit('error', Object.assign(err as Error, { flowId: flow.id }));
        socket.destroy();
        return;
      }
      if (messages.length > 0) this.#carried(conn);
      if (conn.inbound) this.#watchMessage(conn);
      for (const m of messages) this.emit('message', m, flow);
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      clearInterval(conn.keepAlive);
      clearTimeout(conn.pongTimer);
      clearTimeout(conn.messageTimer);
      clearTimeout(conn.idleTimer);
      this.#connections.delete(conn);
      this.#byId.delete(flow.id);
      const s = this.#byRemote.get(key);
      s?.delete(conn);
      if (s?.size === 0) this.#byRemote.delete(key);
      this.emit('flowClosed', flow);
    });
    const keepAliveMs = this.#opts.keepAliveMs ?? 0;
    if (outbound && keepAliveMs > 0) this.#startKeepAlive(conn, keepAliveMs);
    const idleMs = this.#limits.idleTimeoutMs;
    if (conn.inbound && idleMs > 0) conn.idleTimer = setTimeout(() => this.#timedOut(conn, `no message within ${idleMs} ms`), idleMs);
    return flow;
  }

  /** The connection carried a message: it is in use, however long it stays quiet from now on. */
  #carried(conn: Connection): void {
    if (conn.idleTimer === undefined) return;
    clearTimeout(conn.idleTimer);
    conn.idleTimer = undefined;
  }

  /**
   * A message begun must be finished within messageTimeoutMs of its first byte, however slowly it
   * trickles in: a slow sender would otherwise park up to 64 KB per connection for ever.
   */
  #watchMessage(conn: Connection): void {
    if (conn.framer.pending === 0) {
      clearTimeout(conn.messageTimer);
      conn.messageTimer = undefined;
      return;
    }
    const ms = this.#limits.messageTimeoutMs;
    conn.messageTimer ??= setTimeout(() => this.#timedOut(conn, `a message begun and not finished within ${ms} ms`), ms);
  }

  #timedOut(conn: Connection, why: string): void {
    const { remote, id } = conn.flow;
    this.#reports.report('GW_SIP_CONNECTION_TIMEOUT', `${this.kind.toUpperCase()} connection from ${remote.address}:${remote.port} closed: ${why}`, id);
    conn.socket.destroy();
  }

  /**
   * Writes unless the peer has stopped reading: past maxWriteBufferBytes of unsent data the
   * connection is closed (flowClosed follows) and the error, also emitted, is returned.
   */
  #write(conn: Connection, data: string): TransportError | undefined {
    const { socket, flow } = conn;
    const queued = socket.writableLength;
    if (queued <= this.#limits.maxWriteBufferBytes) {
      socket.write(data);
      return undefined;
    }
    const err = new TransportError('GW_SIP_WRITE_OVERFLOW', `${this.kind.toUpperCase()} flow ${flow.remote.address}:${flow.remote.port} closed: the peer is not reading (${queued} bytes unsent)`, { flowId: flow.id });
    socket.destroy();
    this.emit('error', err);
    return err;
  }

  /**
   * RFC 5626 §4.4.1 CRLF keep-alive. Peers that only follow RFC 3261 ignore the CRLFs (§7.5) and
   * never answer, so a missing pong ends the connection only once the peer has answered one.
   */
  #startKeepAlive(conn: Connection, everyMs: number): void {
    conn.keepAlive = setInterval(() => {
      if (conn.socket.destroyed || !conn.socket.writable) return;
      if (this.#write(conn, '\r\n\r\n')) return;
      conn.framer.pingSent();
      // The watch also teaches us whether the peer answers (see the 'data' handler).
      conn.pongTimer ??= setTimeout(() => {
        conn.pongTimer = undefined;
        if (conn.answersPings) conn.socket.destroy(new Error('no pong to CRLF keep-alive'));
      }, Math.min(PONG_TIMEOUT_MS, everyMs));
    }, everyMs);
  }

  flowById(id: string): Flow | undefined {
    return this.#byId.get(id);
  }

  async flowTo(dest: FlowDestination): Promise<Flow> {
    if (this.#closed) throw new Error(`${this.kind.toUpperCase()} transport closed`);
    const key = `${unmapIPv4(dest.address)}:${dest.port}`;
    const verify = this.kind === 'tls' && (dest.verify ?? true);
    const name = this.kind === 'tls' ? identityName(dest) : undefined;
    for (const c of this.#byRemote.get(key) ?? []) {
      if (c.socket.destroyed || !c.socket.writable) continue;
      if (!verify || c.verifiedName === name) return c.flow;
    }
    // Concurrent requests to one place share one connection attempt.
    const pendingKey = verify ? `${key}|${name}` : key;
    let p = this.#pending.get(pendingKey);
    if (!p) {
      p = this.#connect(dest, verify ? name : undefined).finally(() => this.#pending.delete(pendingKey));
      this.#pending.set(pendingKey, p);
    }
    return p;
  }

  async #connect(dest: FlowDestination, verifiedName: string | undefined): Promise<Flow> {
    const where = `${dest.address}:${dest.port}`;
    const isTls = this.kind === 'tls';
    const socket = isTls ? tls.connect(tlsConnectOptions(dest, this.#opts.tls, this.#roots)) : net.connect({ host: dest.address, port: dest.port });
    this.#connecting.add(socket);
    const timeoutMs = this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    try {
      await new Promise<void>((resolve, reject) => {
        let connected = false;
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new TransportError('GW_SIP_CONNECT_FAILED', `${this.kind.toUpperCase()} connect to ${where} timed out after ${timeoutMs} ms`));
        }, timeoutMs);
        const onError = (err: Error) => {
          clearTimeout(timer);
          socket.destroy();
          if (isTls && connected) {
            const name = dest.servername ?? dest.address;
            reject(new TransportError('GW_SIP_TLS_HANDSHAKE', `TLS handshake with ${where} (${name}) failed: ${err.message}`, { cause: err }));
          } else {
            reject(new TransportError('GW_SIP_CONNECT_FAILED', `${this.kind.toUpperCase()} connect to ${where} failed: ${err.message}`, { cause: err }));
          }
        };
        // close() destroys connections in progress without an error.
        const onClose = () => {
          clearTimeout(timer);
          reject(new TransportError('GW_SIP_CONNECT_FAILED', `${this.kind.toUpperCase()} connect to ${where} aborted: transport closed`));
        };
        socket.once('connect', () => (connected = true));
        socket.once(isTls ? 'secureConnect' : 'connect', () => {
          clearTimeout(timer);
          socket.off('error', onError);
          socket.off('close', onClose);
          resolve();
        });
        socket.once('error', onError);
        socket.once('close', onClose);
      });
    } finally {
      this.#connecting.delete(socket);
    }
    const flow = this.#adopt(socket, verifiedName, true);
    if (!flow) throw new Error(`${this.kind.toUpperCase()} transport closed`);
    return flow;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#connecting) s.destroy();
    // Resolve once every connection has gone (its flowClosed emitted), not just been asked to.
    const gone = [...this.#connections].map((c) => (c.socket.closed ? undefined : once(c.socket, 'close').then(() => undefined, () => undefined)));
    for (const c of this.#connections) c.socket.destroy();
    const server = this.#server;
    await Promise.all([...gone, server ? new Promise<void>((resolve) => server.close(() => resolve())) : undefined]);
  }
}
