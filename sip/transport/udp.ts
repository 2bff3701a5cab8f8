import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { EventEmitter } from 'node:events';
import type { Address, Flow, SipTransport, TransportEvents } from './flow.js';
import { MAX_SIP_MESSAGE } from './flow.js';

/** SIP over UDP on one bound socket; a flow is just the remote address. */
export class UdpTransport extends EventEmitter<TransportEvents> implements SipTransport {
  readonly kind = 'udp' as const;
  #socket: dgram.Socket;
  #local: Address = { address: '', port: 0 };
  #closed = false;

  private constructor(socket: dgram.Socket) {
    super();
    this.#socket = socket;
    socket.on('message', (buf, rinfo) => {
      if (buf.length > MAX_SIP_MESSAGE) return;
      // RFC 5626 keep-alive: a bare CRLF (or double CRLF) carries no message.
      if (buf.length <= 4 && buf.toString('latin1').trim() === '') return;
      this.emit('message', buf.toString('utf8'), this.flowFor({ address: rinfo.address, port: rinfo.port }));
    });
    socket.on('error', (err) => this.emit('error', err));
  }

  static async listen(host: string, port: number): Promise<UdpTransport> {
    const socket = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, host, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    const t = new UdpTransport(socket);
    const a = socket.address();
    t.#local = { address: a.address, port: a.port };
    return t;
  }

  get local(): Address {
    return this.#local;
  }

  /** A flow to `remote` on this socket (UDP needs no connection). */
  flowFor(remote: Address): Flow {
    const socket = this.#socket;
    const flow: Flow = {
      id: `udp:${remote.address}:${remote.port}`,
      transport: 'udp',
      reliable: false,
      local: this.#local,
      remote,
      send: (data: string) => {
        if (this.#closed) throw new Error('UDP transport closed');
        socket.send(data, remote.port, remote.address);
        this.emit('sent', data, flow);
      },
    };
    return flow;
  }

  flowById(id: string): Flow | undefined {
    const m = /^udp:(.+):(\d+)$/.exec(id);
    return m ? this.flowFor({ address: m[1]!, port: Number(m[2]) }) : undefined;
  }

  async flowTo(dest: Address): Promise<Flow> {
    // An IPv6 destination on a udp4 socket (or the reverse) would fail silently on every send.
    const family = isIP(dest.address);
    const v4Socket = !this.#local.address.includes(':');
    if (family === 0 || (family === 6 && v4Socket)) throw new Error(`UDP transport on ${this.#local.address} cannot reach ${dest.address}`);
    return this.flowFor(dest);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await new Promise<void>((resolve) => this.#socket.close(() => resolve()));
  }
}
