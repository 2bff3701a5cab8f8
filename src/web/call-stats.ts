/**
 * Reduces an RTCPeerConnection's getStats() report to the few numbers a call-quality panel shows.
 * Field names follow the W3C webrtc-stats spec as Chromium implements it; anything a browser
 * leaves out stays undefined rather than guessed.
 */
import type { CallStats } from './status.js';

type Report = Record<string, unknown> & { id: string; type: string };

const num = (r: Report | undefined, key: string): number | undefined => {
  const v = r?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
};
const str = (r: Report | undefined, key: string): string | undefined => {
  const v = r?.[key];
  return typeof v === 'string' ? v : undefined;
};

function candidateText(c: Report | undefined): string | undefined {
  if (!c) return undefined;
  const addr = str(c, 'address') ?? str(c, 'ip') ?? '?';
  return `${addr}:${num(c, 'port') ?? '?'}`;
}

export async function sampleCallStats(pc: RTCPeerConnection): Promise<CallStats> {
  const report = await pc.getStats();
  const byId = new Map<string, Report>();
  report.forEach((r: Report) => byId.set(r.id, r));
  const all = [...byId.values()];
  const isAudio = (r: Report) => (str(r, 'kind') ?? str(r, 'mediaType')) === 'audio';
  const inbound = all.find((r) => r.type === 'inbound-rtp' && isAudio(r));
  const outbound = all.find((r) => r.type === 'outbound-rtp' && isAudio(r));
  const remoteInbound = all.find((r) => r.type === 'remote-inbound-rtp' && isAudio(r));
  const source = all.find((r) => r.type === 'media-source' && isAudio(r));
  const transport = all.find((r) => r.type === 'transport');
  const codec = byId.get(str(inbound, 'codecId') ?? str(outbound, 'codecId') ?? '');
  const pairId = str(transport, 'selectedCandidatePairId');
  const pair = pairId ? byId.get(pairId) : all.find((r) => r.type === 'candidate-pair' && r['nominated'] === true && r['state'] === 'succeeded');
  const local = byId.get(str(pair, 'localCandidateId') ?? '');
  const remote = byId.get(str(pair, 'remoteCandidateId') ?? '');

  const rtcpRtt = num(remoteInbound, 'roundTripTime');
  const iceRtt = num(pair, 'currentRoundTripTime');
  const jitter = num(inbound, 'jitter');
  const mime = str(codec, 'mimeType');
  const stats: CallStats = {
    at: Date.now(),
    packetsSent: num(outbound, 'packetsSent') ?? 0,
    bytesSent: num(outbound, 'bytesSent') ?? 0,
    packetsReceived: num(inbound, 'packetsReceived') ?? 0,
    bytesReceived: num(inbound, 'bytesReceived') ?? 0,
    packetsLost: num(inbound, 'packetsLost') ?? 0,
    totalAudioEnergy: num(inbound, 'totalAudioEnergy') ?? 0,
  };
  if (mime) stats.codec = `${mime.replace(/^audio\//i, '')}/${num(codec, 'clockRate') ?? '?'}`;
  const pt = num(codec, 'payloadType');
  if (pt !== undefined) stats.payloadType = pt;
  if (jitter !== undefined) stats.jitterMs = jitter * 1000;
  if (rtcpRtt !== undefined) {
    stats.rttMs = rtcpRtt * 1000;
    stats.rttSource = 'rtcp';
  } else if (iceRtt !== undefined) {
    stats.rttMs = iceRtt * 1000;
    stats.rttSource = 'ice';
  }
  const levelIn = num(inbound, 'audioLevel');
  if (levelIn !== undefined) stats.audioLevelIn = levelIn;
  const levelOut = num(source, 'audioLevel');
  if (levelOut !== undefined) stats.audioLevelOut = levelOut;
  if (local && remote) {
    stats.candidatePair = `${candidateText(local)} -> ${candidateText(remote)} (${str(local, 'protocol') ?? '?'} ${str(local, 'candidateType') ?? '?'}/${str(remote, 'candidateType') ?? '?'})`;
  }
  const role = str(transport, 'dtlsRole');
  if (role) stats.dtlsRole = role;
  const dtlsState = str(transport, 'dtlsState');
  if (dtlsState) stats.dtlsState = dtlsState;
  const iceState = str(transport, 'iceState');
  if (iceState) stats.iceState = iceState;
  return stats;
}
