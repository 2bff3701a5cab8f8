import assert from 'node:assert/strict';
import { buildResponse, parseSipMessage, splitHeaderList } from '../../sip/message.js';

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
