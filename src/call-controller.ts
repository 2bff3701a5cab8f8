import type { Logger } from 'pino';
import type { InboundCall, SipBackend } from '../sip/backend.js';
import type { PortAllocator } from '../webrtc/port-allocator.js';
import { Call, type CallDeps } from './call.js';
import type { GatewayConfig } from './config.js';

/**
 * The B2BUA: turns each INVITE from a softphone into a Call toward the trunk, and owns every
 * live Call until it reports `@close`. Calls never call back into the controller otherwise.
 */
export class CallController {
  #calls = new Map<string, Call>();
  #deps: Omit<CallDeps, 'log'>;
  #log: Logger;
  #maxCalls: number;
  #closing = false;
  totalCalls = 0;

  constructor(opts: { sip: SipBackend; rtpPorts: PortAllocator; webrtcPorts: PortAllocator; config: GatewayConfig; log: Logger }) {
    const { config } = opts;
    const trunk = config.trunks[0]!;
    this.#deps = {
      sip: opts.sip,
      rtpPorts: opts.rtpPorts,
      webrtcPorts: opts.webrtcPorts,
      trunk: { host: trunk.host, port: trunk.port, transport: trunk.transport },
      media: {
        announceAddress: config.media.announceAddress,
        bindAddress: config.media.bindAddress ?? config.http.host,
        codecs: config.media.codecs,
        webrtcSetupTimeoutMs: config.media.webrtcSetupTimeoutMs,
      },
    };
    this.#log = opts.log;
    this.#maxCalls = config.calls.maxConcurrent;
    opts.sip.on('invite', (inbound) => this.#onInvite(inbound));
  }

  get size(): number {
    return this.#calls.size;
  }

  calls(): Call[] {
    return [...this.#calls.values()];
  }

  get(id: string): Call | undefined {
    return this.#calls.get(id);
  }

  #onInvite(inbound: InboundCall): void {
    // Only WebSocket softphones place calls toward the trunk in this version.
    if (inbound.source.transport !== 'ws') {
      inbound.reject(403, 'Forbidden (calls from SIP peers are not routed yet)');
      return;
    }
    if (this.#closing) {
      inbound.reject(503, 'Service Unavailable (shutting down)');
      return;
    }
    if (this.#calls.size >= this.#maxCalls) {
      inbound.reject(503, 'Service Unavailable (call limit)');
      return;
    }
    const call = new Call(inbound, { ...this.#deps, log: this.#log });
    this.#calls.set(call.id, call);
    this.totalCalls++;
    call.once('@close', () => this.#calls.delete(call.id));
    call.log.info({ from: inbound.fromUser, to: inbound.toUser, source: `${inbound.source.address}:${inbound.source.port}` }, 'call from softphone');
    void call.run();
  }

  /** Ends every call; one failing close never stops the others. */
  async close(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled(this.calls().map((c) => c.hangup('shutdown')));
  }
}
