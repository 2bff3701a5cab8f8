/**
 * A bare SIP-over-WebSocket client (RFC 7118, subprotocol `sip`) for timing single transactions:
 * REGISTER with digest (sip/digest.ts answers the 401) and OPTIONS. No SIP stack in between, so
 * what it measures is the gateway plus loopback.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { WebSocket } from 'ws';
import { answerChallenge, pickChallenge } from '../sip/digest.js';

export interface SipResponse {
  status: number;
  headers: Map<string, string[]>;
  rttMs: number;
}

const rand = (n = 8) => randomBytes(n).toString('hex');

export class SipWsClient {
  readonly #ws: WebSocket;
  readonly #pending = new Map<string, { resolve: (r: SipResponse) => void; reject: (e: Error) => void; sentAt: number; timer: NodeJS.Timeout }>();
  readonly #host = `${rand(5)}.invalid`;
  readonly #callId = `${rand(10)}@bench`;
  readonly #tag = rand(6);
  readonly #contact: string;
  #cseq = 0;

  private constructor(ws: WebSocket, readonly user: { username: string; password: string }, readonly domain: string) {
    this.#ws = ws;
    this.#contact = `<sip:${rand(4)}@${this.#host};transport=ws>`;
    ws.on('message', (data) => this.#onMessage(String(data)));
    ws.on('close', () => this.#failAll(new Error('WebSocket closed')));
  }

  static async connect(url: string, user: { username: string; password: string }, domain = '127.0.0.1'): Promise<SipWsClient> {
    const ws = new WebSocket(url, 'sip');
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`WebSocket ${url} not open within 5 s`)), 5000);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    return new SipWsClient(ws, user, domain);
  }

  /** REGISTER, the 401 challenge, REGISTER with credentials: both round trips, ms. */
  async register(expires = 600): Promise<{ challengeMs: number; authMs: number; totalMs: number }> {
    const uri = `sip:${this.domain}`;
    const first = await this.#send('REGISTER', uri, [`Contact: ${this.#contact}`, `Expires: ${expires}`], this.#callId, this.#tag);
    if (first.status !== 401) throw new Error(`REGISTER: expected 401, got ${first.status}`);
    const challenge = pickChallenge(first.headers.get('www-authenticate') ?? [], this.user);
    if (!challenge) throw new Error('REGISTER: no challenge the credentials can answer');
    const answer = answerChallenge(challenge, this.user, { method: 'REGISTER', uri });
    if (!answer) throw new Error('REGISTER: could not answer the challenge');
    const second = await this.#send('REGISTER', uri, [`Contact: ${this.#contact}`, `Expires: ${expires}`, `Authorization: ${answer.header}`], this.#callId, this.#tag);
    if (second.status !== 200) throw new Error(`REGISTER with credentials: got ${second.status}`);
    return { challengeMs: first.rttMs, authMs: second.rttMs, totalMs: first.rttMs + second.rttMs };
  }

  /** OPTIONS outside any dialog, ms to its 200. */
  async options(): Promise<number> {
    const r = await this.#send('OPTIONS', `sip:${this.domain}`, ['Accept: application/sdp'], `${rand(10)}@bench`, rand(6), `<sip:${this.domain}>`);
    if (r.status !== 200) throw new Error(`OPTIONS: got ${r.status}`);
    return r.rttMs;
  }

  close(): void {
    this.#failAll(new Error('client closed'));
    this.#ws.close();
  }

  #send(method: string, ruri: string, extra: string[], callId: string, tag: string, to = `<sip:${this.user.username}@${this.domain}>`): Promise<SipResponse> {
    const branch = `z9hG4bK${rand(8)}`;
    const cseq = ++this.#cseq;
    const msg = [
      `${method} ${ruri} SIP/2.0`,
      `Via: SIP/2.0/WS ${this.#host};branch=${branch}`,
      'Max-Forwards: 70',
      `To: ${to}`,
      `From: <sip:${this.user.username}@${this.domain}>;tag=${tag}`,
      `Call-ID: ${callId}`,
      `CSeq: ${cseq} ${method}`,
      ...extra,
      'User-Agent: sip-webrtc-gateway bench',
      'Content-Length: 0',
      '',
      '',
    ].join('\r\n');
    return new Promise<SipResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(branch);
        reject(new Error(`${method}: no final response within 10 s`));
      }, 10_000);
      this.#pending.set(branch, { resolve, reject, sentAt: performance.now(), timer });
      this.#ws.send(msg);
    });
  }

  #onMessage(text: string): void {
    const now = performance.now();
    const m = /^SIP\/2\.0 (\d{3})/.exec(text);
    if (!m) return;
    const status = Number(m[1]);
    if (status < 200) return;
    const headers = new Map<string, string[]>();
    for (const line of text.split('\r\n\r\n')[0]!.split('\r\n').slice(1)) {
      const i = line.indexOf(':');
      if (i < 0) continue;
      const name = line.slice(0, i).trim().toLowerCase();
      headers.set(name, [...(headers.get(name) ?? []), line.slice(i + 1).trim()]);
    }
    const branch = /branch=([^;,\s]+)/.exec(headers.get('via')?.[0] ?? headers.get('v')?.[0] ?? '')?.[1];
    const p = branch ? this.#pending.get(branch) : undefined;
    if (!p || !branch) return;
    this.#pending.delete(branch);
    clearTimeout(p.timer);
    p.resolve({ status, headers, rttMs: now - p.sentAt });
  }

  #failAll(e: Error): void {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.#pending.clear();
  }
}
