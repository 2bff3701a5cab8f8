import assert from 'node:assert/strict';
import { StreamFramer } from '../../sip/transport/stream-framer.js';

function msg(opts: { headers?: string[]; body?: string } = {}): string {
  const body = opts.body ?? '';
  const headers = opts.headers ?? [`Content-Length: ${Buffer.byteLength(body)}`];
  return ['OPTIONS sip:x@127.0.0.1 SIP/2.0', 'Via: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1', ...headers, '', body].join('\r\n');
}

/** Feeds `input` in pieces of `size` bytes; returns the messages and the keep-alive events in order. */
function feed(framer: StreamFramer, input: string | Buffer, size = Infinity): { messages: string[]; events: string[] } {
  const buf = Buffer.isBuffer(input) ? input : Buffer.from(input);
  const messages: string[] = [];
  const events: string[] = [];
  const step = Math.min(size, buf.length) || 1;
  for (let i = 0; i < buf.length; i += step) {
    for (const m of framer.push(Buffer.from(buf.subarray(i, i + step)), () => events.push('ping'), () => events.push('pong'))) {
      messages.push(m);
      events.push('message');
    }
  }
  return { messages, events };
}

describe('stream framer', () => {
  it('frames messages by Content-Length however the stream is split', () => {
    const stream = msg({ body: 'v=0\r\nhello ünïcode' }) + '\r\n' + msg() + msg({ body: 'x'.repeat(3000) });
    const expected = [msg({ body: 'v=0\r\nhello ünïcode' }), msg(), msg({ body: 'x'.repeat(3000) })];
    for (const size of [1, 2, 3, 5, 7, 64, 1000, Infinity]) {
      const f = new StreamFramer();
      assert.deepEqual(feed(f, stream, size).messages, expected, `reads of ${size} bytes`);
      assert.equal(f.pending, 0);
    }
  });

  it('does work linear in the input when a 64 KB header arrives one byte at a time', () => {
    const header = msg({ headers: [`X-Pad: ${'a'.repeat(60_000)}`, 'Content-Length: 3000'], body: 'b'.repeat(3000) });
    assert.ok(header.length > 60_000 && header.length < 65_535);
    const f = new StreamFramer();
    const { messages } = feed(f, header + msg(), 1);
    assert.deepEqual(messages, [header, msg()]);
    // Each byte is copied a bounded number of times and searched a few (the old framer: about n²/2).
    assert.ok(f.work < 10 * (header.length + msg().length), `work ${f.work} for ${header.length} bytes`);
    const g = new StreamFramer();
    feed(g, header.repeat(4), 1);
    assert.ok(g.work < 10 * 4 * header.length, `work ${g.work} for 4 messages`);
  });

  it('ends header lines at CRLF only: a bare CR does not start a Content-Length line', () => {
    const sneaky = msg({ headers: ['Subject: hi\rl: 200', 'Content-Length: 0'] });
    const f = new StreamFramer();
    assert.deepEqual(feed(f, sneaky + msg()).messages, [sneaky, msg()]);
    assert.equal(f.pending, 0);
    assert.throws(() => feed(new StreamFramer(), msg({ headers: ['Subject: hi\rContent-Length: 0'] })), {
      code: 'GW_SIP_FRAMING',
      message: /without Content-Length/,
    });
  });

  it('refuses differing Content-Length values (the parser takes the last, framing took the first)', () => {
    for (const headers of [
      ['Content-Length: 0', 'Content-Length: 5'],
      ['Content-Length: 5', 'l: 0'],
      ['l: 0', 'CONTENT-LENGTH: 3'],
    ]) {
      assert.throws(() => feed(new StreamFramer(), msg({ headers }) + 'abcde'), { code: 'GW_SIP_FRAMING', message: /differing/ }, headers.join(', '));
    }
    const same = msg({ headers: ['Content-Length: 2', 'l: 2'], body: 'ok' });
    assert.deepEqual(feed(new StreamFramer(), same).messages, [same]);
    assert.throws(() => feed(new StreamFramer(), msg({ headers: ['Content-Length: 2', 'Content-Length: two'], body: 'ok' })), {
      code: 'GW_SIP_FRAMING',
    });
  });

  it('counts a double-CRLF ping split across reads as one ping, not two pongs', () => {
    const f = new StreamFramer();
    assert.deepEqual(feed(f, '\r\n').events, ['pong']);
    assert.deepEqual(feed(f, '\r\n').events, ['ping']);
    assert.deepEqual(feed(f, '\r').events, []);
    assert.deepEqual(feed(f, '\n\r\n').events, ['ping']);
    assert.deepEqual(feed(f, '\r\n\r\n' + msg()).events, ['ping', 'message']);
    assert.deepEqual(feed(f, '\r\n').events, ['pong'], 'a message ends the run');
    assert.deepEqual(feed(f, '\r\n').events, ['ping']);
  });

  it('reads a lone CRLF after our ping as the pong, whatever the peer sent before', () => {
    const f = new StreamFramer();
    assert.deepEqual(feed(f, '\r\n').events, ['pong']);
    f.pingSent();
    assert.deepEqual(feed(f, '\r\n').events, ['pong']);
  });

  it('refuses a stream without Content-Length, an oversized header section, and a stray CR between messages', () => {
    assert.throws(() => feed(new StreamFramer(), msg({ headers: [] })), { code: 'GW_SIP_FRAMING', message: /without Content-Length/ });
    assert.throws(() => feed(new StreamFramer(), `OPTIONS sip:x SIP/2.0\r\nX: ${'a'.repeat(70_000)}`, 4096), { message: /too large/ });
    assert.throws(() => feed(new StreamFramer(), msg({ headers: ['Content-Length: 70000'] })), { message: /too large/ });
    assert.throws(() => feed(new StreamFramer(), '\rOPTIONS'), { code: 'GW_SIP_FRAMING' });
  });
});
