import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SipObserver } from '../sip/backend.js';
import type { TrunkStatus } from './trunk-monitor.js';

export interface MetricsSources {
  callsActive(): { outbound: number; inbound: number };
  ports(): { rtp: { inUse: number; free: number }; webrtc: { inUse: number; free: number } };
  peerConnections(): number;
  wsConnections(): number;
  registrations(): number;
  sipRetransmissions(): number;
  trunks(): TrunkStatus[];
}

/**
 * Prometheus metrics, one registry per gateway (tests run several in one process). Gauges are
 * read from the live objects at scrape time, so they cannot drift from what the gateway holds.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly callsTotal: Counter<'direction' | 'end_reason'>;
  readonly callSetup: Histogram<'direction'>;
  readonly sipMessages: Counter<'direction' | 'kind' | 'label'>;
  readonly sipObserver: SipObserver;

  constructor(src: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'gw_' });
    new Gauge({ name: 'gw_calls_active', help: 'Calls in progress', labelNames: ['direction'], registers, collect() {
      const a = src.callsActive();
      this.set({ direction: 'outbound' }, a.outbound);
      this.set({ direction: 'inbound' }, a.inbound);
    } });
    this.callsTotal = new Counter({ name: 'gw_calls_total', help: 'Calls ended, by direction and end reason', labelNames: ['direction', 'end_reason'], registers });
    this.callSetup = new Histogram({
      name: 'gw_call_setup_seconds',
      help: 'INVITE received to 200 OK sent to the caller',
      labelNames: ['direction'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    new Gauge({ name: 'gw_rtp_ports_in_use', help: 'Ports allocated (any state), by range', labelNames: ['range'], registers, collect() {
      const p = src.ports();
      this.set({ range: 'rtp' }, p.rtp.inUse);
      this.set({ range: 'webrtc' }, p.webrtc.inUse);
    } });
    new Gauge({ name: 'gw_rtp_ports_free', help: 'Ports free, by range', labelNames: ['range'], registers, collect() {
      const p = src.ports();
      this.set({ range: 'rtp' }, p.rtp.free);
      this.set({ range: 'webrtc' }, p.webrtc.free);
    } });
    new Gauge({ name: 'gw_peer_connections_open', help: 'WebRTC PeerConnections open', registers, collect() {
      this.set(src.peerConnections());
    } });
    new Gauge({ name: 'gw_websocket_connections', help: 'SIP over WebSocket connections', registers, collect() {
      this.set(src.wsConnections());
    } });
    new Gauge({ name: 'gw_registrations', help: 'Registered contacts', registers, collect() {
      this.set(src.registrations());
    } });
    new Gauge({ name: 'gw_trunk_registered', help: 'Trunk registration in force (1) or not (0), for trunks that register', labelNames: ['trunk'], registers, collect() {
      this.reset();
      for (const t of src.trunks()) if (t.registration) this.set({ trunk: t.name }, t.registration.state === 'registered' ? 1 : 0);
    } });
    new Gauge({ name: 'gw_trunk_reachable', help: 'Trunk answering OPTIONS (1), not answering (0), unknown or not pinged (-1)', labelNames: ['trunk'], registers, collect() {
      this.reset();
      for (const t of src.trunks()) this.set({ trunk: t.name }, t.reachability === 'reachable' ? 1 : t.reachability === 'unreachable' ? 0 : -1);
    } });
    this.sipMessages = new Counter({
      name: 'gw_sip_messages_total',
      help: 'SIP messages by direction (in/out), kind (request/response) and method or status code',
      labelNames: ['direction', 'kind', 'label'],
      registers,
    });
    new Counter({ name: 'gw_sip_retransmissions_total', help: 'SIP retransmissions sent and absorbed', registers, collect() {
      this.reset();
      this.inc(src.sipRetransmissions());
    } });
    // Methods come from the network: an unknown one counts as `other`, so labels stay bounded.
    const known = new Set(['INVITE', 'ACK', 'BYE', 'CANCEL', 'OPTIONS', 'REGISTER', 'INFO', 'UPDATE', 'PRACK', 'SUBSCRIBE', 'NOTIFY', 'REFER', 'MESSAGE', 'PUBLISH']);
    this.sipObserver = {
      message: (direction, kind, label) =>
        this.sipMessages.inc({ direction, kind, label: kind === 'response' ? (/^[1-6]\d\d$/.test(label) ? label : 'other') : known.has(label) ? label : 'other' }),
    };
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
