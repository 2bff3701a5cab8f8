import { MAX_SIP_MESSAGE } from './flow.js';
import { TransportError } from './errors.js';

const CR = 0x0d;
const LF = 0x0a;
const HEADER_END = Buffer.from('\r\n\r\n');
const CONTENT_LENGTH = /^(?:content-length|l)[ \t]*:(.*)$/i;
/** Storage at or under this size is kept between messages; larger is given back. */
const KEEP_CAPACITY = 4096;

/**
 * Splits a SIP byte stream (TCP/TLS) into messages by Content-Length (RFC 3261 §18.3).
 * CRLFs between messages are keep-alives (RFC 5626 §4.4.1): every second CRLF of a run is a double
 * CRLF "ping" the caller answers with a single CRLF "pong"; a run of one CRLF is reported as the
 * peer's pong. The run is counted across reads (a ping split over two reads is still one ping) and
 * restarts at each message and at each ping we send (`pingSent`).
 *
 * Work is linear in the bytes received however they are split: bytes are appended to one buffer
 * that grows by doubling (not copied again on every read), the header-end search resumes where the
 * last one stopped, and a message's header section is parsed once.
 */
export class StreamFramer {
  /** Storage; the held bytes are #buf[#start, #end). */
  #buf: Buffer = Buffer.alloc(0);
  #start = 0;
  #end = 0;
  /** #buf is a chunk we were handed: never write into it. */
  #borrowed = false;
  /** Held bytes (from #start) already searched for the header end without finding it. */
  #scanned = 0;
  /** Length of the message being received once its header section is complete, else -1. */
  #total = -1;
  /** CRLFs in the current run between messages, and a CR whose LF has not arrived yet. */
  #crlfs = 0;
  #cr = false;
  #work = 0;

  /** Bytes of a message begun and not yet complete (0 between messages, keep-alives included). */
  get pending(): number {
    return this.#end - this.#start;
  }

  /** Bytes copied or searched so far: linear in the input, whatever the read sizes (for tests). */
  get work(): number {
    return this.#work;
  }

  /**
   * We sent a ping: CRLFs from here on start a new run, so the peer's pong reads as a pong even if
   * its previous pong (or half of a ping) was the last thing it sent.
   */
  pingSent(): void {
    if (this.pending === 0) this.#crlfs = 0;
  }

  /** Returns complete messages; throws on a framing error (the caller closes the connection). */
  push(chunk: Buffer, onPing: () => void, onPong?: () => void): string[] {
    const out: string[] = [];
    if (this.pending === 0) chunk = chunk.subarray(this.#keepAlives(chunk, onPing, onPong));
    this.#append(chunk);
    for (;;) {
      const message = this.#next();
      if (message === undefined) return out;
      out.push(message);
      if (this.pending === 0) return out;
      // Bytes after the message: keep-alives, then possibly the next message.
      this.#start += this.#keepAlives(this.#buf.subarray(this.#start, this.#end), onPing, onPong);
      if (this.pending === 0) {
        this.#release();
        return out;
      }
    }
  }

  /** Consumes the CRLFs at a message boundary; returns where the next message starts in `data`. */
  #keepAlives(data: Buffer, onPing: () => void, onPong?: () => void): number {
    let i = 0;
    for (; i < data.length; i++) {
      const b = data[i];
      if (this.#cr && b === LF) {
        this.#cr = false;
        if (++this.#crlfs % 2 === 0) onPing();
      } else if (!this.#cr && b === CR) {
        this.#cr = true;
      } else {
        break;
      }
    }
    this.#work += i;
    if (i === data.length) {
      if (this.#crlfs === 1 && !this.#cr) onPong?.();
      return i;
    }
    if (this.#cr) throw new TransportError('GW_SIP_FRAMING', 'a CR without LF between messages');
    this.#crlfs = 0;
    return i;
  }

  #append(data: Buffer): void {
    if (data.length === 0) return;
    const held = this.#end - this.#start;
    if (held === 0 && !this.#borrowed && this.#buf.length < data.length) {
      // The common case, a read holding whole messages: frame the chunk where it lies.
      this.#buf = data;
      this.#start = 0;
      this.#end = data.length;
      this.#borrowed = true;
      return;
    }
    if (this.#borrowed || this.#end + data.length > this.#buf.length) {
      const need = held + data.length;
      // Double (amortised linear copying), but not past what one message can need.
      const capacity = this.#borrowed ? need : Math.max(need, Math.min(2 * this.#buf.length, MAX_SIP_MESSAGE + 1));
      if (!this.#borrowed && need <= this.#buf.length && held <= this.#buf.length / 2) {
        this.#buf.copy(this.#buf, 0, this.#start, this.#end);
      } else {
        const next = Buffer.allocUnsafe(Math.max(capacity, 256));
        this.#buf.copy(next, 0, this.#start, this.#end);
        this.#buf = next;
        this.#borrowed = false;
      }
      this.#work += held;
      this.#start = 0;
      this.#end = held;
    }
    data.copy(this.#buf, this.#end);
    this.#end += data.length;
    this.#work += data.length;
  }

  /** The next complete message from the held bytes, or undefined if more must arrive. */
  #next(): string | undefined {
    const held = this.#buf.subarray(this.#start, this.#end);
    if (this.#total < 0) {
      const from = Math.max(0, this.#scanned - 3);
      const headerEnd = held.indexOf(HEADER_END, from);
      this.#work += (headerEnd < 0 ? held.length : headerEnd + 4) - from;
      if (headerEnd < 0) {
        this.#scanned = held.length;
        if (held.length > MAX_SIP_MESSAGE) throw new TransportError('GW_SIP_FRAMING', 'SIP header section too large');
        return undefined;
      }
      const total = headerEnd + 4 + contentLength(held.subarray(0, headerEnd).toString('utf8'));
      if (total > MAX_SIP_MESSAGE) throw new TransportError('GW_SIP_FRAMING', 'SIP message too large');
      this.#total = total;
    }
    if (held.length < this.#total) return undefined;
    const message = held.subarray(0, this.#total).toString('utf8');
    this.#work += this.#total;
    this.#start += this.#total;
    this.#total = -1;
    this.#scanned = 0;
    if (this.#start === this.#end) this.#release();
    return message;
  }

  /** Empty: drop a borrowed chunk or large storage, keep small storage for the next message. */
  #release(): void {
    if (this.#borrowed || this.#buf.length > KEEP_CAPACITY) {
      this.#buf = Buffer.alloc(0);
      this.#borrowed = false;
    }
    this.#start = this.#end = 0;
  }
}

/**
 * The Content-Length of a header section. Lines end at CRLF only (a bare CR is not a line end, as
 * for the parser that reads the message later); one value, or the same value repeated: differing
 * values would let us and the parser disagree on where the message ends.
 */
function contentLength(head: string): number {
  let found: number | undefined;
  const lines = head.split('\r\n');
  for (let i = 1; i < lines.length; i++) {
    const m = CONTENT_LENGTH.exec(lines[i]!);
    if (!m) continue;
    const v = /^[ \t]*(\d{1,10})[ \t]*$/.exec(m[1]!);
    if (!v) throw new TransportError('GW_SIP_FRAMING', `stream message with a bad Content-Length: ${m[1]!.trim().slice(0, 20)}`);
    const n = Number(v[1]);
    if (found !== undefined && found !== n) throw new TransportError('GW_SIP_FRAMING', 'stream message with differing Content-Length values');
    found = n;
  }
  if (found === undefined) throw new TransportError('GW_SIP_FRAMING', 'stream message without Content-Length');
  return found;
}
