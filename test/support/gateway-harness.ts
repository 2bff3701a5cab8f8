import { pino } from 'pino';
import { deepMerge, loadConfig, type GatewayConfig } from '../../src/config.js';
import { Gateway } from '../../src/gateway.js';
import { sippAvailable } from './sipp.js';

export interface HarnessOptions {
  trunkPort: number;
  trunkTransport?: 'udp' | 'tcp' | 'tls';
  /** Trunk host (default 127.0.0.1); a name is resolved, and is what a TLS certificate is checked against. */
  trunkHost?: string;
  /** sip.tls (PEM file paths): adds a TLS listener on port 0; `ca` is trusted for TLS trunks. */
  sipTls?: { cert: string; key: string; ca?: string };
  /** http.tls (PEM file paths): the web page and SIP over WebSocket become HTTPS and WSS. */
  httpTls?: { cert: string; key: string };
  /** sip.keepAliveMs (RFC 5626 CRLF pings on connections the gateway opens). */
  keepAliveMs?: number;
  /** SIP T1 in ms (Timer B = 64*T1). */
  t1?: number;
  rtpPorts?: [number, number];
  codecs?: GatewayConfig['media']['codecs'];
  adminToken?: string;
  rtpTimeoutMs?: number;
  noMediaTimeoutMs?: number;
  /** media.symmetricRtp (the config's default when absent). */
  symmetricRtp?: boolean;
  ringTimeoutMs?: number;
  dids?: Record<string, string>;
  /** More trunk settings (credentials...). */
  trunk?: Record<string, unknown>;
  /** Raw config merged last, key by key (arrays replace). */
  extra?: Record<string, unknown>;
  /** First retry delay of a failed trunk registration (the gateway's default is 5000 ms). */
  registrationRetryBaseMs?: number;
}

/** Users every test gateway knows, all with TEST_PASSWORD. */
export const TEST_USERS = ['alice', 'bob', 'carol', ...Array.from({ length: 10 }, (_, i) => `u${i}`)];
export const TEST_PASSWORD = 'test-password-123';

/** A gateway on 127.0.0.1 with every listener on port 0, logging only when GW_TEST_LOG is set. */
export async function startGateway(opts: HarnessOptions): Promise<Gateway> {
  const base = {
    sip: {
      listen: [
        { transport: 'udp', host: '127.0.0.1', port: 0 },
        { transport: 'tcp', host: '127.0.0.1', port: 0 },
        ...(opts.sipTls ? [{ transport: 'tls', host: '127.0.0.1', port: 0 }] : []),
      ],
      timers: { t1: opts.t1 ?? 100, t2: 4000, t4: 500 },
      ...(opts.sipTls ? { tls: opts.sipTls } : {}),
      ...(opts.keepAliveMs !== undefined ? { keepAliveMs: opts.keepAliveMs } : {}),
    },
    http: { host: '127.0.0.1', port: 0, ...(opts.httpTls ? { tls: opts.httpTls } : {}) },
    admin: { host: '127.0.0.1', port: 0, ...(opts.adminToken ? { token: opts.adminToken } : {}) },
    media: {
      ...(opts.rtpPorts ? { rtpPorts: opts.rtpPorts } : {}),
      ...(opts.codecs ? { codecs: opts.codecs } : {}),
      ...(opts.rtpTimeoutMs ? { rtpTimeoutMs: opts.rtpTimeoutMs } : {}),
      ...(opts.noMediaTimeoutMs ? { noMediaTimeoutMs: opts.noMediaTimeoutMs } : {}),
      ...(opts.symmetricRtp !== undefined ? { symmetricRtp: opts.symmetricRtp } : {}),
    },
    // No OPTIONS pings unless a test asks: SIPp UAS scenarios fail on a message they do not expect.
    trunks: [{ name: 'sipp', host: opts.trunkHost ?? '127.0.0.1', port: opts.trunkPort, transport: opts.trunkTransport ?? 'udp', optionsPingMs: 0, ...(opts.dids ? { dids: opts.dids } : {}), ...opts.trunk }],
    users: TEST_USERS.map((username) => ({ username, password: TEST_PASSWORD })),
    ...(opts.ringTimeoutMs ? { calls: { ringTimeoutMs: opts.ringTimeoutMs } } : {}),
  };
  const config = loadConfig(undefined, deepMerge(base, opts.extra ?? {}));
  const log = pino({ level: process.env.GW_TEST_LOG ?? 'silent' });
  return Gateway.start(config, log, opts.registrationRetryBaseMs !== undefined ? { registrationRetryBaseMs: opts.registrationRetryBaseMs } : {});
}

/** The gateway's SIP WebSocket: wss:// when it serves HTTPS (http.tls). */
export function wsUrl(gw: Gateway): string {
  return `${gw.config.http.tls ? 'wss' : 'ws'}://127.0.0.1:${gw.httpAddress.port}/ws`;
}

/** Waits until `check` holds, polling; rejects with `what` after `timeoutMs`. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The invariant every test ends with: no call, no port, no PeerConnection left. */
export async function assertClean(gw: Gateway, timeoutMs = 10_000): Promise<void> {
  await waitFor(() => {
    const s = gw.stats();
    return s.calls === 0 && s.rtpPortsInUse === 0 && s.webrtcPortsInUse === 0 && s.peerConnections === 0;
  }, `a clean gateway (now ${JSON.stringify(gw.stats())})`, timeoutMs);
}

/** A mocha `before` hook: integration suites need SIPp; skip without it locally, fail in CI. */
export function requireSipp(this: Mocha.Context): void {
  if (sippAvailable()) return;
  if (process.env.CI) throw new Error('sipp is required in CI (apt-get install sip-tester)');
  this.skip();
}
