import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import { TEST_PASSWORD, assertClean, requireSipp, startGateway, waitFor, wsUrl, type HarnessOptions } from '../support/gateway-harness.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { RawSipTcpPeer, headerOf } from '../support/raw-sip-peer.js';
import { Softphone } from '../support/softphone.js';
import type { SippPeer } from '../support/sipp.js';

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

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await Promise.allSettled(phones.splice(0).map((p) => p.close()));
      await Promise.allSettled(sipps.splice(0).map((s) => s.stop()));
      await peer?.close();
      await Promise.allSettled(sockets.splice(0).map(closeUdp));
      await gw?.close();
      gw = peer = undefined;
    }
  });

  async function gateway(opts: HarnessOptions): Promise<Gateway> {
    gw = await startGateway(opts);
    return gw;
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
});
