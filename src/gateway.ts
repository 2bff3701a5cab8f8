import http from 'node:http';
import type { Logger } from 'pino';
import { SipStack } from '../sip/sip-stack.js';
import { PortAllocator } from '../webrtc/port-allocator.js';
import { peerConnectionCounter } from '../webrtc/webrtc-endpoint.js';
import { CallController } from './call-controller.js';
import type { GatewayConfig } from './config.js';
import { createLogger } from './logger.js';

export interface GatewayStats {
  calls: number;
  totalCalls: number;
  rtpPortsInUse: number;
  webrtcPortsInUse: number;
  /** PeerConnections open in this process (all gateways in it). */
  peerConnections: number;
  sipTransactions: number;
  sipDialogs: number;
  sipRetransmissions: number;
  wsConnections: number;
}

/** The root of the ownership tree: listeners, SIP stack, port allocators, call controller. */
export class Gateway {
  readonly log: Logger;
  readonly rtpPorts: PortAllocator;
  readonly webrtcPorts: PortAllocator;
  #http: http.Server;
  #sip: SipStack;
  #controller: CallController;
  #closing: Promise<void> | undefined;

  private constructor(config: GatewayConfig, log: Logger, httpServer: http.Server, sip: SipStack, rtpPorts: PortAllocator, webrtcPorts: PortAllocator) {
    this.log = log;
    this.#http = httpServer;
    this.#sip = sip;
    this.rtpPorts = rtpPorts;
    this.webrtcPorts = webrtcPorts;
    this.#controller = new CallController({ sip, rtpPorts, webrtcPorts, config, log });
  }

  static async start(config: GatewayConfig, log: Logger = createLogger(config.log.level)): Promise<Gateway> {
    const bind = config.media.bindAddress ?? config.http.host;
    const rtpPorts = new PortAllocator({ host: bind, range: config.media.rtpPorts });
    const webrtcPorts = new PortAllocator({ host: bind, range: config.media.webrtcPorts });
    const server = http.createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"code":"NOT_FOUND","message":"not found"}}');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.http.port, config.http.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    let sip: SipStack;
    try {
      sip = await SipStack.create({
        listen: config.sip.listen,
        httpServer: server,
        announceAddress: config.media.announceAddress,
        timers: config.sip.timers,
        ...(config.sip.userAgent ? { userAgent: config.sip.userAgent } : {}),
        log: log.child({ component: 'sip' }),
      });
    } catch (err) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw err;
    }
    const gw = new Gateway(config, log, server, sip, rtpPorts, webrtcPorts);
    const a = server.address();
    log.info({ http: a, sip: config.sip.listen.map((l) => sip.address(l.transport)) }, 'gateway started');
    return gw;
  }

  get controller(): CallController {
    return this.#controller;
  }

  get sip(): SipStack {
    return this.#sip;
  }

  /** Where the HTTP/WebSocket listener is bound (tests listen on port 0). */
  get httpAddress(): { address: string; port: number } {
    const a = this.#http.address();
    return a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: '', port: 0 };
  }

  sipAddress(transport: 'udp' | 'tcp'): { address: string; port: number } | undefined {
    return this.#sip.address(transport);
  }

  stats(): GatewayStats {
    const s = this.#sip.stats();
    return {
      calls: this.#controller.size,
      totalCalls: this.#controller.totalCalls,
      rtpPortsInUse: this.rtpPorts.inUse,
      webrtcPortsInUse: this.webrtcPorts.inUse,
      peerConnections: peerConnectionCounter.open,
      sipTransactions: s.transactions,
      sipDialogs: s.dialogs,
      sipRetransmissions: s.retransmissions,
      wsConnections: this.#sip.wsConnections,
    };
  }

  /** Ends every call, then closes the SIP stack and listeners. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#controller.close();
      await this.#sip.close();
      this.#http.closeAllConnections();
      await new Promise<void>((resolve) => this.#http.close(() => resolve()));
      this.log.info('gateway stopped');
    })();
    return this.#closing;
  }
}
