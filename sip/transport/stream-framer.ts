import { MAX_SIP_MESSAGE } from './flow.js';

/**
 * Splits a SIP byte stream (TCP/TLS) into messages by Content-Length (RFC 3261 §18.3).
 * Leading CRLFs are keep-alives (RFC 5626 §4.4.1); a double CRLF "ping" is reported so the
 * caller can answer with a single CRLF "pong"; a lone CRLF is reported as the peer's pong.
 */
export class StreamFramer {
  #buf: Buffer = Buffer.alloc(0);

  /** Returns complete messages; throws on a framing error (the caller closes the connection). */
  push(chunk: Buffer, onPing: () => void, onPong?: () => void): string[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: string[] = [];
    for (;;) {
      let start = 0;
      while (start + 1 < this.#buf.length && this.#buf[start] === 0x0d && this.#buf[start + 1] === 0x0a) start += 2;
      if (start > 0) {
        if (start >= 4) onPing();
        else if (this.#buf.length === start) onPong?.(); // a lone CRLF between messages: the answer to our ping
        this.#buf = this.#buf.subarray(start);
      }
      const headerEnd = this.#buf.indexOf('\r\n\r\n');
      if (headerEnd < 0) {
        if (this.#buf.length > MAX_SIP_MESSAGE) throw new Error('SIP header section too large');
        return out;
      }
      const head = this.#buf.subarray(0, headerEnd).toString('utf8');
      const m = /^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$/im.exec(head);
      if (!m) throw new Error('stream message without Content-Length');
      const bodyLength = Number(m[1]);
      const total = headerEnd + 4 + bodyLength;
      if (total > MAX_SIP_MESSAGE) throw new Error('SIP message too large');
      if (this.#buf.length < total) return out;
      out.push(this.#buf.subarray(0, total).toString('utf8'));
      this.#buf = this.#buf.subarray(total);
    }
  }
}
