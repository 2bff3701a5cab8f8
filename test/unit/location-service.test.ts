import assert from 'node:assert/strict';
import { LocationService, type LocationServiceOptions, type RegisterContact, type RegisterInput, type RegisterOutcome } from '../../sip/location-service.js';

const T0 = 1_700_000_000_000;
const INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"';
const ws = (flowId: string) => ({ transport: 'ws' as const, address: '192.0.2.10', port: 50000, flowId });
const udp = (flowId: string) => ({ transport: 'udp' as const, address: '192.0.2.20', port: 5060, flowId });

function setup(opts: LocationServiceOptions = {}) {
  const clock = { t: T0 };
  const ls = new LocationService({ minExpires: 60, maxExpires: 3600, defaultExpires: 600, now: () => clock.t, ...opts });
  let cseq = 0;
  const reg = (contacts: RegisterContact[] | '*', more: Partial<RegisterInput> = {}): RegisterOutcome =>
    ls.register({ aor: 'alice', callId: 'call-1', cseq: ++cseq, contacts, source: ws('ws-1'), ...more });
  const advance = (seconds: number) => {
    clock.t += seconds * 1000;
  };
  return { ls, reg, advance };
}

function ok(out: RegisterOutcome) {
  assert.ok(out.ok, `expected success, got ${JSON.stringify(out)}`);
  return out;
}

const uris = (list: { uri: string }[]) => list.map((b) => b.uri);

describe('LocationService', () => {
  it('registers several contacts for one user and reports each with its own expiry', () => {
    const { ls, reg } = setup();
    const out = ok(reg([{ uri: 'sip:a@h1.invalid;transport=ws', expires: 300 }, { uri: 'sip:b@h2.invalid;transport=ws' }], { expiresHeader: 900 }));
    assert.deepEqual(
      out.bindings.map((b) => [b.uri, b.expires, b.expiresAt]).sort(),
      [
        ['sip:a@h1.invalid;transport=ws', 300, T0 + 300_000],
        ['sip:b@h2.invalid;transport=ws', 900, T0 + 900_000],
      ],
    );
    assert.equal(ls.size, 2);
    assert.equal(ls.lookup('alice').length, 2);
    assert.deepEqual(ls.lookup('bob'), []);
  });

  it('uses the default expiry when neither the Contact nor the Expires header gives one', () => {
    const { reg } = setup();
    assert.equal(ok(reg([{ uri: 'sip:a@h.invalid' }])).bindings[0]!.expires, 600);
  });

  it('keeps what it stores: source, user agent, instance, reg-id, q and the Call-ID/CSeq', () => {
    const { ls } = setup();
    ls.register({ aor: 'alice', callId: 'c', cseq: 7, contacts: [{ uri: 'sip:a@h.invalid', instance: INSTANCE, regId: 1, q: 0.5 }], source: ws('f'), userAgent: 'SIP.js/0.21.2' });
    assert.deepEqual(ls.lookup('alice'), [
      {
        aor: 'alice',
        uri: 'sip:a@h.invalid',
        expiresAt: T0 + 600_000,
        expires: 600,
        callId: 'c',
        cseq: 7,
        instance: INSTANCE,
        regId: 1,
        q: 0.5,
        source: ws('f'),
        userAgent: 'SIP.js/0.21.2',
        registeredAt: T0,
        updatedAt: T0,
      },
    ]);
  });

  it('extends the expiry on a refresh and keeps the first registration time', () => {
    const { ls, reg, advance } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', expires: 600 }]));
    advance(500);
    const out = ok(reg([{ uri: 'sip:a@h.invalid', expires: 600 }]));
    assert.equal(out.bindings.length, 1);
    assert.equal(out.bindings[0]!.expiresAt, T0 + 1_100_000);
    assert.equal(out.bindings[0]!.expires, 600);
    assert.equal(out.bindings[0]!.registeredAt, T0);
    assert.equal(out.bindings[0]!.updatedAt, T0 + 500_000);
    advance(200); // past the first expiry, within the refreshed one
    assert.equal(ls.lookup('alice').length, 1);
  });

  it('matches the Contact by RFC 3261 URI comparison (host case, parameter order)', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@H.invalid;transport=ws;ob' }]));
    ok(reg([{ uri: 'sip:a@h.invalid;ob;transport=WS' }]));
    assert.equal(ls.size, 1);
  });

  it('removes only the contact registered with expires=0', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }, { uri: 'sip:b@h.invalid' }]));
    const out = ok(reg([{ uri: 'sip:a@h.invalid', expires: 0 }]));
    assert.deepEqual(uris(out.bindings), ['sip:b@h.invalid']);
    assert.deepEqual(uris(out.removed), ['sip:a@h.invalid']);
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:b@h.invalid']);
  });

  it('removes a contact when the Expires header is 0 and the Contact has no expires', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    ok(reg([{ uri: 'sip:a@h.invalid' }], { expiresHeader: 0 }));
    assert.equal(ls.size, 0);
    assert.deepEqual(ls.all(), []);
  });

  it("removes every binding of the AOR on '*' with Expires: 0, whatever their Call-ID", () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    ok(reg([{ uri: 'sip:b@h.invalid' }], { callId: 'other-phone' }));
    ok(reg([{ uri: 'sip:c@h.invalid' }], { aor: 'bob' }));
    const out = ok(reg('*', { expiresHeader: 0 }));
    assert.deepEqual(out.bindings, []);
    assert.deepEqual(uris(out.removed).sort(), ['sip:a@h.invalid', 'sip:b@h.invalid']);
    assert.deepEqual(ls.lookup('alice'), []);
    assert.equal(ls.lookup('bob').length, 1);
  });

  it("accepts '*' passed as a single Contact URI", () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    ok(reg([{ uri: '*' }], { expiresHeader: 0 }));
    assert.equal(ls.size, 0);
  });

  it("rejects '*' without Expires: 0 or next to another Contact with 400", () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    assert.deepEqual(reg('*'), { ok: false, status: 400, reason: "Contact '*' requires Expires: 0" });
    assert.equal(reg('*', { expiresHeader: 60 }).ok, false);
    assert.deepEqual(reg([{ uri: '*' }, { uri: 'sip:b@h.invalid' }], { expiresHeader: 0 }), { ok: false, status: 400, reason: "'*' must be the only Contact" });
    assert.equal(ls.size, 1);
  });

  it("rejects '*' with 500 when the same Call-ID has a CSeq not above the stored one", () => {
    const { ls } = setup();
    ls.register({ aor: 'alice', callId: 'c', cseq: 10, contacts: [{ uri: 'sip:a@h.invalid' }], source: ws('f') });
    const out = ls.register({ aor: 'alice', callId: 'c', cseq: 10, contacts: '*', expiresHeader: 0, source: ws('f') });
    assert.deepEqual(out, { ok: false, status: 500, reason: 'out-of-order CSeq' });
    assert.equal(ls.size, 1);
  });

  it('answers 423 with minExpires for a non-zero expiry below the minimum and changes nothing', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    const before = ls.lookup('alice');
    const out = reg([{ uri: 'sip:a@h.invalid', expires: 0 }, { uri: 'sip:b@h.invalid', expires: 30 }]);
    assert.deepEqual(out, { ok: false, status: 423, reason: 'Interval Too Brief', minExpires: 60 });
    assert.deepEqual(ls.lookup('alice'), before);
    assert.equal(reg([{ uri: 'sip:b@h.invalid' }], { expiresHeader: 59 }).ok, false);
  });

  it('clamps an expiry above the maximum', () => {
    const { reg } = setup();
    const out = ok(reg([{ uri: 'sip:a@h.invalid', expires: 86_400 }]));
    assert.equal(out.bindings[0]!.expires, 3600);
    assert.equal(out.bindings[0]!.expiresAt, T0 + 3_600_000);
  });

  it('rejects an out-of-order or repeated CSeq on the same Call-ID with 500 and keeps the binding', () => {
    const { ls } = setup();
    const base = { aor: 'alice', callId: 'c', source: ws('f') };
    ls.register({ ...base, cseq: 5, contacts: [{ uri: 'sip:a@h.invalid', expires: 600 }] });
    assert.deepEqual(ls.register({ ...base, cseq: 4, contacts: [{ uri: 'sip:a@h.invalid', expires: 0 }] }), { ok: false, status: 500, reason: 'out-of-order CSeq' });
    assert.equal(ls.register({ ...base, cseq: 5, contacts: [{ uri: 'sip:a@h.invalid', expires: 3000 }] }).ok, false);
    assert.deepEqual(
      ls.lookup('alice').map((b) => [b.cseq, b.expires]),
      [[5, 600]],
    );
    ok(ls.register({ ...base, cseq: 6, contacts: [{ uri: 'sip:a@h.invalid', expires: 3000 }] }));
  });

  it('lets a different Call-ID replace the binding whatever its CSeq', () => {
    const { ls } = setup();
    ls.register({ aor: 'alice', callId: 'old', cseq: 50, contacts: [{ uri: 'sip:a@h.invalid' }], source: ws('f1') });
    const out = ok(ls.register({ aor: 'alice', callId: 'new', cseq: 1, contacts: [{ uri: 'sip:a@h.invalid' }], source: ws('f2') }));
    assert.deepEqual(
      out.bindings.map((b) => [b.callId, b.cseq, b.source.flowId]),
      [['new', 1, 'f2']],
    );
    assert.deepEqual(out.removed, []);
  });

  it('replaces the binding of the same +sip.instance and reg-id over a new flow, even with a new Contact URI', () => {
    const { ls, advance } = setup();
    ls.register({ aor: 'alice', callId: 'c1', cseq: 1, contacts: [{ uri: 'sip:r4nd0m@aaa.invalid;transport=ws', instance: INSTANCE, regId: 1 }], source: ws('ws-1') });
    advance(10);
    // The browser reloaded: new connection, new random Contact, new Call-ID, the same instance (case and quoting aside).
    const out = ok(
      ls.register({ aor: 'alice', callId: 'c2', cseq: 1, contacts: [{ uri: 'sip:0th3r@bbb.invalid;transport=ws', instance: '<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>', regId: 1 }], source: ws('ws-2') }),
    );
    assert.deepEqual(
      out.bindings.map((b) => [b.uri, b.source.flowId, b.registeredAt]),
      [['sip:0th3r@bbb.invalid;transport=ws', 'ws-2', T0]],
    );
    assert.deepEqual(out.removed, []);
    assert.deepEqual(ls.dropFlow('ws-1'), [], 'the old flow no longer owns the binding');
    assert.equal(ls.size, 1);
    assert.equal(ls.dropFlow('ws-2').length, 1);
    assert.equal(ls.size, 0);
  });

  it('keeps one binding per reg-id of an instance', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', instance: INSTANCE, regId: 1 }]));
    ok(reg([{ uri: 'sip:a@h.invalid', instance: INSTANCE, regId: 2 }], { source: ws('ws-2') }));
    assert.equal(ls.size, 2);
  });

  it('keys by Contact URI when there is no instance, ignoring a lone reg-id', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', regId: 1 }]));
    ok(reg([{ uri: 'sip:b@h.invalid', regId: 1 }]));
    ok(reg([{ uri: 'sip:a@h.invalid', instance: INSTANCE }]));
    assert.deepEqual(uris(ls.lookup('alice')).sort(), ['sip:a@h.invalid', 'sip:b@h.invalid']);
    assert.equal(ls.lookup('alice').find((b) => b.uri === 'sip:a@h.invalid')!.regId, undefined);
  });

  it('rejects a reg-id Contact next to another Contact with 400', () => {
    const { ls, reg } = setup();
    const out = reg([{ uri: 'sip:a@h.invalid', instance: INSTANCE, regId: 1 }, { uri: 'sip:b@h.invalid' }]);
    assert.deepEqual(out, { ok: false, status: 400, reason: 'reg-id with more than one Contact' });
    assert.equal(ls.size, 0);
  });

  it('lets the last of two equal Contacts in one REGISTER win instead of failing on its own CSeq', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', expires: 300 }, { uri: 'sip:a@h.invalid', expires: 900 }]));
    assert.deepEqual(
      ls.lookup('alice').map((b) => b.expires),
      [900],
    );
  });

  it('rejects malformed input with 400 and changes nothing', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    for (const bad of [
      reg([{ uri: 'not a uri' }]),
      reg([{ uri: 'sip:b@h.invalid', expires: -1 }]),
      reg([{ uri: 'sip:b@h.invalid', expires: 1.5 }]),
      reg([{ uri: 'sip:b@h.invalid', q: 1.5 }]),
      reg([{ uri: 'sip:b@h.invalid', instance: INSTANCE, regId: 0 }]),
      reg([{ uri: 'sip:b@h.invalid' }], { expiresHeader: Number.NaN }),
    ]) {
      assert.equal(bad.ok, false);
      if (!bad.ok) assert.equal(bad.status, 400);
    }
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:a@h.invalid']);
  });

  it('answers a REGISTER without Contact with the current bindings and changes nothing', () => {
    const { ls, reg, advance } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }]));
    advance(100);
    const out = ok(reg([]));
    assert.deepEqual(
      out.bindings.map((b) => [b.uri, b.expires]),
      [['sip:a@h.invalid', 500]],
    );
    assert.deepEqual(ok(reg([], { aor: 'nobody' })).bindings, []);
    assert.equal(ls.all().length, 1);
  });

  it('drops the bindings of a closed WebSocket flow and returns them', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }], { source: ws('ws-1') }));
    ok(reg([{ uri: 'sip:b@h.invalid' }], { source: ws('ws-2') }));
    ok(reg([{ uri: 'sip:c@h.invalid' }], { aor: 'bob', source: ws('ws-1') }));
    const dropped = ls.dropFlow('ws-1');
    assert.deepEqual(uris(dropped).sort(), ['sip:a@h.invalid', 'sip:c@h.invalid']);
    assert.deepEqual(uris(ls.all()), ['sip:b@h.invalid']);
    assert.deepEqual(ls.dropFlow('ws-1'), []);
    ok(reg([{ uri: 'sip:a@h.invalid' }], { source: ws('ws-3') }));
    assert.equal(ls.size, 2);
  });

  it('never drops UDP bindings by flow', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@192.0.2.20:5060' }], { source: udp('udp-1') }));
    assert.deepEqual(ls.dropFlow('udp-1'), []);
    assert.equal(ls.size, 1);
  });

  it('stops tracking the old flow when a binding is refreshed over a new one', () => {
    const { ls, reg } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid' }], { source: ws('ws-1') }));
    ok(reg([{ uri: 'sip:a@h.invalid' }], { source: ws('ws-2') }));
    assert.deepEqual(ls.dropFlow('ws-1'), []);
    assert.equal(ls.dropFlow('ws-2').length, 1);
  });

  it('evicts the least recently refreshed binding beyond maxContactsPerAor', () => {
    const { ls, reg, advance } = setup({ maxContactsPerAor: 2 });
    ok(reg([{ uri: 'sip:a@h.invalid' }], { callId: 'A' }));
    advance(1);
    ok(reg([{ uri: 'sip:b@h.invalid' }], { callId: 'B' }));
    advance(1);
    ok(reg([{ uri: 'sip:a@h.invalid' }], { callId: 'A' })); // a refreshed: b is now the stalest
    advance(1);
    const out = ok(reg([{ uri: 'sip:c@h.invalid' }], { callId: 'C' }));
    assert.deepEqual(uris(out.removed), ['sip:b@h.invalid']);
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:c@h.invalid', 'sip:a@h.invalid']);
  });

  it('rejects with 403 one REGISTER that alone carries more contacts than maxContactsPerAor', () => {
    const { ls, reg } = setup({ maxContactsPerAor: 2 });
    ok(reg([{ uri: 'sip:z@h.invalid' }]));
    const out = reg([{ uri: 'sip:a@h.invalid' }, { uri: 'sip:b@h.invalid' }, { uri: 'sip:c@h.invalid' }]);
    assert.deepEqual(out, { ok: false, status: 403, reason: 'more than 2 contacts' });
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:z@h.invalid']);
  });

  it("rejects a new AOR with 500 'registrar full' beyond maxAors, but not a known one", () => {
    const { ls, reg } = setup({ maxAors: 2 });
    ok(reg([{ uri: 'sip:a@h.invalid' }], { aor: 'alice' }));
    ok(reg([{ uri: 'sip:b@h.invalid' }], { aor: 'bob' }));
    assert.deepEqual(reg([{ uri: 'sip:c@h.invalid' }], { aor: 'carol' }), { ok: false, status: 500, reason: 'registrar full' });
    ok(reg([{ uri: 'sip:a2@h.invalid' }], { aor: 'alice' }));
    ok(reg([{ uri: 'sip:b@h.invalid', expires: 0 }], { aor: 'bob' }));
    ok(reg([{ uri: 'sip:c@h.invalid' }], { aor: 'carol' }));
    assert.deepEqual(ls.all().map((b) => b.aor).sort(), ['alice', 'alice', 'carol']);
  });

  it('orders lookup by q, then most recently refreshed', () => {
    const { ls, reg, advance } = setup();
    ok(reg([{ uri: 'sip:low@h.invalid', q: 0.1 }], { callId: 'L' }));
    advance(1);
    ok(reg([{ uri: 'sip:old@h.invalid' }], { callId: 'O' }));
    advance(1);
    ok(reg([{ uri: 'sip:new@h.invalid' }], { callId: 'N' }));
    advance(1);
    ok(reg([{ uri: 'sip:half@h.invalid', q: 0.5 }], { callId: 'H' }));
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:new@h.invalid', 'sip:old@h.invalid', 'sip:half@h.invalid', 'sip:low@h.invalid']);
  });

  it('never returns an expired binding, even before expire() runs', () => {
    const { ls, reg, advance } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', expires: 60 }]));
    ok(reg([{ uri: 'sip:b@h.invalid', expires: 120 }], { callId: 'other' }));
    advance(60);
    assert.deepEqual(uris(ls.lookup('alice')), ['sip:b@h.invalid']);
    assert.deepEqual(uris(ls.all()), ['sip:b@h.invalid']);
    assert.equal(ls.size, 1);
  });

  it('treats an expired binding as gone: any CSeq may register it again, and the 200 reports it removed', () => {
    const { ls, advance } = setup();
    const base = { aor: 'alice', callId: 'c', source: ws('f'), contacts: [{ uri: 'sip:a@h.invalid', expires: 60 }] };
    ls.register({ ...base, cseq: 9 });
    advance(61);
    const out = ok(ls.register({ ...base, cseq: 1 }));
    assert.equal(out.bindings[0]!.registeredAt, T0 + 61_000);
    assert.deepEqual(
      out.removed.map((b) => [b.uri, b.cseq, b.expires]),
      [['sip:a@h.invalid', 9, 0]],
    );
    assert.deepEqual(ls.expire(), []);
  });

  it('expire() removes and returns only the expired bindings, once', () => {
    const { ls, reg, advance } = setup();
    ok(reg([{ uri: 'sip:a@h.invalid', expires: 60 }]));
    ok(reg([{ uri: 'sip:b@h.invalid', expires: 120 }], { callId: 'other' }));
    ok(reg([{ uri: 'sip:c@h.invalid', expires: 60 }], { aor: 'bob', source: ws('ws-9') }));
    advance(59);
    assert.deepEqual(ls.expire(), []);
    advance(1);
    const expired = ls.expire();
    assert.deepEqual(expired.map((b) => [b.aor, b.uri, b.expires]).sort(), [
      ['alice', 'sip:a@h.invalid', 0],
      ['bob', 'sip:c@h.invalid', 0],
    ]);
    assert.deepEqual(ls.expire(), []);
    assert.deepEqual(uris(ls.all()), ['sip:b@h.invalid']);
    assert.deepEqual(ls.dropFlow('ws-9'), [], 'an expired binding leaves the flow index too');
  });

  it('throws TypeError on inconsistent limits', () => {
    assert.throws(() => new LocationService({ minExpires: 600, maxExpires: 60 }), TypeError);
    assert.throws(() => new LocationService({ defaultExpires: 30 }), TypeError);
    assert.throws(() => new LocationService({ maxContactsPerAor: 0 }), TypeError);
    assert.doesNotThrow(() => new LocationService());
  });
});
