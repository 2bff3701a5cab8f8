/**
 * A plain RTP peer for tests: a UDP socket on 127.0.0.1 that a SIP peer's SDP points the
 * gateway at (see test/sipp/uas-answer-sink.xml). It records every packet's payload type,
 * decodes RFC 4733 telephone-events, and echoes other packets back to their source (symmetric
 * RTP), so the far side hears itself as with SIPp's -rtp_echo.
 */
import type { Socket } from 'node:dgram';
import { bindUdp, closeUdp } from './ports.js';

/** RFC 4733 §3.2 event codes 0-15. */
const EVENT_KEYS = '0123456789*#ABCD';

export interface TelephoneEvent {
  payloadType: number;
  /** RTP timestamp: the same for every packet of one event. */
  timestamp: number;
  marker: boolean;
  event: number;
  key: string;
  end: boolean;
  volume: number;
  duration: number;
}

export interface RtpSink {
  readonly port: number;
  /** Packets seen per payload type. */
  readonly packetsByPt: ReadonlyMap<number, number>;
  readonly events: readonly TelephoneEvent[];
  /** Keys of the events that ended (E bit), once per event, in order. */
  keys(): string;
  close(): Promise<void>;
}

interface Rtp {
  pt: number;
  marker: boolean;
  timestamp: number;
  payload: Buffer;
}

function parseRtp(b: Buffer): Rtp | undefined {
  if (b.length < 12 || b[0]! >> 6 !== 2) return undefined;
  const cc = b[0]! & 0x0f;
  let off = 12 + 4 * cc;
  if (b[0]! & 0x10) {
    if (b.length < off + 4) return undefined;
    off += 4 + 4 * b.readUInt16BE(off + 2);
  }
  let end = b.length;
  if (b[0]! & 0x20) end -= b[b.length - 1]!;
  if (end < off) return undefined;
  return { pt: b[1]! & 0x7f, marker: (b[1]! & 0x80) !== 0, timestamp: b.readUInt32BE(4), payload: b.subarray(off, end) };
}

export async function startRtpSink(opts: { telephoneEventPt: number; echo?: boolean }): Promise<RtpSink> {
  const socket: Socket = await bindUdp(0);
  const packetsByPt = new Map<number, number>();
  const events: TelephoneEvent[] = [];
  socket.on('message', (buf, rinfo) => {
    const p = parseRtp(buf);
    if (!p) return; // RTCP or junk
    packetsByPt.set(p.pt, (packetsByPt.get(p.pt) ?? 0) + 1);
    if (p.pt === opts.telephoneEventPt && p.payload.length >= 4) {
      const event = p.payload[0]!;
      events.push({
        payloadType: p.pt,
        timestamp: p.timestamp,
        marker: p.marker,
        event,
        key: EVENT_KEYS[event] ?? `?${event}`,
        end: (p.payload[1]! & 0x80) !== 0,
        volume: p.payload[1]! & 0x3f,
        duration: p.payload.readUInt16BE(2),
      });
      return;
    }
    if (opts.echo !== false) socket.send(buf, rinfo.port, rinfo.address);
  });
  let closing: Promise<void> | undefined;
  return {
    port: socket.address().port,
    packetsByPt,
    events,
    keys() {
      // The end packet is sent three times (RFC 4733 §2.5.1.4): count each timestamp once.
      const seen = new Set<number>();
      let out = '';
      for (const e of events) {
        if (!e.end || seen.has(e.timestamp)) continue;
        seen.add(e.timestamp);
        out += e.key;
      }
      return out;
    },
    close() {
      closing ??= closeUdp(socket);
      return closing;
    },
  };
}
