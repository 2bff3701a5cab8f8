import assert from 'node:assert/strict';
import JsSIP from 'jssip';
import { WebSocket } from 'ws';
import type { Gateway } from '../../src/gateway.js';
import { answerChallenge } from '../../sip/digest.js';
import { parseSipMessage } from '../../sip/message.js';
import { TEST_PASSWORD, assertClean, startGateway, waitFor, wsUrl } from '../support/gateway-harness.js';
import { bindUdp, closeUdp } from '../support/ports.js';
import { Softphone } from '../support/softphone.js';

/** A bare SIP-over-WebSocket client for requests SIP.js would not send as we need them. */
class RawWsClient {
  #ws: WebSocket;
  #queue: string[] = [];
  #waiters: Array<(m: string) => void> = [];
  cseq = 1;
  readonly callId = `raw-${Math.random().toString(36).slice(2)}`;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.on('message', (d) => {
      const m = d.toString();
      const w = this.#waiters.shift();
      if (w) w(m);
      else this.#queue.push(m);
    });
  }

  static async open(url: string): Promise<RawWsClient> {
    const ws = new WebSocket(url, 'sip');
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return new RawWsClient(ws);
  }

  next(timeoutMs = 5000): Promise<string> {
    const q = this.#queue.shift();
    if (q) return Promise.resolve(q);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no SIP message within timeout')), timeoutMs);
      this.#waiters.push((m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
  }

  register(user: string, headers: string[] = [], expires = 300): string {
    const uri = 'sip:127.0.0.1';
    const text = [
      `REGISTER ${uri} SIP/2.0`,
      `Via: SIP/2.0/WS raw.invalid;branch=z9hG4bK${Math.random().toString(36).slice(2)}`,
      'Max-Forwards: 70',
      `From: <sip:${user}@127.0.0.1>;tag=rawtag`,
      `To: <sip:${user}@127.0.0.1>`,
      `Call-ID: ${this.callId}`,
      `CSeq: ${this.cseq++} REGISTER`,
      `Contact: <sip:raw@raw.invalid;transport=ws>;expires=${expires}`,
      ...headers,
      'Content-Length: 0',
      '',
      '',
    ].join('\r\n');
    this.#ws.send(text);
    return uri;
  }

  send(text: string): void {
    this.#ws.send(text);
  }

  close(): void {
    this.#ws.close();
  }
}

function status(m: string): number {
  return Number(/^SIP\/2\.0 (\d{3})/.exec(m)?.[1]);
}

/** Every challenge header, read from the raw text: sip.js's parser keeps only the last one. */
function challenges(m: string, name = 'WWW-Authenticate'): string[] {
  assert.equal(parseSipMessage(m).kind, 'response');
  return m
    .split('\r\n')
    .filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
    .map((l) => l.slice(name.length + 1).trim());
}

describe('registrar: digest authentication and bindings', function () {
  this.timeout(30_000);
  let gw: Gateway | undefined;
  const closers: Array<() => Promise<void> | void> = [];

  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
    if (gw) await assertClean(gw);
    await gw?.close();
    gw = undefined;
  });

  it('registers a SIP.js client after a 401 challenge, shows the binding, and drops it when the WebSocket closes', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1', password: TEST_PASSWORD });
    closers.push(() => phone.close().catch(() => undefined));
    await phone.register({ expires: 120 });
    const regs = gw.sip.registrations();
    assert.equal(regs.length, 1);
    assert.equal(regs[0]!.user, 'alice');
    assert.equal(regs[0]!.transport, 'ws');
    const g = gw;
    await phone.userAgent.transport.disconnect();
    const deadline = Date.now() + 5000;
    while (g.sip.registrations().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(g.sip.registrations().length, 0, 'binding dropped with its WebSocket');
  });

  it('registers and unregisters a JsSIP client (RFC 5626 instance and reg-id)', async () => {
    gw = await startGateway({ trunkPort: 9 });
    (globalThis as { WebSocket?: unknown }).WebSocket ??= WebSocket;
    const ua = new JsSIP.UA({ sockets: [new JsSIP.WebSocketInterface(wsUrl(gw))], uri: 'sip:bob@127.0.0.1', password: TEST_PASSWORD, register: false, register_expires: 120 });
    closers.push(() => ua.stop());
    const connected = new Promise<void>((resolve) => ua.once('connected', () => resolve()));
    ua.start();
    await connected;
    const registered = new Promise<number>((resolve, reject) => {
      ua.once('registered', (e: { response: { status_code: number } }) => resolve(e.response.status_code));
      ua.once('registrationFailed', (e: { cause: string }) => reject(new Error(`JsSIP registration failed: ${e.cause}`)));
    });
    ua.register();
    assert.equal(await registered, 200);
    const [reg] = gw.sip.registrations();
    assert.equal(reg?.user, 'bob');
    assert.match(reg?.instance ?? '', /^<urn:uuid:[0-9a-f-]+>$/);
    assert.match(reg?.userAgent ?? '', /JsSIP/);
    const unregistered = new Promise<void>((resolve) => ua.once('unregistered', () => resolve()));
    ua.unregister();
    await unregistered;
    assert.equal(gw.sip.registrations().length, 0);
  });

  for (const algorithm of ['SHA-256', 'MD5'] as const) {
    it(`accepts ${algorithm} digest credentials (401 then 200)`, async () => {
      gw = await startGateway({ trunkPort: 9 });
      const c = await RawWsClient.open(wsUrl(gw));
      closers.push(() => c.close());
      const uri = c.register('bob');
      const first = await c.next();
      assert.equal(status(first), 401);
      const offered = challenges(first);
      assert.ok(offered.some((h) => /algorithm=SHA-256/.test(h)) && offered.some((h) => /algorithm=MD5/.test(h)), offered.join(' | '));
      const chosen = offered.find((h) => new RegExp(`algorithm=${algorithm}(,|$|\\s)`).test(h))!;
      const auth = answerChallenge(chosen, { username: 'bob', password: TEST_PASSWORD }, { method: 'REGISTER', uri })!;
      assert.equal(auth.algorithm, algorithm);
      c.register('bob', [`Authorization: ${auth.header}`]);
      const ok = await c.next();
      assert.equal(status(ok), 200);
      assert.match(ok, /Contact: <sip:raw@raw\.invalid;transport=ws>;expires=300/);
      assert.equal(gw.sip.registrations()[0]?.user, 'bob');
    });
  }

  it('refuses a wrong password with 403 after the challenge, and a replayed nonce-count with a new challenge', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const c = await RawWsClient.open(wsUrl(gw));
    closers.push(() => c.close());
    const uri = c.register('carol');
    const chal = challenges(await c.next()).find((h) => /MD5/.test(h))!;
    const wrong = answerChallenge(chal, { username: 'carol', password: 'not-the-password' }, { method: 'REGISTER', uri })!;
    c.register('carol', [`Authorization: ${wrong.header}`]);
    assert.equal(status(await c.next()), 403);
    const right = answerChallenge(chal, { username: 'carol', password: TEST_PASSWORD }, { method: 'REGISTER', uri }, { nc: 1, cnonce: 'fixedcnonce' })!;
    c.register('carol', [`Authorization: ${right.header}`]);
    assert.equal(status(await c.next()), 200);
    c.register('carol', [`Authorization: ${right.header}`]); // the same nonce and nc again: a replay
    const replayed = await c.next();
    assert.equal(status(replayed), 401);
    assert.match(challenges(replayed).join(' '), /stale=true/i);
  });

  it('blocks a source after 10 wrong passwords, but forged UDP failures from its address lock out neither it nor its WebSocket', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const udp = gw.sipAddress('udp')!;
    // Garbage credentials over UDP, where the source address could be anyone's: answered, never counted.
    const sock = await bindUdp(0);
    closers.push(() => closeUdp(sock));
    const replies: string[] = [];
    sock.on('message', (m) => replies.push(m.toString()));
    for (let i = 0; i < 15; i++) {
      const text = [
        'REGISTER sip:127.0.0.1 SIP/2.0',
        `Via: SIP/2.0/UDP 127.0.0.1:${sock.address().port};branch=z9hG4bKforged${i}`,
        'Max-Forwards: 70',
        'From: <sip:carol@127.0.0.1>;tag=forged',
        'To: <sip:carol@127.0.0.1>',
        'Call-ID: forged-udp',
        `CSeq: ${i + 1} REGISTER`,
        'Contact: <sip:carol@127.0.0.1>',
        'Authorization: Digest garbage',
        'Content-Length: 0',
        '',
        '',
      ].join('\r\n');
      sock.send(text, udp.port, udp.address);
    }
    await waitFor(() => replies.length === 15, 'an answer to every forged REGISTER');
    assert.ok(replies.every((r) => status(r) === 403 && !/too many/i.test(r)), replies[14]);

    // Real wrong passwords over the WebSocket do count: the 10th blocks the source.
    const c = await RawWsClient.open(wsUrl(gw));
    closers.push(() => c.close());
    const wrongs: number[] = [];
    for (let i = 0; i < 10; i++) {
      const uri = c.register('carol');
      const chal = challenges(await c.next()).find((h) => /MD5/.test(h))!;
      const wrong = answerChallenge(chal, { username: 'carol', password: 'guess' }, { method: 'REGISTER', uri })!;
      c.register('carol', [`Authorization: ${wrong.header}`]);
      wrongs.push(status(await c.next()));
    }
    assert.deepEqual(wrongs, Array(10).fill(403));
    c.register('carol');
    assert.match(await c.next(), /^SIP\/2\.0 403 Forbidden \(too many failed attempts\)/);
  });

  it('answers 423 with Min-Expires when the expiry is too short', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const c = await RawWsClient.open(wsUrl(gw));
    closers.push(() => c.close());
    const uri = c.register('alice', [], 5);
    const chal = challenges(await c.next()).find((h) => /MD5/.test(h))!;
    const auth = answerChallenge(chal, { username: 'alice', password: TEST_PASSWORD }, { method: 'REGISTER', uri })!;
    c.register('alice', [`Authorization: ${auth.header}`], 5);
    const r = await c.next();
    assert.equal(status(r), 423);
    assert.match(r, /Min-Expires: 60/);
  });

  it('challenges an INVITE from a WebSocket client without credentials with 407 and creates nothing', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const c = await RawWsClient.open(wsUrl(gw));
    closers.push(() => c.close());
    c.send(
      [
        'INVITE sip:1000@127.0.0.1 SIP/2.0',
        'Via: SIP/2.0/WS raw.invalid;branch=z9hG4bKinv1',
        'Max-Forwards: 70',
        'From: <sip:alice@127.0.0.1>;tag=a1',
        'To: <sip:1000@127.0.0.1>',
        'Call-ID: inv-noauth',
        'CSeq: 1 INVITE',
        'Contact: <sip:raw@raw.invalid;transport=ws>',
        'Content-Length: 0',
        '',
        '',
      ].join('\r\n'),
    );
    let r = await c.next();
    if (status(r) === 100) r = await c.next();
    assert.equal(status(r), 407);
    assert.ok(challenges(r, 'Proxy-Authenticate').length >= 1);
    // SIP.js without a password ends the same way: rejected, nothing created.
    const phone = await Softphone.connect({ server: wsUrl(gw), user: 'alice', domain: '127.0.0.1' });
    closers.push(() => phone.close().catch(() => undefined));
    await assert.rejects(phone.call('sip:1000@127.0.0.1').established, (e: unknown) => [403, 407].includes((e as { statusCode?: number }).statusCode ?? 0));
    assert.equal(gw.stats().totalCalls, 0);
    assert.equal(gw.stats().rtpPortsInUse, 0);
  });
});
