import assert from 'node:assert/strict';
import { mock } from 'node:test';
import { parseSipMessage, type ParsedRequest, type ParsedResponse } from '../../sip/message.js';
import { ClientTransaction, ServerTransaction, serverKey } from '../../sip/transactions.js';
import type { Flow } from '../../sip/transport/flow.js';

const timers = { t1: 500, t2: 4000, t4: 5000 };

/** Advances mock time in small steps: Node's mock tick() does not fire timers created during one big tick. */
function advance(ms: number, step = 250): void {
  for (let left = ms; left > 0; left -= step) mock.timers.tick(Math.min(step, left));
}

function fakeFlow(reliable = false): Flow & { sent: string[] } {
  const sent: string[] = [];
  return {
    id: 'fake',
    transport: reliable ? 'tcp' : 'udp',
    reliable,
    local: { address: '127.0.0.1', port: 5060 },
    remote: { address: '127.0.0.1', port: 5090 },
    send: (d: string) => void sent.push(d),
    sent,
  };
}

function req(method: string, opts: { branch?: string; sentBy?: string; toTag?: string } = {}): ParsedRequest {
  const text = [
    `${method} sip:1000@127.0.0.1 SIP/2.0`,
    `Via: SIP/2.0/UDP ${opts.sentBy ?? '127.0.0.1:5090'};branch=${opts.branch ?? 'z9hG4bK-1'}`,
    'From: <sip:a@127.0.0.1>;tag=f1',
    `To: <sip:1000@127.0.0.1>${opts.toTag ? `;tag=${opts.toTag}` : ''}`,
    'Call-ID: call-1',
    `CSeq: 1 ${method}`,
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n');
  const p = parseSipMessage(text);
  assert.equal(p.kind, 'request');
  return p as ParsedRequest;
}

function res(status: number, method = 'INVITE'): ParsedResponse {
  const text = [`SIP/2.0 ${status} X`, 'Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-c', 'From: <sip:a@x>;tag=f', 'To: <sip:b@x>;tag=t', 'Call-ID: c', `CSeq: 1 ${method}`, 'Content-Length: 0', '', ''].join('\r\n');
  const p = parseSipMessage(text);
  assert.equal(p.kind, 'response');
  return p as ParsedResponse;
}

describe('RFC 3261 transactions over UDP', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
  afterEach(() => mock.timers.reset());

  it('retransmits an INVITE on Timer A (T1, 2T1, 4T1...) until a provisional response', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    tx.start();
    assert.equal(flow.sent.length, 1);
    advance(500);
    assert.equal(flow.sent.length, 2);
    advance(999);
    assert.equal(flow.sent.length, 2);
    advance(1);
    assert.equal(flow.sent.length, 3);
    tx.receive(res(180));
    advance(10_000);
    assert.equal(flow.sent.length, 3, 'no retransmission in Proceeding');
    tx.terminate();
  });

  it('times out an unanswered INVITE on Timer B (64*T1)', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    let timedOut = 0;
    tx.on('timeout', () => timedOut++);
    tx.start();
    advance(64 * 500 - 1);
    assert.equal(timedOut, 0);
    advance(1);
    assert.equal(timedOut, 1);
    assert.equal(tx.state, 'terminated');
    assert.equal(flow.sent.length, 7, 'INVITE sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s');
  });

  it('stops Timer B at the first provisional response: an INVITE may ring longer than 64*T1 (RFC 3261 §17.1.1.2)', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    let timedOut = 0;
    const seen: number[] = [];
    tx.on('timeout', () => timedOut++);
    tx.on('response', (r) => seen.push(r.status));
    tx.start();
    tx.receive(res(180));
    advance(5 * 64 * 500);
    assert.equal(timedOut, 0);
    assert.equal(tx.state, 'proceeding');
    tx.receive(res(200));
    assert.deepEqual(seen, [180, 200]);
    assert.equal(tx.state, 'accepted');
    tx.terminate();
  });

  it('gives up a cancelled INVITE 64*T1 after the CANCEL when no final response comes (RFC 3261 §9.1)', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    let terminated = 0;
    tx.on('terminated', () => terminated++);
    tx.start();
    tx.receive(res(180));
    advance(10_000);
    tx.cancelled();
    advance(64 * 500 - 1);
    assert.equal(tx.state, 'proceeding');
    advance(1);
    assert.equal(tx.state, 'terminated');
    assert.equal(terminated, 1);
  });

  it('keeps a cancelled INVITE that got its final response on its normal course (Timer D)', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    tx.start();
    tx.receive(res(180));
    tx.cancelled();
    tx.receive(res(487));
    assert.equal(tx.state, 'completed');
    advance(64 * 500);
    assert.equal(tx.state, 'terminated', 'Timer D (32 s) ended it, not the cancel bound');
    assert.deepEqual(flow.sent, ['INVITE...', 'ACK']);
  });

  it('stops retransmitting an abandoned INVITE but still passes its late responses on, until Timer B', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    const seen: number[] = [];
    tx.on('response', (r) => seen.push(r.status));
    tx.start();
    advance(600);
    assert.equal(flow.sent.length, 2);
    tx.abandon();
    advance(10_000);
    assert.equal(flow.sent.length, 2, 'no retransmission after abandon()');
    tx.receive(res(180));
    assert.deepEqual(seen, [180]);
    assert.equal(tx.state, 'proceeding');
    tx.terminate();

    const silent = new ClientTransaction('k2', fakeFlow(), timers, 'INVITE', 'INVITE...', () => 'ACK');
    silent.start();
    silent.abandon();
    advance(64 * 500);
    assert.equal(silent.state, 'terminated', 'Timer B still ends a silent one');
  });

  it('ACKs a non-2xx final response and each of its retransmissions, then ends after Timer D', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    const seen: number[] = [];
    tx.on('response', (r) => seen.push(r.status));
    tx.start();
    tx.receive(res(486));
    tx.receive(res(486));
    assert.deepEqual(seen, [486], 'the retransmitted final response is absorbed');
    assert.deepEqual(flow.sent.slice(1), ['ACK', 'ACK']);
    advance(32_000);
    assert.equal(tx.state, 'terminated');
  });

  it('passes retransmitted 2xx responses to the TU in Accepted (RFC 6026) so it can re-send its ACK', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    const seen: number[] = [];
    tx.on('response', (r) => seen.push(r.status));
    tx.start();
    tx.receive(res(200));
    tx.receive(res(200));
    assert.deepEqual(seen, [200, 200]);
    advance(64 * 500);
    assert.equal(tx.state, 'terminated', 'Timer M');
  });

  it('retransmits a non-INVITE request on Timer E, capped at T2, and times out on Timer F', () => {
    const flow = fakeFlow();
    const tx = new ClientTransaction('k', flow, timers, 'BYE', 'BYE...', undefined);
    let timedOut = false;
    tx.on('timeout', () => (timedOut = true));
    tx.start();
    // 0, 0.5, 1.5, 3.5, 7.5, then every 4 s: 11.5 ... 31.5
    advance(31_999);
    assert.equal(flow.sent.length, 11);
    assert.equal(timedOut, false);
    advance(1);
    assert.equal(timedOut, true);
  });

  it('does not retransmit over a reliable transport', () => {
    const flow = fakeFlow(true);
    const tx = new ClientTransaction('k', flow, timers, 'INVITE', 'INVITE...', () => 'ACK');
    tx.start();
    advance(20_000);
    assert.equal(flow.sent.length, 1);
    tx.terminate();
  });

  it('answers a retransmitted BYE with the cached 200 while Timer J runs', () => {
    const flow = fakeFlow();
    const bye = req('BYE', { toTag: 't' });
    const tx = new ServerTransaction(serverKey(bye), flow, timers, bye);
    tx.respond(200, 'SIP/2.0 200 OK');
    tx.receive(bye);
    assert.deepEqual(flow.sent, ['SIP/2.0 200 OK', 'SIP/2.0 200 OK']);
    advance(64 * 500);
    assert.equal(tx.state, 'terminated');
  });

  it('retransmits a 2xx to INVITE until the ACK arrives, and reports a missing ACK', () => {
    const flow = fakeFlow();
    const inv = req('INVITE');
    const tx = new ServerTransaction(serverKey(inv), flow, timers, inv);
    let noAck = 0;
    tx.on('ackTimeout', () => noAck++);
    tx.respond(200, '200');
    advance(500 + 1000 + 2000 + 4000);
    assert.equal(flow.sent.length, 5);
    advance(64 * 500);
    assert.equal(noAck, 1);
    assert.equal(tx.state, 'terminated');

    const flow2 = fakeFlow();
    const tx2 = new ServerTransaction(serverKey(inv), flow2, timers, inv);
    tx2.respond(200, '200');
    tx2.ackReceived();
    advance(64 * 500);
    assert.equal(flow2.sent.length, 1);
    assert.equal(tx2.state, 'terminated');
  });

  it('retransmits a final error to INVITE on Timer G until the ACK, then absorbs ACKs for Timer I', () => {
    const flow = fakeFlow();
    const inv = req('INVITE');
    const tx = new ServerTransaction(serverKey(inv), flow, timers, inv);
    tx.respond(486, '486');
    advance(500);
    assert.equal(flow.sent.length, 2);
    tx.receive(req('ACK'));
    assert.equal(tx.state, 'confirmed');
    advance(5000);
    assert.equal(tx.state, 'terminated');
    assert.equal(flow.sent.length, 2);
  });
});

describe('RFC 3261 §17.2.3 server transaction matching', () => {
  it('keys by branch, sent-by and method, with ACK matching its INVITE', () => {
    const a = serverKey(req('INVITE', { branch: 'z9hG4bK-same', sentBy: '127.0.0.1:5090' }));
    assert.equal(serverKey(req('ACK', { branch: 'z9hG4bK-same', sentBy: '127.0.0.1:5090' })), a);
    assert.notEqual(serverKey(req('INVITE', { branch: 'z9hG4bK-same', sentBy: '127.0.0.2:5090' })), a, 'another sender reusing the branch');
    assert.notEqual(serverKey(req('BYE', { branch: 'z9hG4bK-same', sentBy: '127.0.0.1:5090', toTag: 'x' })), a);
    assert.notEqual(serverKey(req('CANCEL', { branch: 'z9hG4bK-same', sentBy: '127.0.0.1:5090' })), a);
  });
});
