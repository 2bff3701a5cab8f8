import assert from 'node:assert/strict';
import type dgram from 'node:dgram';
import type { Gateway } from '../../src/gateway.js';
import type { TrunkStatus } from '../../src/trunk-monitor.js';
import { assertClean, requireSipp, startGateway, TEST_PASSWORD, wsUrl, type HarnessOptions } from '../support/gateway-harness.js';
import { Softphone } from '../support/softphone.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { formatSippResult, startSipp, type SippMessage, type SippPeer } from '../support/sipp.js';

const USER = 'gwtrunk';
const SECRET = 'trunk-secret';

async function api(gw: Gateway, path: string): Promise<{ status: number; body: any; text: string }> {
  const res = await fetch(`http://127.0.0.1:${gw.adminAddress.port}${path}`);
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text };
}

async function metric(gw: Gateway, series: string): Promise<number | undefined> {
  const { text } = await api(gw, '/metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Polls an async condition (SIPp's message log, the admin API); bounded. */
async function until<T>(probe: () => Promise<T | undefined> | T | undefined, what: string, detail?: () => Promise<string>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${detail ? `\n${await detail().catch((e: Error) => e.message)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const header = (m: SippMessage, name: string): string | undefined =>
  new RegExp(`^${name}[ \\t]*:[ \\t]*(.*)$`, 'im').exec(m.text)?.[1]?.trim();

const registers = (msgs: SippMessage[]) => msgs.filter((m) => m.kind === 'received' && m.method === 'REGISTER');

describe('trunk registration and reachability', function () {
  this.timeout(60_000);

  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let silent: dgram.Socket | undefined;
  let caller: SippPeer | undefined;
  let phone: Softphone | undefined;

  before(requireSipp);

  afterEach(async function () {
    try {
      if (gw) await assertClean(gw);
    } finally {
      await phone?.close();
      await caller?.stop();
      await gw?.close();
      await sipp?.stop();
      if (silent) await closeUdp(silent);
      gw = sipp = caller = silent = phone = undefined;
    }
  });

  const trunk = (gw: Gateway): TrunkStatus => gw.trunkStatus()[0]!;

  async function start(opts: HarnessOptions): Promise<Gateway> {
    gw = await startGateway(opts);
    return gw;
  }

  function registering(opts: Partial<HarnessOptions> & { trunk: Record<string, unknown> }): Promise<Gateway> {
    return start({ trunkPort: sipp!.port, ...opts, trunk: { register: true, username: USER, ...opts.trunk } });
  }

  it('registers with digest, keeps refreshing before the granted expiry, and un-REGISTERs on shutdown', async () => {
    sipp = await startSipp({ scenario: 'uas-registrar', keys: { user: USER, password: SECRET, expires: '2' }, traceMsg: true });
    // We ask for 60 s; the registrar grants 2 s in our Contact's expires param, which must win.
    const gw = await registering({ trunk: { password: SECRET, registerExpires: 60 } });
    const states: string[] = [];
    await until(() => trunk(gw).registration?.state === 'registered', 'the first registration');

    const { body } = await api(gw, '/api/trunks');
    const t = body.trunks[0];
    assert.equal(t.name, 'sipp');
    assert.equal(t.registration.state, 'registered');
    assert.equal(t.registration.failures, 0);
    assert.equal(t.registration.lastError, null);
    assert.equal(t.registration.destination, `udp:127.0.0.1:${sipp.port}`);
    const granted = Date.parse(t.registration.expiresAt) - Date.parse(t.registration.lastRegisteredAt);
    assert.equal(granted, 2000, 'the expiry granted in the Contact, not the 60 s asked for');
    assert.equal(t.reachability, 'unknown', 'OPTIONS pings are off');
    assert.equal(await metric(gw, 'gw_trunk_registered{trunk="sipp"}'), 1);

    // Watch the state from here: refreshes must happen while the binding holds, never lapsing.
    const watch = setInterval(() => states.push(trunk(gw).registration!.state), 50);
    try {
      await until(async () => {
        const authed = registers(await sipp!.messages()).filter((m) => header(m, 'Authorization') && header(m, 'Expires') === '60');
        return authed.length >= 3;
      }, 'two refreshes after the first registration');
    } finally {
      clearInterval(watch);
    }
    assert.deepEqual([...new Set(states)], ['registered'], 'the registration never lapsed');

    await gw.shutdown(0);
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
    assert.equal(trunk(gw).registration!.state, 'stopped');

    const regs = registers(await sipp.messages());
    const last = regs[regs.length - 1]!;
    assert.equal(header(last, 'Expires'), '0', 'the last REGISTER removes the binding');
    assert.match(header(last, 'Authorization') ?? '', /^Digest .*username="gwtrunk"/);
    assert.equal(new Set(regs.map((m) => m.callId)).size, 1, 'one Call-ID for the whole registration');
    const cseqs = regs.map((m) => m.cseq!.seq);
    assert.ok(cseqs.every((c, i) => i === 0 || c > cseqs[i - 1]!), `CSeq increases: ${cseqs.join(',')}`);
    for (const m of regs) {
      assert.match(m.text, /^REGISTER sip:127\.0\.0\.1:\d+ SIP\/2\.0/);
      assert.match(header(m, 'To')!, /^<sip:gwtrunk@127\.0\.0\.1>$/);
      assert.match(header(m, 'Contact')!, /^<sip:gwtrunk@127\.0\.0\.1:\d+;transport=udp>$/);
    }
  });

  it('holds a registrar that grants more than we asked for to what we asked for (no refresh storm)', async () => {
    // 3,000,000 s is past what a Node timer can hold (2^31-1 ms); trusting it made refreshes fire at once.
    sipp = await startSipp({ scenario: 'uas-registrar', keys: { user: USER, password: SECRET, expires: '3000000' }, traceMsg: true });
    const gw = await registering({ trunk: { password: SECRET, registerExpires: 60 } });
    const r = await until(() => {
      const reg = trunk(gw).registration;
      return reg?.state === 'registered' ? reg : undefined;
    }, 'the registration');
    assert.equal(r.expiresAt! - r.lastRegisteredAt!, 60_000, 'the 60 s we asked for, not the 3,000,000 s granted');
    assert.ok(r.nextAttemptAt! - r.lastRegisteredAt! >= 29_000, `the refresh is half-way to expiry: ${JSON.stringify(r)}`);
    // A second of quiet: one challenged and one authenticated REGISTER, no refreshes.
    await new Promise((res) => setTimeout(res, 1000));
    assert.equal(registers(await sipp.messages()).length, 2);
    await gw.shutdown(0);
    assert.equal((await sipp.done).code, 0);
  });

  it('a wrong password leaves the registration failed with the reason and retries with backoff', async () => {
    sipp = await startSipp({ scenario: 'uas-registrar', keys: { user: USER, password: SECRET, expires: '60' }, traceMsg: true });
    const gw = await registering({ trunk: { password: 'not-the-secret' }, registrationRetryBaseMs: 100 });
    const failed = await until(() => {
      const r = trunk(gw).registration;
      return r && r.state !== 'registered' && r.failures >= 3 ? r : undefined;
    }, 'three failed attempts');
    assert.equal(failed.lastError, '403 Forbidden');
    assert.ok(failed.nextAttemptAt !== undefined, 'another attempt is scheduled');

    const { body } = await api(gw, '/api/trunks');
    assert.ok(['failed', 'registering'].includes(body.trunks[0].registration.state), body.text);
    assert.equal(body.trunks[0].registration.lastError, '403 Forbidden');
    assert.ok(body.trunks[0].registration.failures >= 3);
    assert.equal(await metric(gw, 'gw_trunk_registered{trunk="sipp"}'), 0);

    // Each attempt answered the challenge once: one unauthenticated REGISTER per authenticated one.
    const regs = registers(await sipp.messages());
    const authed = regs.filter((m) => header(m, 'Authorization')).length;
    assert.ok(authed >= 3 && regs.length - authed >= authed - 1 && regs.length - authed <= authed + 1, `${regs.length} REGISTERs, ${authed} with credentials`);

    await gw.close();
    assert.equal(trunk(gw).registration!.state, 'stopped');
    assert.equal(trunk(gw).registration!.nextAttemptAt, undefined);
  });

  it('follows Retry-After on 503 and Min-Expires on 423, then registers', async () => {
    sipp = await startSipp({ scenario: 'uas-registrar-busy', keys: { retry_after: '1', min_expires: '5', expires: '5' }, traceMsg: true });
    // A tiny backoff base: only Retry-After can explain a second wait.
    const gw = await registering({ trunk: { password: SECRET, registerExpires: 2 }, registrationRetryBaseMs: 20 });
    const afterBusy = await until(() => {
      const r = trunk(gw).registration;
      return r?.state === 'failed' ? r : undefined;
    }, 'the 503');
    assert.equal(afterBusy.lastError, '503 Service Unavailable');
    await until(() => trunk(gw).registration?.state === 'registered', 'the registration', async () => {
      const seen = (await sipp!.messages()).map((m) => `${m.time} ${m.kind} ${m.method ?? m.status} CSeq ${m.cseq?.seq} Expires ${header(m, 'Expires')}`);
      return `${JSON.stringify(trunk(gw).registration)}\n${seen.join('\n')}`;
    });
    const r = trunk(gw).registration!;
    assert.equal(r.expiresAt! - r.lastRegisteredAt!, 5000);

    const regs = registers(await sipp.messages());
    assert.deepEqual(regs.slice(0, 3).map((m) => header(m, 'Expires')), ['2', '2', '5'], 'asks again with Min-Expires after the 423');
    const gap = Date.parse(regs[1]!.time.replace(' ', 'T')) - Date.parse(regs[0]!.time.replace(' ', 'T'));
    assert.ok(gap >= 900, `waited for Retry-After (1 s) before trying again, not the 20 ms backoff: ${gap} ms`);

    await gw.shutdown(0);
    const done = await sipp.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('registers again at once when the TCP connection to the registrar closes', async () => {
    sipp = await startSipp({ scenario: 'uas-registrar', transport: 'tcp', keys: { user: USER, password: SECRET, expires: '600' } });
    const port = sipp.port;
    const gw = await registering({ trunkTransport: 'tcp', trunk: { password: SECRET, registerExpires: 600 }, registrationRetryBaseMs: 60_000 });
    await until(() => trunk(gw).registration?.state === 'registered', 'the registration over TCP');
    assert.equal(trunk(gw).registration!.destination, `tcp:127.0.0.1:${port}`);
    assert.ok(trunk(gw).registration!.nextAttemptAt! - Date.now() > 60_000, 'the refresh is minutes away');

    // The registrar goes away with the connection; the next REGISTER cannot wait for the refresh.
    await sipp.stop();
    const r = await until(() => {
      const s = trunk(gw).registration;
      return s?.state === 'failed' ? s : undefined;
    }, 'a new REGISTER after the connection closed');
    // Refused, or accepted by a listener still closing and then reset.
    assert.match(r.lastError!, new RegExp(`cannot reach tcp:127\\.0\\.0\\.1:${port}|connection tcp:\\d+:127\\.0\\.0\\.1:${port} closed`));
    assert.equal(r.failures, 1);
    assert.equal(await metric(gw, 'gw_trunk_registered{trunk="sipp"}'), 0);
  });

  it('an INVITE from the registrar to our registered Contact reaches the user the DID map names', async () => {
    sipp = await startSipp({ scenario: 'uas-registrar', keys: { user: USER, password: SECRET, expires: '600' }, traceMsg: true });
    const registrar = sipp;
    const gw = await registering({ trunk: { password: SECRET }, dids: { [USER]: 'alice' } });
    await until(() => trunk(gw).registration?.state === 'registered', 'the registration');
    const contact = header(registers(await registrar.messages()).at(-1)!, 'Contact')!;
    const m = /^<sip:gwtrunk@([\d.]+):(\d+);transport=udp>$/.exec(contact);
    assert.ok(m, contact);

    phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    await phone.register({ expires: 300 });
    // The trunk calls the Contact it holds for gwtrunk (SIPp's UAC, from the trunk's address).
    caller = await startSipp({
      scenario: 'uac-call',
      remote: `${m[1]}:${m[2]}`,
      calls: 1,
      keys: { to_user: USER, hangup_ms: '500', bye_wait_ms: '15000', linger_ms: '500' },
    });
    const inc = await phone.nextIncoming(10_000);
    await inc.answer();
    await inc.waitTerminated(10_000);
    const done = await caller.done;
    assert.equal(done.code, 0, formatSippResult(done));
  });

  it('pings the trunk with OPTIONS: reachable when it answers', async () => {
    sipp = await startSipp({ scenario: 'uas-options', calls: 1000 });
    const gw = await start({ trunkPort: sipp.port, trunk: { optionsPingMs: 200 } });
    const t = await until(() => (trunk(gw).reachability === 'reachable' ? trunk(gw) : undefined), 'reachable');
    assert.equal(typeof t.rttMs, 'number');
    assert.equal(t.lastError, undefined);
    assert.equal(t.registration, null);
    const firstPing = t.lastPingAt!;
    await until(() => trunk(gw).lastPingAt! > firstPing, 'the next ping');
    const { body } = await api(gw, '/api/trunks');
    assert.equal(body.trunks[0].reachability, 'reachable');
    assert.equal(body.trunks[0].registration, null);
    assert.ok(Number.isFinite(Date.parse(body.trunks[0].lastPingAt)));
    assert.equal(await metric(gw, 'gw_trunk_reachable{trunk="sipp"}'), 1);
  });

  it('pings the trunk with OPTIONS: unknown before any answer, unreachable when nothing answers', async () => {
    silent = await bindUdp(0);
    // T1 10 ms: a ping gives up after 64·T1 = 640 ms.
    const gw = await start({ trunkPort: silent.address().port, t1: 10, trunk: { optionsPingMs: 200 } });
    assert.equal(trunk(gw).reachability, 'unknown');
    assert.equal(await metric(gw, 'gw_trunk_reachable{trunk="sipp"}'), -1);
    const t = await until(() => (trunk(gw).reachability === 'unreachable' ? trunk(gw) : undefined), 'unreachable');
    assert.match(t.lastError!, /no response/);
    assert.equal(t.rttMs, undefined);
    const { body } = await api(gw, '/api/trunks');
    assert.equal(body.trunks[0].reachability, 'unreachable');
    assert.match(body.trunks[0].lastError, /no response/);
    assert.equal(await metric(gw, 'gw_trunk_reachable{trunk="sipp"}'), 0);
  });
});
