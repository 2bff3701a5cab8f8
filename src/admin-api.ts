import { timingSafeEqual, createHash } from 'node:crypto';
import http from 'node:http';
import type { Logger } from 'pino';
import type { Registration } from '../sip/backend.js';
import type { PortAllocator, PortRecord } from '../webrtc/port-allocator.js';
import type { CallController } from './call-controller.js';
import type { GatewayConfig } from './config.js';
import type { GatewayMetrics } from './metrics.js';
import type { TrunkStatus } from './trunk-monitor.js';

export interface AdminDeps {
  config: GatewayConfig;
  controller: CallController;
  rtpPorts: PortAllocator;
  webrtcPorts: PortAllocator;
  metrics: GatewayMetrics;
  registrations(): Registration[];
  /** Registration and reachability of each configured trunk. */
  trunks(): TrunkStatus[];
  /** Readiness beyond the ports: listeners up, not draining. */
  ready(): { ready: boolean; reasons: string[] };
  log: Logger;
}

const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());

/** Times as ISO strings and absent values as null, like /api/registrations. */
function trunkView(t: TrunkStatus) {
  const r = t.registration;
  return {
    name: t.name,
    host: t.host,
    port: t.port ?? null,
    transport: t.transport ?? null,
    registration: r
      ? {
          state: r.state,
          expiresAt: iso(r.expiresAt),
          lastRegisteredAt: iso(r.lastRegisteredAt),
          lastError: r.lastError ?? null,
          failures: r.failures,
          nextAttemptAt: iso(r.nextAttemptAt),
          destination: r.destination ?? null,
        }
      : null,
    reachability: t.reachability,
    lastPingAt: iso(t.lastPingAt),
    rttMs: t.rttMs ?? null,
    lastError: t.lastError ?? null,
  };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/**
 * The admin HTTP API on its own listener: JSON, bearer-token authenticated (health probes
 * excepted, so orchestrators need no secret). It only reads the live objects; it keeps no copy
 * of any state, so no query can disagree with another.
 */
export class AdminApi {
  #server: http.Server;
  #deps: AdminDeps;
  #tokenHash: Buffer | undefined;

  private constructor(server: http.Server, deps: AdminDeps) {
    this.#server = server;
    this.#deps = deps;
    const token = deps.config.admin.token;
    this.#tokenHash = token ? sha256(token) : undefined;
    server.on('request', (req, res) => void this.#handle(req, res));
  }

  static async start(deps: AdminDeps): Promise<AdminApi> {
    const server = http.createServer();
    server.keepAliveTimeout = 5000;
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    const api = new AdminApi(server, deps);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(deps.config.admin.port, deps.config.admin.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return api;
  }

  get address(): { address: string; port: number } {
    const a = this.#server.address();
    return a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: '', port: 0 };
  }

  #authorized(req: http.IncomingMessage): boolean {
    if (!this.#tokenHash) return true; // loopback only: enforced by the config schema
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    return m !== null && timingSafeEqual(sha256(m[1]!), this.#tokenHash);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    try {
      if (path === '/healthz' && method === 'GET') return this.#json(res, 200, { status: 'ok' });
      if (path === '/readyz' && method === 'GET') {
        const r = this.#readiness();
        return this.#json(res, r.ready ? 200 : 503, r);
      }
      if (!this.#authorized(req)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="gateway-admin"');
        throw new HttpError(401, 'UNAUTHORIZED', 'missing or wrong bearer token');
      }
      if (path === '/metrics' && method === 'GET') {
        const text = await this.#deps.metrics.text();
        res.writeHead(200, { 'content-type': this.#deps.metrics.contentType }).end(text);
        return;
      }
      if (path === '/api/calls' && method === 'GET') return this.#json(res, 200, { calls: this.#deps.controller.list() });
      const callMatch = /^\/api\/calls\/([A-Za-z0-9_-]{1,64})$/.exec(path);
      if (callMatch) {
        const id = callMatch[1]!;
        if (method === 'GET') {
          const info = this.#deps.controller.find(id);
          if (!info) throw new HttpError(404, 'CALL_NOT_FOUND', `no call ${id}`);
          return this.#json(res, 200, info);
        }
        if (method === 'DELETE') {
          const call = this.#deps.controller.get(id);
          if (!call) {
            if (this.#deps.controller.find(id)) throw new HttpError(409, 'CALL_ENDED', `call ${id} has already ended`);
            throw new HttpError(404, 'CALL_NOT_FOUND', `no call ${id}`);
          }
          this.#deps.log.info({ call: id }, 'call ended by admin');
          await call.hangup('admin');
          return this.#json(res, 200, call.info());
        }
        throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${method} not allowed on ${path}`);
      }
      if (path === '/api/rtp' && method === 'GET') return this.#json(res, 200, this.#rtp());
      if (path === '/api/registrations' && method === 'GET') {
        const regs = this.#deps.registrations().map((r) => ({ ...r, expiresAt: new Date(r.expiresAt).toISOString() }));
        return this.#json(res, 200, { registrations: regs });
      }
      if (path === '/api/trunks' && method === 'GET') {
        return this.#json(res, 200, { trunks: this.#deps.trunks().map(trunkView) });
      }
      throw new HttpError(404, 'NOT_FOUND', `no route for ${method} ${path}`);
    } catch (err) {
      if (err instanceof HttpError) return this.#json(res, err.status, { error: { code: err.code, message: err.message } });
      this.#deps.log.error({ err, path }, 'admin API error');
      return this.#json(res, 500, { error: { code: 'INTERNAL', message: 'internal error' } });
    }
  }

  #readiness(): { ready: boolean; reasons: string[] } {
    const r = this.#deps.ready();
    const reasons = [...r.reasons];
    if (this.#deps.rtpPorts.free < 2) reasons.push('rtp port range exhausted');
    if (this.#deps.webrtcPorts.free < 2) reasons.push('webrtc port range exhausted');
    return { ready: reasons.length === 0, reasons };
  }

  #rtp() {
    const view = (range: 'rtp' | 'webrtc', a: PortAllocator) => ({
      summary: { range, min: a.min, max: a.max, total: a.total, inUse: a.inUse, free: a.free },
      ports: a.snapshot().map((r: PortRecord) => ({
        port: r.port,
        range,
        kind: r.kind,
        state: r.state,
        owner: r.owner,
        allocatedAt: new Date(r.allocatedAt).toISOString(),
        lastPacketAt: r.lastPacketAt ? new Date(r.lastPacketAt).toISOString() : null,
        packets: r.packets,
        bytes: r.bytes,
      })),
    });
    const rtp = view('rtp', this.#deps.rtpPorts);
    const webrtc = view('webrtc', this.#deps.webrtcPorts);
    return { ranges: [rtp.summary, webrtc.summary], ports: [...rtp.ports, ...webrtc.ports].sort((a, b) => a.port - b.port) };
  }

  #json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(body));
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
