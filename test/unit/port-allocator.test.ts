import assert from 'node:assert/strict';
import { PortAllocator } from '../../webrtc/port-allocator.js';
import { bindUdp, freeUdpRun } from '../support/ports.js';

const freeEvenRun = freeUdpRun;
const freeEvenPair = () => freeUdpRun(2);

describe('PortAllocator', () => {
  it('allocates an even RTP port and its RTCP neighbour, and frees both on release', async () => {
    const base = await freeEvenPair();
    const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
    const lease = await a.allocate({ callId: 'c1', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
    assert.deepEqual(lease.ports, [base, base + 1]);
    assert.equal(a.inUse, 2);
    assert.deepEqual(
      a.snapshot().map((r) => [r.port, r.kind, r.state]),
      [
        [base, 'rtp', 'allocated'],
        [base + 1, 'rtcp', 'allocated'],
      ],
    );
    await lease.release();
    await lease.release(); // idempotent
    assert.equal(a.inUse, 0);
    const again = await bindUdp(base); // really closed
    again.close();
  });

  it('fails cleanly and releases the first port when the second is already bound by another socket', async () => {
    const base = await freeEvenPair();
    const squatter = await bindUdp(base + 1);
    try {
      const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
      await assert.rejects(a.allocate({ callId: 'c1', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true }), { code: 'GW_PORTS_EXHAUSTED' });
      assert.equal(a.inUse, 0, 'no port may stay allocated after a failed allocation');
      assert.deepEqual(a.snapshot(), []);
      const first = await bindUdp(base); // the first port is free again at the OS level
      first.close();
    } finally {
      squatter.close();
    }
  });

  it('skips a blocked pair and takes the next free pair within the range', async () => {
    const base = await freeEvenRun(4);
    const squatter = await bindUdp(base + 1);
    try {
      const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 3] });
      const lease = await a.allocate({ callId: 'c', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true, evenStart: true });
      assert.deepEqual(lease.ports, [base + 2, base + 3]);
      assert.equal(a.inUse, 2);
      await lease.release();
      assert.equal(a.inUse, 0);
    } finally {
      squatter.close();
    }
  });

  it('marks a port active on its first packet and counts traffic', async () => {
    const base = await freeEvenPair();
    const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
    const lease = await a.allocate({ callId: 'c1', leg: 'sip' }, ['rtp', 'rtcp'], { bind: true });
    lease.touch(0, 172);
    const [rtp, rtcp] = a.snapshot();
    assert.equal(rtp!.state, 'active');
    assert.equal(rtp!.packets, 1);
    assert.equal(rtp!.bytes, 172);
    assert.equal(rtcp!.state, 'allocated');
    await lease.release();
  });

  it('never hands out the same port twice to concurrent allocations', async () => {
    const base = await freeEvenPair();
    const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
    const results = await Promise.allSettled([
      a.allocate({ callId: 'a', leg: 'x' }, ['rtp', 'rtcp'], { bind: true }),
      a.allocate({ callId: 'b', leg: 'x' }, ['rtp', 'rtcp'], { bind: true }),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    assert.equal(ok.length, 1);
    await (ok[0] as PromiseFulfilledResult<Awaited<ReturnType<PortAllocator['allocate']>>>).value.release();
    assert.equal(a.inUse, 0);
  });

  it('reserves without binding for libraries that bind themselves', async () => {
    const base = await freeEvenPair();
    const a = new PortAllocator({ host: '127.0.0.1', range: [base, base + 1] });
    const lease = await a.allocate({ callId: 'c', leg: 'browser' }, ['webrtc'], { bind: false });
    assert.equal(lease.sockets.length, 0);
    const s = await bindUdp(lease.ports[0]!); // nothing of ours holds it
    s.close();
    assert.equal(a.inUse, 1);
    await lease.release();
    assert.equal(a.inUse, 0);
  });

  it('rejects invalid ranges', () => {
    assert.throws(() => new PortAllocator({ host: '127.0.0.1', range: [10, 5] }), TypeError);
    assert.throws(() => new PortAllocator({ host: '127.0.0.1', range: [0, 5] }), TypeError);
  });
});

describe('PortAllocator orphan reclaim', () => {
  it('releases leases whose owner is gone, and only those', async () => {
    const a = new PortAllocator({ host: '127.0.0.1', range: [41000, 41999] });
    const live = await a.allocate({ callId: 'live', leg: 'sip' }, ['rtp', 'rtcp'], { bind: false });
    const orphan = await a.allocate({ callId: 'gone', leg: 'sip' }, ['rtp', 'rtcp'], { bind: false });
    assert.deepEqual(await a.reclaimOrphans((o) => o.callId === 'live', 60_000), [], 'too young to reclaim');
    const reclaimed = await a.reclaimOrphans((o) => o.callId === 'live', 0);
    assert.deepEqual(reclaimed, orphan.ports);
    assert.equal(orphan.released, true);
    assert.equal(a.inUse, 2);
    await live.release();
    assert.equal(a.inUse, 0);
  });
});
