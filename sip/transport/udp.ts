import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { EventEmitter } from 'node:events';
import type { Address, Flow, SipTransport, TransportEvents } from './flow.js';
import { MAX_SIP_MESSAGE } from './flow.js';
import { isDualStack, mapIPv4, unmapIPv4 } from './address.js';
import { TransportError } from './errors.js';

/** Destinations with a send failure not yet handed to a sender; bounded, oldest dropped. */
const MAX_PENDING_SEND_ERRORS = 1024;

/**
 * SIP over UDP on one bound socket; a flow is just the remote address.
 *
 * dgram reports a failed send (EMSGSIZE, ENETUNREACH, EPERM...) after `send()` returned, but
 * `Flow.send` is synchronous and transactions learn of failures by its throwing. So, as the kernel
 * does for ICMP errors on a connected UDP socket, the failure is kept per destination and thrown by
 * the next send to it (a retransmission, Timer A/E/G, or an absorbed retransmission's response):
 * the transaction then reports `transportError` within T1 instead of timing out. Each failure is
 * also emitted at once as a TransportError 'GW_SIP_SEND_FAILED' (with `flowId`) on 'error'.
 */
export class UdpTransport extends EventEmitter<TransportEvents> implements SipTransport {
  readonly kind = 'udp' as const;
  #socket: dgram.Socket;
  #local: Address = { address: '', port: 0 };
  /** A udp6 socket: IPv4 destinations are sent to as ::ffff:a.b.c.d. */
  #v6 = false;
  #sendErrors = new Map<string, TransportError>();
  #closed = false;

  private constructor(socket: dgram.Socket) {
    super();
    this.#socket = socket;
    socket.on('message', (buf, rinfo) => {
      if (buf.length > MAX_SIP_MESSAGE) return;
      // RFC 5626 keep-alive: a bare CRLF (or double CRLF) carries no message.
      if (buf.length <= 4 && buf.toString('latin1').trim() === '') return;
      this.emit('message', buf.toString('utf8'), this.flowFor({ address: unmapIPv4(rinfo.address), port: rinfo.port }));
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
    t.#v6 = a.family === 'IPv6';
    return t;
  }

  get local(): Address {
    return this.#local;
  }

  /** A flow to `remote` on this socket (UDP needs no connection). */
  flowFor(remote: Address): Flow {
    const socket = this.#socket;
    const peer = { address: unmapIPv4(remote.address), port: remote.port };
    const key = `${peer.address}:${peer.port}`;
    const sendTo = this.#v6 ? mapIPv4(peer.address) : peer.address;
    const flow: Flow = {
      id: `udp:${key}`,
      transport: 'udp',
      reliable: false,
      local: this.#local,
      remote: peer,
      send: (data: string) => {
        if (this.#closed) throw new Error('UDP transport closed');
        const failed = this.#sendErrors.get(key);
        if (failed) {
          this.#sendErrors.delete(key);
          throw failed;
        }
        socket.send(data, peer.port, sendTo, (err) => {
          if (err) this.#sendFailed(err, flow, key);
        });
        this.emit('sent', data, flow);
      },
    };
    return flow;
  }

  #sendFailed(err: Error & { code?: string }, flow: Flow, key: string): void {
    if (this.#closed) return;
    const e = new TransportError('GW_SIP_SEND_FAILED', `UDP send to ${key} failed: ${err.code ?? err.message}`, { cause: err, flowId: flow.id });
    this.#sendErrors.delete(key);
    this.#sendErrors.set(key, e);
    if (this.#sendErrors.size > MAX_PENDING_SEND_ERRORS) this.#sendErrors.delete(this.#sendErrors.keys().next().value!);
    this.emit('error', e);
  }

  flowById(id: string): Flow | undefined {
    const m = /^udp:(.+):(\d+)$/.exec(id);
    return m ? this.flowFor({ address: m[1]!, port: Number(m[2]) }) : undefined;
  }

  async flowTo(dest: Address): Promise<Flow> {
    // A destination of the other family fails on every send: IPv6 on a udp4 socket, IPv4 on a
    // udp6 socket bound to one IPv6 address (only the wildcard '::' is dual-stack).
    const family = isIP(unmapIPv4(dest.address));
    const local = this.#local.address;
    const reachable = family === 6 ? this.#v6 : family === 4 && (!this.#v6 || isDualStack(local));
    if (!reachable) throw new Error(`UDP transport on ${local} cannot reach ${dest.address}`);
    return this.flowFor(dest);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sendErrors.clear();
    await new Promise<void>((resolve) => this.#socket.close(() => resolve()));
  }
}
