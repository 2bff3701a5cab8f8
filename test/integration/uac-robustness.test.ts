import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type dgram from 'node:dgram';
import { once } from 'node:events';
import type { LegEnd, OutboundCall, OutboundCallOptions } from '../../sip/backend.js';
import type { Gateway } from '../../src/gateway.js';
import { TestDnsServer } from '../support/dns-server.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, waitFor, wsUrl } from '../support/gateway-harness.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { formatSippResult, startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';
import { Softphone } from '../support/softphone.js';

const md5 = (s: string) => createHash('md5').update(s).digest('hex');
/** The RFC 2069 digest (no qop) SIPp's scenarios expect for our INVITE to sip:1000@trunk.sipp.test. */
const inviteDigest = (realm: string, nonce: string, password = 'trunk-secret') =>
  md5(`${md5(`gwtrunk:${realm}:${password}`)}:${nonce}:${md5('INVITE:sip:1000@trunk.sipp.test')}`);

/** A plain RTP offer for calls placed on the SIP layer directly (no media flows in these tests). */
const OFFER = ['v=0', 'o=- 1 1 IN IP4 127.0.0.1', 's=-', 'c=IN IP4 127.0.0.1', 't=0 0', 'm=audio 40000 RTP/AVP 0', 'a=rtpmap:0 PCMU/8000', ''].join('\r\n');

/**
 * The outbound (UAC) leg against SIP peers that ring long, never answer, ignore our CANCEL, challenge
 * more than once or answer late: every call ends once, nothing is left ringing at the peer, and the
 * gateway holds no call, port or transaction afterwards.
 */
describe('UAC robustness: ringing, cancelling, challenges and late answers', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let phone: Softphone | undefined;
  let sipps: SippPeer[] = [];
  let legs: OutboundCall[] = [];
  let sockets: dgram.Socket[] = [];

  before(requireSipp);

  afterEach(async function () {
    try {
      for (const leg of legs) leg.terminate();
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await Promise.all(sipps.map((s) => s.stop()));
      await Promise.all(sockets.map((s) => closeUdp(s)));
      await gw?.close();
      phone = gw = undefined;
      sipps = [];
      legs = [];
      sockets = [];
    }
  });

  async function sipp(opts: SippOptions): Promise<SippPeer> {
    const peer = await startSipp({ transport: 'udp', calls: 1, traceMsg: true, ...opts });
    sipps.push(peer);
    return peer;
  }

  /** A UDP socket on 127.0.0.1 keeping every datagram it gets, never answering. */
  async function listener(): Promise<{ port: number; received: string[] }> {
    const socket = await bindUdp(0);
    sockets.push(socket);
    const received: string[] = [];
    socket.on('message', (m) => received.push(m.toString('utf8')));
    return { port: socket.address().port, received };
  }

  /** An INVITE from the gateway's SIP layer straight to `peer`, bypassing the call controller. */
  function placeCall(g: Gateway, peer: { port: number }, extra: Partial<OutboundCallOptions> = {}): { leg: OutboundCall; ended: Promise<LegEnd> } {
    const leg = g.sip.createCall({
      target: { trunk: { target: { host: '127.0.0.1', port: peer.port, transport: 'udp' } } },
      toUser: '1000',
      fromUser: 'alice',
      offer: OFFER,
      ...extra,
    });
    legs.push(leg);
    const ended = once(leg, 'ended').then(([end]) => end as LegEnd);
    return { leg, ended };
  }

  const received = async (peer: SippPeer, method: string) =>
    (await peer.messages()).filter((m) => m.kind === 'received' && m.method === method);

  /** Polls SIPp's message log (written as messages come) until it received `count` requests of `method`. */
  async function untilReceived(peer: SippPeer, method: string, count: number): Promise<void> {
    const deadline = Date.now() + 10_000;
    while ((await received(peer, method)).length < count) {
      if (Date.now() > deadline) throw new Error(`SIPp did not receive ${count} ${method} in time`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  describe('Timer B and ringing', () => {
    it('answers a call that rings longer than 64*T1: Timer B stops at the 180', async () => {
      // T1 50 ms: Timer B is 3.2 s; the trunk answers 4 s after its 180.
      const uas = await sipp({ scenario: 'uas-ring-then-answer', keys: { ring_ms: '4000' } });
      gw = await startGateway({ trunkPort: uas.port, t1: 50 });
      phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      const call = phone.call('sip:1000@127.0.0.1');
      await call.established;
      assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
      const done = await uas.done;
      assert.equal(done.code, 0, formatSippResult(done));
    });

    it('cancels a call still ringing at ringTimeoutMs and ends the leg with 408', async () => {
      const uas = await sipp({ scenario: 'uas-ring-no-answer' });
      gw = await startGateway({ trunkPort: uas.port, t1: 50 });
      const { ended } = placeCall(gw, uas, { ringTimeoutMs: 1500 });
      const end = await ended;
      assert.deepEqual(end, { cause: 'timeout', status: 408, reason: 'no answer (ring timeout)' });
      const done = await uas.done;
      assert.equal(done.code, 0, `the trunk got CANCEL and our ACK for its 487: ${formatSippResult(done)}`);
      const [cancel] = await received(uas, 'CANCEL');
      assert.ok(cancel, 'CANCEL sent');
      assert.match(cancel.text, /\r\nReason: SIP;cause=408;text="ring timeout"/);
    });

    it('forgets a cancelled INVITE transaction 64*T1 after the CANCEL when the peer never sends a final response', async () => {
      const uas = await sipp({ scenario: 'uas-ring-ignore-cancel' });
      gw = await startGateway({ trunkPort: uas.port, t1: 50 });
      const g = gw;
      const { leg, ended } = placeCall(g, uas);
      await new Promise<void>((resolve) => leg.on('progress', (status) => status === 180 && resolve()));
      leg.terminate();
      assert.equal((await ended).cause, 'local');
      const done = await uas.done;
      assert.equal(done.code, 0, formatSippResult(done));
      // The CANCEL's own transaction lingers T4 (500 ms), the INVITE's 64*T1 (3.2 s) after the CANCEL.
      await waitFor(() => g.sip.stats().transactions === 0, 'no client transaction left', 8000);
    });
  });

  describe('challenges', () => {
    /** A gateway whose trunk is trunk.sipp.test reached through SIPp as outbound proxy, so the digest SIPp expects does not depend on its port. */
    async function gatewayBehindProxy(uas: SippPeer, password = 'trunk-secret'): Promise<Gateway> {
      gw = await startGateway({
        trunkPort: uas.port,
        trunk: { host: 'trunk.sipp.test', port: undefined, addresses: ['127.0.0.1'], outboundProxy: { host: '127.0.0.1', port: uas.port }, username: 'gwtrunk', password },
      });
      phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      return gw;
    }

    it('retries once with the new nonce when a challenge to our credentials says stale=true', async () => {
      const keys = { nonce1: `a${Date.now().toString(36)}`, nonce2: `b${Date.now().toString(36)}` };
      const uas = await sipp({
        scenario: 'uas-auth-stale',
        keys: { ...keys, expected1: inviteDigest('sipp.test', keys.nonce1), expected2: inviteDigest('sipp.test', keys.nonce2), pt: '0', codec: 'PCMU' },
      });
      await gatewayBehindProxy(uas);
      const call = phone!.call('sip:1000@127.0.0.1');
      await call.established;
      await call.hangup();
      const done = await uas.done;
      assert.equal(done.code, 0, formatSippResult(done));
      const invites = await received(uas, 'INVITE');
      assert.equal(invites.length, 3);
      assert.equal(invites[2]!.text.match(/\r\nAuthorization: /g)?.length, 1, 'only the answer to the new nonce');
      assert.match(invites[2]!.text, new RegExp(`\\r\\nAuthorization: Digest [^\\r]*nonce="${keys.nonce2}"`));
    });

    it("answers a proxy's 407 and then the PBX's 401: the third INVITE and its ACK carry both credentials", async () => {
      const keys = { proxy_nonce: `p${Date.now().toString(36)}`, pbx_nonce: `w${Date.now().toString(36)}` };
      const uas = await sipp({
        scenario: 'uas-auth-chain',
        keys: { ...keys, expected_proxy: inviteDigest('proxy.sipp.test', keys.proxy_nonce), expected_pbx: inviteDigest('pbx.sipp.test', keys.pbx_nonce), pt: '0', codec: 'PCMU' },
      });
      await gatewayBehindProxy(uas);
      const call = phone!.call('sip:1000@127.0.0.1');
      await call.established;
      assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
      const done = await uas.done;
      assert.equal(done.code, 0, formatSippResult(done));
      const invites = await received(uas, 'INVITE');
      assert.equal(invites.length, 3);
      assert.match(invites[2]!.text, /\r\nProxy-Authorization: Digest username="gwtrunk", realm="proxy\.sipp\.test"/);
      assert.match(invites[2]!.text, /\r\nAuthorization: Digest username="gwtrunk", realm="pbx\.sipp\.test"/);
      const seqs = invites.map((m) => m.cseq!.seq);
      assert.ok(seqs[0]! < seqs[1]! && seqs[1]! < seqs[2]!, `each retry has a higher CSeq: ${seqs.join(', ')}`);
    });

    it('holds the CANCEL for a re-sent INVITE until a provisional response to it, even after 100 Trying to the challenged one', async () => {
      const uas = await sipp({ scenario: 'uas-auth-then-ring', transport: 'tcp', keys: { ring_delay_ms: '1000' } });
      gw = await startGateway({ trunkPort: uas.port, trunkTransport: 'tcp' });
      const { leg, ended } = placeCall(gw, uas, {
        target: { trunk: { target: { host: '127.0.0.1', port: uas.port, transport: 'tcp' } } },
        credentials: { username: 'gwtrunk', password: 'trunk-secret' },
      });
      // Hang up while the INVITE with credentials has no response yet (the trunk is silent for 1 s).
      await untilReceived(uas, 'INVITE', 2);
      leg.terminate();
      assert.equal((await ended).cause, 'local');
      const done = await uas.done;
      assert.equal(done.code, 0, `CANCEL came only after the 180: ${formatSippResult(done)}`);
      const invites = await received(uas, 'INVITE');
      const [cancel] = await received(uas, 'CANCEL');
      assert.match(invites[1]!.text, /\r\nProxy-Authorization: Digest /);
      assert.equal(cancel?.cseq?.seq, invites[1]!.cseq?.seq, 'the CANCEL is for the INVITE with credentials');
    });
  });

  describe('failover after silence', () => {
    let dns: TestDnsServer;
    before(async () => {
      dns = await TestDnsServer.start();
    });
    after(() => dns?.close());
    afterEach(() => dns.reset());

    /**
     * pbx.test by SRV: priority 10 → a (silent, then late), priority 20 → b (answers at once). T1 is 1 s,
     * above the 500 ms failover time, so that a gets one INVITE and no retransmission during its silence.
     */
    async function failoverGateway(a: SippPeer, b: SippPeer): Promise<{ gw: Gateway; phone: Softphone }> {
      dns.srv('_sip._udp.pbx.test', [
        { priority: 10, weight: 0, port: a.port, target: 'a.pbx.test' },
        { priority: 20, weight: 0, port: b.port, target: 'b.pbx.test' },
      ]);
      dns.a('a.pbx.test', ['127.0.0.1']).a('b.pbx.test', ['127.0.0.1']);
      gw = await startGateway({
        trunkPort: 9, // replaced: the trunk has no port, so SRV decides
        t1: 1000,
        trunk: { host: 'pbx.test', port: undefined, transport: 'udp', failoverTimeoutMs: 500 },
        extra: { sip: { dns: { servers: [dns.server] } } },
      });
      phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      return { gw, phone };
    }

    for (const [scenario, outcome] of [
      ['uas-late-ring', 'CANCELs its late 180'],
      ['uas-late-answer', 'ACKs its late 200 and ends that dialog with BYE'],
    ] as const) {
      it(`keeps the silent destination's INVITE after failing over, and ${outcome}`, async () => {
        const a = await sipp({ scenario, keys: { delay_ms: '1500' }, timeoutMs: 15_000 });
        const b = await sipp({ scenario: 'uas-answer' });
        const { gw, phone } = await failoverGateway(a, b);
        const call = phone.call('sip:1000@127.0.0.1');
        await call.established;
        assert.equal(gw.controller.calls()[0]!.info().legs.sip.target, `udp:127.0.0.1:${b.port}`, 'answered by the second destination');
        const doneA = await a.done;
        assert.equal(doneA.code, 0, `the first destination was released: ${formatSippResult(doneA)}`);
        assert.equal((await received(a, 'INVITE')).length, 1, 'no retransmission to the abandoned destination');
        if (scenario === 'uas-late-ring') assert.equal((await received(a, 'CANCEL')).length, 1);
        else assert.equal((await received(a, 'BYE')).length, 1);
        assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
        const doneB = await b.done;
        assert.equal(doneB.code, 0, formatSippResult(doneB));
      });
    }
  });

  describe('forks', () => {
    it("ends a losing fork's dialog once: its retransmitted 2xx is only ACKed again, with no second BYE", async () => {
      const uas = await sipp({ scenario: 'uas-fork-answer' });
      gw = await startGateway({ trunkPort: uas.port });
      phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      const call = phone.call('sip:1000@127.0.0.1');
      await call.established;
      // ACK to the first 200, ACK to the second, ACK to the second's retransmission.
      await untilReceived(uas, 'ACK', 3);
      assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
      const done = await uas.done;
      assert.equal(done.code, 0, formatSippResult(done));
      const byes = await received(uas, 'BYE');
      const toTag = (text: string) => /\r\nTo:[^\r]*;tag=([^;\r]+)/i.exec(text)?.[1];
      assert.deepEqual(byes.map((b) => toTag(b.text)?.replace(/^.*SIPpTag/, '')), ['021', '011'], 'one BYE to the losing fork, then the hangup of the kept one');
    });
  });

  describe('bad input', () => {
    const cases: Array<[string, Partial<OutboundCallOptions>]> = [
      ['a From domain', { fromDomain: 'example.com>\r\nX-Injected: yes\r\nX-Tail: <sip:x' }],
      ['an extra header', { headers: ['X-Account: 42\r\nX-Injected: yes'] }],
      ['a NUL in an extra header', { headers: ['X-Account: 4\u00002'] }],
    ];
    for (const [what, extra] of cases) {
      it(`ends the leg with 400 and sends nothing when ${what} would break a line of the INVITE`, async () => {
        const peer = await listener();
        gw = await startGateway({ trunkPort: peer.port });
        const { ended } = placeCall(gw, peer, extra);
        const end = await ended;
        assert.equal(end.cause, 'local');
        assert.equal(end.status, 400);
        assert.match(end.reason ?? '', /^invalid request: .*CR, LF or NUL/);
        assert.equal(gw.sip.stats().transactions, 0, 'no INVITE transaction was started');
        // Nothing went out, not even a part of the INVITE (a sent one would have had a transaction above).
        await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(peer.received, []);
      });
    }
  });
});
