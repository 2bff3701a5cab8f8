import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { StreamTransport } from '../../sip/transport/tcp.js';
import type { Flow } from '../../sip/transport/flow.js';
import { createTestCa, type TestCa } from '../support/certs.js';
import { waitFor } from '../support/gateway-harness.js';

const OPTIONS = 'OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n';

/** A raw peer on 127.0.0.1 that records every byte it gets and counts CRLF pings; `pong` decides whether it answers them. */
async function rawPeer(opts: { tls?: { cert: string; key: string }; pong: () => boolean }) {
  const sockets = new Set<net.Socket>();
  const state = { received: '', pings: 0, servernames: [] as Array<string | false> };
  const onSocket = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d: Buffer) => {
      state.received += d.toString('latin1');
      buf += d.toString('latin1');
      // Pings are CRLF pairs between messages; the tests' messages have no body.
      for (;;) {
        let crlfs = 0;
        while (buf.startsWith('\r\n')) {
          buf = buf.slice(2);
          if (++crlfs % 2 === 0) {
            state.pings++;
            if (opts.pong()) s.write('\r\n');
          }
        }
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) break;
        buf = buf.slice(end + 4);
      }
    });
  };
  const server = opts.tls
    ? tls.createServer({ cert: opts.tls.cert, key: opts.tls.key }, (s) => {
        state.servernames.push(s.servername ?? false);
        onSocket(s);
      })
    : net.createServer(onSocket);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    state,
    sockets,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * The TCP/TLS transport on its own against raw sockets: RFC 5626 CRLF keep-alive, connection reuse,
 * TLS verification and SNI, and a listener that survives bad clients.
 */
describe('stream transport (TCP and TLS)', function () {
  this.timeout(30_000);

  let ca: TestCa;
  let cert: { cert: string; key: string; certPem: string; keyPem: string };
  const cleanups: Array<() => Promise<void>> = [];

  before(async () => {
    ca = await createTestCa();
    cert = await ca.leaf('server');
  });
  after(() => ca?.remove());
  afterEach(async () => {
    const results = await Promise.allSettled(cleanups.splice(0).reverse().map((c) => c()));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  });

  async function transport(opts: Parameters<typeof StreamTransport.create>[0]): Promise<StreamTransport> {
    const t = await StreamTransport.create(opts);
    cleanups.push(async () => {
      await t.close();
      assert.equal(t.connections, 0, 'close() ends every connection');
    });
    return t;
  }

  async function peer(opts: Parameters<typeof rawPeer>[0]) {
    const p = await rawPeer(opts);
    cleanups.push(p.close);
    return p;
  }

  it('sends CRLF pings on a connection it opened and keeps it while the peer answers', async () => {
    const p = await peer({ pong: () => true });
    const t = await transport({ kind: 'tcp', keepAliveMs: 50 });
    const flow = await t.flowTo({ address: '127.0.0.1', port: p.port });
    let closed = false;
    t.on('flowClosed', () => (closed = true));
    await waitFor(() => p.state.pings >= 4, 'four pings');
    assert.equal(closed, false);
    assert.equal(t.flowById(flow.id), flow);
  });

  it('closes the flow when a peer that answered pings stops answering', async () => {
    let answering = true;
    const p = await peer({ pong: () => answering });
    const t = await transport({ kind: 'tcp', keepAliveMs: 50 });
    const flow = await t.flowTo({ address: '127.0.0.1', port: p.port });
    await waitFor(() => p.state.pings >= 2, 'two answered pings');
    answering = false;
    const [gone] = (await once(t, 'flowClosed')) as [Flow];
    assert.equal(gone, flow);
    assert.equal(t.flowById(flow.id), undefined);
    const again = await t.flowTo({ address: '127.0.0.1', port: p.port });
    assert.notEqual(again.id, flow.id, 'the next flowTo opens a new connection');
  });

  it('keeps a connection to a peer that never answers pings (RFC 3261 peers ignore CRLF)', async () => {
    const p = await peer({ pong: () => false });
    const t = await transport({ kind: 'tcp', keepAliveMs: 50 });
    const flow = await t.flowTo({ address: '127.0.0.1', port: p.port });
    let closed = false;
    t.on('flowClosed', () => (closed = true));
    await waitFor(() => p.state.pings >= 5, 'five pings');
    assert.equal(closed, false);
    flow.send(OPTIONS);
    await waitFor(() => p.state.received.includes('OPTIONS sip:x'), 'the message after the pings');
  });

  it('sends no pings with keep-alive off, and none on connections it accepted', async () => {
    // A pinging reference connection paces the test: three pings there, none on the others.
    const reference = await peer({ pong: () => true });
    const pinging = await transport({ kind: 'tcp', keepAliveMs: 20 });
    const quietPeer = await peer({ pong: () => true });
    const quiet = await transport({ kind: 'tcp', keepAliveMs: 0 });
    const listener = await transport({ kind: 'tcp', listen: { host: '127.0.0.1', port: 0 }, keepAliveMs: 20 });
    const raw = net.connect({ host: '127.0.0.1', port: listener.local.port });
    cleanups.push(async () => void raw.destroy());
    let rawGot = '';
    raw.on('data', (d) => (rawGot += d.toString()));
    await once(raw, 'connect');
    await waitFor(() => listener.connections === 1, 'the listener to accept');
    (await quiet.flowTo({ address: '127.0.0.1', port: quietPeer.port })).send(OPTIONS);
    await pinging.flowTo({ address: '127.0.0.1', port: reference.port });
    await waitFor(() => reference.state.pings >= 3, 'three pings on the reference connection');
    assert.equal(quietPeer.state.pings, 0, 'keep-alive off');
    assert.equal(quietPeer.state.received, OPTIONS);
    assert.equal(rawGot, '', 'no ping to a connection we accepted');
  });

  it('reuses one connection per destination, also for concurrent requests, and reopens a closed one', async () => {
    const p = await peer({ pong: () => true });
    const t = await transport({ kind: 'tcp' });
    const dest = { address: '127.0.0.1', port: p.port };
    const [a, b] = await Promise.all([t.flowTo(dest), t.flowTo(dest)]);
    assert.equal(a, b);
    assert.equal(await t.flowTo(dest), a);
    assert.equal(t.connections, 1);
    for (const s of p.sockets) s.destroy();
    await once(t, 'flowClosed');
    const c = await t.flowTo(dest);
    assert.notEqual(c, a);
    assert.equal(t.connections, 1);
  });

  it('verifies TLS peers: SNI only for names, refused handshakes reject with a code, verification can be off', async () => {
    const p = await peer({ tls: { cert: cert.certPem, key: cert.keyPem }, pong: () => true });
    const trusting = await transport({ kind: 'tls', tls: { ca: ca.caPem } });
    const byIp = await trusting.flowTo({ address: '127.0.0.1', port: p.port, servername: '127.0.0.1' });
    assert.equal(byIp.transport, 'tls');
    const byName = await trusting.flowTo({ address: '127.0.0.1', port: p.port, servername: 'LocalHost' });
    assert.notEqual(byName, byIp, 'a connection verified for one name is not reused for another');
    assert.equal(await trusting.flowTo({ address: '127.0.0.1', port: p.port, servername: 'localhost' }), byName);
    await waitFor(() => p.state.servernames.length === 2, 'two handshakes');
    assert.deepEqual(p.state.servernames, [false, 'LocalHost']);
    await assert.rejects(trusting.flowTo({ address: '127.0.0.1', port: p.port, servername: 'other.example' }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'GW_SIP_TLS_HANDSHAKE');
      assert.match(e.message, /other\.example/);
      return true;
    });
    const untrusting = await transport({ kind: 'tls' });
    await assert.rejects(untrusting.flowTo({ address: '127.0.0.1', port: p.port }), { code: 'GW_SIP_TLS_HANDSHAKE' });
    const unverified = await untrusting.flowTo({ address: '127.0.0.1', port: p.port, verify: false });
    unverified.send(OPTIONS);
    await waitFor(() => p.state.received.includes('OPTIONS sip:x'), 'a message over the unverified connection');
    await assert.rejects(untrusting.flowTo({ address: '127.0.0.1', port: 1 }), { code: 'GW_SIP_CONNECT_FAILED' });
  });

  it('close() aborts a connection attempt in progress: flowTo rejects and no socket is left', async () => {
    // A TCP server that never answers the TLS handshake.
    const silent = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const accepted = once(silent, 'connection');
    cleanups.push(() => new Promise<void>((r) => silent.close(() => r())));
    const t = await StreamTransport.create({ kind: 'tls', connectTimeoutMs: 25_000 });
    const pending = t.flowTo({ address: '127.0.0.1', port: (silent.address() as net.AddressInfo).port });
    const [sock] = (await accepted) as [net.Socket];
    const peerClosed = once(sock, 'close');
    await t.close();
    await assert.rejects(pending, (e: Error & { code?: string }) => e.code === 'GW_SIP_CONNECT_FAILED' && /aborted/.test(e.message));
    await peerClosed;
    assert.equal(t.connections, 0);
    await assert.rejects(t.flowTo({ address: '127.0.0.1', port: 1 }), /closed/);
  });

  it("on a '::' listener, an IPv4 client's flow reads 127.0.0.1 and flowTo that address reuses it", async function () {
    const probe = net.createServer();
    const v6 = await new Promise<boolean>((r) => probe.once('error', () => r(false)).listen(0, '::1', () => r(true)));
    probe.close();
    if (!v6) this.skip();
    const listener = await transport({ kind: 'tcp', listen: { host: '::', port: 0 } });
    const raw = net.connect({ host: '127.0.0.1', port: listener.local.port }, () => raw.write(OPTIONS));
    cleanups.push(async () => void raw.destroy());
    const [, flow] = (await once(listener, 'message')) as [string, Flow];
    assert.deepEqual(flow.remote, { address: '127.0.0.1', port: raw.localPort });
    assert.equal(flow.local.address, '127.0.0.1');
    assert.match(flow.id, new RegExp(`^tcp:\\d+:127\\.0\\.0\\.1:${raw.localPort}$`));
    assert.equal(await listener.flowTo({ address: '127.0.0.1', port: raw.localPort! }), flow);
  });

  it('a TLS listener survives bad clients and frames messages from good ones', async () => {
    const listener = await transport({ kind: 'tls', listen: { host: '127.0.0.1', port: 0 }, tls: { cert: cert.certPem, key: cert.keyPem } });
    const errors: Array<Error & { code?: string }> = [];
    listener.on('error', (e) => errors.push(e));
    const plain = net.connect({ host: '127.0.0.1', port: listener.local.port }, () => plain.write(OPTIONS));
    plain.on('error', () => undefined);
    await once(plain, 'close');
    await waitFor(() => errors.length === 1, 'the failed handshake reported');
    assert.equal(errors[0]!.code, 'GW_SIP_TLS_HANDSHAKE');
    assert.equal(listener.connections, 0);
    const client = await transport({ kind: 'tls', tls: { ca: ca.caPem } });
    const flow = await client.flowTo({ address: '127.0.0.1', port: listener.local.port, servername: 'localhost' });
    const got = once(listener, 'message');
    // Split mid-message: the listener frames by Content-Length across TLS records.
    flow.send(OPTIONS.slice(0, 20));
    flow.send(OPTIONS.slice(20));
    const [text, inFlow] = (await got) as [string, Flow];
    assert.equal(text, OPTIONS);
    assert.equal(inFlow.transport, 'tls');
  });
});
