import type dgram from 'node:dgram';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { SafeEmitter } from '../src/util/safe-emitter.js';
import type { PortLease } from './port-allocator.js';

/** The fields of an RTP header (RFC 3550 §5.1) the relay needs, read without allocating objects. */
export interface RtpView {
  payloadType: number;
  marker: boolean;
  sequenceNumber: number;
  timestamp: number;
  ssrc: number;
  payload: Buffer;
}

/** Parses an RTP packet; undefined for anything that is not RTP version 2 with a sane layout. */
export function parseRtp(buf: Buffer): RtpView | undefined {
  if (buf.length < 12 || buf[0]! >> 6 !== 2) return undefined;
  const pt = buf[1]! & 0x7f;
  if (pt >= 72 && pt <= 76) return undefined; // RTCP sent to the RTP port (RFC 5761 §4)
  const cc = buf[0]! & 0x0f;
  let offset = 12 + cc * 4;
  if (buf[0]! & 0x10) {
    if (buf.length < offset + 4) return undefined;
    offset += 4 + buf.readUInt16BE(offset + 2) * 4;
  }
  let end = buf.length;
  if (buf[0]! & 0x20) end -= buf[buf.length - 1]!;
  if (offset > end) return undefined;
  return {
    payloadType: pt,
    marker: (buf[1]! & 0x80) !== 0,
    sequenceNumber: buf.readUInt16BE(2),
    timestamp: buf.readUInt32BE(4),
    ssrc: buf.readUInt32BE(8),
    payload: buf.subarray(offset, end),
  };
}

/** Serializes a 12-byte RTP header plus payload. */
export function serializeRtp(h: { payloadType: number; marker: boolean; sequenceNumber: number; timestamp: number; ssrc: number }, payload: Buffer): Buffer {
  const buf = Buffer.allocUnsafe(12 + payload.length);
  buf[0] = 0x80;
  buf[1] = (h.marker ? 0x80 : 0) | (h.payloadType & 0x7f);
  buf.writeUInt16BE(h.sequenceNumber & 0xffff, 2);
  buf.writeUInt32BE(h.timestamp >>> 0, 4);
  buf.writeUInt32BE(h.ssrc >>> 0, 8);
  payload.copy(buf, 12);
  return buf;
}

/** Where to send, as a UDP address. */
export interface RtpAddress {
  address: string;
  port: number;
}

/** How a source may take over the latch on one socket (RTP or RTCP). */
export interface LatchGuard {
  /** The latched source must have been silent this long before another may take over. */
  silenceMs: number;
  /** Consecutive packets (same address, port and SSRC) a new source must send meanwhile. */
  probation: number;
}

export interface RtpEndpointOptions {
  /**
   * Symmetric RTP (NAT latching): send RTP and RTCP to where the peer's packets come from rather
   * than to its SDP address, and drop packets from other sources. Off: always the SDP address,
   * and packets from any source are taken. Default true.
   */
  symmetric?: boolean;
  /** Default { silenceMs: 1000, probation: 3 }: a stream at 20-30 ms per packet. */
  rtpGuard?: LatchGuard;
  /** Default { silenceMs: 10000, probation: 2 }: RTCP comes every 2.5-7.5 s (RFC 3550 §6.2). */
  rtcpGuard?: LatchGuard;
}

const DEFAULT_RTP_GUARD: LatchGuard = { silenceMs: 1000, probation: 3 };
const DEFAULT_RTCP_GUARD: LatchGuard = { silenceMs: 10_000, probation: 2 };

const sameAddress = (a: RtpAddress | undefined, b: RtpAddress | undefined): boolean =>
  a !== undefined && b !== undefined && a.port === b.port && a.address === b.address;

export const formatAddress = (a: RtpAddress): string => (a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

/**
 * Which source one socket's packets are taken from (and answered to). The first source is taken
 * at once: before any packet we only know the SDP, and a NAT'd peer's first packet is the only
 * thing that tells us its public address. After that a different source is a stray (a scanner,
 * an injected stream, a late packet from a previous path) and is dropped, until the latched
 * source has been silent for `silenceMs` and the new one has sent `probation` packets in a row
 * from the same address, port and SSRC: what a peer whose NAT binding or media server changed
 * does, and what a single spoofed or stray packet does not. A peer pausing its stream (VAD, hold)
 * longer than `silenceMs` while someone else streams at us loses the latch: the price of
 * following real moves without signalling.
 */
export class SourceLatch {
  #source: RtpAddress | undefined;
  #lastAt = 0;
  #candidate: (RtpAddress & { ssrc: number; count: number }) | undefined;

  constructor(private readonly guard: LatchGuard) {}

  get source(): RtpAddress | undefined {
    return this.#source;
  }

  reset(): void {
    this.#source = undefined;
    this.#candidate = undefined;
  }

  /** `latched`: the packet's source was just taken (first, or after probation); `stray`: drop it. */
  offer(from: RtpAddress, ssrc: number, now: number): 'same' | 'latched' | 'stray' {
    // Port 0 cannot be sent to: a raw-socket sender that set no source port, never a peer's socket.
    if (from.port === 0) return 'stray';
    if (!this.#source) return this.#take(from, now);
    if (sameAddress(this.#source, from)) {
      this.#lastAt = now;
      this.#candidate = undefined;
      return 'same';
    }
    if (now - this.#lastAt < this.guard.silenceMs) {
      this.#candidate = undefined;
      return 'stray';
    }
    const c = this.#candidate;
    if (c && sameAddress(c, from) && c.ssrc === ssrc) c.count++;
    else this.#candidate = { address: from.address, port: from.port, ssrc, count: 1 };
    return this.#candidate!.count >= this.guard.probation ? this.#take(from, now) : 'stray';
  }

  #take(from: RtpAddress, now: number): 'latched' {
    this.#source = { address: from.address, port: from.port };
    this.#lastAt = now;
    this.#candidate = undefined;
    return 'latched';
  }
}

export type RtpEndpointEvents = {
  rtp: [packet: RtpView];
};

/** The sender SSRC of an RTCP compound packet; undefined for anything that is not RTCP (RFC 3550 §6.4, RFC 4585, RFC 3611). */
export function rtcpSenderSsrc(buf: Buffer): number | undefined {
  if (buf.length < 8 || buf[0]! >> 6 !== 2) return undefined;
  const pt = buf[1]!;
  if (pt < 200 || pt > 207) return undefined;
  return buf.readUInt32BE(4);
}

function checkGuard(name: string, g: LatchGuard | undefined, fallback: LatchGuard): LatchGuard {
  if (g === undefined) return fallback;
  if (!Number.isFinite(g.silenceMs) || g.silenceMs < 0) throw new TypeError(`${name}.silenceMs must be a number >= 0`);
  if (!Number.isInteger(g.probation) || g.probation < 1) throw new TypeError(`${name}.probation must be an integer >= 1`);
  return { silenceMs: g.silenceMs, probation: g.probation };
}

/**
 * The SIP leg's media: an RTP socket and its RTCP neighbour, from one port lease. Sends to the
 * address the SIP peer's SDP gave or, with symmetric RTP, to where the peer's packets actually
 * come from (a peer behind NAT advertises an address it cannot be reached at). RTP and RTCP
 * latch independently: a NAT maps each of the peer's sockets on its own.
 */
export class RtpEndpoint extends SafeEmitter<RtpEndpointEvents> {
  readonly symmetric: boolean;
  #rtp: dgram.Socket;
  #rtcp: dgram.Socket | undefined;
  #sdp: { rtp: RtpAddress; rtcp: RtpAddress } | undefined;
  #rtpLatch: SourceLatch;
  #rtcpLatch: SourceLatch;
  #closed = false;
  packetsIn = 0;
  packetsOut = 0;
  bytesIn = 0;
  bytesOut = 0;
  rtcpIn = 0;
  rtcpOut = 0;
  /** Packets dropped because they came from another source than the latched one. */
  strayIn = 0;
  rtcpStrayIn = 0;
  /** Last RTP from the SIP peer, and last RTCP (a peer on hold may send only RTCP). */
  lastPacketAt: number | undefined;
  lastRtcpAt: number | undefined;

  constructor(
    readonly lease: PortLease,
    private readonly log: Logger,
    options: RtpEndpointOptions = {},
  ) {
    super(log);
    const [rtp, rtcp] = lease.sockets;
    if (!rtp) throw new TypeError('RtpEndpoint needs a lease with a bound RTP socket');
    this.symmetric = options.symmetric ?? true;
    this.#rtpLatch = new SourceLatch(checkGuard('rtpGuard', options.rtpGuard, DEFAULT_RTP_GUARD));
    this.#rtcpLatch = new SourceLatch(checkGuard('rtcpGuard', options.rtcpGuard, DEFAULT_RTCP_GUARD));
    this.#rtp = rtp;
    this.#rtcp = rtcp;
    rtp.on('message', (buf, from) => {
      lease.touch(0, buf.length);
      const view = parseRtp(buf);
      if (!view) return;
      if (this.symmetric && !this.#admit('rtp', from, view.ssrc)) {
        this.strayIn++;
        return;
      }
      this.packetsIn++;
      this.bytesIn += buf.length;
      this.lastPacketAt = Date.now();
      this.safeEmit('rtp', view);
    });
    rtp.on('error', (err) => log.warn({ err }, 'RTP socket error'));
    rtcp?.on('message', (buf, from) => {
      lease.touch(1, buf.length);
      if (this.symmetric) {
        const ssrc = rtcpSenderSsrc(buf);
        if (ssrc === undefined) return;
        if (!this.#admit('rtcp', from, ssrc)) {
          this.rtcpStrayIn++;
          return;
        }
      }
      this.rtcpIn++;
      this.lastRtcpAt = Date.now();
    });
    rtcp?.on('error', (err) => log.warn({ err }, 'RTCP socket error'));
  }

  get port(): number {
    return this.lease.ports[0]!;
  }

  /** Where RTP goes: the latched source, else the SDP address; undefined before setRemote(). */
  get remote(): RtpAddress | undefined {
    return this.#target('rtp');
  }

  /** Where RTCP goes, likewise. */
  get rtcpRemote(): RtpAddress | undefined {
    return this.#target('rtcp');
  }

  /** The RTP address the peer's SDP gave. */
  get sdpRemote(): RtpAddress | undefined {
    return this.#sdp?.rtp;
  }

  /** True when RTP goes to a latched source that differs from the SDP address. */
  get latched(): boolean {
    return this.#sdp !== undefined && !sameAddress(this.remote, this.#sdp.rtp);
  }

  get rtcpLatched(): boolean {
    return this.#sdp !== undefined && !sameAddress(this.rtcpRemote, this.#sdp.rtcp);
  }

  /**
   * The peer's SDP address (RTCP defaults to the next port, RFC 3550 §11). Called again (a new
   * offer or answer), it starts over: the latches are dropped and the next packets latch anew.
   */
  setRemote(address: string, port: number, rtcpPort = port + 1): void {
    if (isIP(address) === 0) throw new TypeError(`remote address must be an IP address, got ${JSON.stringify(address)}`);
    for (const p of [port, rtcpPort]) {
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw new TypeError(`remote port must be 1-65535, got ${p}`);
    }
    this.#sdp = { rtp: { address, port }, rtcp: { address, port: rtcpPort } };
    this.#rtpLatch.reset();
    this.#rtcpLatch.reset();
    this.log.debug({ sdp: formatAddress(this.#sdp.rtp), rtcp: rtcpPort, symmetric: this.symmetric }, 'RTP remote set');
  }

  send(buf: Buffer): void {
    const r = this.#target('rtp');
    if (this.#closed || !r) return;
    this.packetsOut++;
    this.bytesOut += buf.length;
    this.#send(this.#rtp, 'RTP', buf, r);
  }

  sendRtcp(buf: Buffer): void {
    const r = this.#target('rtcp');
    const socket = this.#rtcp;
    if (this.#closed || !r || !socket) return;
    this.rtcpOut++;
    this.#send(socket, 'RTCP', buf, r);
  }

  /** Releases the ports (closing both sockets); idempotent. */
  close(): Promise<void> {
    this.#closed = true;
    this.removeAllListeners();
    return this.lease.release();
  }

  /** dgram throws synchronously for some failures (a socket closing under us): one lost packet, never an exception in the relay. */
  #send(socket: dgram.Socket, what: string, buf: Buffer, to: RtpAddress): void {
    try {
      socket.send(buf, to.port, to.address, (err) => {
        if (err) this.log.debug({ err }, `${what} send failed`);
      });
    } catch (err) {
      this.log.debug({ err }, `${what} send failed`);
    }
  }

  #target(kind: 'rtp' | 'rtcp'): RtpAddress | undefined {
    const sdp = this.#sdp?.[kind];
    if (!sdp) return undefined;
    return (this.symmetric ? (kind === 'rtp' ? this.#rtpLatch : this.#rtcpLatch).source : undefined) ?? sdp;
  }

  /** Runs a packet's source through the latch; false: a stray, to drop. */
  #admit(kind: 'rtp' | 'rtcp', from: RtpAddress, ssrc: number): boolean {
    const latch = kind === 'rtp' ? this.#rtpLatch : this.#rtcpLatch;
    const before = this.#target(kind);
    const verdict = latch.offer(from, ssrc, performance.now()); // monotonic: a wall-clock step must not open the guard
    if (verdict === 'stray') {
      const count = kind === 'rtp' ? this.strayIn : this.rtcpStrayIn;
      if (count === 0) this.log.debug({ media: kind, from: formatAddress(from), latched: latch.source && formatAddress(latch.source) }, 'dropping packets from a source other than the latched one');
      return false;
    }
    if (verdict === 'latched') {
      const after = this.#target(kind);
      const fields = { media: kind, from: before && formatAddress(before), to: formatAddress(from), sdp: this.#sdp && formatAddress(this.#sdp[kind]) };
      // Info only when the address we send to moves; a peer sending from its SDP address is routine.
      if (after && !sameAddress(before, after)) this.log.info(fields, `${kind.toUpperCase()} latched to where the peer's packets come from`);
      else this.log.debug(fields, `${kind.toUpperCase()} source latched`);
    }
    return true;
  }
}
