import assert from 'node:assert/strict';
import { Dialog } from '../../sip/dialog.js';
import { isPrivateAddress } from '../../sip/in-dialog.js';
import { parseSipMessage, type ParsedRequest, type ParsedResponse } from '../../sip/message.js';
import type { Flow } from '../../sip/transport/flow.js';

const flow: Flow = { id: 'udp:10.0.0.1:5060', transport: 'udp', reliable: false, local: { address: '10.0.0.9', port: 5060 }, remote: { address: '10.0.0.1', port: 5060 }, send: () => undefined };

/** A UAS dialog from an INVITE with these Record-Route lines (in the INVITE's order). */
function uasDialog(recordRoutes: string[], contact = '<sip:bob@10.0.0.2:5070>'): Dialog {
  const text = [
    'INVITE sip:alice@10.0.0.9 SIP/2.0',
    'Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx',
    ...recordRoutes.map((r) => `Record-Route: ${r}`),
    'From: <sip:bob@example.com>;tag=ft',
    'To: <sip:alice@example.com>',
    'Call-ID: call-1',
    'CSeq: 10 INVITE',
    `Contact: ${contact}`,
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n');
  const p = parseSipMessage(text);
  assert.equal(p.kind, 'request');
  return Dialog.asUas(p as ParsedRequest, 'lt', flow);
}

const lines = (text: string) => text.split('\r\n');
const build = (d: Dialog) => d.request('BYE', (b) => `SIP/2.0/UDP 10.0.0.9:5060;branch=${b}`, '<sip:gw@10.0.0.9:5060>');

describe('Dialog: where in-dialog requests go (RFC 3261 §12.2.1.1)', () => {
  it('with no route set: the remote target is the Request-URI and the next hop, no Route', () => {
    const d = uasDialog([]);
    assert.equal(d.nextHop(), 'sip:bob@10.0.0.2:5070');
    const { text, ruri } = build(d);
    assert.equal(ruri, 'sip:bob@10.0.0.2:5070');
    assert.equal(lines(text)[0], 'BYE sip:bob@10.0.0.2:5070 SIP/2.0');
    assert.ok(!lines(text).some((l) => l.startsWith('Route:')));
  });

  it('with a loose first route: the remote target stays the Request-URI, the first route is the next hop', () => {
    const d = uasDialog(['<sip:p1.example.com;lr>', '<sip:p2.example.com:5080;transport=tcp;lr>']);
    assert.equal(d.nextHop(), 'sip:p1.example.com;lr');
    const { text } = build(d);
    assert.equal(lines(text)[0], 'BYE sip:bob@10.0.0.2:5070 SIP/2.0');
    assert.deepEqual(
      lines(text).filter((l) => l.startsWith('Route:')),
      ['Route: <sip:p1.example.com;lr>', 'Route: <sip:p2.example.com:5080;transport=tcp;lr>'],
    );
  });

  it('with a strict first route: it becomes the Request-URI and the remote target goes last in Route', () => {
    const d = uasDialog(['<sip:strict.example.com:5090>', '<sip:p2.example.com;lr>']);
    assert.equal(d.nextHop(), 'sip:strict.example.com:5090');
    const { text, ruri } = build(d);
    assert.equal(ruri, 'sip:strict.example.com:5090');
    assert.equal(lines(text)[0], 'BYE sip:strict.example.com:5090 SIP/2.0');
    assert.deepEqual(
      lines(text).filter((l) => l.startsWith('Route:')),
      ['Route: <sip:p2.example.com;lr>', 'Route: <sip:bob@10.0.0.2:5070>'],
    );
  });
});

describe('Dialog: the remote CSeq (RFC 3261 §12.2.2)', () => {
  it('in a dialog it answered, starts from the INVITE and refuses lower numbers, keeping the highest', () => {
    const d = uasDialog([]);
    assert.equal(d.remoteSeq, 10);
    assert.equal(d.acceptRemoteSeq(9), false, 'lower than the INVITE: out of order');
    assert.equal(d.remoteSeq, 10);
    assert.equal(d.acceptRemoteSeq(10), true);
    assert.equal(d.acceptRemoteSeq(12), true, 'gaps are fine');
    assert.equal(d.acceptRemoteSeq(11), false);
    assert.equal(d.remoteSeq, 12);
  });

  it('in a dialog it started, takes whatever the first request from the peer says', () => {
    const text = ['SIP/2.0 200 OK', 'Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKy', 'From: <sip:gw@example.com>;tag=lt', 'To: <sip:bob@example.com>;tag=rt', 'Call-ID: call-2', 'CSeq: 1 INVITE', 'Contact: <sip:bob@10.0.0.2>', 'Content-Length: 0', '', ''].join('\r\n');
    const p = parseSipMessage(text);
    assert.equal(p.kind, 'response');
    const d = Dialog.asUac(p as ParsedResponse, '<sip:gw@example.com>;tag=lt', 'lt', 1, flow, 'sip:bob@example.com');
    assert.equal(d.remoteSeq, undefined);
    assert.equal(d.acceptRemoteSeq(0), true, 'even 0');
    assert.equal(d.acceptRemoteSeq(5), true);
    assert.equal(d.acceptRemoteSeq(4), false);
  });
});

describe('private addresses (a Contact behind NAT)', () => {
  it('knows RFC 1918, RFC 6598, link-local and unique-local addresses, and nothing else', () => {
    for (const a of ['10.0.0.1', '172.16.0.1', '172.31.255.255', '192.168.1.10', '100.64.0.1', '169.254.1.1', 'fd00::1', 'fe80::1']) assert.equal(isPrivateAddress(a), true, a);
    for (const a of ['127.0.0.1', '172.32.0.1', '192.0.2.1', '8.8.8.8', '100.128.0.1', '::1', '2001:db8::1', 'pbx.example.com']) assert.equal(isPrivateAddress(a), false, a);
  });
});
