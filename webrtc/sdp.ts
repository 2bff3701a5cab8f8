import * as sdpTransform from 'sdp-transform';
import { GatewayError } from '../src/util/errors.js';

/** One codec as a session describes it. */
export interface Codec {
  pt: number;
  /** Lower-case encoding name: pcmu, pcma, g722, opus, telephone-event. */
  name: string;
  rate: number;
  channels: number;
  fmtp?: string;
}

/** Codecs a plain RTP peer may take, in our order of preference. */
export const PLAIN_RTP_CODECS = ['pcmu', 'pcma', 'g722', 'opus'] as const;
export type PlainRtpCodec = (typeof PLAIN_RTP_CODECS)[number];

/** The codec both sides use, with each side's payload type. */
export interface NegotiatedMedia {
  codec: Codec;
  /** Payload types on each side (dynamic ones can differ). */
  browserPt: number;
  sipPt: number;
  /** telephone-event, when both sides have it. */
  dtmf?: { browserPt: number; sipPt: number; rate: number };
  sip: { address: string; port: number; rtcpPort: number };
  /** ptime the SIP side asked for (ms), default 20. */
  ptime: number;
}

export class SdpError extends GatewayError {
  constructor(
    message: string,
    /** The SIP status this maps to (400 malformed, 488 not acceptable). */
    readonly status: 400 | 488,
  ) {
    super(status === 488 ? 'GW_SDP_NOT_ACCEPTABLE' : 'GW_SDP_INVALID', message);
    this.name = 'SdpError';
  }
}

const STATIC: Record<number, Omit<Codec, 'pt'>> = {
  0: { name: 'pcmu', rate: 8000, channels: 1 },
  8: { name: 'pcma', rate: 8000, channels: 1 },
  9: { name: 'g722', rate: 8000, channels: 1 },
};

type Media = sdpTransform.MediaDescription;

function parse(sdp: string): sdpTransform.SessionDescription {
  if (typeof sdp !== 'string' || !sdp.trim().startsWith('v=0')) throw new SdpError('not an SDP body', 400);
  try {
    return sdpTransform.parse(sdp);
  } catch (err) {
    throw new SdpError(`malformed SDP: ${(err as Error).message}`, 400);
  }
}

function codecsOf(m: Media): Codec[] {
  const pts = String(m.payloads ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n >= 0 && n <= 127);
  return pts.flatMap((pt): Codec[] => {
    const rtp = m.rtp.find((r) => r.payload === pt);
    const fmtp = m.fmtp.find((f) => f.payload === pt)?.config;
    if (rtp) return [{ pt, name: rtp.codec.toLowerCase(), rate: rtp.rate ?? 8000, channels: Number(rtp.encoding ?? 1) || 1, ...(fmtp ? { fmtp } : {}) }];
    const s = STATIC[pt];
    return s ? [{ pt, ...s }] : [];
  });
}

export interface BrowserOffer {
  codecs: Codec[];
}

/** Checks a WebRTC offer (from a softphone) and lists its audio codecs. */
export function parseWebRtcOffer(sdp: string): BrowserOffer {
  const s = parse(sdp);
  const audio = s.media.find((m) => m.type === 'audio' && m.port !== 0);
  if (!audio) throw new SdpError('the offer has no audio stream', 488);
  if (!/SAVPF|SAVP/.test(audio.protocol)) throw new SdpError(`audio is not secure (${audio.protocol}); WebRTC requires DTLS-SRTP`, 488);
  if (!(audio.fingerprint ?? s.fingerprint)) throw new SdpError('no DTLS fingerprint in the offer', 488);
  if (!(audio.iceUfrag ?? s.iceUfrag) || !(audio.icePwd ?? s.icePwd)) throw new SdpError('no ICE credentials in the offer', 488);
  return { codecs: codecsOf(audio) };
}

/** The codecs of the browser's offer we can put in front of a plain RTP peer. */
export function sipOfferCodecs(browser: BrowserOffer, allowed: readonly PlainRtpCodec[]): Codec[] {
  const out: Codec[] = [];
  for (const name of allowed) {
    const c = browser.codecs.find((x) => x.name === name && (name !== 'opus' || x.rate === 48000));
    if (c) out.push(c);
  }
  const te = browser.codecs.find((x) => x.name === 'telephone-event' && x.rate === 8000);
  if (out.length > 0 && te) out.push(te);
  return out;
}

let sessionVersion = Math.floor(Date.now() / 1000);

/** A plain RTP/AVP offer for the SIP side. */
export function buildPlainOffer(opts: { address: string; port: number; codecs: Codec[]; ptime?: number }): string {
  const ip = opts.address.includes(':') ? 'IP6' : 'IP4';
  const id = ++sessionVersion;
  const lines = [
    'v=0',
    `o=- ${id} ${id} IN ${ip} ${opts.address}`,
    's=-',
    `c=IN ${ip} ${opts.address}`,
    't=0 0',
    `m=audio ${opts.port} RTP/AVP ${opts.codecs.map((c) => c.pt).join(' ')}`,
  ];
  for (const c of opts.codecs) {
    lines.push(`a=rtpmap:${c.pt} ${c.name === 'telephone-event' ? 'telephone-event' : c.name.toUpperCase()}/${c.rate}${c.channels > 1 ? `/${c.channels}` : ''}`);
    if (c.name === 'telephone-event') lines.push(`a=fmtp:${c.pt} ${c.fmtp ?? '0-16'}`);
    else if (c.fmtp) lines.push(`a=fmtp:${c.pt} ${c.fmtp}`);
  }
  lines.push(`a=ptime:${opts.ptime ?? 20}`, 'a=sendrecv');
  return lines.join('\r\n') + '\r\n';
}

/** Reads the SIP peer's answer to our plain offer and fixes the codec both sides will use. */
export function negotiateSipAnswer(answerSdp: string, offered: Codec[]): NegotiatedMedia {
  const s = parse(answerSdp);
  const audio = s.media.find((m) => m.type === 'audio');
  if (!audio || audio.port === 0) throw new SdpError('the answer rejected the audio stream', 488);
  const address = audio.connection?.ip ?? s.connection?.ip;
  if (!address) throw new SdpError('no connection address in the answer', 400);
  if (!Number.isInteger(audio.port) || audio.port < 1 || audio.port > 65535) throw new SdpError('bad media port in the answer', 400);
  const answered = codecsOf(audio);
  let chosen: { codec: Codec; sipPt: number } | undefined;
  let dtmf: NegotiatedMedia['dtmf'];
  for (const a of answered) {
    const o = offered.find((x) => x.name === a.name && x.rate === a.rate);
    if (!o) continue;
    if (a.name === 'telephone-event') dtmf ??= { browserPt: o.pt, sipPt: a.pt, rate: a.rate };
    else chosen ??= { codec: { ...o }, sipPt: a.pt };
  }
  if (!chosen) throw new SdpError('the answer has no codec we offered', 488);
  const rtcp = audio.rtcp?.port;
  const ptime = Number(audio.ptime ?? 20);
  return {
    codec: chosen.codec,
    browserPt: chosen.codec.pt,
    sipPt: chosen.sipPt,
    ...(dtmf ? { dtmf } : {}),
    sip: { address, port: audio.port, rtcpPort: rtcp && rtcp > 0 ? rtcp : audio.port + 1 },
    ptime: ptime > 0 && ptime <= 200 ? ptime : 20,
  };
}

/** A plain RTP offer from a SIP peer (trunk, PBX, SIPp). */
export interface PlainOffer {
  address: string;
  port: number;
  rtcpPort: number;
  /** Codecs we can take, in the peer's order, telephone-event/8000 included. */
  codecs: Codec[];
  ptime: number;
}

/** Reads a SIP peer's plain RTP offer; 488 when nothing in it is usable. */
export function parsePlainOffer(sdp: string, allowed: readonly PlainRtpCodec[]): PlainOffer {
  const s = parse(sdp);
  const audio = s.media.find((m) => m.type === 'audio' && m.port !== 0);
  if (!audio) throw new SdpError('the offer has no audio stream', 488);
  if (!/^RTP\/AVPF?$/.test(audio.protocol)) throw new SdpError(`unsupported media protocol ${audio.protocol} (plain RTP/AVP expected)`, 488);
  const address = audio.connection?.ip ?? s.connection?.ip;
  if (!address) throw new SdpError('no connection address in the offer', 400);
  if (!Number.isInteger(audio.port) || audio.port < 1 || audio.port > 65535) throw new SdpError('bad media port in the offer', 400);
  const all = codecsOf(audio);
  const codecs = all.filter((c) => (allowed as readonly string[]).includes(c.name) && (c.name !== 'opus' || c.rate === 48000));
  if (codecs.length === 0) throw new SdpError('no codec in the offer that the gateway relays', 488);
  const te = all.find((c) => c.name === 'telephone-event' && c.rate === 8000);
  if (te) codecs.push(te);
  const rtcp = audio.rtcp?.port;
  const ptime = Number(audio.ptime ?? 20);
  return { address, port: audio.port, rtcpPort: rtcp && rtcp > 0 ? rtcp : audio.port + 1, codecs, ptime: ptime > 0 && ptime <= 200 ? ptime : 20 };
}

/**
 * Reads a browser's answer to the offer we built from `sip` (same payload type numbers on both
 * sides): the codec is the first one the browser kept.
 */
export function negotiateBrowserAnswer(answerSdp: string, sip: PlainOffer): NegotiatedMedia {
  const { codec, te } = chooseAnswered(answerSdp, sip.codecs);
  return {
    codec,
    browserPt: codec.pt,
    sipPt: codec.pt,
    ...(te ? { dtmf: { browserPt: te.pt, sipPt: te.pt, rate: 8000 } } : {}),
    sip: { address: sip.address, port: sip.port, rtcpPort: sip.rtcpPort },
    ptime: sip.ptime,
  };
}

/** The codec (and telephone-event) a browser kept from `offered`, in our payload type numbering. */
export function chooseAnswered(answerSdp: string, offered: Codec[]): { codec: Codec; te: Codec | undefined } {
  const s = parse(answerSdp);
  const audio = s.media.find((m) => m.type === 'audio');
  if (!audio || audio.port === 0) throw new SdpError('the browser rejected the audio stream', 488);
  const answered = codecsOf(audio);
  const chosen = answered.find((a) => a.name !== 'telephone-event' && offered.some((o) => o.pt === a.pt && o.name === a.name));
  if (!chosen) throw new SdpError('the browser answered with no codec we offered', 488);
  const codec = offered.find((o) => o.pt === chosen.pt)!;
  const te = answered.find((a) => a.name === 'telephone-event' && offered.some((o) => o.pt === a.pt && o.name === 'telephone-event'));
  return { codec, te };
}

/** Our plain RTP answer to a SIP peer: exactly the negotiated codec, and telephone-event when both have it. */
export function buildPlainAnswer(opts: { address: string; port: number; media: NegotiatedMedia }): string {
  const { media } = opts;
  const codecs: Codec[] = [{ ...media.codec, pt: media.sipPt }];
  if (media.dtmf) codecs.push({ pt: media.dtmf.sipPt, name: 'telephone-event', rate: 8000, channels: 1, fmtp: '0-16' });
  return buildPlainOffer({ address: opts.address, port: opts.port, codecs, ptime: media.ptime });
}
