import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  answerChallenge,
  DigestAuthenticator,
  type DigestAuthenticatorOptions,
  type DigestAlgorithm,
  type DigestCredentials,
  type DigestUser,
  digestHa1,
  digestResponse,
  FailureLimiter,
  parseAuthHeader,
  pickChallenge,
} from '../../sip/digest.js';

const REALM = 'gw.example.com';
const REQ = { method: 'REGISTER', uri: 'sip:gw.example.com' };
const USERS: Record<string, DigestUser> = {
  alice: { password: 'wonderland' },
  bob: { ha1: { md5: digestHa1('MD5', 'bob', REALM, 'builder'), sha256: digestHa1('SHA-256', 'bob', REALM, 'builder') } },
  carol: { ha1: { md5: digestHa1('MD5', 'carol', REALM, 'c') } },
};
const ALICE: DigestCredentials = { username: 'alice', password: 'wonderland' };

function setup(opts: Partial<DigestAuthenticatorOptions> = {}) {
  const clock = { t: 1_700_000_000_000 };
  const auth = new DigestAuthenticator({ realm: REALM, lookup: (u) => USERS[u], now: () => clock.t, ...opts });
  return { auth, clock };
}

/** The challenge of `auth` for `algorithm`. */
function challengeFor(auth: DigestAuthenticator, algorithm: DigestAlgorithm, stale = false): string {
  const c = auth.challenge({ stale }).find((h) => h.includes(`algorithm=${algorithm},`));
  assert.ok(c, `no ${algorithm} challenge`);
  return c;
}

function answer(challenge: string, creds: DigestCredentials = ALICE, req = REQ, nc = 1): string {
  const a = answerChallenge(challenge, creds, req, { nc });
  assert.ok(a, 'challenge not answerable');
  return a.header;
}

const md5 = (s: string) => createHash('md5').update(s).digest('hex');

describe('SIP digest: known-answer vectors', () => {
  // RFC 2617 §3.5
  const rfc2617 = { realm: 'testrealm@host.com', nonce: 'dcd98b7102dd2f0e8b11d0f600bfb0c093', opaque: '5ccc069c403ebaf9f0171e9517f40e41' };
  const mufasa = { username: 'Mufasa', password: 'Circle Of Life' };

  it('computes the RFC 2617 §3.5 HA1 and response', () => {
    const ha1 = digestHa1('MD5', 'Mufasa', rfc2617.realm, 'Circle Of Life');
    assert.equal(ha1, '939e7578ed9e3c518a452acee763bce9');
    const r = digestResponse({ algorithm: 'MD5', ha1, nonce: rfc2617.nonce, method: 'GET', uri: '/dir/index.html', qop: { nc: '00000001', cnonce: '0a4f113b' } });
    assert.equal(r, '6629fae49393a05397450978507c4ef1');
  });

  it('answers the RFC 2617 §3.5 challenge with the expected response and echoes opaque', () => {
    const challenge = `Digest realm="${rfc2617.realm}", qop="auth,auth-int", nonce="${rfc2617.nonce}", opaque="${rfc2617.opaque}"`;
    const a = answerChallenge(challenge, mufasa, { method: 'GET', uri: '/dir/index.html' }, { nc: 1, cnonce: '0a4f113b' });
    assert.ok(a);
    assert.equal(a.algorithm, 'MD5');
    const p = parseAuthHeader(a.header)!.params;
    assert.equal(p.get('response'), '6629fae49393a05397450978507c4ef1');
    assert.equal(p.get('opaque'), rfc2617.opaque);
    assert.equal(p.get('qop'), 'auth');
    assert.equal(p.get('nc'), '00000001');
    assert.equal(p.get('cnonce'), '0a4f113b');
    assert.equal(p.get('username'), 'Mufasa');
  });

  // RFC 7616 §3.9.1 (note the lowercase "of" in this password)
  for (const [algorithm, expected] of [
    ['SHA-256', '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1'],
    ['MD5', '8ca523f5e9506fed4657c9700eebdbec'],
  ] as const) {
    it(`answers the RFC 7616 §3.9.1 ${algorithm} challenge with the expected response`, () => {
      const challenge =
        `Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=${algorithm}, ` +
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"';
      const a = answerChallenge(challenge, { username: 'Mufasa', password: 'Circle of Life' }, { method: 'GET', uri: '/dir/index.html' }, {
        nc: 1,
        cnonce: 'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ',
      });
      assert.equal(a?.algorithm, algorithm);
      assert.equal(parseAuthHeader(a.header)!.params.get('response'), expected);
      assert.equal(parseAuthHeader(a.header)!.params.get('algorithm'), algorithm);
    });
  }
});

describe('SIP digest: header parsing', () => {
  it('unquotes values, keeps commas inside quotes and honours backslash escapes', () => {
    const h = parseAuthHeader('Digest  Username="a, \\"b\\"\\\\c" ,realm = r,, nc=00000001,uri="sip:x@y;transport=tcp"');
    assert.ok(h);
    assert.equal(h.scheme, 'Digest');
    assert.equal(h.params.get('username'), 'a, "b"\\c');
    assert.equal(h.params.get('realm'), 'r');
    assert.equal(h.params.get('nc'), '00000001');
    assert.equal(h.params.get('uri'), 'sip:x@y;transport=tcp');
  });

  it('rejects duplicate parameters, unterminated quotes and missing values', () => {
    for (const v of ['Digest a=1, a=2', 'Digest a="x', 'Digest a=', 'Digest a', 'Digest', 'Digest a="x" b="y"', '=x']) {
      assert.equal(parseAuthHeader(v), undefined, v);
    }
  });
});

describe('DigestAuthenticator (server side)', () => {
  it('offers one challenge per algorithm, SHA-256 first, sharing a nonce and qop=auth', () => {
    const { auth } = setup();
    const [first, second, ...rest] = auth.challenge();
    assert.equal(rest.length, 0);
    const a = parseAuthHeader(first)!.params;
    const b = parseAuthHeader(second)!.params;
    assert.equal(a.get('algorithm'), 'SHA-256');
    assert.equal(b.get('algorithm'), 'MD5');
    assert.equal(a.get('nonce'), b.get('nonce'));
    assert.equal(a.get('realm'), REALM);
    assert.equal(a.get('qop'), 'auth');
    assert.equal(a.get('stale'), undefined);
    assert.equal(parseAuthHeader(auth.challenge({ stale: true })[0])!.params.get('stale'), 'true');
  });

  it('offers the configured algorithms in the configured order', () => {
    const { auth } = setup({ algorithms: ['MD5'] });
    const c = auth.challenge();
    assert.equal(c.length, 1);
    assert.match(c[0]!, /algorithm=MD5/);
  });

  for (const algorithm of ['SHA-256', 'MD5'] as const) {
    it(`accepts a ${algorithm} answer from a user with a password`, () => {
      const { auth } = setup();
      assert.deepEqual(auth.verify(answer(challengeFor(auth, algorithm)), REQ), { ok: true, username: 'alice', algorithm });
    });

    it(`accepts a ${algorithm} answer checked against a stored HA1`, () => {
      const { auth } = setup();
      const header = answer(challengeFor(auth, algorithm), { username: 'bob', password: 'builder' });
      assert.deepEqual(auth.verify(header, REQ), { ok: true, username: 'bob', algorithm });
    });

    it(`accepts a ${algorithm} answer computed by a client holding only HA1`, () => {
      const { auth } = setup();
      const header = answer(challengeFor(auth, algorithm), { username: 'bob', ha1: USERS.bob!.ha1! });
      assert.equal(auth.verify(header, REQ).ok, true);
    });
  }

  it('reports a wrong password as bad-response, with the username', () => {
    const { auth } = setup();
    const r = auth.verify(answer(challengeFor(auth, 'SHA-256'), { username: 'alice', password: 'guess' }), REQ);
    assert.deepEqual(r, { ok: false, reason: 'bad-response', username: 'alice' });
  });

  it('reports an unknown user', () => {
    const { auth } = setup();
    const r = auth.verify(answer(challengeFor(auth, 'MD5'), { username: 'mallory', password: 'x' }), REQ);
    assert.deepEqual(r, { ok: false, reason: 'unknown-user', username: 'mallory' });
  });

  it('reports credentials for another realm as wrong-realm', () => {
    const { auth } = setup();
    const other = challengeFor(auth, 'MD5').replace(`realm="${REALM}"`, 'realm="elsewhere"');
    assert.equal((auth.verify(answer(other), REQ) as { reason: string }).reason, 'wrong-realm');
  });

  it('uses the Authorization value for its own realm when several are sent', () => {
    const { auth } = setup();
    const other = answer(challengeFor(auth, 'MD5').replace(`realm="${REALM}"`, 'realm="proxy"'));
    assert.equal(auth.verify([other, answer(challengeFor(auth, 'MD5'))], REQ).ok, true);
  });

  it('reports a tampered or foreign nonce as unknown-nonce', () => {
    const { auth } = setup();
    const c = challengeFor(auth, 'SHA-256');
    const nonce = parseAuthHeader(c)!.params.get('nonce')!;
    const flipped = nonce.slice(0, 5) + (nonce[5] === '0' ? '1' : '0') + nonce.slice(6);
    for (const bad of [flipped, nonce.toUpperCase(), nonce + '00', 'abc']) {
      const r = auth.verify(answer(c.replace(nonce, bad)), REQ);
      assert.equal((r as { reason: string }).reason, 'unknown-nonce', bad);
    }
    const { auth: stranger } = setup();
    assert.equal((stranger.verify(answer(c), REQ) as { reason: string }).reason, 'unknown-nonce');
  });

  it('accepts nonces of another instance sharing the secret', () => {
    const secret = Buffer.alloc(32, 7);
    const { auth: a } = setup({ secret });
    const { auth: b } = setup({ secret });
    assert.equal(b.verify(answer(challengeFor(a, 'MD5')), REQ).ok, true);
  });

  it('rejects a replayed nonce-count and accepts increasing ones', () => {
    const { auth } = setup();
    const c = challengeFor(auth, 'SHA-256');
    assert.equal(auth.verify(answer(c, ALICE, REQ, 1), REQ).ok, true);
    assert.deepEqual(auth.verify(answer(c, ALICE, REQ, 1), REQ), { ok: false, reason: 'replay', username: 'alice' });
    assert.equal(auth.verify(answer(c, ALICE, REQ, 2), REQ).ok, true);
    assert.equal(auth.verify(answer(c, ALICE, REQ, 7), REQ).ok, true);
    assert.equal((auth.verify(answer(c, ALICE, REQ, 5), REQ) as { reason: string }).reason, 'replay');
  });

  it('reports an expired nonce with correct credentials as stale-nonce, and with wrong ones as bad-response', () => {
    const { auth, clock } = setup({ nonceTtlMs: 60_000 });
    const c = challengeFor(auth, 'MD5');
    clock.t += 59_000;
    assert.equal(auth.verify(answer(c, ALICE, REQ, 1), REQ).ok, true);
    clock.t += 2_000;
    assert.equal((auth.verify(answer(c, ALICE, REQ, 2), REQ) as { reason: string }).reason, 'stale-nonce');
    const wrong = answer(c, { username: 'alice', password: 'nope' }, REQ, 3);
    assert.equal((auth.verify(wrong, REQ) as { reason: string }).reason, 'bad-response');
    assert.equal(auth.verify(answer(challengeFor(auth, 'MD5', true), ALICE, REQ, 1), REQ).ok, true);
  });

  it('reports a uri parameter that differs from the Request-URI', () => {
    const { auth } = setup();
    const header = answer(challengeFor(auth, 'MD5'), ALICE, { method: 'REGISTER', uri: 'sip:other.example.com' });
    assert.equal((auth.verify(header, REQ) as { reason: string }).reason, 'uri-mismatch');
    assert.equal(auth.verify(answer(challengeFor(auth, 'MD5')), { ...REQ, uri: ` ${REQ.uri} ` }).ok, true);
  });

  it('reports a response computed for another method as bad-response', () => {
    const { auth } = setup();
    const header = answer(challengeFor(auth, 'MD5'), ALICE, { method: 'INVITE', uri: REQ.uri });
    assert.equal((auth.verify(header, REQ) as { reason: string }).reason, 'bad-response');
  });

  it('reports what it does not support', () => {
    const { auth } = setup({ algorithms: ['SHA-256'] });
    const c = challengeFor(auth, 'SHA-256');
    const cases: Array<[string, string]> = [
      ['MD5 when only SHA-256 is offered', answer(c.replace('algorithm=SHA-256', 'algorithm=MD5'))],
      ['an RFC 2069 answer without qop', answer(c.replace(', qop="auth"', ''))],
      ['a SHA-256 answer for a user with only an MD5 HA1', answer(c, { username: 'carol', password: 'c' })],
      ['Basic credentials', 'Basic YWxpY2U6d29uZGVybGFuZA=='],
      ['Basic credentials (token68 with padding)', 'Basic YWxpY2U6d29uZGVybGFuZA='],
      ['qop=auth-int', answer(c).replace('qop=auth', 'qop=auth-int')],
      ['algorithm=SHA-256-sess', answer(c).replace('algorithm=SHA-256', 'algorithm=SHA-256-sess')],
    ];
    for (const [what, header] of cases) assert.equal((auth.verify(header, REQ) as { reason: string }).reason, 'unsupported', what);
  });

  it('reports absent and incomplete credentials', () => {
    const { auth } = setup();
    const good = answer(challengeFor(auth, 'MD5'));
    assert.deepEqual(auth.verify(undefined, REQ), { ok: false, reason: 'missing' });
    assert.deepEqual(auth.verify('  ', REQ), { ok: false, reason: 'missing' });
    assert.deepEqual(auth.verify([], REQ), { ok: false, reason: 'missing' });
    for (const [what, header] of [
      ['no response', good.replace(/response="[0-9a-f]+", /, '')],
      ['no cnonce', good.replace(/cnonce="[0-9a-f]+", /, '')],
      ['a short nc', good.replace('nc=00000001', 'nc=1')],
      ['a zero nc', good.replace('nc=00000001', 'nc=00000000')],
      ['no username', good.replace('username="alice", ', '')],
    ]) {
      assert.equal((auth.verify(header, REQ) as { reason: string }).reason, 'malformed', what);
    }
  });

  it('never throws on garbage headers', () => {
    const { auth } = setup();
    const good = answer(challengeFor(auth, 'SHA-256'));
    const shapes: unknown[] = [
      '', 'Digest', 'Digest ', 'Digest ,,,', 'Digest "', 'Digest =', 'Digest a=b=c', 'Digest a="\\', '\u0000\uffff',
      'Digest username', 'digest username="a"', ',', '"quoted" only', 'Digest ' + 'a=b, '.repeat(5000),
      'Digest username="' + 'x'.repeat(20000) + '"', good.slice(0, good.length / 2), good + ' trailing',
      good.replace(/"/g, ''), good.replace(/,/g, ''), good.replace(/=/g, ' '), 'Digest __proto__=1, constructor=2',
      42, null, {}, ['Digest a=b', 7],
    ];
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 2000; i++) {
      const chars = [...good];
      for (let k = 0; k < 1 + rand() * 6; k++) chars[Math.floor(rand() * chars.length)] = '",= \\\rx0'[Math.floor(rand() * 9)]!;
      shapes.push(chars.join(''));
    }
    for (const h of shapes) {
      const r = auth.verify(h as string, REQ);
      assert.equal(typeof r.ok, 'boolean');
      answerChallenge(h as string, ALICE, REQ);
      pickChallenge([h as string]);
    }
  });

  it('keeps replay records bounded and turns away a nonce whose record was evicted', () => {
    const { auth, clock } = setup({ maxNonces: 10 });
    const first = challengeFor(auth, 'MD5');
    assert.equal(auth.verify(answer(first), REQ).ok, true);
    for (let i = 0; i < 200; i++) {
      clock.t += 1;
      assert.equal(auth.verify(answer(challengeFor(auth, 'MD5')), REQ).ok, true);
      assert.ok(auth.trackedNonces <= 10);
    }
    assert.equal(auth.trackedNonces, 10);
    // Its nc history is gone: replaying nc=1 must not succeed.
    assert.equal((auth.verify(answer(first, ALICE, REQ, 1), REQ) as { reason: string }).reason, 'stale-nonce');
  });

  it('drops replay records once their nonce has expired', () => {
    const { auth, clock } = setup({ nonceTtlMs: 1_000 });
    for (let i = 0; i < 5; i++) auth.verify(answer(challengeFor(auth, 'MD5')), REQ);
    assert.equal(auth.trackedNonces, 5);
    clock.t += 2_000;
    auth.verify(answer(challengeFor(auth, 'MD5')), REQ);
    assert.equal(auth.trackedNonces, 1);
  });

  it('rejects bad options with a TypeError', () => {
    const lookup = () => undefined;
    assert.throws(() => new DigestAuthenticator({ realm: '', lookup }), TypeError);
    assert.throws(() => new DigestAuthenticator({ realm: 'r', lookup, algorithms: [] }), TypeError);
    assert.throws(() => new DigestAuthenticator({ realm: 'r', lookup, algorithms: ['SHA-512' as DigestAlgorithm] }), TypeError);
    assert.throws(() => new DigestAuthenticator({ realm: 'r', lookup, maxNonces: 0 }), TypeError);
    assert.throws(() => new DigestAuthenticator({ realm: 'r', lookup, secret: Buffer.alloc(4) }), TypeError);
  });
});

describe('answerChallenge / pickChallenge (client side)', () => {
  const base = 'Digest realm="trunk", nonce="abc123"';

  it('answers a challenge without qop in the RFC 2069 form', () => {
    const a = answerChallenge(`${base}, opaque="op"`, { username: 'u', password: 'p' }, { method: 'INVITE', uri: 'sip:1@trunk' });
    assert.ok(a);
    const p = parseAuthHeader(a.header)!.params;
    const expected = md5(`${md5('u:trunk:p')}:abc123:${md5('INVITE:sip:1@trunk')}`);
    assert.equal(p.get('response'), expected);
    assert.equal(p.get('algorithm'), 'MD5');
    assert.equal(p.get('opaque'), 'op');
    for (const k of ['qop', 'nc', 'cnonce']) assert.equal(p.has(k), false, k);
  });

  it('uses the auth username when given, formats nc as 8 hex digits and makes a fresh cnonce', () => {
    const creds = { username: '+15551234', authUsername: 'acct7', password: 'p' };
    const a = answerChallenge(`${base}, qop="auth"`, creds, REQ, { nc: 10 })!;
    const b = answerChallenge(`${base}, qop="auth"`, creds, REQ, { nc: 10 })!;
    const p = parseAuthHeader(a.header)!.params;
    assert.equal(p.get('username'), 'acct7');
    assert.equal(p.get('nc'), '0000000a');
    assert.notEqual(p.get('cnonce'), parseAuthHeader(b.header)!.params.get('cnonce'));
    assert.throws(() => answerChallenge(`${base}, qop="auth"`, creds, REQ, { nc: 0 }), TypeError);
  });

  it('escapes quotes and backslashes in the values it sends', () => {
    const a = answerChallenge('Digest realm="a \\"b\\"", nonce="n"', { username: 'x"y\\z', password: 'p' }, REQ)!;
    const p = parseAuthHeader(a.header)!.params;
    assert.equal(p.get('username'), 'x"y\\z');
    assert.equal(p.get('realm'), 'a "b"');
  });

  it('declines challenges it cannot answer', () => {
    const creds = { username: 'u', password: 'p' };
    for (const c of [`${base}, qop="auth-int"`, `${base}, algorithm=SHA-512-256`, `${base}, algorithm=MD5-sess`, 'Basic realm="x"', 'Digest nonce="n"', 'Digest realm="r"', '']) {
      assert.equal(answerChallenge(c, creds, REQ), undefined, c);
    }
    assert.equal(answerChallenge(`${base}, algorithm=SHA-256`, { username: 'u', ha1: { md5: 'aa' } }, REQ), undefined);
  });

  it('prefers SHA-256 over MD5 whatever the order, and skips unsupported challenges', () => {
    const md5c = `${base}, algorithm=MD5, qop="auth"`;
    const sha = `${base}, algorithm=SHA-256, qop="auth"`;
    assert.equal(pickChallenge([md5c, sha]), sha);
    assert.equal(pickChallenge([sha, md5c]), sha);
    assert.equal(pickChallenge([`${base}, algorithm=SHA-512`, 'garbage', md5c]), md5c);
    assert.equal(pickChallenge([md5c, sha], { username: 'u', ha1: { md5: 'aa' } }), md5c);
    assert.equal(pickChallenge([]), undefined);
  });
});

describe('FailureLimiter', () => {
  function limiter(maxSources?: number) {
    const clock = { t: 0 };
    const l = new FailureLimiter({ maxFailures: 3, windowMs: 10_000, blockMs: 60_000, now: () => clock.t, ...(maxSources ? { maxSources } : {}) });
    return { l, clock };
  }

  it('blocks a source after maxFailures within the window and unblocks after blockMs', () => {
    const { l, clock } = limiter();
    l.fail('1.2.3.4');
    l.fail('1.2.3.4');
    assert.equal(l.blocked('1.2.3.4'), false);
    l.fail('1.2.3.4');
    assert.equal(l.blocked('1.2.3.4'), true);
    assert.equal(l.blocked('5.6.7.8'), false);
    clock.t += 59_999;
    l.fail('1.2.3.4'); // failures while blocked do not extend the block
    assert.equal(l.blocked('1.2.3.4'), true);
    clock.t += 1;
    assert.equal(l.blocked('1.2.3.4'), false);
    l.fail('1.2.3.4');
    assert.equal(l.blocked('1.2.3.4'), false, 'starts afresh after the block');
  });

  it('does not block failures spread wider than the window', () => {
    const { l, clock } = limiter();
    for (let i = 0; i < 10; i++) {
      l.fail('a');
      clock.t += 5_001;
    }
    assert.equal(l.blocked('a'), false);
  });

  it('forgets failures on success but keeps a block in force', () => {
    const { l } = limiter();
    l.fail('a');
    l.fail('a');
    l.succeed('a');
    l.fail('a');
    assert.equal(l.blocked('a'), false);
    l.fail('a');
    l.fail('a');
    l.succeed('a');
    assert.equal(l.blocked('a'), true);
  });

  it('stays bounded, evicting the sources that failed least recently', () => {
    const { l } = limiter(100);
    for (let i = 0; i < 3; i++) l.fail('attacker');
    for (let i = 0; i < 1000; i++) {
      l.fail(`10.0.${i >> 8}.${i & 255}`);
      if (i % 50 === 0) l.fail('attacker');
      assert.ok(l.size <= 100);
    }
    assert.equal(l.blocked('attacker'), true);
  });
});
