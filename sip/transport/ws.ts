import type http from 'node:http';
import type { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Address, Flow, SipTransport, TransportEvents } from './flow.js';
import { MAX_SIP_MESSAGE } from './flow.js';
import { unmapIPv4 } from './address.js';
import { TransportError } from './errors.js';
import { resolveLimits, type ConnectionLimits } from './limits.js';
import { ConnectionLimiter, RateLimitedReports } from './connection-limiter.js';

export interface WsTransportOptions extends Omit<ConnectionLimits, 'idleTimeoutMs'> {
  /** WebSocket ping every this many ms; a client that has not answered the previous one is dropped (0 or absent: off). */
  heartbeatMs?: number;
}

/**
 * SIP over WebSocket (RFC 7118) on an existing HTTP server: any path, subprotocol `sip`.
 * Each connection is one flow; requests to a WebSocket client can only go down its flow.
 * Connections are bounded by `ConnectionLimits` (counts, message timeout, write bound); a quiet
 * client is found by the heartbeat, not timed out.
 */
export class WsTransport extends EventEmitter<TransportEvents> implements SipTransport {
  readonly kind = 'ws' as const;
  #wss: WebSocketServer;
  #local: Address;
  #nextId = 1;
  #flows = new Map<string, Flow>();
  #closed = false;
  #onUpgrade: (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;
  #server: http.Server;

  /** WebSocket ping every this many ms; a client that has not answered the previous one is dropped. */
  #heartbeat: NodeJS.Timeout | undefined;
  #alive = new WeakSet<WebSocket>();

  #limits: Required<ConnectionLimits>;
  #reports = new RateLimitedReports((err) => this.emit('error', err));
  #limiter: ConnectionLimiter;

  constructor(server: http.Server, opts: WsTransportOptions = {}) {
    super();
    this.#server = server;
    this.#limits = resolveLimits(opts);
    this.#limiter = new ConnectionLimiter(this.#limits, 'WebSocket listener', this.#reports);
    if (opts.heartbeatMs) {
      // A browser that vanished without closing (network loss, sleep) would otherwise keep its
      // registration and calls until they expire: ping frames find it within two intervals.
      this.#heartbeat = setInterval(() => this.#checkAlive(), opts.heartbeatMs);
      this.#heartbeat.unref();
    }
    const a = server.address();
    this.#local = a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: '', port: 0 };
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: MAX_SIP_MESSAGE,
      handleProtocols: (protocols) => (protocols.has('sip') ? 'sip' : false),
    });
    this.#onUpgrade = (req, socket, head) => {
      const offered = String(req.headers['sec-websocket-protocol'] ?? '')
        .split(',')
        .map((s) => s.trim());
      if (this.#closed || !offered.includes('sip')) {
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      const ip = unmapIPv4(req.socket.remoteAddress ?? '');
      if (!this.#limiter.admit(ip)) {
        socket.destroy();
        return;
      }
      // Released on the socket's close, which also follows an upgrade that ws refuses.
      socket.once('close', () => this.#limiter.release(ip));
      this.#wss.handleUpgrade(req, socket, head, (ws) => this.#adopt(ws, req));
    };
    server.on('upgrade', this.#onUpgrade);
  }

  get local(): Address {
    return this.#local;
  }

  get connections(): number {
    return this.#wss.clients.size;
  }

  #adopt(ws: WebSocket, req: http.IncomingMessage): void {
    const remote = { address: unmapIPv4(req.socket.remoteAddress ?? ''), port: req.socket.remotePort ?? 0 };
    const flow: Flow = {
      id: `ws:${this.#nextId++}:${remote.address}:${remote.port}`,
      transport: 'ws',
      reliable: true,
      local: this.#local,
      remote,
      send: (data: string) => {
        if (ws.readyState !== ws.OPEN) throw new Error('WebSocket flow closed');
        const overflow = this.#send(ws, flow, data);
        if (overflow) throw overflow;
        this.emit('sent', data, flow);
      },
    };
    const watch = this.#watchMessages(ws, req.socket, flow);
    this.#alive.add(ws);
    ws.on('pong', (data) => {
      this.#alive.add(ws);
      watch.controlFrame(data);
    });
    ws.on('ping', (data) => watch.controlFrame(data));
    ws.on('message', (data, isBinary) => {
      watch.message();
      const text = isBinary ? Buffer.from(data as Buffer).toString('utf8') : data.toString();
      this.#alive.add(ws);
      if (text.trim() === '') {
        // RFC 5626 §4.4.1 keep-alive (SIP.js's keepAliveInterval): a double CRLF ping gets a CRLF pong.
        if (text === '\r\n\r\n' && ws.readyState === ws.OPEN) this.#send(ws, flow, '\r\n');
        return;
      }
      this.emit('message', text, flow);
    });
    this.#flows.set(flow.id, flow);
    ws.on('error', () => ws.terminate());
    ws.on('close', () => {
      watch.stop();
      this.#flows.delete(flow.id);
      this.emit('flowClosed', flow);
    });
  }

  /**
   * A message begun must be finished within messageTimeoutMs of its first byte. ws only tells of
   * whole messages, so the bytes read since the last one are counted on the socket (our listener
   * runs before ws parses each read) less the control frames between (a client frame is masked:
   * 6 header bytes plus at most 125 of payload). Pongs to our heartbeat between the fragments of a
   * message do not restart the clock.
   */
  #watchMessages(ws: WebSocket, socket: Duplex, flow: Flow) {
    const ms = this.#limits.messageTimeoutMs;
    let unfinished = 0;
    let timer: NodeJS.Timeout | undefined;
    const settle = () => {
      if (unfinished <= 0) {
        unfinished = 0;
        clearTimeout(timer);
        timer = undefined;
        return;
      }
      timer ??= setTimeout(() => {
        const { address, port } = flow.remote;
        this.#reports.report('GW_SIP_CONNECTION_TIMEOUT', `WebSocket connection from ${address}:${port} closed: a message begun and not finished within ${ms} ms`, flow.id);
        ws.terminate();
      }, ms);
    };
    const onData = (chunk: Buffer) => {
      unfinished += chunk.length;
      settle();
    };
    socket.prependListener('data', onData);
    return {
      message: () => {
        unfinished = 0;
        settle();
      },
      controlFrame: (payload: Buffer) => {
        unfinished -= 6 + payload.length;
        settle();
      },
      stop: () => {
        socket.off('data', onData);
        clearTimeout(timer);
        timer = undefined;
      },
    };
  }

  /**
   * Sends unless the client has stopped reading: past maxWriteBufferBytes of unsent data the
   * connection is dropped (flowClosed follows) and the error, also emitted, is returned.
   */
  #send(ws: WebSocket, flow: Flow, data: string): TransportError | undefined {
    const queued = ws.bufferedAmount;
    if (queued <= this.#limits.maxWriteBufferBytes) {
      ws.send(data);
      return undefined;
    }
    const err = new TransportError('GW_SIP_WRITE_OVERFLOW', `WebSocket flow ${flow.remote.address}:${flow.remote.port} closed: the client is not reading (${queued} bytes unsent)`, { flowId: flow.id });
    ws.terminate();
    this.emit('error', err);
    return err;
  }

  #checkAlive(): void {
    for (const ws of this.#wss.clients) {
      if (!this.#alive.has(ws)) {
        ws.terminate(); // 'close' follows: the flow closes, its bindings and calls end
        continue;
      }
      this.#alive.delete(ws);
      ws.ping();
    }
  }

  flowById(id: string): Flow | undefined {
    return this.#flows.get(id);
  }

  async flowTo(dest: Address): Promise<Flow> {
    throw new Error(`cannot open a WebSocket to ${dest.address}:${dest.port}: WebSocket clients are reached on their own flow`);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.#server.off('upgrade', this.#onUpgrade);
    for (const ws of this.#wss.clients) ws.terminate();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
  }
}
