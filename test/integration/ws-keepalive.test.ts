import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { WebSocket } from 'ws';
import { WsTransport } from '../../sip/transport/ws.js';
import type { Flow } from '../../sip/transport/flow.js';
import { waitFor } from '../support/gateway-harness.js';

/**
 * SIP over WebSocket keep-alives: WebSocket ping frames find a browser that vanished without
 * closing (its flow closes, so its registrations and calls end), and a double-CRLF ping from a
 * client (SIP.js keepAliveInterval, RFC 5626 §4.4.1) gets a CRLF pong.
 */
describe('SIP over WebSocket keep-alive', function () {
  this.timeout(20_000);

  let server: http.Server | undefined;
  let transport: WsTransport | undefined;
  const clients: WebSocket[] = [];

  async function start(heartbeatMs?: number, host = '127.0.0.1'): Promise<string> {
    server = http.createServer();
    await new Promise<void>((resolve) => server!.listen(0, host, resolve));
    transport = new WsTransport(server, heartbeatMs ? { heartbeatMs } : {});
    return `ws://127.0.0.1:${(server.address() as { port: number }).port}/ws`;
  }

  async function client(url: string, opts: { autoPong?: boolean } = {}): Promise<WebSocket> {
    const ws = new WebSocket(url, 'sip', opts);
    clients.push(ws);
    await once(ws, 'open');
    return ws;
  }

  afterEach(async () => {
    for (const c of clients) c.terminate();
    clients.length = 0;
    await transport?.close();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = transport = undefined;
  });

  it('drops a client that stops answering ping frames and reports its flow closed; answering clients stay', async () => {
    const url = await start(100);
    const closed: Flow[] = [];
    transport!.on('flowClosed', (f) => closed.push(f));
    const silent = await client(url, { autoPong: false });
    const healthy = await client(url);
    let pings = 0;
    healthy.on('ping', () => pings++);
    const silentClosed = once(silent, 'close');
    await waitFor(() => closed.length === 1, 'the silent client to be dropped', 5_000);
    await silentClosed;
    await waitFor(() => pings >= 5, 'more pings to the healthy client', 5_000);
    assert.equal(healthy.readyState, WebSocket.OPEN, 'a client that answers stays connected');
    assert.equal(transport!.connections, 1);
  });

  it('answers a double-CRLF keep-alive with a CRLF and passes no message up', async () => {
    const url = await start();
    const messages: string[] = [];
    transport!.on('message', (m) => messages.push(m));
    const ws = await client(url);
    const reply = once(ws, 'message');
    ws.send('\r\n\r\n');
    const [data] = (await reply) as [Buffer];
    assert.equal(data.toString(), '\r\n');
    assert.deepEqual(messages, []);
  });

  it("on a '::' listener, an IPv4 client's flow reads 127.0.0.1", async function () {
    const probe = http.createServer();
    const v6 = await new Promise<boolean>((r) => probe.once('error', () => r(false)).listen(0, '::1', () => r(true)));
    probe.close();
    if (!v6) this.skip();
    const url = await start(undefined, '::');
    const arrived = once(transport!, 'message');
    const ws = await client(url);
    ws.send('OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n');
    const [, flow] = (await arrived) as [string, Flow];
    assert.equal(flow.remote.address, '127.0.0.1');
    assert.match(flow.id, /^ws:\d+:127\.0\.0\.1:\d+$/);
  });
});
