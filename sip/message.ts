import { answerChallenge, pickChallenge, type DigestCredentials } from './digest.js';
import {
  Grammar,
  IncomingRequestMessage,
  IncomingResponseMessage,
  NameAddrHeader,
  Parser,
  URI,
} from 'sip.js/lib/core/index.js';
import { getReasonPhrase } from 'sip.js/lib/core/messages/utils.js';

export { IncomingRequestMessage, IncomingResponseMessage, NameAddrHeader, URI };

/** A parsed Via entry (sip.js grammar output, only the fields we use). */
export interface Via {
  transport: string;
  host: string;
  port?: number;
  branch?: string;
  rport?: string | null;
  received?: string;
}

export interface ParsedRequest {
  kind: 'request';
  msg: IncomingRequestMessage;
  method: string;
  ruri: URI;
  vias: string[];
  topVia: Via;
}

export interface ParsedResponse {
  kind: 'response';
  msg: IncomingResponseMessage;
  status: number;
  method: string;
  vias: string[];
  topVia: Via;
}

export type ParseResult =
  | ParsedRequest
  | ParsedResponse
  /** Unusable; `request` is set when enough parsed to answer 400. */
  | { kind: 'invalid'; reason: string; request?: IncomingRequestMessage; vias?: string[] };

const quietLogger = {
  error() {},
  warn() {},
  log() {},
  debug() {},
};

/** Splits a header value on top-level commas (not inside quotes or angle brackets). */
export function splitHeaderList(value: string): string[] {
  const out: string[] = [];
  let depthAngle = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '"' && value[i - 1] !== '\\') quoted = !quoted;
    else if (!quoted && c === '<') depthAngle++;
    else if (!quoted && c === '>') depthAngle = Math.max(0, depthAngle - 1);
    else if (!quoted && depthAngle === 0 && c === ',') {
      out.push(value.slice(start, i).trim());
      start = i + 1;
    }
  }
  const last = value.slice(start).trim();
  if (last) out.push(last);
  return out;
}

function parseVia(raw: string): Via | undefined {
  const v = Grammar.parse(raw, 'Via') as unknown;
  if (v === -1 || typeof v !== 'object' || v === null) return undefined;
  return v as Via;
}

/**
 * Parses one SIP message with sip.js's parser and checks what RFC 3261 §8.1.1 makes mandatory.
 * Never throws: sip.js's parser can throw on malformed input (e.g. a response with a broken CSeq).
 */
export function parseSipMessage(data: string): ParseResult {
  let msg: IncomingRequestMessage | IncomingResponseMessage | undefined;
  try {
    msg = Parser.parseMessage(data, quietLogger as never);
  } catch (err) {
    return { kind: 'invalid', reason: `unparseable: ${(err as Error).message}` };
  }
  if (!msg) return { kind: 'invalid', reason: 'unparseable message' };

  const vias = msg.getHeaders('via').flatMap(splitHeaderList);
  const topVia = vias.length > 0 ? parseVia(vias[0]!) : undefined;
  const isRequest = msg instanceof IncomingRequestMessage;
  const fail = (reason: string): ParseResult =>
    isRequest && topVia ? { kind: 'invalid', reason, request: msg as IncomingRequestMessage, vias } : { kind: 'invalid', reason };

  if (!topVia) return fail('missing or malformed Via');
  if (!msg.callId) return fail('missing Call-ID');
  if (!msg.from) return fail('missing or malformed From');
  if (!msg.to) return fail('missing or malformed To');
  const cseq = msg.parseHeader('cseq') as { value: number; method: string } | undefined;
  if (!cseq || !Number.isInteger(cseq.value) || cseq.value < 0 || cseq.value > 2 ** 31) return fail('missing or malformed CSeq');

  if (msg instanceof IncomingRequestMessage) {
    if (!msg.fromTag) return fail('From without tag');
    const ruri = msg.ruri;
    if (!ruri || (ruri.scheme !== 'sip' && ruri.scheme !== 'sips')) return fail('unsupported Request-URI scheme');
    if (cseq.method !== msg.method) return fail('CSeq method does not match the request method');
    const mf = msg.getHeader('max-forwards');
    if (mf !== undefined && !/^\d{1,3}$/.test(mf.trim())) return fail('malformed Max-Forwards');
    return { kind: 'request', msg, method: msg.method, ruri, vias, topVia };
  }
  const status = msg.statusCode;
  if (!status || status < 100 || status > 699) return { kind: 'invalid', reason: 'bad status code' };
  return { kind: 'response', msg, status, method: cseq.method, vias, topVia };
}

export interface ResponseOptions {
  reason?: string;
  toTag?: string;
  headers?: string[];
  body?: string;
  contentType?: string;
  /** Replaces the request's Via list (e.g. with received/rport added to the top one). */
  vias?: string[];
}

/** Builds a response to `req` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied from the request. */
export function buildResponse(req: IncomingRequestMessage, status: number, opts: ResponseOptions = {}): string {
  const reason = opts.reason ?? getReasonPhrase(status) ?? 'Unknown';
  const lines: string[] = [`SIP/2.0 ${status} ${reason}`];
  for (const via of opts.vias ?? req.getHeaders('via')) lines.push(`Via: ${via}`);
  lines.push(`From: ${req.getHeader('from')}`);
  let to = req.getHeader('to') ?? '';
  if (!req.toTag && opts.toTag && status > 100) to += `;tag=${opts.toTag}`;
  lines.push(`To: ${to}`);
  lines.push(`Call-ID: ${req.callId}`);
  lines.push(`CSeq: ${req.cseq} ${req.method}`);
  if (opts.headers) lines.push(...opts.headers);
  return finish(lines, opts.body, opts.contentType);
}

export interface RequestParts {
  method: string;
  ruri: string;
  via: string;
  maxForwards?: number;
  from: string;
  to: string;
  callId: string;
  cseq: number;
  /** CSeq method when it differs from `method` (never, except ACK/CANCEL keep their own). */
  routes?: string[];
  contact?: string;
  headers?: string[];
  body?: string;
  contentType?: string;
}

export function buildRequest(p: RequestParts): string {
  const lines: string[] = [`${p.method} ${p.ruri} SIP/2.0`, `Via: ${p.via}`, `Max-Forwards: ${p.maxForwards ?? 70}`];
  for (const r of p.routes ?? []) lines.push(`Route: ${r}`);
  lines.push(`From: ${p.from}`, `To: ${p.to}`, `Call-ID: ${p.callId}`, `CSeq: ${p.cseq} ${p.method}`);
  if (p.contact) lines.push(`Contact: ${p.contact}`);
  if (p.headers) lines.push(...p.headers);
  return finish(lines, p.body, p.contentType);
}

function finish(lines: string[], body?: string, contentType?: string): string {
  if (body) {
    lines.push(`Content-Type: ${contentType ?? 'application/sdp'}`);
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
    return lines.join('\r\n') + '\r\n\r\n' + body;
  }
  lines.push('Content-Length: 0');
  return lines.join('\r\n') + '\r\n\r\n';
}

export function parseUri(s: string): URI | undefined {
  const u = Grammar.URIParse(s);
  return u instanceof URI ? u : undefined;
}

/** Every value of a header in a raw message's head, in order (sip.js keeps only the last challenge header). */
export function headerValues(raw: string, name: string): string[] {
  const end = raw.indexOf('\r\n\r\n');
  const prefix = `${name.toLowerCase()}:`;
  return (end < 0 ? raw : raw.slice(0, end))
    .split('\r\n')
    .filter((l) => l.toLowerCase().startsWith(prefix))
    .map((l) => l.slice(prefix.length).trim());
}

/**
 * RFC 3261 §22.2: the Authorization or Proxy-Authorization line answering a 401/407, or undefined
 * when no challenge in it can be answered with `creds`.
 */
export function authorizationFor(res: { status: number; msg: { data: string } }, creds: DigestCredentials, req: { method: string; uri: string }): string | undefined {
  const proxy = res.status === 407;
  const challenge = pickChallenge(headerValues(res.msg.data, proxy ? 'Proxy-Authenticate' : 'WWW-Authenticate'), creds);
  const answer = challenge ? answerChallenge(challenge, creds, req) : undefined;
  return answer ? `${proxy ? 'Proxy-Authorization' : 'Authorization'}: ${answer.header}` : undefined;
}

export function randomToken(bytes = 8): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString('hex');
}

export function newBranch(): string {
  return 'z9hG4bK' + randomToken(10);
}
