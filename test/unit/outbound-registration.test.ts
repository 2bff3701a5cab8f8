import assert from 'node:assert/strict';
import { parseSipMessage, type ParsedResponse } from '../../sip/message.js';
import { backoffDelayMs, grantedExpires, refreshDelayMs } from '../../sip/outbound-registration.js';

const OUR_CONTACT = '<sip:gwtrunk@10.0.0.5:5060;transport=udp>';

function ok(headers: string[]): ParsedResponse {
  const text = [
    'SIP/2.0 200 OK',
    'Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1234;rport=5060',
    'From: <sip:gwtrunk@example.com>;tag=abc',
    'To: <sip:gwtrunk@example.com>;tag=def',
    'Call-ID: reg-1',
    'CSeq: 2 REGISTER',
    ...headers,
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n');
  const p = parseSipMessage(text);
  assert.equal(p.kind, 'response');
  return p as ParsedResponse;
}

describe('outbound registration timing and expiry', () => {
  it('refreshes short bindings at half-time and long ones 30 s before expiry, continuously at 60 s', () => {
    assert.equal(refreshDelayMs(2), 1000);
    assert.equal(refreshDelayMs(60), 30_000);
    assert.equal(refreshDelayMs(61), 31_000);
    assert.equal(refreshDelayMs(3600), 3_570_000);
  });

  it('backs off exponentially from the base to the cap, within ±20 % jitter', () => {
    const mid = () => 0.5;
    assert.deepEqual([1, 2, 3, 4].map((n) => backoffDelayMs(n, 5000, 300_000, mid)), [5000, 10_000, 20_000, 40_000]);
    assert.equal(backoffDelayMs(50, 5000, 300_000, mid), 300_000);
    assert.equal(backoffDelayMs(1, 5000, 300_000, () => 0), 4000);
    assert.equal(backoffDelayMs(1, 5000, 300_000, () => 1), 6000);
  });

  it("takes the granted expiry from our Contact's expires param, matched by URI among several", () => {
    const res = ok([
      'Contact: <sip:other@192.0.2.9:5060>;expires=3600',
      'Contact: <sip:gwtrunk@10.0.0.5;transport=udp>;expires=120, <sip:gwtrunk@10.0.0.7:5060>;expires=30',
      'Expires: 600',
    ]);
    assert.equal(grantedExpires(res, OUR_CONTACT), 120);
  });

  it('falls back to the Expires header, then to nothing', () => {
    assert.equal(grantedExpires(ok(['Contact: <sip:other@192.0.2.9>;expires=3600', 'Expires: 300']), OUR_CONTACT), 300);
    assert.equal(grantedExpires(ok(['Contact: <sip:other@192.0.2.9>;expires=3600']), OUR_CONTACT), undefined);
    assert.equal(grantedExpires(ok(['Expires: soon']), OUR_CONTACT), undefined);
  });
});
