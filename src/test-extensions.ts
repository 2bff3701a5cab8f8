import type { TrunkRoute } from './router.js';
import dgram from 'node:dgram';
import type { Logger } from 'pino';
import type { InboundCall } from '../sip/backend.js';
import { SipStack } from '../sip/sip-stack.js';
import { parseRtp, serializeRtp } from '../webrtc/rtp-endpoint.js';
import { buildPlainOffer, parsePlainOffer, SdpError, type Codec } from '../webrtc/sdp.js';
import { errorMessage } from './util/errors.js';

export type ExtensionKind = 'echo' | 'tone';

/** G.711 µ-law encoding of one 16-bit sample (ITU-T G.711). */
function linearToUlaw(sample: number): number {
  const BIAS = 0x84;
  const CLIP = 32635;
  let s = Math.max(-CLIP, Math.min(CLIP, Math.round(sample)));
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** 20 ms frames of a 440 Hz tone at 8 kHz (one second's worth, looped; 440 Hz fits a second exactly). */
const TONE_FRAMES: Buffer[] = (() => {
  const frames: Buffer[] = [];
  for (let f = 0; f < 50; f++) {
    const b = Buffer.alloc(160);
    for (let i = 0; i < 160; i++) b[i] = linearToUlaw(8000 * Math.sin((2 * Math.PI * 440 * (f * 160 + i)) / 8000));
    frames.push(b);
  }
  return frames;
})();

/**
 * Built-in extensions for trying the gateway without a PBX: a SIP peer inside the process, on
 * its own loopback UDP port, reached through the same SIP path as any trunk call. `echo` sends
 * every RTP packet back; `tone` plays 440 Hz (PCMU).
 */
export class TestExtensions {
  #stack: SipStack;
  #log: Logger;
  #numbers: Map<string, ExtensionKind>;
  #calls = new Set<() => void>();

  private constructor(stack: SipStack, numbers: Map<string, ExtensionKind>, log: Logger) {
    this.#stack = stack;
    this.#numbers = numbers;
    this.#log = log;
    stack.on('invite', (call) => this.#answer(call));
  }

  static async start(numbers: Record<ExtensionKind, string>, log: Logger): Promise<TestExtensions> {
    const stack = await SipStack.create({ listen: [{ transport: 'udp', host: '127.0.0.1', port: 0 }], log: log.child({ component: 'test-extensions' }) });
    const map = new Map<string, ExtensionKind>([
      [numbers.echo, 'echo'],
      [numbers.tone, 'tone'],
    ]);
    return new TestExtensions(stack, map, log);
  }

  /** Where the gateway sends INVITEs for an extension number; undefined if it is not one. */
  target(number: string): TrunkRoute | undefined {
    if (!this.#numbers.has(number)) return undefined;
    return { name: 'test-extensions', target: { target: { transport: 'udp', host: '127.0.0.1', port: this.#stack.address('udp')!.port } } };
  }

  #answer(call: InboundCall): void {
    const kind = this.#numbers.get(call.toUser);
    if (!kind) return call.reject(404);
    let offer;
    try {
      offer = parsePlainOffer(call.offer, ['pcmu', 'pcma']);
    } catch (err) {
      return call.reject(err instanceof SdpError ? err.status : 488);
    }
    const codec = offer.codecs.find((c) => c.name === 'pcmu' || (kind === 'echo' && c.name === 'pcma'));
    if (!codec) return call.reject(488);
    const socket = dgram.createSocket('udp4');
    let timer: NodeJS.Timeout | undefined;
    const end = () => {
      clearInterval(timer);
      socket.close();
      this.#calls.delete(end);
    };
    this.#calls.add(end);
    call.once('ended', end);
    socket.on('error', (err) => this.#log.warn({ err }, 'test extension socket error'));
    socket.bind(0, '127.0.0.1', () => {
      if (call.state === 'ended') return;
      const te = offer.codecs.find((c) => c.name === 'telephone-event');
      const codecs: Codec[] = te ? [codec, te] : [codec];
      call.accept(buildPlainOffer({ address: '127.0.0.1', port: socket.address().port, codecs }));
      if (kind === 'echo') {
        // Symmetric: back to where the packet came from.
        socket.on('message', (buf, rinfo) => socket.send(buf, rinfo.port, rinfo.address));
      } else {
        let seq = 0;
        let ts = 0;
        const ssrc = 0x5eed0001;
        timer = setInterval(() => {
          const frame = TONE_FRAMES[seq % TONE_FRAMES.length]!;
          socket.send(serializeRtp({ payloadType: codec.pt, marker: seq === 0, sequenceNumber: seq++ & 0xffff, timestamp: (ts += 160) >>> 0, ssrc }, frame), offer.port, offer.address);
        }, 20);
        socket.on('message', (buf) => void parseRtp(buf)); // drained; the tone needs no input
      }
      this.#log.info({ extension: call.toUser, kind }, 'test extension answered');
    });
  }

  async close(): Promise<void> {
    for (const end of [...this.#calls]) {
      try {
        end();
      } catch (err) {
        this.#log.warn({ err: errorMessage(err) }, 'test extension close failed');
      }
    }
    await this.#stack.close();
  }
}
