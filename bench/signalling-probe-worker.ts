/**
 * Worker thread for step 3: times REGISTER and OPTIONS over its own WebSocket, on its own event
 * loop, so the softphones' media work in the bench's main thread does not delay the timestamps.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { SipWsClient } from './sip-ws-client.js';

export interface ProbeRequest {
  wsUrl: string;
  user: { username: string; password: string };
  seconds: number;
  /** REGISTER cycles and OPTIONS each, per second. */
  perSecond: number;
}

export interface ProbeResult {
  registerChallengeMs: number[];
  registerAuthMs: number[];
  registerTotalMs: number[];
  optionsMs: number[];
  errors: string[];
  /** This worker's own event-loop delay p99, ms. */
  probeLoopDelayP99Ms: number;
}

async function main(req: ProbeRequest): Promise<ProbeResult> {
  const { monitorEventLoopDelay } = await import('node:perf_hooks');
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const out: ProbeResult = { registerChallengeMs: [], registerAuthMs: [], registerTotalMs: [], optionsMs: [], errors: [], probeLoopDelayP99Ms: 0 };
  const regClient = await SipWsClient.connect(req.wsUrl, req.user);
  const optClient = await SipWsClient.connect(req.wsUrl, req.user);
  const count = Math.max(1, Math.round(req.seconds * req.perSecond));
  const interval = 1000 / req.perSecond;
  const paced = async (fn: () => Promise<void>, offset: number) => {
    const t0 = performance.now() + offset;
    for (let i = 0; i < count; i++) {
      const wait = t0 + i * interval - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      try {
        await fn();
      } catch (e) {
        if (out.errors.length < 20) out.errors.push(e instanceof Error ? e.message : String(e));
      }
    }
  };
  await Promise.all([
    paced(async () => {
      const r = await regClient.register();
      out.registerChallengeMs.push(r.challengeMs);
      out.registerAuthMs.push(r.authMs);
      out.registerTotalMs.push(r.totalMs);
    }, 0),
    paced(async () => {
      out.optionsMs.push(await optClient.options());
    }, interval / 2),
  ]);
  regClient.close();
  optClient.close();
  out.probeLoopDelayP99Ms = loop.percentile(99) / 1e6;
  loop.disable();
  return out;
}

main(workerData as ProbeRequest).then(
  (r) => parentPort!.postMessage({ ok: true, result: r }),
  (e: unknown) => parentPort!.postMessage({ ok: false, error: e instanceof Error ? e.message : String(e) }),
);
