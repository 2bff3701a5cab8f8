import type dgram from 'node:dgram';
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

export type RtpEndpointEvents = {
  rtp: [packet: RtpView];
};

/**
 * The SIP leg's media: an RTP socket and its RTCP neighbour, from one port lease. Sends to the
 * address the SIP peer's SDP gave; counts what arrives on either port.
 */
export class RtpEndpoint extends SafeEmitter<RtpEndpointEvents> {
  #rtp: dgram.Socket;
  #remote: { address: string; port: number } | undefined;
  #closed = false;
  packetsIn = 0;
  packetsOut = 0;
  bytesIn = 0;
  bytesOut = 0;
  rtcpIn = 0;
  /** Last RTP from the SIP peer, and last RTCP (a peer on hold may send only RTCP). */
  lastPacketAt: number | undefined;
  lastRtcpAt: number | undefined;

  constructor(
    readonly lease: PortLease,
    private readonly log: Logger,
  ) {
    super(log);
    const [rtp, rtcp] = lease.sockets;
    if (!rtp) throw new TypeError('RtpEndpoint needs a lease with a bound RTP socket');
    this.#rtp = rtp;
    rtp.on('message', (buf) => {
      lease.touch(0, buf.length);
      const view = parseRtp(buf);
      if (!view) return;
      this.packetsIn++;
      this.bytesIn += buf.length;
      this.lastPacketAt = Date.now();
      this.safeEmit('rtp', view);
    });
    rtp.on('error', (err) => log.warn({ err }, 'RTP socket error'));
    rtcp?.on('message', (buf) => {
      lease.touch(1, buf.length);
      this.rtcpIn++;
      this.lastRtcpAt = Date.now();
    });
    rtcp?.on('error', (err) => log.warn({ err }, 'RTCP socket error'));
  }

  get port(): number {
    return this.lease.ports[0]!;
  }

  get remote(): { address: string; port: number } | undefined {
    return this.#remote;
  }

  setRemote(address: string, port: number): void {
    this.#remote = { address, port };
  }

  send(buf: Buffer): void {
    const r = this.#remote;
    if (this.#closed || !r) return;
    this.packetsOut++;
    this.bytesOut += buf.length;
    this.#rtp.send(buf, r.port, r.address, (err) => {
      if (err) this.log.debug({ err }, 'RTP send failed');
    });
  }

  /** Releases the ports (closing both sockets); idempotent. */
  close(): Promise<void> {
    this.#closed = true;
    this.removeAllListeners();
    return this.lease.release();
  }
}
