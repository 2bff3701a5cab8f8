import assert from 'node:assert/strict';
import { buildPlainOffer, negotiateSipAnswer, parseWebRtcOffer, sipOfferCodecs, SdpError } from '../../webrtc/sdp.js';
import { LossCounter, StreamRewriter } from '../../webrtc/media-relay.js';
import { parseRtp, serializeRtp } from '../../webrtc/rtp-endpoint.js';

const chromeOffer = [
  'v=0',
  'o=- 1 2 IN IP4 127.0.0.1',
  's=-',
  't=0 0',
  'a=group:BUNDLE 0',
  'a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126',
  'c=IN IP4 0.0.0.0',
  'a=ice-ufrag:abcd',
  'a=ice-pwd:abcdefghijklmnopqrstuvwx',
  'a=setup:actpass',
  'a=mid:0',
  'a=sendrecv',
  'a=rtcp-mux',
  'a=rtpmap:111 opus/48000/2',
  'a=fmtp:111 minptime=10;useinbandfec=1',
  'a=rtpmap:63 red/48000/2',
  'a=rtpmap:9 G722/8000',
  'a=rtpmap:0 PCMU/8000',
  'a=rtpmap:8 PCMA/8000',
  'a=rtpmap:13 CN/8000',
  'a=rtpmap:110 telephone-event/48000',
  'a=rtpmap:126 telephone-event/8000',
  '',
].join('\r\n');

describe('codec negotiation', () => {
  it('offers the SIP side the plain-RTP codecs the browser offered, in our preference order, with telephone-event/8000', () => {
    const codecs = sipOfferCodecs(parseWebRtcOffer(chromeOffer), ['pcmu', 'pcma', 'g722', 'opus']);
    assert.deepEqual(
      codecs.map((c) => `${c.name}/${c.rate}:${c.pt}`),
      ['pcmu/8000:0', 'pcma/8000:8', 'g722/8000:9', 'opus/48000:111', 'telephone-event/8000:126'],
    );
    const sdp = buildPlainOffer({ address: '127.0.0.1', port: 20000, codecs });
    assert.match(sdp, /^m=audio 20000 RTP\/AVP 0 8 9 111 126\r$/m);
    assert.match(sdp, /^a=rtpmap:111 OPUS\/48000\/2\r$/m);
    assert.match(sdp, /^a=fmtp:126 0-16\r$/m);
    assert.doesNotMatch(sdp, /SAVP|fingerprint|ice-/);
  });

  it('maps dynamic payload types per side and picks the codec the SIP peer chose', () => {
    const offered = sipOfferCodecs(parseWebRtcOffer(chromeOffer), ['pcmu', 'opus']);
    const answer = ['v=0', 'o=- 1 1 IN IP4 127.0.0.2', 's=-', 'c=IN IP4 127.0.0.2', 't=0 0', 'm=audio 40000 RTP/AVP 96 101', 'a=rtpmap:96 opus/48000/2', 'a=rtpmap:101 telephone-event/8000', ''].join('\r\n');
    const m = negotiateSipAnswer(answer, offered);
    assert.equal(m.codec.name, 'opus');
    assert.equal(m.browserPt, 111);
    assert.equal(m.sipPt, 96);
    assert.deepEqual(m.dtmf, { browserPt: 126, sipPt: 101, rate: 8000 });
    assert.deepEqual(m.sip, { address: '127.0.0.2', port: 40000, rtcpPort: 40001 });
  });

  it('refuses an answer without any codec we offered (488)', () => {
    const offered = sipOfferCodecs(parseWebRtcOffer(chromeOffer), ['pcmu']);
    const answer = ['v=0', 'o=- 1 1 IN IP4 127.0.0.2', 's=-', 'c=IN IP4 127.0.0.2', 't=0 0', 'm=audio 40000 RTP/AVP 18', 'a=rtpmap:18 G729/8000', ''].join('\r\n');
    assert.throws(() => negotiateSipAnswer(answer, offered), (e: unknown) => e instanceof SdpError && e.status === 488);
  });

  it('finds no common codec when the browser offers only opus and opus is not allowed', () => {
    const opusOnly = chromeOffer.replace('111 63 9 0 8 13 110 126', '111').replace(/a=rtpmap:(63|9|0|8|13|110|126) .*\r\n/g, '');
    assert.deepEqual(sipOfferCodecs(parseWebRtcOffer(opusOnly), ['pcmu', 'pcma']), []);
  });

  it('rejects offers that are not WebRTC', () => {
    assert.throws(() => parseWebRtcOffer('hello'), (e: unknown) => e instanceof SdpError && e.status === 400);
    const plain = chromeOffer.replace('UDP/TLS/RTP/SAVPF', 'RTP/AVP');
    assert.throws(() => parseWebRtcOffer(plain), (e: unknown) => e instanceof SdpError && e.status === 488);
    const noAudio = chromeOffer.replace('m=audio', 'm=video');
    assert.throws(() => parseWebRtcOffer(noAudio), (e: unknown) => e instanceof SdpError && e.status === 488);
  });
});

describe('RTP stream rewriting', () => {
  it('keeps one SSRC with continuous sequence numbers and timestamps across a source switch', () => {
    const r = new StreamRewriter(8000);
    const a1 = r.rewrite(111, 1000, 5000);
    const a2 = r.rewrite(111, 1001, 5160);
    assert.equal(a2.seq, (a1.seq + 1) & 0xffff);
    assert.equal(a2.ts, (a1.ts + 160) >>> 0);
    const b1 = r.rewrite(222, 40000, 123456789); // new source, unrelated numbering
    assert.equal(b1.seq, (a2.seq + 1) & 0xffff);
    assert.ok(((b1.ts - a2.ts) >>> 0) < 8000, 'timestamp moves forward by about the time elapsed');
    const b2 = r.rewrite(222, 40001, 123456789 + 160);
    assert.equal(b2.seq, (b1.seq + 1) & 0xffff);
    assert.equal(b2.ts, (b1.ts + 160) >>> 0);
  });

  it('wraps sequence numbers and timestamps modulo 2^16 and 2^32', () => {
    const r = new StreamRewriter(8000);
    const x = r.rewrite(1, 0xffff, 0xffffff00);
    const y = r.rewrite(1, 0, 0x60);
    assert.equal(y.seq, (x.seq + 1) & 0xffff);
    assert.equal(y.ts, (x.ts + 0x160) >>> 0);
  });

  it('serializes and parses RTP headers, and rejects RTCP and non-RTP', () => {
    const buf = serializeRtp({ payloadType: 0, marker: true, sequenceNumber: 7, timestamp: 1234, ssrc: 0xdeadbeef }, Buffer.alloc(160, 0xff));
    const v = parseRtp(buf)!;
    assert.deepEqual([v.payloadType, v.marker, v.sequenceNumber, v.timestamp, v.ssrc, v.payload.length], [0, true, 7, 1234, 0xdeadbeef, 160]);
    const rtcp = Buffer.from(buf);
    rtcp[1] = 200; // SR
    assert.equal(parseRtp(rtcp), undefined);
    assert.equal(parseRtp(Buffer.from('hello world!!')), undefined);
  });
});

describe('RTP loss counting', () => {
  it('counts sequence gaps per source, across wrap-around and a source switch', () => {
    const l = new LossCounter();
    for (const seq of [65533, 65534, 0, 2, 3]) l.add(7, seq); // 65535 and 1 missing
    assert.equal(l.lost, 2);
    for (const seq of [100, 101, 103]) l.add(8, seq); // new source: 102 missing
    assert.equal(l.lost, 3);
    l.add(8, 101); // a duplicate/late packet never makes loss negative
    assert.ok(l.lost >= 2);
  });
});
