import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, startGateway, TEST_PASSWORD, waitFor, wsUrl, requireSipp } from '../support/gateway-harness.js';
import { Softphone } from '../support/softphone.js';
import { startSipp, type SippPeer } from '../support/sipp.js';

/** Loss, races, bad input and garbage collection: the invariant holds on every path. */
describe('robustness: loss, races, bad input, garbage collection', function () {
  this.timeout(120_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  const phones: Softphone[] = [];

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw, 20_000);
    } finally {
      await Promise.allSettled(phones.splice(0).map((p) => p.close()));
      await sipp?.stop();
      await gw?.close();
      sipp = gw = undefined;
    }
  });

  async function connect(g: Gateway): Promise<Softphone> {
    const p = await Softphone.connect({ server: wsUrl(g), user: `u${phones.length}`, domain: '127.0.0.1', password: TEST_PASSWORD });
    phones.push(p);
    return p;
  }

  it('completes 50 calls while SIPp drops 10% of SIP packets, with no duplicate call from retransmissions', async () => {
    const total = 50;
    const concurrency = 5;
    sipp = await startSipp({ scenario: 'uas-answer', calls: total, lost: 10, traceMsg: true, timeoutMs: 110_000 });
    gw = await startGateway({ trunkPort: sipp.port, t1: 100 });
    const g = gw;
    const phone = await connect(g);
    let next = 0;
    const outcomes: string[] = [];
    const worker = async () => {
      while (next < total) {
        next++;
        const call = phone.call('sip:1000@127.0.0.1', { establishTimeoutMs: 20_000 });
        try {
          await call.established;
          const r = await call.hangup();
          outcomes.push(r.method === 'BYE' && r.statusCode === 200 ? 'ok' : `hangup ${JSON.stringify(r)}`);
        } catch (err) {
          outcomes.push(`failed: ${(err as Error).message}`);
          await call.hangup().catch(() => undefined);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    assert.deepEqual(
      outcomes.filter((o) => o !== 'ok'),
      [],
    );
    assert.equal(g.stats().totalCalls, total, 'the gateway created exactly one call per softphone INVITE');
    const result = await sipp.done;
    assert.equal(result.code, 0, `SIPp: ${result.errors} ${result.stderr} ${JSON.stringify(result.stats)}`);
    assert.equal(result.stats?.successful, total);
    const invites = (await sipp.messages()).filter((m) => m.kind === 'received' && m.method === 'INVITE');
    const callIds = new Set(invites.map((m) => m.callId));
    assert.equal(callIds.size, total, 'one Call-ID per call; retransmitted INVITEs reuse theirs');
    assert.ok(g.stats().sipRetransmissions > 0, 'loss caused retransmissions');
  });

  it('ends the call (BYE to SIPp) when the softphone WebSocket closes mid-call', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: 1, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port });
    const phone = await connect(gw);
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    // Drop the WebSocket under SIP.js, as a closed tab would: no BYE can come from the client.
    await phone.userAgent.transport.disconnect();
    await assertClean(gw);
    const done = await sipp.done;
    assert.equal(done.code, 0, done.errors);
    const received = (await sipp.messages()).filter((m) => m.kind === 'received').map((m) => m.method);
    assert.ok(received.includes('BYE'), `SIPp saw ${received.join(',')}`);
  });

  it('answers malformed SIP with 400 and keeps serving calls', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', calls: 1 });
    gw = await startGateway({ trunkPort: sipp.port });
    const udp = gw.sipAddress('udp')!;
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    try {
      const replies: string[] = [];
      sock.on('message', (m) => replies.push(m.toString()));
      const port = sock.address().port;
      const bad = [
        `INVITE sip:1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:${port};branch=z9hG4bKbad1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: bad1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n`,
        `OPTIONS tel:+123 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:${port};branch=z9hG4bKbad2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: bad2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n`,
        'SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKnope\r\nCSeq: x\r\n\r\n',
        '\x00\x01garbage that is not SIP at all\r\n\r\n',
      ];
      for (const b of bad) sock.send(b, udp.port, udp.address);
      await waitFor(() => replies.filter((r) => r.startsWith('SIP/2.0 400')).length >= 1, '400 responses');
      assert.match(replies.find((r) => r.includes('Call-ID: bad1')) ?? '', /^SIP\/2\.0 400 /);
      const phone = await connect(gw);
      const call = phone.call('sip:1000@127.0.0.1');
      await call.established;
      await call.hangup();
    } finally {
      sock.close();
    }
  });

  it('survives BYE from both sides at once: one teardown, every resource released once', async () => {
    sipp = await startSipp({ scenario: 'uas-answer-then-bye', calls: 1, keys: { hold_ms: '300' } });
    gw = await startGateway({ trunkPort: sipp.port });
    const phone = await connect(gw);
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const g = gw;
    // Hang up from the client about when SIPp does: whichever arrives first wins, the other is a no-op.
    await new Promise((r) => setTimeout(r, 250));
    await call.hangup().catch(() => undefined);
    await assertClean(g);
    assert.equal(g.stats().sipDialogs, 0);
  });

  it('ends cleanly when SIPp hangs up while the gateway is still setting up WebRTC', async () => {
    sipp = await startSipp({ scenario: 'uas-answer-then-bye', calls: 5, keys: { hold_ms: '0' } });
    gw = await startGateway({ trunkPort: sipp.port });
    const phone = await connect(gw);
    for (let i = 0; i < 5; i++) {
      const call = phone.call('sip:1000@127.0.0.1');
      // Established or not, depending on who wins the race; either way the call must end cleanly.
      await call.established.catch(() => undefined);
      await call.waitTerminated(15_000);
    }
    await assertClean(gw);
    assert.equal(gw.stats().totalCalls, 5);
  });

  it('lets ended calls be garbage-collected (no reference cycle keeps them)', async function () {
    if (typeof globalThis.gc !== 'function') this.skip();
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: 3 });
    gw = await startGateway({ trunkPort: sipp.port });
    const g = gw;
    const phone = await connect(g);
    const collected = new Set<string>();
    const registry = new FinalizationRegistry<string>((id) => collected.add(id));
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      // Inner scope so the test itself holds no reference to the Call.
      const id = await (async () => {
        const call = phone.call('sip:1000@127.0.0.1');
        await call.established;
        const gwCall = g.controller.calls()[0]!;
        registry.register(gwCall, gwCall.id);
        const callId = gwCall.id;
        await call.hangup();
        return callId;
      })();
      ids.push(id);
    }
    await assertClean(g);
    for (let i = 0; i < 50 && collected.size < ids.length; i++) {
      globalThis.gc!();
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual([...collected].sort(), [...ids].sort(), 'every ended Call was collected');
  });
});
