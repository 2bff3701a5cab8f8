import assert from 'node:assert/strict';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, waitFor, wsUrl } from '../support/gateway-harness.js';
import { requireKamailio, startKamailio, type KamailioProxy } from '../support/kamailio.js';
import { formatSippResult, startSipp, type SippMessage, type SippPeer } from '../support/sipp.js';
import { CallRejectedError, Softphone } from '../support/softphone.js';

/**
 * Interop with a real proxy and registrar: Kamailio 5.6 (test/kamailio/kamailio.cfg), as a PBX or
 * carrier would sit in front of the gateway. Its digest (401 on REGISTER, 407 on INVITE), usrloc,
 * Record-Route and loose routing check ours; SIPp is the far end behind it, a SIP.js softphone the
 * browser. Mirrors README "Connecting a PBX or a carrier".
 */

const ACCOUNT = 'webrtc-gw';
const SECRET = 'kam-trunk-secret';

const headers = (m: SippMessage, name: string): string[] =>
  [...m.text.matchAll(new RegExp(`^${name}[ \\t]*:[ \\t]*(.*)$`, 'gim'))].map((x) => x[1]!.trim());
const received = (msgs: SippMessage[], method: string): SippMessage[] => msgs.filter((m) => m.kind === 'received' && m.method === method);
const requestUri = (m: SippMessage): string => /^[A-Z]+ (\S+) SIP\/2\.0/.exec(m.text)?.[1] ?? '';

describe('interop with Kamailio as registrar and proxy', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let kam: KamailioProxy | undefined;
  const sipps: SippPeer[] = [];
  let phone: Softphone | undefined;

  before(requireSipp);
  before(requireKamailio);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      if (this.currentTest?.state === 'failed' && kam) process.stderr.write(`--- kamailio log (last 60 lines)\n${kam.log().split('\n').slice(-60).join('\n')}\n`);
      await phone?.close();
      await Promise.all(sipps.splice(0).map((s) => s.stop()));
      await gw?.close();
      await kam?.stop();
      gw = kam = phone = undefined;
    }
  });

  async function sipp(...args: Parameters<typeof startSipp>): Promise<SippPeer> {
    const peer = await startSipp(...args);
    sipps.push(peer);
    return peer;
  }

  async function alice(g: Gateway): Promise<Softphone> {
    phone = await Softphone.connect({ server: wsUrl(g), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    await phone.register({ expires: 300 });
    return phone;
  }

  /** Kamailio's own Via (top) on a request it relayed: the message did pass through it. */
  function assertRelayedByKamailio(m: SippMessage, what: string): void {
    const via = headers(m, 'Via')[0] ?? '';
    assert.match(via, new RegExp(`^SIP/2\\.0/UDP 127\\.0\\.0\\.1:${kam!.port};branch=`), `${what} came through Kamailio:\n${m.text}`);
  }

  /** A gateway registered with Kamailio over `transport` as README's example does (DID webrtc-gw -> alice). */
  async function registeredGateway(transport: 'udp' | 'tcp'): Promise<Gateway> {
    kam = await startKamailio({ user: ACCOUNT, password: SECRET });
    const g = (gw = await startGateway({
      trunkPort: kam.port,
      trunkTransport: transport,
      dids: { [ACCOUNT]: 'alice' },
      trunk: { name: 'kamailio', username: ACCOUNT, password: SECRET, register: true, registerExpires: 60 },
    }));
    await waitFor(() => g.trunkStatus()[0]!.registration?.state === 'registered', 'the registration with Kamailio');
    return g;
  }

  for (const transport of ['udp', 'tcp'] as const) {
    it(`registers over ${transport.toUpperCase()} answering Kamailio's 401; shutdown un-REGISTERs and Kamailio then answers 404 for the account`, async () => {
      const g = await registeredGateway(transport);
      const res = await fetch(`http://127.0.0.1:${g.adminAddress.port}/api/trunks`);
      const t = ((await res.json()) as { trunks: any[] }).trunks[0];
      assert.equal(t.name, 'kamailio');
      assert.equal(t.registration.state, 'registered');
      assert.equal(t.registration.failures, 0);
      assert.equal(t.registration.destination, `${transport}:127.0.0.1:${kam!.port}`);
      assert.equal(Date.parse(t.registration.expiresAt) - Date.parse(t.registration.lastRegisteredAt), 60_000, 'Kamailio granted the 60 s asked for');
      // Challenged first, then saved with our Contact on the transport we registered over.
      await kam!.waitForLog(/REGISTER sip:webrtc-gw@127\.0\.0\.1 challenged/);
      const saved = await kam!.waitForLog(/REGISTER sip:webrtc-gw@127\.0\.0\.1 saved/);
      const gwPort = g.sipAddress(transport)!.port;
      assert.match(saved, new RegExp(`Contact <sip:webrtc-gw@127\\.0\\.0\\.1:${gwPort}${transport === 'tcp' ? ';transport=tcp' : '(;transport=udp)?'}>`));

      // Shutdown un-REGISTERs: Kamailio no longer finds the account (404, not a relay to a dead Contact).
      await g.shutdown(0);
      assert.equal(g.trunkStatus()[0]!.registration!.state, 'stopped');
      await kam!.waitForLog(/REGISTER sip:webrtc-gw@127\.0\.0\.1 saved: .*Expires 0/);
      const after = await sipp({ scenario: 'uac-expect-status', remote: `127.0.0.1:${kam!.port}`, keys: { to_user: ACCOUNT, status: '404', linger_ms: '0' } });
      const refused = await after.done;
      assert.equal(refused.code, 0, formatSippResult(refused));
      await kam!.waitForLog(/lookup of webrtc-gw failed/);
    });

    // Fails until the gateway copies the INVITE's Record-Route into its 200 OK (RFC 3261 12.1.1; see the report / project notes).
    it(`a call Kamailio routes to our ${transport.toUpperCase()} registration rings the DID's user; ACK and BYE follow Kamailio's Record-Route`, async () => {
      const g = await registeredGateway(transport);
      const p = await alice(g);
      // The "PSTN" calls the account at Kamailio; only Kamailio's location service knows where it is.
      // Over UDP the browser hangs up (our BYE goes back through Kamailio); over TCP SIPp does (its BYE comes through Kamailio).
      const caller = await sipp({
        scenario: 'uac-call',
        remote: `127.0.0.1:${kam!.port}`,
        rtpEcho: true,
        traceMsg: true,
        keys: { to_user: ACCOUNT, hangup_ms: transport === 'udp' ? '0' : '3000', bye_wait_ms: '15000', linger_ms: '500' },
      });
      const inc = await p.nextIncoming(10_000);
      await inc.answer();
      const sending = inc.startSendingPcmu({ count: 50, intervalMs: 20 });
      await inc.waitForRtp(25, 10_000);
      await sending;
      const info = g.controller.list()[0]!;
      assert.equal(info.direction, 'inbound');
      assert.ok(info.relay!.toSip.packets >= 25 && info.relay!.toBrowser.packets >= 25, JSON.stringify(info.relay));

      // Our 200 must carry Kamailio's Record-Route, or the caller's ACK and BYE cannot be loose-routed back to us.
      const msgs = await caller.messages();
      const ok = msgs.find((m) => m.kind === 'received' && m.status === 200 && m.cseq?.method === 'INVITE')!;
      const rr = headers(ok, 'Record-Route').join(',');
      assert.match(rr, new RegExp(`<sip:127\\.0\\.0\\.1:${kam!.port};(transport=udp;)?(r2=on;)?lr`), `our 200 OK copies Kamailio's Record-Route:\n${ok.text}`);
      await kam!.waitForLog(/in-dialog ACK loose-routed/);

      if (transport === 'udp') await inc.hangup();
      const end = await inc.waitTerminated(10_000);
      assert.equal(end.byeReceived, transport === 'tcp', 'who hung up');
      const done = await caller.done;
      assert.equal(done.code, 0, formatSippResult(done));
      if (transport === 'udp') assertRelayedByKamailio(received(await caller.messages(), 'BYE')[0]!, "the gateway's BYE");
      else await kam!.waitForLog(/in-dialog BYE loose-routed to sip:\S+;transport=tcp/);
    });
  }

  async function outbound(transport: 'udp' | 'tcp', password: string, scenario: 'uas-answer' | 'uas-answer-then-bye' | 'uas-ring-no-answer'): Promise<{ uas: SippPeer; g: Gateway }> {
    const uas = await sipp({ scenario, rtpEcho: true, traceMsg: true, keys: scenario === 'uas-answer-then-bye' ? { hold_ms: '2000' } : {} });
    kam = await startKamailio({ user: ACCOUNT, password: SECRET, uasTarget: `sip:127.0.0.1:${uas.port}` });
    // pstn.test appears only in the Request-URI: Kamailio is the outbound proxy, reached with a loose Route.
    const g = (gw = await startGateway({
      trunkPort: kam.port,
      trunkTransport: transport,
      trunk: {
        name: 'kamailio',
        host: 'pstn.test',
        port: undefined,
        addresses: ['127.0.0.1'],
        outboundProxy: { host: '127.0.0.1', port: kam.port, transport },
        username: ACCOUNT,
        password,
      },
    }));
    return { uas, g };
  }

  it("calls out through Kamailio as outbound proxy: answers its 407, audio both ways, the BYE follows Kamailio's Record-Route", async () => {
    const { uas, g } = await outbound('udp', SECRET, 'uas-answer');
    const p = await alice(g);
    const call = p.call('sip:1000@127.0.0.1');
    await call.established;
    const sending = call.startSendingPcmu({ count: 50, intervalMs: 20 });
    await call.waitForRtp(25, 10_000);
    await sending;
    const info = g.controller.list()[0]!;
    assert.equal(info.legs.sip.trunk, 'kamailio');
    assert.ok(info.relay!.toSip.packets >= 25 && info.relay!.toBrowser.packets >= 25, JSON.stringify(info.relay));
    await call.hangup();
    const done = await uas.done;
    assert.equal(done.code, 0, formatSippResult(done));

    await kam!.waitForLog(/INVITE to sip:1000@pstn\.test challenged/);
    await kam!.waitForLog(/authenticated INVITE to sip:1000@pstn\.test via sip:127\.0\.0\.1:\d+/);
    const msgs = await uas.messages();
    const invites = received(msgs, 'INVITE');
    assert.equal(invites.length, 1, 'only the authenticated INVITE got past Kamailio');
    assert.equal(requestUri(invites[0]!), 'sip:1000@pstn.test');
    assertRelayedByKamailio(invites[0]!, 'the INVITE');
    assert.equal(headers(invites[0]!, 'Proxy-Authorization').length, 0, 'Kamailio consumed the credentials');
    assert.equal(headers(invites[0]!, 'Route').length, 0, 'Kamailio consumed our loose Route to it');
    assert.match(headers(invites[0]!, 'Record-Route').join(','), new RegExp(`<sip:127\\.0\\.0\\.1:${kam!.port};lr`));
    const bye = received(msgs, 'BYE')[0]!;
    assertRelayedByKamailio(bye, "the gateway's BYE");
    assert.match(requestUri(bye), new RegExp(`^sip:sipp@127\\.0\\.0\\.1:${uas.port}`), "to SIPp's Contact");
    await kam!.waitForLog(/in-dialog BYE loose-routed/);
  });

  it('a wrong trunk password: Kamailio challenges again, the browser gets 403, nothing reaches the far end and nothing leaks', async () => {
    const { uas, g } = await outbound('udp', 'not-the-secret', 'uas-answer');
    const p = await alice(g);
    const call = p.call('sip:1000@127.0.0.1');
    await assert.rejects(call.established, (e: unknown) => e instanceof CallRejectedError && e.statusCode === 403);
    // Kamailio's log reaches us through a pipe, possibly after the 403 did: wait for both lines.
    const challenges = await kam!.waitForLogLines(/INVITE to sip:1000@pstn\.test challenged/, 2);
    assert.equal(challenges.length, 2, `challenged, then our wrong answer challenged again (and not retried):\n${challenges.join('\n')}`);
    assert.equal(received(await uas.messages(), 'INVITE').length, 0);
  });

  it('the browser hangs up while the far end rings: our CANCEL matches the authenticated INVITE at Kamailio, which cancels downstream (487)', async () => {
    const { uas, g } = await outbound('udp', SECRET, 'uas-ring-no-answer');
    const p = await alice(g);
    const call = p.call('sip:1000@127.0.0.1');
    assert.equal(await call.progress, 180);
    const result = await call.hangup();
    assert.equal(result.method, 'CANCEL');
    const end = await call.waitTerminated(10_000);
    assert.equal(end.statusCode, 487);
    const done = await uas.done;
    assert.equal(done.code, 0, formatSippResult(done));
    const cancel = received(await uas.messages(), 'CANCEL')[0];
    assert.ok(cancel, 'Kamailio relayed a CANCEL (it only does for one matching its INVITE transaction)');
    assertRelayedByKamailio(cancel, 'the CANCEL');
    assert.doesNotMatch(kam!.log(), /without our Route|preloaded Route not ours/);
  });

  it('over TCP to Kamailio (double Record-Route): the far end hangs up and its BYE reaches the browser through Kamailio', async () => {
    const { uas, g } = await outbound('tcp', SECRET, 'uas-answer-then-bye');
    const p = await alice(g);
    const call = p.call('sip:1000@127.0.0.1');
    await call.established;
    const sending = call.startSendingPcmu({ count: 50, intervalMs: 20 });
    await call.waitForRtp(25, 10_000);
    await sending;
    const end = await call.waitTerminated(15_000);
    assert.equal(end.byeReceived, true);
    const done = await uas.done;
    assert.equal(done.code, 0, formatSippResult(done));

    const invite = received(await uas.messages(), 'INVITE')[0]!;
    assertRelayedByKamailio(invite, 'the INVITE');
    // TCP in, UDP out: Kamailio records both sides (RFC 3261 §16.6 / rr's double Record-Route).
    const rr = headers(invite, 'Record-Route').flatMap((h) => h.split(/,(?=\s*<)/));
    assert.equal(rr.length, 2, rr.join(' | '));
    assert.match(rr.join(','), /transport=tcp/);
    await kam!.waitForLog(/in-dialog BYE loose-routed to sip:\S+;transport=tcp/);
  });
});
