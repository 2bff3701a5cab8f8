import assert from 'node:assert/strict';
import { buildRequest, buildResponse, challengesOf, headerValues, parseSipMessage, splitHeaderList, type RequestParts } from '../../sip/message.js';

const base = (first: string, extra: string[] = [], cseq = '1 INVITE') =>
  [first, 'Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKabc;rport', 'From: "A, B" <sip:a@x>;tag=1', 'To: <sip:b@x>', 'Call-ID: abc', `CSeq: ${cseq}`, ...extra, 'Content-Length: 0', '', ''].join('\r\n');

describe('SIP message parsing (sip.js grammar, never throws)', () => {
  it('parses a valid request and its top Via', () => {
    const p = parseSipMessage(base('INVITE sip:1000@127.0.0.1 SIP/2.0'));
    assert.equal(p.kind, 'request');
    if (p.kind !== 'request') return;
    assert.equal(p.method, 'INVITE');
    assert.equal(p.ruri.user, '1000');
    assert.equal(p.topVia.branch, 'z9hG4bKabc');
    assert.equal(p.topVia.host, '10.0.0.1');
  });

  it('takes the first of several comma-separated Vias as the top one', () => {
    const text = base('OPTIONS sip:x@y SIP/2.0', [], '1 OPTIONS').replace(
      'Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKabc;rport',
      'Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKtop, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKsecond',
    );
    const p = parseSipMessage(text);
    assert.equal(p.kind, 'request');
    if (p.kind === 'request') {
      assert.equal(p.topVia.branch, 'z9hG4bKtop');
      assert.equal(p.vias.length, 2);
    }
  });

  const bad: Array<[string, string]> = [
    ['a non-SIP Request-URI scheme', base('INVITE tel:+123 SIP/2.0')],
    ['a malformed CSeq', base('INVITE sip:1@x SIP/2.0', [], 'abc')],
    ['a CSeq method that differs from the request', base('INVITE sip:1@x SIP/2.0', [], '1 BYE')],
    ['no Via', base('INVITE sip:1@x SIP/2.0').replace(/Via:[^\r]*\r\n/, '')],
    ['no From tag', base('INVITE sip:1@x SIP/2.0').replace(';tag=1', '')],
    ['garbage', 'hello\r\n\r\n'],
    ['a response with a malformed CSeq (throws inside sip.js)', base('SIP/2.0 200 OK', [], 'abc')],
    ['a bad Max-Forwards', base('INVITE sip:1@x SIP/2.0', ['Max-Forwards: many'])],
  ];
  for (const [what, text] of bad) {
    it(`reports ${what} as invalid instead of throwing`, () => {
      const p = parseSipMessage(text);
      assert.equal(p.kind, 'invalid');
    });
  }

  it('keeps enough of a bad request to answer it with 400', () => {
    const p = parseSipMessage(base('INVITE sip:1@x SIP/2.0', [], '1 BYE'));
    assert.equal(p.kind, 'invalid');
    if (p.kind !== 'invalid' || !p.request) return assert.fail('expected the request to be kept');
    const r = buildResponse(p.request, 400, { reason: 'Bad Request', vias: p.vias });
    assert.match(r, /^SIP\/2\.0 400 Bad Request\r\n/);
    assert.match(r, /\r\nCall-ID: abc\r\n/);
  });

  it('splits header lists outside quotes and angle brackets', () => {
    assert.deepEqual(splitHeaderList('"A, B" <sip:a@x>, <sip:b@y;x=1,2>'), ['"A, B" <sip:a@x>', '<sip:b@y;x=1,2>']);
  });
});

describe('SIP message building: no part may break a line (defence against header injection)', () => {
  const parts: RequestParts = {
    method: 'INVITE',
    ruri: 'sip:0301234@pbx.example.com',
    via: 'SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport',
    from: '<sip:alice@10.0.0.1>;tag=1',
    to: '<sip:0301234@pbx.example.com>',
    callId: 'abc',
    cseq: 1,
    contact: '<sip:gw@10.0.0.1:5060>',
    routes: ['<sip:proxy.example.com;lr>'],
    headers: ['Allow: INVITE, ACK'],
    body: 'v=0\r\n',
  };

  it('builds a request whose header lines are exactly the parts given', () => {
    const text = buildRequest(parts);
    assert.ok(text.startsWith('INVITE sip:0301234@pbx.example.com SIP/2.0\r\n'));
    const p = parseSipMessage(text);
    assert.equal(p.kind, 'request');
    assert.match(text, /\r\nContent-Length: 5\r\n\r\nv=0\r\n$/, 'the body may hold line breaks');
  });

  const injected = '0301234\r\nX-Injected: yes';
  const cases: Array<[string, Partial<RequestParts>]> = [
    ['the Request-URI', { ruri: `sip:${injected}@pbx.example.com` }],
    ['the Request-URI (a bare LF)', { ruri: 'sip:0301234\n@pbx.example.com' }],
    ['the Request-URI (a space)', { ruri: 'sip:0301234 SIP/2.0@pbx.example.com' }],
    ['the To', { to: `<sip:${injected}@pbx.example.com>` }],
    ['the From', { from: `"x\r\nX-Injected: yes" <sip:alice@10.0.0.1>;tag=1` }],
    ['the Via', { via: 'SIP/2.0/UDP 10.0.0.1\r\nX-Injected: yes' }],
    ['a Route', { routes: ['<sip:proxy;lr>\nX-Injected: yes'] }],
    ['the Call-ID', { callId: 'abc\0def' }],
    ['the Contact', { contact: '<sip:gw@10.0.0.1>\rX-Injected: yes' }],
    ['an extra header', { headers: ['Reason: SIP;cause=200\r\nX-Injected: yes'] }],
    ['an empty extra header line (would end the head)', { headers: [''] }],
    ['the method', { method: 'INVITE sip:x SIP/2.0\r\n' }],
    ['the Content-Type', { contentType: 'application/sdp\r\nX-Injected: yes' }],
  ];
  for (const [where, change] of cases) {
    it(`throws a TypeError for CR, LF, NUL or a broken line in ${where}`, () => {
      assert.throws(() => buildRequest({ ...parts, ...change }), (e: unknown) => e instanceof TypeError && /SIP|header|method/.test(e.message));
    });
  }

  it('turns a fold (CRLF + whitespace, legal LWS copied from a received message) into a space', () => {
    const text = buildRequest({ ...parts, to: '<sip:0301234@pbx.example.com>\r\n ;tag=2' });
    assert.match(text, /\r\nTo: <sip:0301234@pbx\.example\.com>  ?;tag=2\r\n/);
  });

  it('builds a response: a folded To from the request is unfolded; control characters in the reason phrase become spaces', () => {
    const req = parseSipMessage(base('INVITE sip:1@x SIP/2.0').replace('To: <sip:b@x>', 'To: <sip:b@x>\r\n ;x=1'));
    if (req.kind !== 'request') return assert.fail(`expected a request, got ${req.kind}`);
    const r = buildResponse(req.msg, 500, { reason: 'Server Error (boom\r\nX-Injected: yes)', toTag: 't' });
    assert.ok(r.startsWith('SIP/2.0 500 Server Error (boom X-Injected: yes)\r\n'));
    assert.match(r, /\r\nTo: <sip:b@x>  ?;x=1;tag=t\r\n/);
    assert.doesNotMatch(r, /\r\nX-Injected/);
    assert.throws(() => buildResponse(req.msg, 503, { headers: ['Retry-After: 5\r\nX-Injected: yes'] }), TypeError);
  });
});

describe('headerValues: every value of a header in a raw message (RFC 3261 §7.3.1)', () => {
  it('finds names in any case, with whitespace before the colon, and unfolds folded values', () => {
    const raw = [
      'SIP/2.0 401 Unauthorized',
      'Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx',
      'WWW-Authenticate : Digest realm="a", nonce="1"',
      'www-authenticate:Digest realm="b",',
      '  nonce="2",\talgorithm=MD5',
      'WWW-Authenticate\t: Digest realm="c",',
      '\tnonce="3"',
      'X-WWW-Authenticate: Digest realm="not this one", nonce="4"',
      'Content-Length: 0',
      '',
      'WWW-Authenticate: in the body, not a header',
    ].join('\r\n');
    assert.deepEqual(headerValues(raw, 'WWW-Authenticate'), [
      'Digest realm="a", nonce="1"',
      'Digest realm="b", nonce="2",\talgorithm=MD5',
      'Digest realm="c", nonce="3"',
    ]);
  });

  it('takes a 407 challenge folded over lines, as sip.js parses the response', () => {
    const raw = base('SIP/2.0 407 Proxy Authentication Required', ['Proxy-Authenticate  :  Digest realm="p",\r\n nonce="n"']);
    const p = parseSipMessage(raw);
    if (p.kind !== 'response') return assert.fail('expected a response');
    assert.deepEqual(challengesOf(p), { kind: 'proxy', values: ['Digest realm="p", nonce="n"'] });
  });
});
