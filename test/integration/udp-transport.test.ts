import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { UdpTransport } from '../../sip/transport/udp.js';
import type { Flow } from '../../sip/transport/flow.js';
import { ClientTransaction } from '../../sip/transactions.js';
import { waitFor } from '../support/gateway-harness.js';

const OPTIONS = 'OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n';

/** Whether this machine can bind IPv6 at all (containers without it skip the dual-stack test). */
async function hasIPv6(): Promise<boolean> {
  const s = dgram.createSocket('udp6');
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(0, '::1', resolve);
    });
    return true;
  } catch {
    return false;
  } finally {
    s.close();
  }
}

/** A plain IPv4 UDP peer on 127.0.0.1 that records what it gets. */
async function udp4Peer() {
  const socket = dgram.createSocket('udp4');
  const got: string[] = [];
  socket.on('message', (m) => got.push(m.toString()));
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  return { socket, got, port: socket.address().port };
}

/**
 * SIP over UDP on its own, with real sockets: IPv4 peers on a dual-stack listener, and send
 * failures reaching whoever sent.
 */
describe('UDP transport', function () {
  this.timeout(20_000);
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function transport(host: string): Promise<UdpTransport> {
    const t = await UdpTransport.listen(host, 0);
    cleanups.push(() => t.close());
    return t;
  }

  async function peer() {
    const p = await udp4Peer();
    cleanups.push(() => void p.socket.close());
    return p;
  }

  it("on a '::' listener, an IPv4 peer reads as 127.0.0.1 and can be sent to, both back on its flow and by flowTo", async function () {
    if (!(await hasIPv6())) this.skip();
    const t = await transport('::');
    const errors: Error[] = [];
    t.on('error', (e) => errors.push(e));
    const p = await peer();
    const arrived = once(t, 'message');
    p.socket.send(OPTIONS, t.local.port, '127.0.0.1');
    const [, flow] = (await arrived) as [string, Flow];
    assert.deepEqual(flow.remote, { address: '127.0.0.1', port: p.port });
    assert.equal(flow.id, `udp:127.0.0.1:${p.port}`);
    assert.deepEqual(t.flowById(flow.id)?.remote, flow.remote);
    flow.send('SIP/2.0 200 OK\r\n\r\n');
    (await t.flowTo({ address: '127.0.0.1', port: p.port })).send('OPTIONS again\r\n\r\n');
    await waitFor(() => p.got.length === 2, 'both datagrams at the IPv4 peer');
    assert.deepEqual(p.got, ['SIP/2.0 200 OK\r\n\r\n', 'OPTIONS again\r\n\r\n']);
    assert.deepEqual(errors, []);
  });

  it('refuses IPv4 destinations on a socket bound to one IPv6 address, and IPv6 ones on an IPv4 socket', async function () {
    if (!(await hasIPv6())) this.skip();
    const v6 = await transport('::1');
    await assert.rejects(v6.flowTo({ address: '127.0.0.1', port: 5060 }), /cannot reach/);
    const v4 = await transport('127.0.0.1');
    await assert.rejects(v4.flowTo({ address: '::1', port: 5060 }), /cannot reach/);
  });

  it('reports a failed send on error with the flow id, and throws it from the next send to that destination', async () => {
    const t = await transport('127.0.0.1');
    const p = await peer();
    const flow = await t.flowTo({ address: '127.0.0.1', port: p.port });
    const failed = once(t, 'error');
    // Over the 65,507-byte IPv4 datagram limit: the kernel answers EMSGSIZE after send() returned.
    flow.send('x'.repeat(66_000));
    const [err] = (await failed) as [Error & { code?: string; flowId?: string; cause?: { code?: string } }];
    assert.equal(err.code, 'GW_SIP_SEND_FAILED');
    assert.equal(err.flowId, flow.id);
    assert.equal(err.cause?.code, 'EMSGSIZE');
    assert.throws(() => flow.send(OPTIONS), (e) => e === err);
    flow.send(OPTIONS);
    await waitFor(() => p.got.length === 1, 'the send after the failure');
    assert.equal(p.got[0], OPTIONS);
  });

  it('a client transaction whose request cannot be sent ends with transportError at its first retransmission, not Timer F', async () => {
    const t = await transport('127.0.0.1');
    t.on('error', () => undefined);
    const p = await peer();
    const flow = await t.flowTo({ address: '127.0.0.1', port: p.port });
    const txn = new ClientTransaction('k', flow, { t1: 50, t2: 400, t4: 500 }, 'OPTIONS', `${OPTIONS}${'x'.repeat(66_000)}`, undefined);
    cleanups.push(() => txn.terminate());
    const outcome = new Promise<string>((resolve) => {
      txn.on('transportError', (e) => resolve(`transportError ${(e as Error & { code?: string }).code}`));
      txn.on('timeout', () => resolve('timeout'));
    });
    txn.start();
    assert.equal(await outcome, 'transportError GW_SIP_SEND_FAILED');
    assert.equal(txn.state, 'terminated');
  });
});
