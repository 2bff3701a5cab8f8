import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, wsUrl } from '../support/gateway-harness.js';
import { startSipp, type SippPeer } from '../support/sipp.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';

const md5 = (s: string) => createHash('md5').update(s).digest('hex');

/**
 * Real trunks (issue 5): a trunk's 407 answered with its credentials, checked by SIPp itself;
 * routing rules choosing between two SIPp trunks, with the rewritten number checked by SIPp.
 */
describe('trunks: proxy authentication and outbound routing rules', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  const sipps: SippPeer[] = [];
  let phone: Softphone | undefined;

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await Promise.all(sipps.map((s) => s.stop()));
      await gw?.close();
      sipps.length = 0;
      phone = gw = undefined;
    }
  });

  async function sipp(scenario: string, keys: Record<string, string>, calls = 1): Promise<SippPeer> {
    const peer = await startSipp({ scenario, transport: 'udp', rtpEcho: true, calls, traceMsg: true, keys: { pt: '0', codec: 'PCMU', ...keys } });
    sipps.push(peer);
    return peer;
  }

  for (const [password, outcome] of [
    ['trunk-secret', 'completes'],
    ['wrong-secret', 'is refused with 403 at the client and nothing leaks'],
  ] as const) {
    it(`answers a trunk's 407 with Proxy-Authorization: the call ${outcome}`, async () => {
      const nonce = `n${Date.now().toString(36)}`;
      // The trunk's domain goes in the Request-URI and SIPp is its outbound proxy, so the digest
      // SIPp expects (for the right password) does not depend on SIPp's port.
      const ha1 = md5('gwtrunk:proxy.sipp.test:trunk-secret');
      const expected = md5(`${ha1}:${nonce}:${md5('INVITE:sip:1000@trunk.sipp.test')}`);
      const uas = await sipp('uas-proxy-auth', { nonce, expected_response: expected });
      gw = await startGateway({
        trunkPort: uas.port,
        trunk: { host: 'trunk.sipp.test', port: undefined, addresses: ['127.0.0.1'], outboundProxy: { host: '127.0.0.1', port: uas.port }, username: 'gwtrunk', password },
      });
      phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      const call = phone.call('sip:1000@127.0.0.1');
      if (password === 'trunk-secret') {
        await call.established;
        const sending = call.startSendingPcmu({ count: 40, intervalMs: 20 });
        await call.waitForRtp(20, 10_000);
        await sending;
        await call.hangup();
        const done = await uas.done;
        assert.equal(done.code, 0, done.errors);
      } else {
        await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 403);
        await uas.done;
      }
      const invites = (await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'INVITE');
      assert.equal(invites.length, 2, 'one INVITE, one retry with credentials');
      assert.match(invites[0]!.text, /^INVITE sip:1000@trunk\.sipp\.test SIP\/2\.0/);
      assert.match(invites[1]!.text, /\r\nRoute: <sip:127\.0\.0\.1:\d+;lr>/i, 'sent through the outbound proxy with a loose Route');
      assert.match(invites[1]!.text, /\r\nProxy-Authorization: Digest username="gwtrunk", realm="proxy\.sipp\.test"/);
    });
  }

  it("answers a trunk's 401 to our BYE with its credentials, and the trunk accepts the retried BYE", async () => {
    const uas = await sipp('uas-auth-bye', {});
    gw = await startGateway({ trunkPort: uas.port, trunk: { username: 'gwtrunk', password: 'trunk-secret' } });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    await call.hangup();
    const done = await uas.done;
    assert.equal(done.code, 0, done.errors);
    const byes = (await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE');
    assert.equal(byes.length, 2, 'one BYE, one retry with credentials');
    assert.match(byes[1]!.text, /\r\nAuthorization: Digest username="gwtrunk", realm="sipp\.test"/);
    assert.ok(byes[1]!.cseq!.seq > byes[0]!.cseq!.seq, 'the retry has a higher CSeq');
  });

  it("answers a proxy's 407 and then the PBX's 401 to our BYE, keeping the first answer in the third BYE", async () => {
    const uas = await sipp('uas-auth-bye-chain', {});
    gw = await startGateway({ trunkPort: uas.port, trunk: { username: 'gwtrunk', password: 'trunk-secret' } });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    await call.hangup();
    const done = await uas.done;
    assert.equal(done.code, 0, done.errors);
    const byes = (await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE');
    assert.equal(byes.length, 3);
    assert.match(byes[2]!.text, /\r\nProxy-Authorization: Digest username="gwtrunk", realm="proxy\.sipp\.test"/);
    assert.match(byes[2]!.text, /\r\nAuthorization: Digest username="gwtrunk", realm="sipp\.test"/);
    const seqs = byes.map((m) => m.cseq!.seq);
    assert.ok(seqs[0]! < seqs[1]! && seqs[1]! < seqs[2]!, `each BYE a new CSeq: ${seqs.join(', ')}`);
  });

  it('routes by prefix and regex to two trunks, rewriting the number; no match is 404', async () => {
    const pstn = await sipp('uas-expect-ruri', { expect_user: '4930123456' });
    const pbx = await sipp('uas-expect-ruri', { expect_user: '2001' });
    gw = await startGateway({
      trunkPort: pstn.port,
      extra: {
        trunks: [
          { name: 'pstn', host: '127.0.0.1', port: pstn.port, transport: 'udp', optionsPingMs: 0 },
          { name: 'pbx', host: '127.0.0.1', port: pbx.port, transport: 'udp', optionsPingMs: 0 },
        ],
        routes: [
          { name: 'national', to: { prefix: '0' }, trunk: 'pstn', strip: 1, prepend: '49' },
          { name: 'extensions', to: { regex: '^2[0-9]{3}$' }, trunk: 'pbx' },
        ],
      },
    });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    for (const number of ['030123456', '2001']) {
      const call = phone.call(`sip:${number}@127.0.0.1`);
      await call.established;
      const info = gw.controller.calls()[0]!.info();
      assert.equal(info.legs.sip.trunk, number === '2001' ? 'pbx' : 'pstn');
      await call.hangup();
    }
    for (const peer of [pstn, pbx]) {
      const done = await peer.done;
      assert.equal(done.code, 0, `SIPp got the number it expected: ${done.errors}`);
    }
    const nowhere = phone.call('sip:999@127.0.0.1');
    await assert.rejects(nowhere.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 404);
  });
  it('refuses a dialled number with a line break (no header injection at the trunk) and escapes "#" in the Request-URI', async () => {
    const uas = await sipp('uas-expect-ruri', { expect_user: '*67%23123' });
    gw = await startGateway({ trunkPort: uas.port });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    // sip.js decodes the user to "0301234\r\nX-Injected: yes"; written back raw it would be a header line.
    const injected = phone.call('sip:0301234%0D%0AX-Injected:%20yes@127.0.0.1');
    await assert.rejects(injected.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 400);
    const long = phone.call(`sip:${'1'.repeat(129)}@127.0.0.1`);
    await assert.rejects(long.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 400);
    // A star code with '#': valid to dial, but '#' must be escaped in a SIP URI (RFC 3261 §25.1).
    const star = phone.call('sip:*67%23123@127.0.0.1');
    await star.established;
    await star.hangup();
    const done = await uas.done;
    assert.equal(done.code, 0, `SIPp got *67%23123: ${done.errors}`);
    const invites = (await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'INVITE');
    assert.equal(invites.length, 1, 'the refused calls sent nothing to the trunk');
    assert.doesNotMatch(invites[0]!.text, /X-Injected/i);
  });
  it('answers 484 when a route strips the whole number, rather than trying later routes', async () => {
    gw = await startGateway({
      trunkPort: 9, // never used: both calls end at the router
      extra: {
        trunks: [{ name: 'pstn', host: '127.0.0.1', port: 9, transport: 'udp', optionsPingMs: 0 }],
        routes: [
          { name: 'outside-line', to: { prefix: '9' }, trunk: 'pstn', strip: 1 },
          { name: 'anything', to: { regex: '^9$' }, trunk: 'pstn' },
        ],
      },
    });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:9@127.0.0.1');
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 484);
    assert.equal(gw.controller.calls().length, 0);
  });
});
