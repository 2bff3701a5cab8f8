import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { WebSocket } from 'ws';
import { StreamTransport } from '../../sip/transport/tcp.js';
import { WsTransport } from '../../sip/transport/ws.js';
import type { Flow, SipTransport } from '../../sip/transport/flow.js';
import { waitFor } from '../support/gateway-harness.js';

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
});
