import { answerChallenge, pickChallenge, type DigestCredentials } from './digest.js';
import type { ChallengeKind } from './digest-client.js';
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

// CR and LF end a line: inside a value they would start a header of their own. NUL ends strings in many peers.
const LINE_BREAKING = /[\r\n\0]/;
// RFC 3261 §7.3.1 line folding (CRLF or LF followed by whitespace), which is just LWS: sip.js keeps it in raw values.
const FOLD = /\r?\n[ \t]+/g;

/** Throws a TypeError naming `what` when `value` contains CR, LF or NUL. */
export function assertSingleLine(value: string, what: string): string {
  if (typeof value !== 'string') throw new TypeError(`SIP ${what} must be a string`);
  if (LINE_BREAKING.test(value)) throw new TypeError(`SIP ${what} contains CR, LF or NUL: ${JSON.stringify(value.slice(0, 80))}`);
  return value;
}

/** A header line or value: folds (legal, e.g. copied from a received message) become one space; any other CR/LF/NUL throws. */
function headerPart(value: string, what: string): string {
  return assertSingleLine(typeof value === 'string' ? value.replace(FOLD, ' ') : value, what);
}

/** A whole extra header line ("Name: value"); an empty one would end the head early. */
function headerLine(line: string): string {
  const l = headerPart(line, 'header line');
  if (!/^[A-Za-z0-9!%'*+.`~_-]+[ \t]*:/.test(l)) throw new TypeError(`not a SIP header line: ${JSON.stringify(l.slice(0, 80))}`);
  return l;
}

/**
 * Builds a response to `req` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied from the request.
 * Throws a TypeError when a header line would break; control characters in the reason phrase (free text,
 * possibly an error message) become spaces instead, so that a response can always be sent.
 */
export function buildResponse(req: IncomingRequestMessage, status: number, opts: ResponseOptions = {}): string {
  if (!Number.isInteger(status) || status < 100 || status > 699) throw new TypeError(`bad SIP status ${String(status)}`);
  // eslint-disable-next-line no-control-regex
  const reason = (opts.reason ?? getReasonPhrase(status) ?? 'Unknown').replace(/[\x00-\x1f\x7f]+/g, ' ');
  const lines: string[] = [`SIP/2.0 ${status} ${reason}`];
  for (const via of opts.vias ?? req.getHeaders('via')) lines.push(`Via: ${headerPart(via, 'Via')}`);
  lines.push(`From: ${headerPart(req.getHeader('from') ?? '', 'From')}`);
  let to = headerPart(req.getHeader('to') ?? '', 'To');
  if (!req.toTag && opts.toTag && status > 100) to += `;tag=${assertSingleLine(opts.toTag, 'To tag')}`;
  lines.push(`To: ${to}`);
  lines.push(`Call-ID: ${headerPart(req.callId, 'Call-ID')}`);
  lines.push(`CSeq: ${req.cseq} ${req.method}`);
  for (const h of opts.headers ?? []) lines.push(headerLine(h));
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
  routes?: string[];
  contact?: string;
  headers?: string[];
  body?: string;
  contentType?: string;
}

/**
 * Builds a request. Throws a TypeError when a part would break the message's lines (CR, LF or NUL in the
 * request line or a header; a fold in a header value becomes a space): a value taken from outside (a
 * dialled number, a display name) must never become a header line of its own at the peer.
 */
export function buildRequest(p: RequestParts): string {
  const method = assertSingleLine(p.method, 'method');
  if (!/^[A-Za-z0-9!%'*+.`~_-]+$/.test(method)) throw new TypeError(`bad SIP method ${JSON.stringify(method)}`);
  if (!Number.isSafeInteger(p.cseq) || p.cseq < 0 || p.cseq >= 2 ** 31) throw new TypeError(`bad CSeq number ${String(p.cseq)}`);
  const maxForwards = p.maxForwards ?? 70;
  if (!Number.isInteger(maxForwards) || maxForwards < 0 || maxForwards > 255) throw new TypeError(`bad Max-Forwards ${String(maxForwards)}`);
  const ruri = assertSingleLine(p.ruri, 'Request-URI');
  if (/\s/.test(ruri) || ruri === '') throw new TypeError(`SIP Request-URI must be one token: ${JSON.stringify(ruri.slice(0, 80))}`);
  const lines: string[] = [`${method} ${ruri} SIP/2.0`, `Via: ${headerPart(p.via, 'Via')}`, `Max-Forwards: ${maxForwards}`];
  for (const r of p.routes ?? []) lines.push(`Route: ${headerPart(r, 'Route')}`);
  lines.push(`From: ${headerPart(p.from, 'From')}`, `To: ${headerPart(p.to, 'To')}`, `Call-ID: ${headerPart(p.callId, 'Call-ID')}`, `CSeq: ${p.cseq} ${method}`);
  if (p.contact) lines.push(`Contact: ${headerPart(p.contact, 'Contact')}`);
  for (const h of p.headers ?? []) lines.push(headerLine(h));
  return finish(lines, p.body, p.contentType);
}

function finish(lines: string[], body?: string, contentType?: string): string {
  if (body) {
    lines.push(`Content-Type: ${headerPart(contentType ?? 'application/sdp', 'Content-Type')}`);
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

/**
 * Every value of a header in a raw message's head, in order (sip.js keeps only the last challenge header).
 * RFC 3261 §7.3.1: whitespace may stand before the colon, and a value may be folded over several lines.
 */
export function headerValues(raw: string, name: string): string[] {
  const end = /\r?\n\r?\n/.exec(raw);
  const head = (end ? raw.slice(0, end.index) : raw).replace(FOLD, ' ');
  const wanted = name.toLowerCase();
  const out: string[] = [];
  for (const line of head.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && line.slice(0, colon).trimEnd().toLowerCase() === wanted) out.push(line.slice(colon + 1).trim());
  }
  return out;
}

/** The digest challenges of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate). */
export function challengesOf(res: { status: number; msg: { data: string } }): { kind: ChallengeKind; values: string[] } {
  const kind: ChallengeKind = res.status === 407 ? 'proxy' : 'www';
  return { kind, values: headerValues(res.msg.data, kind === 'proxy' ? 'Proxy-Authenticate' : 'WWW-Authenticate') };
}

/**
 * RFC 3261 §22.2: the Authorization or Proxy-Authorization line answering a 401/407, or undefined
 * when no challenge in it can be answered with `creds`.
 */
export function authorizationFor(res: { status: number; msg: { data: string } }, creds: DigestCredentials, req: { method: string; uri: string }): string | undefined {
  const { kind, values } = challengesOf(res);
  const challenge = pickChallenge(values, creds);
  const answer = challenge ? answerChallenge(challenge, creds, req) : undefined;
  return answer ? `${kind === 'proxy' ? 'Proxy-Authorization' : 'Authorization'}: ${answer.header}` : undefined;
}

export function randomToken(bytes = 8): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString('hex');
}

export function newBranch(): string {
  return 'z9hG4bK' + randomToken(10);
}
