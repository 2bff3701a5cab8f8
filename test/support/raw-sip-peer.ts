/**
 * SIP peers on raw sockets, for what SIPp cannot play: a trunk that closes its TCP connection in
 * the middle of a dialog and carries on over new ones (RFC 3261 §18); a phone that registers over
 * UDP from behind NAT. The TCP peer listens on 127.0.0.1 (requests from the gateway arrive on
 * connections the gateway opens) and opens its own connections to the gateway. Messages are framed
 * by Content-Length; nothing is parsed beyond the start line and the headers a test asks for.
 */
import type dgram from 'node:dgram';
import { once } from 'node:events';
import net from 'node:net';
import { bindUdp, closeUdp } from './ports.js';

/** One SIP message as received. */
export interface RawSipMessage {
  text: string;
  /** Request method, or undefined for a response. */
  method: string | undefined;
  /** Response status, or undefined for a request. */
  status: number | undefined;
}

/** The first value of a header (full name, case-insensitive), or undefined. */
export function headerOf(text: string, name: string): string | undefined {
  const head = text.slice(0, text.indexOf('\r\n\r\n'));
  const prefix = `${name.toLowerCase()}:`;
  const line = head.split('\r\n').find((l) => l.toLowerCase().startsWith(prefix));
  return line?.slice(prefix.length).trim();
}

/** A response to `req` (Via, From, To, Call-ID, CSeq copied), `toTag` added when To has none. */
export function responseTo(req: string, status: number, reason: string, opts: { toTag?: string; headers?: string[]; body?: string } = {}): string {
  const head = req.slice(0, req.indexOf('\r\n\r\n')).split('\r\n');
  const copy = (n: string) => head.filter((l) => l.toLowerCase().startsWith(`${n}:`));
  let to = copy('to')[0] ?? 'To: <sip:unknown@invalid>';
  if (opts.toTag && !/;\s*tag=/i.test(to)) to += `;tag=${opts.toTag}`;
  const body = opts.body ?? '';
  const lines = [`SIP/2.0 ${status} ${reason}`, ...copy('via'), ...copy('from'), to, ...copy('call-id'), ...copy('cseq'), ...(opts.headers ?? [])];
  if (body) lines.push('Content-Type: application/sdp');
  lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
  return lines.join('\r\n') + '\r\n\r\n' + body;
}

/** One TCP connection carrying SIP, either way. */
export class RawSipConnection {
  readonly socket: net.Socket;
  readonly received: RawSipMessage[] = [];
  #buf = Buffer.alloc(0);
  #waiters = new Set<() => void>();
  #closed = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, chunk]);
      this.#frame();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  #frame(): void {
    for (;;) {
      // CRLF keep-alives between messages (RFC 5626).
      while (this.#buf.length >= 2 && this.#buf[0] === 13 && this.#buf[1] === 10) this.#buf = this.#buf.subarray(2);
      const end = this.#buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.#buf.subarray(0, end).toString('utf8');
      const len = Number(/^(?:content-length|l)\s*:\s*(\d+)/im.exec(head)?.[1] ?? 0);
      if (this.#buf.length < end + 4 + len) return;
      const text = this.#buf.subarray(0, end + 4 + len).toString('utf8');
      this.#buf = this.#buf.subarray(end + 4 + len);
      const first = text.slice(0, text.indexOf('\r\n'));
      const status = /^SIP\/2\.0 (\d{3})/.exec(first)?.[1];
      this.received.push({ text, method: status ? undefined : first.split(' ')[0], status: status ? Number(status) : undefined });
      this.#wake();
    }
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  send(text: string): void {
    this.socket.write(text);
  }

  /** The first message received (from `from` on) matching `match`, waiting up to `timeoutMs`. */
  next(match: (m: RawSipMessage) => boolean, what: string, timeoutMs = 10_000, from = 0): Promise<RawSipMessage> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = this.received.slice(from).find(match);
        if (m) return done(() => resolve(m));
        if (this.#closed) return done(() => reject(new Error(`connection closed while waiting for ${what}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting for ${what}`))), timeoutMs);
      const done = (settle: () => void) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        settle();
      };
      this.#waiters.add(check);
      check();
    });
  }

  request(method: string): Promise<RawSipMessage> {
    return this.next((m) => m.method === method, `a ${method}`);
  }

  /** The final response to the request with this CSeq method (skipping 1xx). */
  finalResponse(cseqMethod: string, timeoutMs = 10_000): Promise<RawSipMessage> {
    const cseq = new RegExp(`^\\d+ ${cseqMethod}$`);
    return this.next((m) => (m.status ?? 0) >= 200 && cseq.test(headerOf(m.text, 'CSeq') ?? ''), `a final response to ${cseqMethod}`, timeoutMs);
  }

  /** Closes our side and resolves once the connection is fully closed (the gateway closed its side too). */
  async close(): Promise<void> {
    if (this.#closed) return;
    const closed = once(this.socket, 'close');
    this.socket.end();
    await closed;
  }
}

/** A listening raw TCP SIP peer on 127.0.0.1. */
export class RawSipTcpPeer {
  readonly accepted: RawSipConnection[] = [];
  readonly #server: net.Server;
  readonly #all = new Set<RawSipConnection>();
  #waiters = new Set<() => void>();

  private constructor(server: net.Server) {
    this.#server = server;
    server.on('connection', (s) => {
      const c = this.#track(new RawSipConnection(s));
      this.accepted.push(c);
      for (const w of [...this.#waiters]) w();
    });
  }

  static async listen(): Promise<RawSipTcpPeer> {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return new RawSipTcpPeer(server);
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  #track(c: RawSipConnection): RawSipConnection {
    this.#all.add(c);
    c.socket.once('close', () => this.#all.delete(c));
    return c;
  }

  /** Opens a new connection to `port` on 127.0.0.1. */
  async connect(port: number): Promise<RawSipConnection> {
    const s = net.connect({ host: '127.0.0.1', port });
    await once(s, 'connect');
    return this.#track(new RawSipConnection(s));
  }

  /** The `index`th connection the gateway opened to us (0-based), waiting up to `timeoutMs`. */
  acceptedConnection(index: number, timeoutMs = 10_000): Promise<RawSipConnection> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const c = this.accepted[index];
        if (c) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve(c);
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out waiting for connection #${index + 1} from the gateway`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  async close(): Promise<void> {
    for (const c of this.#all) c.socket.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/** A raw SIP peer on one UDP socket on 127.0.0.1 (a phone that registers and answers by hand). */
export class RawSipUdpPeer {
  readonly #socket: dgram.Socket;
  readonly #inbox: string[] = [];
  #waiters = new Set<() => void>();

  private constructor(socket: dgram.Socket) {
    this.#socket = socket;
    socket.on('message', (m) => {
      this.#inbox.push(m.toString('utf8'));
      for (const w of [...this.#waiters]) w();
    });
  }

  static async bind(): Promise<RawSipUdpPeer> {
    return new RawSipUdpPeer(await bindUdp(0));
  }

  get port(): number {
    return this.#socket.address().port;
  }

  send(text: string, port: number): void {
    this.#socket.send(text, port, '127.0.0.1');
  }

  /** Takes the first message received (and not taken yet) whose text matches `re`, waiting up to `timeoutMs`. */
  next(re: RegExp, what: string, timeoutMs = 10_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.#inbox.findIndex((t) => re.test(t));
        if (i < 0) return;
        const [m] = this.#inbox.splice(i, 1);
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(m!);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  close(): Promise<void> {
    return closeUdp(this.#socket);
  }
}
