import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import { TEST_PASSWORD, assertClean, requireSipp, startGateway, waitFor, wsUrl, type HarnessOptions } from '../support/gateway-harness.js';
import { authorizationFor } from '../../sip/message.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { RawSipTcpPeer, RawSipUdpPeer, headerOf, responseTo } from '../support/raw-sip-peer.js';
import { Softphone } from '../support/softphone.js';
import { formatSippResult, startSipp, type SippOptions, type SippPeer } from '../support/sipp.js';

/**
 * Dialogs over connections that come and go: calls with SIP trunks over TCP outlive the trunk
 * closing its connection (RFC 3261 §18), and in-dialog requests go where the dialog's route set
 * and remote target say (§12.2.1.1), over a new connection when the old one is gone.
 * Every test ends with a clean gateway.
 */
describe('dialogs: in-dialog requests, routes and connections', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let peer: RawSipTcpPeer | undefined;
  const sipps: SippPeer[] = [];
  const phones: Softphone[] = [];
  const sockets: dgram.Socket[] = [];
  const udpPeers: RawSipUdpPeer[] = [];

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await Promise.allSettled(phones.splice(0).map((p) => p.close()));
      await Promise.allSettled(sipps.splice(0).map((s) => s.stop()));
      await peer?.close();
      await Promise.allSettled(sockets.splice(0).map(closeUdp));
      await Promise.allSettled(udpPeers.splice(0).map((p) => p.close()));
      await gw?.close();
      gw = peer = undefined;
    }
  });

  async function gateway(opts: HarnessOptions): Promise<Gateway> {
    gw = await startGateway(opts);
    return gw;
  }

  async function sipp(opts: SippOptions): Promise<SippPeer> {
    const p = await startSipp(opts);
    sipps.push(p);
    return p;
  }

  async function registered(user: string): Promise<Softphone> {
    const p = await Softphone.connect({ server: wsUrl(gw!), user, domain: '127.0.0.1', password: TEST_PASSWORD });
    phones.push(p);
    await p.register({ expires: 300 });
    return p;
  }

  /** A UDP port that swallows the RTP the gateway sends to the raw peer's SDP. */
  async function rtpPort(): Promise<number> {
    const s = await bindUdp(0);
    s.on('message', () => undefined);
    sockets.push(s);
    return s.address().port;
  }

  const SDP = (port: number) => ['v=0', 'o=trunk 1 1 IN IP4 127.0.0.1', 's=-', 'c=IN IP4 127.0.0.1', 't=0 0', `m=audio ${port} RTP/AVP 0`, 'a=rtpmap:0 PCMU/8000', 'a=sendrecv', ''].join('\r\n');

  /** The raw TCP trunk's side of one dialog: it builds requests with the dialog's identifiers. */
  function trunkDialog(opts: { peerPort: number; gwPort: number; user: string }) {
    const callId = `raw-${Math.random().toString(36).slice(2)}`;
    const from = `<sip:trunk@127.0.0.1>;tag=rawtag`;
    let to = `<sip:${opts.user}@127.0.0.1>`;
    let cseq = 1;
    let target = `sip:${opts.user}@127.0.0.1:${opts.gwPort};transport=tcp`;
    const request = (method: string, extra: { cseq?: number; body?: string } = {}) => {
      const n = extra.cseq ?? (method === 'ACK' ? cseq : ++cseq);
      const body = extra.body ?? '';
      return [
        `${method} ${target} SIP/2.0`,
        `Via: SIP/2.0/TCP 127.0.0.1:${opts.peerPort};branch=z9hG4bK-${method.toLowerCase()}-${n}-${Math.random().toString(36).slice(2)};rport`,
        'Max-Forwards: 70',
        `From: ${from}`,
        `To: ${to}`,
        `Call-ID: ${callId}`,
        `CSeq: ${n} ${method}`,
        `Contact: <sip:trunk@127.0.0.1:${opts.peerPort};transport=tcp>`,
        ...(body ? ['Content-Type: application/sdp'] : []),
        `Content-Length: ${Buffer.byteLength(body)}`,
        '',
        body,
      ].join('\r\n');
    };
    return {
      callId,
      invite: (rtp: number) => request('INVITE', { cseq: 1, body: SDP(rtp) }),
      /** Takes the To tag and the remote target from the gateway's 2xx. */
      established(ok: string) {
        to = headerOf(ok, 'To')!;
        target = /<([^>]+)>/.exec(headerOf(ok, 'Contact') ?? '')?.[1] ?? target;
      },
      request,
    };
  }

  it('a call from a TCP trunk outlives the trunk closing its connection; the trunk BYEs over a new one', async () => {
    peer = await RawSipTcpPeer.listen();
    await gateway({ trunkPort: peer.port, trunkTransport: 'tcp' });
    const alice = await registered('alice');
    const gwPort = gw!.sipAddress('tcp')!.port;
    const d = trunkDialog({ peerPort: peer.port, gwPort, user: 'alice' });

    const first = await peer.connect(gwPort);
    first.send(d.invite(await rtpPort()));
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    const ok = await first.finalResponse('INVITE');
    assert.equal(ok.status, 200);
    d.established(ok.text);
    first.send(d.request('ACK'));
    await waitFor(() => gw!.controller.list()[0]?.state === 'answered', 'the call answered');

    // Kamailio closes idle TCP connections (tcp_connection_lifetime): the dialog does not depend on one.
    await first.close();
    const second = await peer.connect(gwPort);
    second.send(d.request('OPTIONS'));
    assert.equal((await second.finalResponse('OPTIONS')).status, 200, 'the dialog still exists (481 otherwise)');
    const live = gw!.controller.list();
    assert.equal(live.length, 1);
    assert.equal(live[0]!.state, 'answered', `the call is still up: ${JSON.stringify(live[0]!.endReason)}`);

    second.send(d.request('BYE'));
    assert.equal((await second.finalResponse('BYE')).status, 200);
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true, 'the browser got BYE');
    await waitFor(() => gw!.controller.list()[0]?.state === 'ended', 'the call ended');
    assert.deepEqual(gw!.controller.list()[0]!.endReason, { by: 'sip', cause: 'bye' });
  });

  it('the browser hangs up a call from a TCP trunk that closed its connection: the BYE reaches its Contact on a new one', async () => {
    peer = await RawSipTcpPeer.listen();
    await gateway({ trunkPort: peer.port, trunkTransport: 'tcp' });
    const alice = await registered('alice');
    const gwPort = gw!.sipAddress('tcp')!.port;
    const d = trunkDialog({ peerPort: peer.port, gwPort, user: 'alice' });
    const first = await peer.connect(gwPort);
    first.send(d.invite(await rtpPort()));
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    const ok = await first.finalResponse('INVITE');
    d.established(ok.text);
    first.send(d.request('ACK'));
    await waitFor(() => gw!.controller.list()[0]?.state === 'answered', 'the call answered');
    await first.close();

    await inc.hangup();
    const conn = await peer.acceptedConnection(0);
    const bye = await conn.request('BYE');
    assert.match(bye.text, /^BYE sip:trunk@127\.0\.0\.1:\d+;transport=tcp SIP\/2\.0/, 'to the Contact of the INVITE');
    assert.equal(headerOf(bye.text, 'Call-ID'), d.callId);
    conn.send(responseTo(bye.text, 200, 'OK'));
    await waitFor(() => gw!.controller.list()[0]?.state === 'ended', 'the call ended');
  });

  it('a TCP trunk answers, then closes the connection; the browser hangs up and the BYE reaches the trunk on a new connection', async () => {
    peer = await RawSipTcpPeer.listen();
    await gateway({ trunkPort: peer.port, trunkTransport: 'tcp' });
    const alice = await registered('alice');
    const call = alice.call('sip:1000@127.0.0.1');
    const first = await peer.acceptedConnection(0);
    const invite = await first.request('INVITE');
    const contact = `Contact: <sip:trunk@127.0.0.1:${peer.port};transport=tcp>`;
    first.send(responseTo(invite.text, 100, 'Trying'));
    first.send(responseTo(invite.text, 200, 'OK', { toTag: 'trunktag', headers: [contact], body: SDP(await rtpPort()) }));
    await call.established;
    await first.request('ACK');
    await first.close();

    const hangup = call.hangup();
    const second = await peer.acceptedConnection(1);
    const bye = await second.request('BYE');
    assert.match(bye.text, new RegExp(`^BYE sip:trunk@127\\.0\\.0\\.1:${peer.port};transport=tcp SIP/2\\.0`));
    assert.equal(headerOf(bye.text, 'Call-ID'), headerOf(invite.text, 'Call-ID'));
    assert.match(headerOf(bye.text, 'To') ?? '', /;tag=trunktag/);
    second.send(responseTo(bye.text, 200, 'OK'));
    assert.deepEqual(await hangup, { method: 'BYE', statusCode: 200 });
    await waitFor(() => gw!.controller.list()[0]?.state === 'ended', 'the call ended');
  });

  it("sends the BYE to the 2xx's Contact, not to the first hop, when the 2xx has no Record-Route (UDP)", async () => {
    const far = await sipp({ scenario: 'uas-bye', traceMsg: true, timeoutMs: 20_000 });
    const uas = await sipp({ scenario: 'uas-answer-elsewhere', traceMsg: true, keys: { contact_port: String(far.port) } });
    await gateway({ trunkPort: uas.port });
    const alice = await registered('alice');
    const call = alice.call('sip:1000@127.0.0.1');
    await call.established;
    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await far.done;
    assert.equal(done.code, 0, `the Contact got the BYE: ${formatSippResult(done)}`);
    const [bye] = (await far.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE');
    assert.match(bye!.text, new RegExp(`^BYE sip:far@127\\.0\\.0\\.1:${far.port} SIP/2\\.0`));
    const first = await uas.done;
    assert.equal(first.code, 0, formatSippResult(first));
    assert.equal((await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE').length, 0, 'no BYE to the first hop');
    // The ACK for the 2xx goes the same way (RFC 3261 §13.2.2.4).
    assert.equal((await far.messages()).filter((m) => m.kind === 'received' && m.method === 'ACK').length, 1, 'the ACK went to the Contact');
    assert.equal((await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'ACK').length, 0, 'no ACK to the first hop');
  });

  it('a trunk behind NAT (private Contact, no Record-Route, messages from elsewhere) gets its BYE where it sends from', async () => {
    const uas = await sipp({ scenario: 'uas-answer-private-contact', traceMsg: true, keys: { pt: '0', codec: 'PCMU', linger: '0' } });
    await gateway({ trunkPort: uas.port });
    const alice = await registered('alice');
    const call = alice.call('sip:1000@127.0.0.1');
    await call.established;
    assert.deepEqual(await call.hangup(), { method: 'BYE', statusCode: 200 });
    const done = await uas.done;
    assert.equal(done.code, 0, `the BYE reached the trunk's source address: ${formatSippResult(done)}`);
    const [bye] = (await uas.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE');
    assert.match(bye!.text, /^BYE sip:pbx@10\.255\.0\.1:5060 SIP\/2\.0/, 'the Request-URI is still the Contact');
  });

  it('a device registered over UDP with a Contact it cannot be reached at (NAT) gets its BYE where it registered from', async () => {
    await gateway({ trunkPort: 9 });
    const gwPort = gw!.sipAddress('udp')!.port;
    const dev = await RawSipUdpPeer.bind();
    udpPeers.push(dev);
    const devPort = dev.port;
    const send = (text: string) => dev.send(text, gwPort);
    // Behind NAT: the Contact names a private address the gateway cannot reach.
    const contact = 'Contact: <sip:bob@192.0.2.1:5060>';
    const register = (cseq: number, auth: string[] = []) =>
      [
        'REGISTER sip:127.0.0.1 SIP/2.0',
        `Via: SIP/2.0/UDP 127.0.0.1:${devPort};branch=z9hG4bK-reg-${cseq};rport`,
        'Max-Forwards: 70',
        'From: <sip:bob@127.0.0.1>;tag=regtag',
        'To: <sip:bob@127.0.0.1>',
        'Call-ID: reg-nat-1',
        `CSeq: ${cseq} REGISTER`,
        contact,
        'Expires: 300',
        ...auth,
        'Content-Length: 0',
        '',
        '',
      ].join('\r\n');
    send(register(1));
    const challenge = await dev.next(/^SIP\/2\.0 401 /, 'the 401');
    const auth = authorizationFor({ status: 401, msg: { data: challenge } }, { username: 'bob', password: TEST_PASSWORD }, { method: 'REGISTER', uri: 'sip:127.0.0.1' });
    assert.ok(auth);
    send(register(2, [auth]));
    await dev.next(/^SIP\/2\.0 200 /, 'the 200 to REGISTER');

    const alice = await registered('alice');
    const call = alice.call('sip:bob@127.0.0.1');
    const invite = await dev.next(/^INVITE /, 'the INVITE to bob');
    // An answer the gateway cannot bridge: it ACKs, then ends the dialog with BYE at once.
    send(responseTo(invite, 200, 'OK', { toTag: 'devtag', headers: [contact], body: 'v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n' }));
    await dev.next(/^ACK /, 'the ACK');
    const bye = await dev.next(/^BYE /, 'the BYE on the registration flow');
    assert.match(bye, /^BYE sip:bob@192\.0\.2\.1:5060 SIP\/2\.0/, 'addressed to the Contact, sent where the device registered from');
    send(responseTo(bye, 200, 'OK'));
    await call.established.catch(() => undefined);
    await call.waitTerminated(10_000);
  });

  it('answers an INVITE that requires extensions it lacks with 420 listing them in Unsupported; the same INVITE without Require rings', async () => {
    await gateway({ trunkPort: 9 });
    const alice = await registered('alice');
    const remote = `127.0.0.1:${gw!.sipAddress('udp')!.port}`;
    const refused = await sipp({ scenario: 'uac-require', remote, traceMsg: true, keys: { to_user: 'alice' } });
    const r = await refused.done;
    assert.equal(r.code, 0, formatSippResult(r));
    const [bad] = (await refused.messages()).filter((m) => m.kind === 'received' && m.status === 420);
    assert.match(bad!.text, /^Unsupported: 100rel, precondition$/m);
    assert.equal(gw!.stats().totalCalls, 0, 'no call was created');

    const caller = await sipp({ scenario: 'uac-call', remote, keys: { to_user: 'alice', hangup_ms: '500', bye_wait_ms: '15000', linger_ms: '0' } });
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    await inc.waitTerminated(10_000);
    const done = await caller.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('answers an in-dialog request with a CSeq lower than the last one 500 (out of order), in a dialog it answered', async () => {
    await gateway({ trunkPort: 9 });
    const alice = await registered('alice');
    const caller = await sipp({ scenario: 'uac-cseq-order', remote: `127.0.0.1:${gw!.sipAddress('udp')!.port}`, traceMsg: true });
    const inc = await alice.nextIncoming(10_000);
    await inc.answer();
    const end = await inc.waitTerminated(10_000);
    assert.equal(end.byeReceived, true);
    const done = await caller.done;
    assert.equal(done.code, 0, formatSippResult(done));
    const statuses = (await caller.messages()).filter((m) => m.kind === 'received' && m.cseq?.method === 'INFO').map((m) => `${m.cseq?.seq} ${m.status}`);
    assert.deepEqual(statuses, ['4 500', '11 200']);
  });

  it("takes the far end's first in-dialog CSeq as its sequence in a dialog it started, then answers a lower one 500", async () => {
    const uas = await sipp({ scenario: 'uas-cseq-order', traceMsg: true });
    await gateway({ trunkPort: uas.port });
    const alice = await registered('alice');
    const call = alice.call('sip:1000@127.0.0.1');
    // SIPp's requests follow its ACK at once, maybe before the browser has its answer: how the
    // browser's side ends (BYE, or 480 before it was answered) is not what this test is about.
    call.established.catch(() => undefined);
    await call.waitTerminated(10_000);
    const done = await uas.done;
    assert.equal(done.code, 0, formatSippResult(done));
    const statuses = (await uas.messages()).filter((m) => m.kind === 'received' && m.cseq?.method === 'INFO').map((m) => `${m.cseq?.seq} ${m.status}`);
    assert.deepEqual(statuses, ['7 200', '3 500']);
  });
});
