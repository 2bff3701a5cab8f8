import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { WebSocket } from 'ws';
import { StreamTransport } from '../../sip/transport/tcp.js';
import { WsTransport } from '../../sip/transport/ws.js';
import type { Flow, SipTransport } from '../../sip/transport/flow.js';
import { assertClean, startGateway, waitFor } from '../support/gateway-harness.js';
import { createTestCa } from '../support/certs.js';

const OPTIONS = 'OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n';
type CodedError = Error & { code?: string; flowId?: string };

/**
 * Sends big messages down `flow` until a send throws, up to `budget` bytes; returns the error
 * (undefined if every send went through) and how much was handed over.
 */
function sendUntilRefused(flow: Flow, budget: number): { err: CodedError | undefined; sent: number } {
  const piece = `SIP/2.0 200 OK\r\nX-Pad: ${'p'.repeat(60_000)}\r\nContent-Length: 0\r\n\r\n`;
  let sent = 0;
  while (sent < budget) {
    try {
      flow.send(piece);
    } catch (err) {
      return { err: err as CodedError, sent };
    }
    sent += piece.length;
  }
  return { err: undefined, sent };
}

/**
 * What one peer can make the connection-oriented transports hold: bounded write buffers,
 * connection counts, and time to finish a message. Real sockets on 127.0.0.1.
 */
describe('transport limits', function () {
  this.timeout(30_000);
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function stream(opts: Parameters<typeof StreamTransport.create>[0]): Promise<StreamTransport> {
    const t = await StreamTransport.create(opts);
    cleanups.push(async () => {
      await t.close();
      assert.equal(t.connections, 0);
    });
    return t;
  }

  async function wsTransport(opts: ConstructorParameters<typeof WsTransport>[1] = {}): Promise<{ t: WsTransport; url: string }> {
    const server = http.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const t = new WsTransport(server, opts);
    cleanups.push(async () => {
      await t.close();
      await new Promise<void>((r) => server.close(() => r()));
    });
    return { t, url: `ws://127.0.0.1:${(server.address() as net.AddressInfo).port}/ws` };
  }

  function rawClient(port: number): net.Socket {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('error', () => undefined);
    cleanups.push(() => void s.destroy());
    return s;
  }

  /** The next flowClosed (events.once would reject on the 'error' these tests expect). */
  function nextClosed(t: SipTransport): Promise<Flow> {
    return new Promise((resolve) => t.once('flowClosed', resolve));
  }

  /**
   * A raw TCP client from `from` that sends an OPTIONS once connected: 'accepted' when the transport
   * frames it, 'closed' when the connection is closed first.
   */
  async function fate(t: SipTransport & { local: { port: number } }, from: string): Promise<{ fate: 'accepted' | 'closed'; socket: net.Socket }> {
    const socket = net.connect({ host: '127.0.0.1', port: t.local.port, localAddress: from }, () => socket.write(OPTIONS));
    socket.on('error', () => undefined);
    cleanups.push(() => void socket.destroy());
    const result = await new Promise<'accepted' | 'closed'>((resolve) => {
      const onMessage = (_m: string, flow: Flow) => {
        if (flow.remote.port !== socket.localPort) return;
        t.off('message', onMessage);
        resolve('accepted');
      };
      t.on('message', onMessage);
      socket.once('close', () => {
        t.off('message', onMessage);
        resolve('closed');
      });
    });
    return { fate: result, socket };
  }

  function errorsOf(t: SipTransport): CodedError[] {
    const errors: CodedError[] = [];
    t.on('error', (e) => errors.push(e));
    return errors;
  }

  describe('write backpressure', () => {
    it('closes a TCP connection whose peer stops reading once the unsent bytes pass the bound, and reports it', async () => {
      const t = await stream({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, maxWriteBufferBytes: 256 * 1024 });
      const errors = errorsOf(t);
      const client = rawClient(t.local.port);
      client.write(OPTIONS);
      const [, flow] = (await once(t, 'message')) as [string, Flow];
      client.pause(); // never reads again: the kernel buffers fill, then ours would grow
      const closed = nextClosed(t);
      const { err, sent } = sendUntilRefused(flow, 64 * 1024 * 1024);
      assert.ok(err, `every send went through (${sent} bytes queued)`);
      assert.equal(err.code, 'GW_SIP_WRITE_OVERFLOW');
      assert.equal(err.flowId, flow.id);
      assert.equal(await closed, flow);
      assert.deepEqual(errors, [err], 'reported once on the transport');
      assert.equal(t.flowById(flow.id), undefined);
      assert.equal(t.connections, 0);
      assert.throws(() => flow.send(OPTIONS), /closed/);
    });

    it('keeps a connection whose peer reads, however much passes through it', async () => {
      const t = await stream({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, maxWriteBufferBytes: 64 * 1024 });
      const errors = errorsOf(t);
      const client = rawClient(t.local.port);
      let received = 0;
      client.on('data', (d: Buffer) => (received += d.length));
      client.write(OPTIONS);
      const [, flow] = (await once(t, 'message')) as [string, Flow];
      const piece = `SIP/2.0 200 OK\r\nX-Pad: ${'p'.repeat(60_000)}\r\nContent-Length: 0\r\n\r\n`;
      for (let i = 1; i <= 20; i++) {
        flow.send(piece);
        await waitFor(() => received === i * piece.length, `piece ${i} at the client`);
      }
      assert.deepEqual(errors, []);
      assert.equal(t.flowById(flow.id), flow);
    });

    it('drops a WebSocket client that stops reading once the unsent bytes pass the bound, and reports it', async () => {
      const { t, url } = await wsTransport({ maxWriteBufferBytes: 256 * 1024 });
      const errors = errorsOf(t);
      const ws = new WebSocket(url, 'sip');
      cleanups.push(() => ws.terminate());
      await once(ws, 'open');
      ws.send(OPTIONS);
      const [, flow] = (await once(t, 'message')) as [string, Flow];
      ws.pause();
      const closed = nextClosed(t);
      const { err, sent } = sendUntilRefused(flow, 64 * 1024 * 1024);
      assert.ok(err, `every send went through (${sent} bytes queued)`);
      assert.equal(err.code, 'GW_SIP_WRITE_OVERFLOW');
      assert.equal(err.flowId, flow.id);
      assert.equal(await closed, flow);
      assert.deepEqual(errors, [err]);
      await waitFor(() => t.connections === 0, 'the client gone');
    });
  });

  describe('connection caps', () => {
    it('refuses limits that are not positive integers', async () => {
      await assert.rejects(StreamTransport.create({ kind: 'tcp', maxConnectionsPerIp: 0 }), TypeError);
      await assert.rejects(StreamTransport.create({ kind: 'tcp', messageTimeoutMs: 1.5 }), TypeError);
      await assert.rejects(StreamTransport.create({ kind: 'tcp', idleTimeoutMs: -1 }), TypeError);
      const server = http.createServer();
      assert.throws(() => new WsTransport(server, { maxWriteBufferBytes: 0 }), TypeError);
      assert.equal(server.listenerCount('upgrade'), 0);
    });

    it('closes TCP connections over the per-address and total caps at once, reports that once, and admits again when one closes', async () => {
      const t = await stream({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, maxConnectionsPerIp: 2, maxConnections: 3 });
      const errors = errorsOf(t);
      const a1 = await fate(t, '127.0.0.1');
      assert.equal(a1.fate, 'accepted');
      assert.equal((await fate(t, '127.0.0.1')).fate, 'accepted');
      assert.equal((await fate(t, '127.0.0.1')).fate, 'closed', 'a third from one address');
      assert.equal((await fate(t, '127.0.0.2')).fate, 'accepted', 'another address');
      assert.equal((await fate(t, '127.0.0.3')).fate, 'closed', 'a fourth in all');
      assert.equal(t.connections, 3);
      assert.equal(errors.length, 1, 'a burst of refusals is reported once');
      assert.equal(errors[0]!.code, 'GW_SIP_CONNECTION_LIMIT');
      assert.match(errors[0]!.message, /127\.0\.0\.1: 2 open from that address \(limit 2\)/);
      a1.socket.destroy();
      await waitFor(() => t.connections === 2, 'the closed connection gone');
      assert.equal((await fate(t, '127.0.0.1')).fate, 'accepted', 'room again for that address');
    });

    it('counts TLS connections from the TCP accept: one over the cap is closed before any handshake, with no handshake error', async () => {
      const ca = await createTestCa();
      cleanups.push(() => ca.remove());
      const cert = await ca.leaf('server');
      const t = await stream({ kind: 'tls', listen: { host: '127.0.0.1', port: 0 }, tls: { cert: cert.certPem, key: cert.keyPem }, maxConnectionsPerIp: 1, connectTimeoutMs: 25_000 });
      const errors = errorsOf(t);
      const client = await stream({ kind: 'tls', tls: { ca: ca.caPem } });
      const flow = await client.flowTo({ address: '127.0.0.1', port: t.local.port, servername: 'localhost' });
      // A second connection that never starts its handshake: held until the handshake timeout without the cap.
      const idle = rawClient(t.local.port);
      const idleClosed = new Promise<boolean>((resolve) => idle.once('close', () => resolve(true)));
      await waitFor(() => idle.closed, 'the connection over the cap to be closed');
      assert.equal(await idleClosed, true);
      flow.send(OPTIONS);
      await once(t, 'message');
      assert.deepEqual(errors.map((e) => e.code), ['GW_SIP_CONNECTION_LIMIT']);
    });

    it('closes WebSocket connections over the per-address cap before the upgrade, and admits again when one closes', async () => {
      const { t, url } = await wsTransport({ maxConnectionsPerIp: 1 });
      const errors = errorsOf(t);
      const open = async (localAddress: string): Promise<{ ws: WebSocket; opened: boolean }> => {
        const ws = new WebSocket(url, 'sip', { localAddress });
        cleanups.push(() => ws.terminate());
        ws.on('error', () => undefined);
        const opened = await new Promise<boolean>((resolve) => {
          ws.once('open', () => resolve(true));
          ws.once('close', () => resolve(false));
        });
        return { ws, opened };
      };
      const first = await open('127.0.0.1');
      assert.equal(first.opened, true);
      assert.equal((await open('127.0.0.1')).opened, false);
      assert.equal((await open('127.0.0.2')).opened, true);
      assert.equal(t.connections, 2);
      assert.deepEqual(errors.map((e) => e.code), ['GW_SIP_CONNECTION_LIMIT']);
      first.ws.close();
      await waitFor(() => t.connections === 1, 'the first client gone');
      assert.equal((await open('127.0.0.1')).opened, true);
    });
  });

  describe('timeouts on inbound connections', () => {
    it('closes a TCP connection that trickles a message and does not finish it in time; a connection that finished one stays', async () => {
      const t = await stream({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, messageTimeoutMs: 300 });
      const errors = errorsOf(t);
      const done = await fate(t, '127.0.0.1');
      assert.equal(done.fate, 'accepted');
      const slow = rawClient(t.local.port);
      await once(slow, 'connect');
      const slowPort = slow.localPort;
      let sent = 0;
      const trickle = setInterval(() => slow.writable && slow.write(OPTIONS[sent++ % OPTIONS.length]!), 20);
      cleanups.push(() => clearInterval(trickle));
      await waitFor(() => slow.closed, 'the trickling connection to be closed');
      clearInterval(trickle);
      assert.ok(sent > 3, 'it was still sending');
      assert.equal(errors.length, 1);
      assert.equal(errors[0]!.code, 'GW_SIP_CONNECTION_TIMEOUT');
      assert.match(errors[0]!.flowId!, new RegExp(`:127\\.0\\.0\\.1:${slowPort}$`));
      assert.match(errors[0]!.message, /not finished within 300 ms/);
      // The first connection's message finished before the slow one began: no timer may be left on it.
      assert.equal(done.socket.closed, false);
      assert.equal(t.connections, 1);
      done.socket.write(OPTIONS);
      await once(t, 'message');
    });

    it('closes an inbound TCP connection that carried no message within the idle time, but not one that did, nor one it opened', async () => {
      const peer = net.createServer((s) => s.on('error', () => undefined));
      await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise<void>((r) => peer.close(() => r())));
      const t = await stream({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, idleTimeoutMs: 300 });
      const errors = errorsOf(t);
      const outbound = await t.flowTo({ address: '127.0.0.1', port: (peer.address() as net.AddressInfo).port });
      const used = await fate(t, '127.0.0.1');
      assert.equal(used.fate, 'accepted');
      const silent = rawClient(t.local.port);
      await waitFor(() => silent.closed, 'the silent connection to be closed');
      assert.deepEqual(errors.map((e) => e.code), ['GW_SIP_CONNECTION_TIMEOUT']);
      assert.match(errors[0]!.message, /no message within 300 ms/);
      assert.equal(used.socket.closed, false, 'a connection that carried a message stays, however quiet');
      assert.equal(t.flowById(outbound.id), outbound, 'connections we open are not timed');
      assert.equal(t.connections, 2);
    });

    it('closes a WebSocket that begins a fragmented message and does not finish it, though it answers pings; a quiet client stays', async () => {
      const { t, url } = await wsTransport({ messageTimeoutMs: 300, heartbeatMs: 40 });
      const errors = errorsOf(t);
      const connect = async () => {
        const ws = new WebSocket(url, 'sip');
        cleanups.push(() => ws.terminate());
        ws.on('error', () => undefined);
        await once(ws, 'open');
        return ws;
      };
      const quiet = await connect();
      let quietPings = 0;
      quiet.on('ping', () => quietPings++);
      quiet.send(OPTIONS);
      await once(t, 'message');
      const slow = await connect();
      let slowPings = 0;
      slow.on('ping', () => slowPings++);
      const slowClosed = new Promise<void>((resolve) => slow.once('close', () => resolve()));
      slow.send(OPTIONS.slice(0, 20), { fin: false });
      await slowClosed;
      assert.ok(slowPings >= 2, `the slow client answered pings meanwhile (${slowPings})`);
      assert.ok(quietPings >= 5, `the quiet client answered pings too (${quietPings})`);
      assert.deepEqual(errors.map((e) => e.code), ['GW_SIP_CONNECTION_TIMEOUT']);
      assert.equal(quiet.readyState, WebSocket.OPEN);
      await waitFor(() => t.connections === 1, 'the slow client gone at the server');
    });
  });
});

describe('transport limits from the gateway config', function () {
  this.timeout(30_000);

  it('sip.limits.maxConnectionsPerIp reaches the TCP listener: the third connection from one address is closed at once', async () => {
    const gw = await startGateway({ trunkPort: 9, extra: { sip: { limits: { maxConnectionsPerIp: 2 } } } });
    const sockets: net.Socket[] = [];
    try {
      const tcp = gw.sipAddress('tcp')!;
      const open = async () => {
        const s = net.connect({ host: '127.0.0.1', port: tcp.port });
        sockets.push(s);
        await once(s, 'connect');
        return s;
      };
      const [a, b] = [await open(), await open()];
      const third = await open();
      await once(third, 'close');
      assert.equal(a.destroyed || b.destroyed, false, 'the first two stay');
      await assertClean(gw);
    } finally {
      sockets.forEach((s) => s.destroy());
      await gw.close();
    }
  });
});
