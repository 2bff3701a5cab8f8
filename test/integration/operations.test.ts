import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Gateway } from '../../src/gateway.js';
import { assertClean, startGateway, TEST_PASSWORD, wsUrl, requireSipp } from '../support/gateway-harness.js';
import { assertRangeFree, freeUdpRun } from '../support/ports.js';
import { Softphone } from '../support/softphone.js';
import { startSipp, type SippPeer } from '../support/sipp.js';

const TOKEN = 'test-admin-token-0123456789';
const mainJs = fileURLToPath(new URL('../../src/main.js', import.meta.url));

async function api(gw: Gateway, path: string, opts: { method?: string; token?: string | null } = {}): Promise<{ status: number; body: any; text: string }> {
  const headers: Record<string, string> = {};
  const token = opts.token === undefined ? TOKEN : opts.token;
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`http://127.0.0.1:${gw.adminAddress.port}${path}`, { method: opts.method ?? 'GET', headers });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text };
}

/** Parses Prometheus text exposition into `name{labels}` -> value, rejecting malformed lines. */
function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$/.exec(line);
    assert.ok(m, `not Prometheus text: ${line}`);
    out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

describe('operations: admin API, metrics, media timeouts, graceful shutdown', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let phone: Softphone | undefined;

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await sipp?.stop();
      await gw?.close();
      phone = sipp = gw = undefined;
    }
  });

  it('rejects admin requests without the right bearer token (401), but not health probes', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', calls: 1 });
    gw = await startGateway({ trunkPort: sipp.port, adminToken: TOKEN });
    assert.equal((await api(gw, '/api/calls', { token: null })).status, 401);
    const wrong = await api(gw, '/api/calls', { token: 'nope-nope-nope-nope' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, 'UNAUTHORIZED');
    assert.equal((await api(gw, '/metrics', { token: null })).status, 401);
    assert.equal((await api(gw, '/api/calls')).status, 200);
    assert.equal((await api(gw, '/healthz', { token: null })).status, 200);
    assert.equal((await api(gw, '/readyz', { token: null })).status, 200);
    assert.equal((await api(gw, '/api/calls/nope')).status, 404);
    assert.equal((await api(gw, '/api/nothing')).body.error.code, 'NOT_FOUND');
  });

  it('shows a call and its ports allocated before media and active after, and DELETE ends both legs and frees them', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: 1, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port, adminToken: TOKEN });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;

    const calls = (await api(gw, '/api/calls')).body.calls;
    assert.equal(calls.length, 1);
    const id = calls[0].id;
    assert.equal(calls[0].state, 'answered');
    assert.equal(calls[0].codec, 'pcmu');
    assert.equal(calls[0].legs.browser.user, 'alice');

    const before = (await api(gw, '/api/rtp')).body;
    const mine = before.ports.filter((p: any) => p.owner.callId === id);
    assert.deepEqual(mine.map((p: any) => `${p.range}/${p.kind}/${p.state}`).sort(), ['rtp/rtcp/allocated', 'rtp/rtp/allocated', 'webrtc/webrtc/allocated']);
    const rtpRange = before.ranges.find((r: any) => r.range === 'rtp');
    assert.equal(rtpRange.inUse, 2);
    assert.equal(rtpRange.free, rtpRange.total - 2);

    const sending = call.startSendingPcmu({ count: 40, intervalMs: 20 });
    await call.waitForRtp(20, 10_000);
    await sending;
    const after = (await api(gw, '/api/rtp')).body.ports.filter((p: any) => p.owner.callId === id);
    const state = (range: string, kind: string) => after.find((p: any) => p.range === range && p.kind === kind);
    assert.equal(state('rtp', 'rtp').state, 'active');
    assert.ok(state('rtp', 'rtp').packets >= 20);
    assert.equal(state('webrtc', 'webrtc').state, 'active');
    assert.equal(state('rtp', 'rtcp').state, 'allocated', 'SIPp sends no RTCP');

    const single = (await api(gw, `/api/calls/${id}`)).body;
    assert.ok(single.legs.sip.media.packetsIn >= 20);

    const del = await api(gw, `/api/calls/${id}`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    assert.equal(del.body.state, 'ended');
    assert.deepEqual(del.body.endReason, { by: 'gateway', cause: 'admin' });
    const end = await call.waitTerminated(10_000);
    assert.equal(end.byeReceived, true, 'the softphone got BYE');
    const done = await sipp.done;
    assert.equal(done.code, 0, done.errors);
    assert.ok((await sipp.messages()).some((m) => m.kind === 'received' && m.method === 'BYE'), 'SIPp got BYE');
    await assertClean(gw);
    assert.deepEqual((await api(gw, '/api/rtp')).body.ports, []);
    const ended = (await api(gw, `/api/calls/${id}`)).body;
    assert.equal(ended.state, 'ended', 'recently ended calls stay visible');
    assert.equal((await api(gw, `/api/calls/${id}`, { method: 'DELETE' })).status, 409);
  });

  it('exposes Prometheus metrics whose gauges match the live state during and after a call', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: 1 });
    gw = await startGateway({ trunkPort: sipp.port, adminToken: TOKEN });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const during = parsePrometheus((await api(gw, '/metrics')).text);
    assert.equal(during.get('gw_calls_active{direction="outbound"}'), 1);
    assert.equal(during.get('gw_peer_connections_open'), 1);
    assert.equal(during.get('gw_rtp_ports_in_use{range="rtp"}'), 2);
    assert.equal(during.get('gw_rtp_ports_in_use{range="webrtc"}'), 1);
    assert.equal(during.get('gw_websocket_connections'), 1);
    assert.equal(during.get('gw_sip_messages_total{direction="in",kind="request",label="INVITE"}'), 2, 'the INVITE, then again with credentials');
    assert.equal(during.get('gw_sip_messages_total{direction="out",kind="response",label="407"}'), 1);
    assert.equal(during.get('gw_sip_messages_total{direction="out",kind="request",label="INVITE"}'), 1);
    assert.equal(during.get('gw_call_setup_seconds_count{direction="outbound"}'), 1);
    assert.ok((during.get('gw_process_resident_memory_bytes') ?? 0) > 0);
    assert.ok(during.has('gw_nodejs_eventloop_lag_p99_seconds'));
    await call.hangup();
    await assertClean(gw);
    const after = parsePrometheus((await api(gw, '/metrics')).text);
    assert.equal(after.get('gw_calls_active{direction="outbound"}'), 0);
    assert.equal(after.get('gw_peer_connections_open'), 0);
    assert.equal(after.get('gw_rtp_ports_in_use{range="rtp"}'), 0);
    assert.equal(after.get('gw_calls_total{direction="outbound",end_reason="bye"}'), 1);
  });

  it('ends a call by media timeout, with BYE to both sides, when the SIP peer sends no RTP', async () => {
    // SIPp without -rtp_echo sends no media; the softphone keeps talking.
    sipp = await startSipp({ scenario: 'uas-answer', calls: 1, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port, rtpTimeoutMs: 1500, noMediaTimeoutMs: 5000 });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const sending = call.startSendingPcmu({ count: 200, intervalMs: 20 }).catch(() => undefined);
    const end = await call.waitTerminated(15_000);
    assert.equal(end.byeReceived, true);
    await sending;
    const done = await sipp.done;
    assert.equal(done.code, 0, done.errors);
    assert.ok((await sipp.messages()).some((m) => m.kind === 'received' && m.method === 'BYE' && /media-timeout/.test(m.text)), 'SIPp got BYE with the reason');
    const info = gw.controller.list()[0]!;
    assert.deepEqual(info.endReason, { by: 'gateway', cause: 'media-timeout', status: 408 });
  });

  it('reclaims the ports of an answered call that never gets any media (no-media timeout)', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', calls: 1, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port, rtpTimeoutMs: 5000, noMediaTimeoutMs: 1000 });
    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    const call = phone.call('sip:1000@127.0.0.1');
    await call.established;
    const id = gw.controller.calls()[0]!.id;
    const held = (await api(gw, '/api/rtp')).body.ports.filter((p: any) => p.owner.callId === id);
    assert.ok(held.length >= 3 && held.every((p: any) => p.state === 'allocated'), JSON.stringify(held));
    const end = await call.waitTerminated(10_000);
    assert.equal(end.byeReceived, true);
    assert.equal((await sipp.done).code, 0);
    assert.deepEqual(gw.controller.find(id)!.endReason, { by: 'gateway', cause: 'no-media', status: 408 });
    assert.deepEqual((await api(gw, '/api/rtp')).body.ports, []);
  });

  it('drains on SIGTERM: both sides of two calls get BYE, the process exits 0, no port stays bound', async function () {
    const rtpBase = await freeUdpRun(10);
    const webrtcBase = await freeUdpRun(10);
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, calls: 2, traceMsg: true });
    const dir = mkdtempSync(join(tmpdir(), 'gw-sigterm-'));
    const cfg = join(dir, 'config.json');
    writeFileSync(
      cfg,
      JSON.stringify({
        sip: { listen: [{ transport: 'udp', host: '127.0.0.1', port: 0 }] },
        http: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
        media: { rtpPorts: [rtpBase, rtpBase + 9], webrtcPorts: [webrtcBase, webrtcBase + 9] },
        shutdown: { drainMs: 1000 },
        trunks: [{ name: 'sipp', host: '127.0.0.1', port: sipp.port, transport: 'udp', optionsPingMs: 0 }],
        users: [{ username: 'alice', password: TEST_PASSWORD }],
        log: { level: 'info' },
      }),
    );
    const child = spawn(process.execPath, [mainJs, '--config', cfg], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const httpPort = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('gateway did not start')), 15_000);
        const rl = createInterface({ input: child.stdout! });
        rl.on('line', (line) => {
          try {
            const j = JSON.parse(line) as { msg?: string; http?: { port: number } };
            if (j.msg === 'gateway started' && j.http) {
              clearTimeout(timer);
              resolve(j.http.port);
            }
          } catch {
            // not JSON
          }
        });
      });
      phone = await Softphone.connect({ server: `ws://127.0.0.1:${httpPort}/ws`, user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
      const calls = [phone.call('sip:1000@127.0.0.1'), phone.call('sip:1001@127.0.0.1')];
      await Promise.all(calls.map((c) => c.established));
      child.kill('SIGTERM');
      const ends = await Promise.all(calls.map((c) => c.waitTerminated(10_000)));
      assert.deepEqual(
        ends.map((e) => e.byeReceived),
        [true, true],
        'each softphone got BYE',
      );
      assert.equal(await exited, 0);
      const done = await sipp.done;
      assert.equal(done.code, 0, done.errors);
      const byes = (await sipp.messages()).filter((m) => m.kind === 'received' && m.method === 'BYE');
      assert.equal(new Set(byes.map((m) => m.callId)).size, 2, 'SIPp got BYE on both calls');
      await assertRangeFree(rtpBase, rtpBase + 9);
      await assertRangeFree(webrtcBase, webrtcBase + 9);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});

