/**
 * The reference figures of issue 7 (same class of machine: 2 cores, loopback, bridged G.711) and
 * our standing against each, as ratios ours / theirs.
 */
import type { ChurnResult } from './churn-step.js';
import type { MediaSeriesResult } from './media-step.js';
import type { SetupResult } from './setup-step.js';
import { round } from './stats.js';

export const REFERENCES = {
  janus: { name: 'Janus SIP plugin', cpuPercentPerCall: 0.4, rssMBPerCall: 0.4, setupMs: 4, callsPerSecond: 40 },
  rtpengine: { name: 'rtpengine (userspace)', cpuPercentPerCall: 0.19, rssMBPerCall: 0.18, callsWithoutLoss: 150 },
  // UDP send + receive of a 172-byte packet 7.5 µs, AES-CTR + HMAC-SHA1 of a 160-byte payload 6.5 µs:
  // each relayed packet needs one of each, a call relays 100 per second -> 1.4 ms/s = 0.14 %.
  nodeFloor: { name: "Node's floor", cpuPercentPerCall: 0.14, microsPerRelayedPacket: 14 },
} as const;

export interface TargetRow {
  metric: string;
  ours?: number;
  oursNote: string;
  unit: string;
  comparisons: Array<{ against: string; value: number; ratio?: number }>;
  /** true: lower is better (costs); false: higher is better (capacity). */
  lowerIsBetter: boolean;
}

const r = (ours: number | undefined, theirs: number) => (ours === undefined || theirs === 0 ? undefined : round(ours / theirs, 2));

export function targets(media?: MediaSeriesResult, setup?: SetupResult, churn?: ChurnResult): TargetRow[] {
  const rows: TargetRow[] = [];
  const ok = media?.steps.filter((s) => s.withinLimits) ?? [];
  const top = ok[ok.length - 1];
  if (media && top) {
    const marginal = media.marginal?.cpuPercentPerCall;
    const cpu = marginal ?? top.gateway.cpuPercentPerCall;
    rows.push({
      metric: 'CPU per bridged G.711 call',
      ours: round(cpu, 3),
      oursNote: marginal !== undefined ? `slope over N (at N=${top.calls}: ${top.gateway.cpuPercentPerCall}% incl. idle base)` : `at N=${top.calls}`,
      unit: '% of one core',
      comparisons: [
        { against: REFERENCES.janus.name, value: REFERENCES.janus.cpuPercentPerCall, ratio: r(cpu, REFERENCES.janus.cpuPercentPerCall) },
        { against: REFERENCES.rtpengine.name, value: REFERENCES.rtpengine.cpuPercentPerCall, ratio: r(cpu, REFERENCES.rtpengine.cpuPercentPerCall) },
        { against: REFERENCES.nodeFloor.name, value: REFERENCES.nodeFloor.cpuPercentPerCall, ratio: r(cpu, REFERENCES.nodeFloor.cpuPercentPerCall) },
      ],
      lowerIsBetter: true,
    });
    const marginalUs = media.marginal?.cpuMicrosPerRelayedPacket;
    const us = marginalUs ?? top.gateway.cpuMicrosPerRelayedPacket;
    if (us !== undefined) {
      rows.push({
        metric: 'CPU per relayed packet',
        ours: us,
        oursNote: marginalUs !== undefined ? `slope over packet rate (at N=${top.calls}: ${top.gateway.cpuMicrosPerRelayedPacket ?? '?'} µs, all gateway CPU / packets)` : `at N=${top.calls}, all gateway CPU / packets relayed`,
        unit: 'µs',
        comparisons: [
          { against: `${REFERENCES.janus.name} (from 0.40%/call)`, value: 40, ratio: r(us, 40) },
          { against: `${REFERENCES.rtpengine.name} (from 0.19%/call)`, value: 19, ratio: r(us, 19) },
          { against: REFERENCES.nodeFloor.name, value: REFERENCES.nodeFloor.microsPerRelayedPacket, ratio: r(us, REFERENCES.nodeFloor.microsPerRelayedPacket) },
        ],
        lowerIsBetter: true,
      });
    }
    const rssMiB = media.marginal?.rssMiBPerCall;
    if (rssMiB !== undefined) {
      const mb = round((rssMiB * 2 ** 20) / 1e6, 3);
      rows.push({
        metric: 'RSS per call',
        ours: mb,
        oursNote: 'slope of RSS over N',
        unit: 'MB',
        comparisons: [
          { against: REFERENCES.janus.name, value: REFERENCES.janus.rssMBPerCall, ratio: r(mb, REFERENCES.janus.rssMBPerCall) },
          { against: REFERENCES.rtpengine.name, value: REFERENCES.rtpengine.rssMBPerCall, ratio: r(mb, REFERENCES.rtpengine.rssMBPerCall) },
        ],
        lowerIsBetter: true,
      });
    }
    rows.push({
      metric: 'Concurrent calls within limits (loss <= 1%, lag p99 <= 50 ms)',
      ours: media.maxCallsWithinLimits,
      oursNote: media.stoppedBecause === 'all steps within limits' ? 'every step passed: the limit is higher' : `next step: ${media.stoppedBecause}`,
      unit: 'calls',
      comparisons: [{ against: `${REFERENCES.rtpengine.name} (no loss at)`, value: REFERENCES.rtpengine.callsWithoutLoss, ratio: r(media.maxCallsWithinLimits, REFERENCES.rtpengine.callsWithoutLoss) }],
      lowerIsBetter: false,
    });
  }
  if (setup) {
    const first = setup.outbound.rates[0];
    if (first?.gatewaySetupMs.mean !== undefined) {
      rows.push({
        metric: 'Gateway setup time, softphone -> trunk (INVITE in to 200 out)',
        ours: first.gatewaySetupMs.mean,
        oursNote: `mean of gw_call_setup_seconds at ${first.rate}/s; includes the trunk's answer and the PeerConnection build, not ICE/DTLS`,
        unit: 'ms',
        comparisons: [{ against: REFERENCES.janus.name, value: REFERENCES.janus.setupMs, ratio: r(first.gatewaySetupMs.mean, REFERENCES.janus.setupMs) }],
        lowerIsBetter: true,
      });
    }
    const firstIn = setup.inbound.rates[0];
    if (firstIn?.gatewayOwnMeanMs !== undefined) {
      rows.push({
        metric: 'Gateway setup time, trunk -> softphone, own share',
        ours: firstIn.gatewayOwnMeanMs,
        oursNote: `histogram mean less the softphone's mean answer time, at ${firstIn.rate}/s`,
        unit: 'ms',
        comparisons: [{ against: REFERENCES.janus.name, value: REFERENCES.janus.setupMs, ratio: r(firstIn.gatewayOwnMeanMs, REFERENCES.janus.setupMs) }],
        lowerIsBetter: true,
      });
    }
    for (const d of [setup.outbound, setup.inbound]) {
      const tried = d.rates.length > 0 ? Math.max(...d.rates.map((x) => x.rate)) : 0;
      const all = d.rates.length > 0 && d.rates.every((x) => x.withinLimits) && d.rates.length === setup.params.rates.length;
      rows.push({
        metric: `Call rate without failures, ${d.direction === 'outbound' ? 'softphones -> SIPp' : 'SIPp -> softphone'}`,
        ours: d.maxRateWithinLimits,
        oursNote: all ? `every rate tried passed (up to ${tried}/s): the limit is higher` : d.stoppedBecause,
        unit: 'calls/s',
        comparisons: [{ against: REFERENCES.janus.name, value: REFERENCES.janus.callsPerSecond, ratio: r(d.maxRateWithinLimits, REFERENCES.janus.callsPerSecond) }],
        lowerIsBetter: false,
      });
    }
  }
  if (churn) {
    rows.push({
      metric: 'Gateway CPU per short call (setup, ICE/DTLS, 5 packets, teardown)',
      ours: churn.gatewayCpuMsPerCall,
      oursNote: `churn, ${churn.params.concurrency} in parallel`,
      unit: 'ms',
      comparisons: [],
      lowerIsBetter: true,
    });
  }
  return rows;
}
