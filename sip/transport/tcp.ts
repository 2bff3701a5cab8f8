import net from 'node:net';
import { EventEmitter } from 'node:events';
import type { Address, Flow, SipTransport, TransportEvents } from './flow.js';
import { StreamFramer } from './stream-framer.js';

const CONNECT_TIMEOUT_MS = 5000;

/** SIP over TCP: a listening server plus outgoing connections, reused per remote address. */
export class TcpTransport extends EventEmitter<TransportEvents> implements SipTransport {
  readonly kind = 'tcp' as const;
  #server: net.Server;
  #local: Address = { address: '', port: 0 };
  #byRemote = new Map<string, { flow: Flow; socket: net.Socket }>();
  #sockets = new Set<net.Socket>();
  #byId = new Map<string, Flow>();
  #nextId = 1;
  #closed = false;

  private constructor(server: net.Server) {
    super();
    this.#server = server;
    server.on('connection', (socket) => this.#adopt(socket));
    server.on('error', (err) => this.emit('error', err));
  }

  static async listen(host: string, port: number): Promise<TcpTransport> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const t = new TcpTransport(server);
    const a = server.address() as net.AddressInfo;
    t.#local = { address: a.address, port: a.port };
    return t;
  }

  get local(): Address {
    return this.#local;
  }

  #adopt(socket: net.Socket): Flow {
    const remote = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    const key = `${remote.address}:${remote.port}`;
    const flow: Flow = {
      id: `tcp:${this.#nextId++}:${key}`,
      transport: 'tcp',
      reliable: true,
      local: { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
      remote,
      send: (data: string) => {
        if (socket.destroyed || !socket.writable) throw new Error(`TCP flow ${key} closed`);
        socket.write(data);
        this.emit('sent', data, flow);
      },
    };
    this.#sockets.add(socket);
    this.#byRemote.set(key, { flow, socket });
    this.#byId.set(flow.id, flow);
    const framer = new StreamFramer();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      let messages: string[];
      try {
        messages = framer.push(chunk, () => socket.write('\r\n'));
      } catch (err) {
        this.emit('error', Object.assign(err as Error, { flowId: flow.id }));
        socket.destroy();
        return;
      }
      for (const m of messages) this.emit('message', m, flow);
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.#sockets.delete(socket);
      this.#byId.delete(flow.id);
      if (this.#byRemote.get(key)?.socket === socket) this.#byRemote.delete(key);
      this.emit('flowClosed', flow);
    });
    return flow;
  }

  flowById(id: string): Flow | undefined {
    return this.#byId.get(id);
  }

  async flowTo(dest: Address): Promise<Flow> {
    if (this.#closed) throw new Error('TCP transport closed');
    const existing = this.#byRemote.get(`${dest.address}:${dest.port}`);
    if (existing && !existing.socket.destroyed) return existing.flow;
    const socket = net.connect({ host: dest.address, port: dest.port });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`TCP connect to ${dest.address}:${dest.port} timed out`));
      }, CONNECT_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve();
      });
      const onError = (err: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      socket.once('error', onError);
    });
    return this.#adopt(socket);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
