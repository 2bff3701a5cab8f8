/**
 * The WebRTC side of the media load: N SIP.js + werift softphones (one WebSocket each, as N
 * browsers would have), each with one bridged call through the gateway to SIPp, which echoes the
 * RTP back. Every 20 ms each call sends one 160-byte PCMU packet whose payload carries the send
 * time, so the echo gives the round-trip time and exact round-trip loss per packet.
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Softphone, type SoftphoneCall } from '../test/support/softphone.js';
import { mapLimit, errorText, withTimeout } from './stats.js';

const MAGIC = 0x424e4348; // "BNCH"
const PACKET_MS = 20;

export interface MediaCallsOptions {
  wsUrl: string;
  user: { username: string; password: string };
  count: number;
  /** Calls being set up at once. */
  setupConcurrency?: number;
  /** Bound on the whole setup. */
  setupTimeoutMs?: number;
}

interface Leg {
  phone: Softphone;
  call: SoftphoneCall;
  payloadType: number;
  seq: number;
  timer?: NodeJS.Timeout;
  unsubscribe: Array<() => void>;
}

export interface WindowStats {
  /** Packets sent inside the window, and how many of those came back (after the drain). */
  sent: number;
  echoed: number;
  rttMs: number[];
  /** How late the 20 ms send timers fired, ms (a late load generator shows here). */
  sendLatenessMs: number[];
  sendErrors: number;
  /** The bench process's own event-loop delay p99 over the window, ms. */
  benchLoopDelayP99Ms: number;
}

export class MediaCalls {
  readonly legs: Leg[] = [];
  readonly setupFailures: string[] = [];
  setupMs = 0;
  #phones: Softphone[] = [];
  #window: { start: number; end: number } | undefined;
  #stats = MediaCalls.#emptyStats();
  #totals = { sent: 0, received: 0 };
  #sending = false;
  #closed = false;
  #loopDelay = monitorEventLoopDelay({ resolution: 10 });

  private constructor() {}

  static #emptyStats(): Omit<WindowStats, 'benchLoopDelayP99Ms'> {
    return { sent: 0, echoed: 0, rttMs: [], sendLatenessMs: [], sendErrors: 0 };
  }

  /** Connects the phones and sets up every call (PeerConnection connected). Failed calls are listed, not thrown. */
  static async open(o: MediaCallsOptions): Promise<MediaCalls> {
    const t0 = performance.now();
    const m = new MediaCalls();
    const run = async () => {
      await mapLimit(Array.from({ length: o.count }, (_, i) => i), o.setupConcurrency ?? 8, async () => {
        if (m.#closed) return; // setup timed out and close() ran: start nothing more
        let phone: Softphone | undefined;
        try {
          phone = await Softphone.connect({ server: o.wsUrl, user: o.user.username, domain: '127.0.0.1', password: o.user.password, teardownTimeoutMs: 5000 });
          m.#phones.push(phone);
          if (m.#closed) {
            await phone.close().catch(() => undefined);
            return;
          }
          const call = phone.call('sip:1000@127.0.0.1', { establishTimeoutMs: 15_000 });
          await call.established;
          const sdh = call.sessionDescriptionHandler;
          await sdh.waitForConnected(10_000);
          const payloadType = sdh.payloadTypeOf('audio/PCMU');
          if (payloadType === undefined) throw new Error('PCMU not negotiated');
          m.#attach({ phone, call, payloadType, seq: 0, unsubscribe: [] });
        } catch (e) {
          m.setupFailures.push(errorText(e));
        }
      });
    };
    await withTimeout(run(), o.setupTimeoutMs ?? 120_000, `setting up ${o.count} media calls`).catch((e: unknown) => m.setupFailures.push(errorText(e)));
    m.setupMs = performance.now() - t0;
    return m;
  }

  #attach(leg: Leg): void {
    const sdh = leg.call.sessionDescriptionHandler;
    const onRtp = (p: { payload: Buffer }) => this.#onEcho(p.payload);
    const tracks = sdh.transceiver.receiver.tracks;
    if (tracks.length > 0) {
      for (const t of tracks) leg.unsubscribe.push(t.onReceiveRtp.subscribe(onRtp).unSubscribe);
    } else {
      leg.unsubscribe.push(sdh.transceiver.dtlsTransport.onRtp.subscribe(onRtp).unSubscribe);
    }
    this.legs.push(leg);
  }

  #onEcho(payload: Buffer): void {
    if (payload.length < 20 || payload.readUInt32BE(0) !== MAGIC) return;
    const sentAt = payload.readDoubleBE(12);
    const now = performance.now();
    this.#totals.received++;
    const w = this.#window;
    if (w && sentAt >= w.start && sentAt < w.end) {
      this.#stats.echoed++;
      this.#stats.rttMs.push(now - sentAt);
    }
  }

  /** Every call sends a packet every 20 ms from a random phase, as independent browsers would. */
  startSending(): void {
    if (this.#sending) return;
    this.#sending = true;
    this.legs.forEach((leg, index) => {
      const phase = Math.random() * PACKET_MS;
      const start = performance.now() + phase;
      const tick = () => {
        if (!this.#sending) return;
        const now = performance.now();
        const due = start + leg.seq * PACKET_MS;
        const payload = Buffer.alloc(160, 0xff);
        payload.writeUInt32BE(MAGIC, 0);
        payload.writeUInt32BE(index, 4);
        payload.writeUInt32BE(leg.seq, 8);
        payload.writeDoubleBE(now, 12);
        const w = this.#window;
        const inWindow = w !== undefined && now >= w.start && now < w.end;
        if (inWindow) {
          this.#stats.sent++;
          this.#stats.sendLatenessMs.push(now - due);
        }
        this.#totals.sent++;
        leg.call.sessionDescriptionHandler.sendRtp(payload, { payloadType: leg.payloadType }).catch(() => {
          if (inWindow) this.#stats.sendErrors++;
        });
        leg.seq++;
        leg.timer = setTimeout(tick, Math.max(0, start + leg.seq * PACKET_MS - performance.now()));
      };
      leg.timer = setTimeout(tick, phase);
    });
  }

  stopSending(): void {
    this.#sending = false;
    for (const leg of this.legs) clearTimeout(leg.timer);
  }

  /** Packets sent from now for `ms` are the measured ones. */
  openWindow(ms: number): void {
    const start = performance.now();
    this.#window = { start, end: start + ms };
    this.#stats = MediaCalls.#emptyStats();
    this.#loopDelay.enable();
    this.#loopDelay.reset();
  }

  /** The window's figures; call after the window closed and the echoes drained. */
  windowStats(): WindowStats {
    const p99 = this.#loopDelay.percentile(99) / 1e6;
    this.#loopDelay.disable();
    return { ...this.#stats, benchLoopDelayP99Ms: p99 };
  }

  /** Since sending started: RTP packets sent by the phones and received by their tracks. */
  get totals(): { sent: number; received: number; receivedByPhones: number } {
    return { ...this.#totals, receivedByPhones: this.legs.reduce((a, l) => a + l.call.rtpReceived, 0) };
  }

  /** Hangs up every call and closes every phone (bounded per phone); returns teardown errors. */
  async close(): Promise<string[]> {
    this.#closed = true;
    this.stopSending();
    for (const leg of this.legs) for (const u of leg.unsubscribe) u();
    const errors: string[] = [];
    const results = await mapLimit(this.#phones, 16, (p) => withTimeout(p.close(), 15_000, 'closing a softphone'));
    for (const r of results) if (r.status === 'rejected') errors.push(errorText(r.reason));
    this.#loopDelay.disable();
    return errors;
  }
}
