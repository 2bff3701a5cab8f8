import assert from 'node:assert/strict';
import { DigestAuthenticator, parseAuthHeader, type DigestCredentials } from '../../sip/digest.js';
import { DigestClient } from '../../sip/digest-client.js';

const CREDS: DigestCredentials = { username: 'gwtrunk', password: 'trunk-secret' };
const REQ = { method: 'INVITE', uri: 'sip:1000@trunk.example.com' };

/** A server side (a proxy or a PBX) with its own realm and a clock the test moves. */
function server(realm: string) {
  const clock = { t: 1_700_000_000_000 };
  const auth = new DigestAuthenticator({ realm, lookup: (u) => (u === 'gwtrunk' ? { password: 'trunk-secret' } : undefined), now: () => clock.t, nonceTtlMs: 60_000 });
  return { auth, clock };
}

/** The values of the lines named `name` among `lines` ("Name: value"). */
const valuesOf = (lines: string[], name: string) => lines.filter((l) => l.startsWith(`${name}: `)).map((l) => l.slice(name.length + 2));

describe('DigestClient: answers accumulated over the challenges to one request (RFC 3261 §22.3)', () => {
  it("keeps the proxy's Proxy-Authorization when the PBX behind it then asks for Authorization", () => {
    const proxy = server('proxy.example.com');
    const pbx = server('pbx.example.com');
    const client = new DigestClient(CREDS);
    assert.equal(client.challenge('proxy', proxy.auth.challenge()), true);
    const second = client.headers(REQ);
    assert.equal(second.length, 1);
    assert.equal(proxy.auth.verify(valuesOf(second, 'Proxy-Authorization'), REQ).ok, true);

    assert.equal(client.challenge('www', pbx.auth.challenge()), true);
    const third = client.headers(REQ);
    assert.equal(third.length, 2);
    assert.ok(third[0]!.startsWith('Proxy-Authorization: ') && third[1]!.startsWith('Authorization: '), third.join('\n'));
    // Both servers accept what the third request carries: the reused nonce counts up (nc 2), no replay.
    assert.equal(proxy.auth.verify(valuesOf(third, 'Proxy-Authorization'), REQ).ok, true);
    assert.equal(pbx.auth.verify(valuesOf(third, 'Authorization'), REQ).ok, true);
    assert.equal(parseAuthHeader(valuesOf(third, 'Proxy-Authorization')[0])?.params.get('nc'), '00000002');
  });

  it('fails when a realm it answered challenges again (wrong credentials): one try per kind and realm', () => {
    const pbx = server('pbx.example.com');
    const client = new DigestClient(CREDS);
    assert.equal(client.challenge('www', pbx.auth.challenge()), true);
    assert.equal(client.challenge('www', pbx.auth.challenge()), false);
    // The same realm asked by a proxy is another kind of challenge, answered once too.
    assert.equal(client.challenge('proxy', pbx.auth.challenge()), true);
    assert.equal(client.challenge('proxy', pbx.auth.challenge()), false);
  });

  it('retries once with the new nonce on stale=true, and fails on a second stale challenge', () => {
    const pbx = server('pbx.example.com');
    const client = new DigestClient(CREDS);
    assert.equal(client.challenge('www', pbx.auth.challenge()), true);
    const old = client.headers(REQ);
    pbx.clock.t += 120_000; // past the nonce's life
    const verdict = pbx.auth.verify(valuesOf(old, 'Authorization'), REQ);
    assert.deepEqual(verdict.ok ? 'ok' : verdict.reason, 'stale-nonce');
    assert.equal(client.challenge('www', pbx.auth.challenge({ stale: true })), true);
    const fresh = client.headers(REQ);
    assert.equal(fresh.length, 1, 'the stale answer is replaced, not added to');
    assert.equal(pbx.auth.verify(valuesOf(fresh, 'Authorization'), REQ).ok, true);
    assert.equal(client.challenge('www', pbx.auth.challenge({ stale: true })), false);
  });

  it('answers every realm of one response it has credentials for, the preferred algorithm once per realm', () => {
    const a = server('a.example.com');
    const b = server('b.example.com');
    const client = new DigestClient(CREDS);
    assert.equal(client.challenge('proxy', [...a.auth.challenge(), ...b.auth.challenge()]), true);
    const lines = client.headers(REQ);
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /realm="a\.example\.com".*algorithm=SHA-256/);
    assert.match(lines[1]!, /realm="b\.example\.com".*algorithm=SHA-256/);
  });

  it("answers only the trunk's realm when the credentials name one", () => {
    const client = new DigestClient({ ...CREDS, realm: 'pbx.example.com' });
    assert.equal(client.challenge('proxy', server('proxy.example.com').auth.challenge()), false);
    assert.equal(client.challenge('www', [...server('other.example.com').auth.challenge(), ...server('pbx.example.com').auth.challenge()]), true);
    const lines = client.headers(REQ);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^Authorization: Digest .*realm="pbx\.example\.com"/);
  });

  it('fails on challenges it cannot answer, and stops at four realms (a peer inventing realms cannot loop it)', () => {
    const client = new DigestClient(CREDS);
    assert.equal(client.challenge('www', []), false);
    assert.equal(client.challenge('www', ['Basic realm="x"', 'Digest realm="x", nonce="n", qop="auth-int"']), false);
    for (let i = 0; i < 4; i++) assert.equal(client.challenge('www', [`Digest realm="r${i}", nonce="n"`]), true, `realm ${i}`);
    assert.equal(client.challenge('www', ['Digest realm="r4", nonce="n"']), false);
    assert.equal(client.size, 4);
  });
});
