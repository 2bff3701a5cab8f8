import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { PortAllocator } from '../../webrtc/port-allocator.js';
import { RtpEndpoint, serializeRtp, type RtpEndpointOptions, type RtpView } from '../../webrtc/rtp-endpoint.js';
import { bindUdp, closeUdp, freeUdpRun } from '../support/ports.js';

const FENCE = Buffer.from('fence');

/** A UDP socket on 127.0.0.1 that records every datagram it receives. */
interface Peer {
  socket: dgram.Socket;
  port: number;
  received: Buffer[];
}

/**
 * Real sockets on 127.0.0.1: the endpoint on an allocated pair, and peers standing for the SDP's
 * address, the NAT'd source the packets really come from, and strays.
 */
describe('RtpEndpoint: symmetric RTP (latching)', () => {
  let allocator: PortAllocator;
  let endpoint: RtpEndpoint | undefined;
  let peers: Peer[] = [];
  let logs: Array<{ level: number; msg: string; media?: string; from?: string; to?: string }> = [];

  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        logs.push(JSON.parse(chunk.toString()) as (typeof logs)[number]);
        done();
      },
    }),
  );

  beforeEach(async () => {
    const base = await freeUdpRun(2);
    allocator = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
    logs = [];
  });

  afterEach(async () => {
    await endpoint?.close();
    endpoint = undefined;
    await Promise.all(peers.map((p) => closeUdp(p.socket)));
    peers = [];
    assert.equal(allocator.inUse, 0, 'the endpoint released its ports');
  });

  async function open(options?: RtpEndpointOptions): Promise<RtpEndpoint> {
    const lease = await allocator.allocate({ callId: 'c1', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
    endpoint = new RtpEndpoint(lease, log, options);
    return endpoint;
  }

  async function peer(): Promise<Peer> {
    const socket = await bindUdp(0);
    const p: Peer = { socket, port: socket.address().port, received: [] };
    socket.on('message', (buf) => p.received.push(buf));
    peers.push(p);
    return p;
  }

  /** Resolves once `p` has received `n` datagrams (bounded). */
  function received(p: Peer, n: number, timeoutMs = 3000): Promise<Buffer[]> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (p.received.length < n) return false;
        clearTimeout(timer);
        p.socket.off('message', check);
        resolve(p.received);
        return true;
      };
      const timer = setTimeout(() => {
        p.socket.off('message', check);
        reject(new Error(`port ${p.port} got ${p.received.length} of ${n} datagrams within ${timeoutMs} ms`));
      }, timeoutMs);
      if (!check()) p.socket.on('message', check);
    });
  }

  /**
   * What `p` received before a fence datagram sent to it now: on loopback a datagram is queued
   * when it is sent, so anything the endpoint sent `p` before this call is in the list.
   */
  async function fenced(p: Peer): Promise<Buffer[]> {
    const before = p.received.length;
    const sender = await bindUdp(0);
    try {
      sender.send(FENCE, p.port, '127.0.0.1');
      await received(p, before + 1);
    } finally {
      await closeUdp(sender);
    }
    const all = p.received.filter((b) => !b.equals(FENCE));
    p.received = all;
    return all;
  }

  let seq = 0;
  function rtp(ssrc: number, payload = Buffer.alloc(160, 0xd5)): Buffer {
    seq++;
    return serializeRtp({ payloadType: 0, marker: false, sequenceNumber: seq, timestamp: seq * 160, ssrc }, payload);
  }

  /** An RTCP receiver report with no blocks (RFC 3550 §6.4.2). */
  function rtcpRr(ssrc: number): Buffer {
    const b = Buffer.alloc(8);
    b[0] = 0x80;
    b[1] = 201;
    b.writeUInt16BE(1, 2);
    b.writeUInt32BE(ssrc, 4);
    return b;
  }

  /** Sends packets from `from` to the endpoint's port (RTP, or RTCP when `rtcp`) and waits until the endpoint has seen them. */
  async function sendFrom(ep: RtpEndpoint, from: Peer, packets: Buffer[], rtcp = false): Promise<void> {
    const seen = () => (rtcp ? ep.rtcpIn + ep.rtcpStrayIn : ep.packetsIn + ep.strayIn);
    const target = seen() + packets.length;
    const port = ep.lease.ports[rtcp ? 1 : 0]!;
    for (const p of packets) from.socket.send(p, port, '127.0.0.1');
    const deadline = Date.now() + 3000;
    while (seen() < target) {
      if (Date.now() > deadline) throw new Error(`the endpoint saw ${seen()} of ${target} packets`);
      await new Promise((r) => setImmediate(r));
    }
  }

  const addr = (p: Peer) => ({ address: '127.0.0.1', port: p.port });
  const payloadOf = (b: Buffer) => b.subarray(12);

  it('sends RTP to the SDP address until packets arrive, then to where they come from, and logs the latch', async () => {
    const ep = await open();
    const [sdp, nat] = [await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    ep.send(rtp(1));
    await received(sdp, 1);
    assert.deepEqual(ep.remote, addr(sdp));
    assert.equal(ep.latched, false);

    const got: RtpView[] = [];
    ep.on('rtp', (v) => got.push(v));
    await sendFrom(ep, nat, [rtp(0xaaaa)]);
    assert.equal(got.length, 1);
    assert.deepEqual(ep.remote, addr(nat));
    assert.deepEqual(ep.sdpRemote, addr(sdp));
    assert.equal(ep.latched, true);

    ep.send(rtp(1, Buffer.from('after-latch')));
    const atNat = await received(nat, 1);
    assert.equal(payloadOf(atNat[0]!).toString(), 'after-latch');
    assert.equal((await fenced(sdp)).length, 1, 'nothing more went to the SDP address');

    const line = logs.find((l) => l.level === 30 && /latched/.test(l.msg));
    assert.ok(line, 'the latch is logged at info');
    assert.equal(line.media, 'rtp');
    assert.equal(line.from, `127.0.0.1:${sdp.port}`);
    assert.equal(line.to, `127.0.0.1:${nat.port}`);
  });

  it('never moves off the SDP address with symmetric RTP off, and still takes the packets', async () => {
    const ep = await open({ symmetric: false });
    const [sdp, nat] = [await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    await sendFrom(ep, nat, [rtp(7), rtp(7), rtp(7)]);
    assert.equal(ep.packetsIn, 3);
    ep.send(rtp(1));
    await received(sdp, 1);
    assert.deepEqual(await fenced(nat), [], 'nothing went to the packets source');
    assert.deepEqual(ep.remote, addr(sdp));
    assert.equal(ep.latched, false);
    assert.ok(!logs.some((l) => /latched/.test(l.msg)));
  });

  it('does not let a second source steal the latch while the latched one keeps sending, and drops its packets', async () => {
    const ep = await open();
    const [sdp, nat, stray] = [await peer(), await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    await sendFrom(ep, nat, [rtp(1)]);
    // Bursts longer than the probation, each right after a packet from the latched source.
    const burst = Array.from({ length: 5 }, () => rtp(2, Buffer.from('stray')));
    for (let i = 0; i < 2; i++) {
      await sendFrom(ep, stray, burst);
      await sendFrom(ep, nat, [rtp(1)]);
    }
    assert.equal(ep.strayIn, 10);
    assert.equal(ep.packetsIn, 3, 'only the latched source is relayed');
    assert.deepEqual(ep.remote, addr(nat));
    ep.send(rtp(9));
    await received(nat, 1);
    assert.deepEqual(await fenced(stray), []);
  });

  it('moves to a new source once the latched one has been silent for a second and the new one keeps sending', async () => {
    const ep = await open();
    const [sdp, nat, moved] = [await peer(), await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    await sendFrom(ep, nat, [rtp(1)]);
    assert.deepEqual(ep.remote, addr(nat));
    // The latched source falls silent (a NAT rebinding, a media server switch).
    await new Promise((r) => setTimeout(r, 1100));
    await sendFrom(ep, moved, [rtp(3)]);
    assert.deepEqual(ep.remote, addr(nat), 'one packet is not enough to take over');
    await sendFrom(ep, moved, [rtp(3), rtp(3)]);
    assert.deepEqual(ep.remote, addr(moved), 'three in a row from the same source and SSRC are');
    assert.equal(ep.latched, true);
    ep.send(rtp(9, Buffer.from('to-moved')));
    const at = await received(moved, 1);
    assert.equal(payloadOf(at[0]!).toString(), 'to-moved');
    const line = logs.filter((l) => l.level === 30 && /latched/.test(l.msg)).at(-1);
    assert.equal(line?.from, `127.0.0.1:${nat.port}`);
    assert.equal(line?.to, `127.0.0.1:${moved.port}`);
  });

  it('latches RTCP on its own socket, independently of RTP', async () => {
    const ep = await open({ rtcpGuard: { silenceMs: 10_000, probation: 2 } });
    const [sdpRtp, sdpRtcp, natRtp, natRtcp] = [await peer(), await peer(), await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdpRtp.port, sdpRtcp.port);
    await sendFrom(ep, natRtp, [rtp(5)]);
    assert.deepEqual(ep.remote, addr(natRtp));
    assert.deepEqual(ep.rtcpRemote, addr(sdpRtcp), 'RTP latching leaves RTCP where the SDP said');
    ep.sendRtcp(rtcpRr(99));
    await received(sdpRtcp, 1);

    await sendFrom(ep, natRtcp, [rtcpRr(5)], true);
    assert.equal(ep.rtcpIn, 1);
    assert.deepEqual(ep.rtcpRemote, addr(natRtcp));
    assert.equal(ep.rtcpLatched, true);
    ep.sendRtcp(rtcpRr(99));
    await received(natRtcp, 1);
    assert.deepEqual(ep.remote, addr(natRtp), 'and RTCP latching leaves RTP alone');
    assert.equal((await fenced(sdpRtcp)).length, 1);

    // A second RTCP source is a stray while the first reported within the guard's silence.
    await sendFrom(ep, natRtp, [rtcpRr(6), rtcpRr(6), rtcpRr(6)], true);
    assert.equal(ep.rtcpStrayIn, 3);
    assert.deepEqual(ep.rtcpRemote, addr(natRtcp));
  });

  it('starts latching over when setRemote is called again', async () => {
    const ep = await open();
    const [sdp, nat, sdp2, nat2] = [await peer(), await peer(), await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    await sendFrom(ep, nat, [rtp(1)]);
    assert.deepEqual(ep.remote, addr(nat));
    ep.setRemote('127.0.0.1', sdp2.port);
    assert.deepEqual(ep.remote, addr(sdp2));
    assert.equal(ep.latched, false);
    await sendFrom(ep, nat2, [rtp(2)]);
    assert.deepEqual(ep.remote, addr(nat2), 'the first source after the new SDP latches at once');
  });

  it('ignores datagrams that are not RTP or RTCP: they neither latch nor count', async () => {
    const ep = await open();
    const [sdp, junk] = [await peer(), await peer()];
    ep.setRemote('127.0.0.1', sdp.port);
    junk.socket.send(Buffer.from('GET / HTTP/1.0\r\n\r\n'), ep.lease.ports[0]!, '127.0.0.1');
    junk.socket.send(Buffer.alloc(4), ep.lease.ports[1]!, '127.0.0.1');
    // Then real RTP and RTCP from the peer: the latches take the peer, not the junk's source.
    await sendFrom(ep, sdp, [rtp(1)]);
    await sendFrom(ep, sdp, [rtcpRr(1)], true);
    assert.deepEqual(ep.remote, addr(sdp));
    assert.equal(ep.latched, false, 'the peer sends from its SDP address: nothing moved');
    assert.deepEqual(ep.rtcpRemote, addr(sdp));
    assert.deepEqual([ep.packetsIn, ep.strayIn, ep.rtcpIn, ep.rtcpStrayIn], [1, 0, 1, 0]);
  });

  it('rejects a bad remote address or port and bad guard options with a TypeError', async () => {
    const ep = await open();
    assert.throws(() => ep.setRemote('example.com', 4000), TypeError);
    assert.throws(() => ep.setRemote('127.0.0.1', 0), TypeError);
    assert.throws(() => ep.setRemote('127.0.0.1', 4000, 70000), TypeError);
    assert.throws(() => ep.setRemote('127.0.0.1', 4000.5), TypeError);
    assert.equal(ep.remote, undefined, 'nothing was set');
    await ep.close();
    const lease = await allocator.allocate({ callId: 'c2', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
    try {
      assert.throws(() => new RtpEndpoint(lease, log, { rtpGuard: { silenceMs: -1, probation: 3 } }), TypeError);
      assert.throws(() => new RtpEndpoint(lease, log, { rtcpGuard: { silenceMs: 1000, probation: 0 } }), TypeError);
    } finally {
      await lease.release();
    }
  });
});
