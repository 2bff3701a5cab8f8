/**
 * --profile: one gateway run under `node --cpu-prof`, with two measured windows cut from the same
 * profile by timestamp: steady media (N calls relaying 20 ms packets; costs per relayed packet)
 * and churn (short calls back to back; costs per call). The profiler's own overhead makes this run
 * useless for absolute CPU figures: those come from the other steps.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Softphone } from '../test/support/softphone.js';
import { shortCall } from './churn-step.js';
import { monotonicMicros, readProfile, summariseProfile, type ProfileSummary } from './cpu-profile.js';
import { BENCH_USER, type CallRecord } from './gateway-process.js';
import { MediaCalls } from './media-calls.js';
import { startMediaPeers } from './media-step.js';
import { mapLimit, round, sleep, withTimeout } from './stats.js';

export interface ProfileParams {
  calls: number;
  warmupSeconds: number;
  windowSeconds: number;
  churnCalls: number;
  churnConcurrency: number;
}

export interface ProfileResult {
  params: ProfileParams;
  file: string;
  media: ProfileSummary & { relayedPackets: number; busyMicrosPerPacket: number; perPacket: Array<{ function: string; location: string; area: string; micros: number }> };
  churn: ProfileSummary & { calls: number; busyMsPerCall: number; perCall: Array<{ function: string; location: string; area: string; ms: number }> };
}

type Log = (line: string) => void;

const relayed = (calls: CallRecord[]) => calls.reduce((a, c) => a + (c.relay ? c.relay.toSip.packets + c.relay.toBrowser.packets : 0), 0);

export async function runProfile(p: ProfileParams, dir: string, log: Log): Promise<ProfileResult> {
  mkdirSync(dir, { recursive: true });
  const { gw, stop } = await startMediaPeers(p.calls, 400, { cpuProfDir: dir }, p.calls + p.churnCalls + 10);
  let mediaWindow: { startUs: number; endUs: number; packets: number } | undefined;
  let churnWindow: { startUs: number; endUs: number; calls: number } | undefined;
  let media: MediaCalls | undefined;
  const phones: Softphone[] = [];
  try {
    media = await MediaCalls.open({ wsUrl: gw.wsUrl, user: BENCH_USER, count: p.calls, setupTimeoutMs: 150_000 });
    log(`  profile: ${media.legs.length} calls with media under --cpu-prof`);
    media.startSending();
    await sleep(p.warmupSeconds * 1000);
    const c0 = relayed(await gw.calls());
    const startUs = monotonicMicros();
    await sleep(p.windowSeconds * 1000);
    const endUs = monotonicMicros();
    const c1 = relayed(await gw.calls());
    mediaWindow = { startUs, endUs, packets: c1 - c0 };
    await media.close();
    media = undefined;
    await sleep(1000);

    log(`  profile: ${p.churnCalls} short calls`);
    for (let i = 0; i < p.churnConcurrency; i++) {
      phones.push(await Softphone.connect({ server: gw.wsUrl, user: BENCH_USER.username, domain: '127.0.0.1', password: BENCH_USER.password }));
    }
    let calls = 0;
    const cStart = monotonicMicros();
    await mapLimit(phones, phones.length, async (phone, i) => {
      const share = Math.floor(p.churnCalls / phones.length) + (i < p.churnCalls % phones.length ? 1 : 0);
      for (let k = 0; k < share; k++) {
        await shortCall(phone, 5).catch(() => undefined);
        calls++;
      }
    });
    churnWindow = { startUs: cStart, endUs: monotonicMicros(), calls };
  } finally {
    await media?.close();
    await Promise.allSettled(phones.map((ph) => withTimeout(ph.close(), 15_000, 'closing a softphone')));
    await stop();
    gw.dispose();
  }
  // The profile is written as the gateway exits.
  let file: string | undefined;
  for (let i = 0; i < 50 && !file; i++) {
    file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
    if (!file) await sleep(100);
  }
  if (!file || !existsSync(join(dir, file))) throw new Error(`no .cpuprofile written in ${dir}`);
  const profile = readProfile(join(dir, file));
  const m = summariseProfile(profile, mediaWindow, 15);
  const c = summariseProfile(profile, churnWindow, 15);
  const packets = Math.max(1, mediaWindow.packets);
  const nCalls = Math.max(1, churnWindow.calls);
  return {
    params: p,
    file: join(dir, file),
    media: {
      ...m,
      relayedPackets: mediaWindow.packets,
      busyMicrosPerPacket: round((m.busyMs * 1000) / packets, 1),
      perPacket: m.functions.slice(0, 10).map((f) => ({ function: f.function, location: f.location, area: f.area, micros: round((f.selfMs * 1000) / packets, 2) })),
    },
    churn: {
      ...c,
      calls: churnWindow.calls,
      busyMsPerCall: round(c.busyMs / nCalls, 2),
      perCall: c.functions.slice(0, 10).map((f) => ({ function: f.function, location: f.location, area: f.area, ms: round(f.selfMs / nCalls, 3) })),
    },
  };
}
