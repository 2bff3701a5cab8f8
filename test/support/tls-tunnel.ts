/**
 * TLS in front of a plain TCP peer, for SIPp: Debian's SIPp 3.6.1 is built without OpenSSL
 * ("To use a TLS transport you must compile SIPp with OpenSSL"), so a SIPp "over TLS" is SIPp on
 * TCP behind one of these. The SIP bytes pass through untouched; each TLS connection is one TCP
 * connection to SIPp, so SIPp's connection-per-peer behaviour is kept.
 *
 * - `tlsToTcp` (SIPp as UAS): a TLS server with a given certificate; it records the SNI each client
 *   sent and every failed handshake (a peer that refused our certificate shows up there).
 * - `tcpToTls` (SIPp as UAC): a TCP listener whose connections go out with `tls.connect`.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';

export interface TlsTunnel {
  /** Where to connect on 127.0.0.1. */
  readonly port: number;
  /** tlsToTcp: the SNI of every accepted connection (false: none sent). */
  readonly servernames: ReadonlyArray<string | false>;
  /** Handshakes that failed, as error messages. */
  readonly handshakeErrors: readonly string[];
  /** Connections passed through so far. */
  readonly connections: number;
  /** Stops listening and cuts every connection. Safe to call twice. */
  close(): Promise<void>;
}

interface TunnelState {
  servernames: Array<string | false>;
  handshakeErrors: string[];
  connections: number;
}

function splice(a: Duplex, b: Duplex, live: Set<Duplex>): void {
  live.add(a).add(b);
  a.pipe(b);
  b.pipe(a);
  const end = () => {
    a.destroy();
    b.destroy();
    live.delete(a);
    live.delete(b);
  };
  for (const s of [a, b]) {
    s.on('error', end);
    s.on('close', end);
  }
}

async function start(server: net.Server, live: Set<Duplex>, state: TunnelState): Promise<TlsTunnel> {
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
  let closing: Promise<void> | undefined;
  return {
    port,
    servernames: state.servernames,
    handshakeErrors: state.handshakeErrors,
    get connections() {
      return state.connections;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const s of live) s.destroy();
        live.clear();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}

/** TLS on 127.0.0.1 (port 0) with `cert`/`key` (PEM), forwarded to TCP 127.0.0.1:`targetPort`. */
export function tlsToTcp(opts: { cert: string | Buffer; key: string | Buffer; targetPort: number }): Promise<TlsTunnel> {
  const live = new Set<Duplex>();
  const state: TunnelState = { servernames: [], handshakeErrors: [], connections: 0 };
  const server = tls.createServer({ cert: opts.cert, key: opts.key, handshakeTimeout: 5000 }, (socket) => {
    state.connections++;
    state.servernames.push(socket.servername ?? false);
    splice(socket, net.connect({ host: '127.0.0.1', port: opts.targetPort }), live);
  });
  server.on('tlsClientError', (err) => state.handshakeErrors.push(err.message));
  return start(server, live, state);
}

/** TCP on 127.0.0.1 (port 0) forwarded over TLS to `host:port`, verifying it against `ca` (PEM) and `servername`. */
export function tcpToTls(opts: { host: string; port: number; ca?: string | Buffer; servername?: string }): Promise<TlsTunnel> {
  const live = new Set<Duplex>();
  const state: TunnelState = { servernames: [], handshakeErrors: [], connections: 0 };
  const server = net.createServer((socket) => {
    state.connections++;
    socket.pause();
    const out = tls.connect({
      host: opts.host,
      port: opts.port,
      ...(opts.servername ? { servername: opts.servername } : {}),
      ...(opts.ca ? { ca: [...tls.rootCertificates, opts.ca.toString()] } : {}),
    });
    live.add(socket).add(out);
    socket.on('error', () => out.destroy());
    let spliced = false;
    out.once('secureConnect', () => {
      spliced = true;
      splice(socket, out, live);
      socket.resume();
    });
    out.once('error', (err) => {
      if (spliced) return;
      state.handshakeErrors.push(err.message);
      socket.destroy();
      live.delete(socket);
      live.delete(out);
    });
  });
  return start(server, live, state);
}
