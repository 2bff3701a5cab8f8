import type { PingResult, TrunkTarget } from './backend.js';
import { buildRequest, newBranch, randomToken } from './message.js';
import type { StackContext } from './stack-context.js';
import { destinationName, flowToDestination, hostPort, nextHop, targetUri, trunkRoutes } from './trunk-target.js';

/**
 * OPTIONS to a trunk (out of dialog): any final response, even 404 or 405, proves it reachable.
 * Tries the resolved destinations in order: on a transport failure, and on silence for the trunk's
 * failoverTimeoutMs while others remain (as INVITEs do); the last one gets the whole of Timer F.
 */
export async function pingTrunk(ctx: StackContext, trunk: TrunkTarget, fromUser = 'gw'): Promise<PingResult> {
  const next = nextHop(trunk);
  const dests = await ctx.resolve(next);
  if (dests.length === 0) throw new Error(`no address for ${next.host}`);
  let lastError: Error = new Error(`no destination for ${next.host}`);
  const failoverMs = trunk.failoverTimeoutMs ?? 4000;
  for (const [i, dest] of dests.entries()) {
    const last = i === dests.length - 1;
    const destination = destinationName(dest);
    let flow;
    try {
      flow = await flowToDestination(ctx, trunk, dest);
    } catch (err) {
      lastError = err as Error;
      continue;
    }
    const branch = newBranch();
    const text = buildRequest({
      method: 'OPTIONS',
      ruri: targetUri(trunk.target),
      via: ctx.via(flow, branch),
      routes: trunkRoutes(trunk),
      from: `<sip:${fromUser}@${ctx.domain(flow)}>;tag=${randomToken(6)}`,
      to: `<sip:${hostPort(trunk.target)}>`,
      callId: randomToken(12),
      cseq: 1,
      contact: ctx.contact(flow, fromUser),
      headers: ['Accept: application/sdp'],
    });
    const started = performance.now();
    const txn = ctx.sendRequest(flow, 'OPTIONS', branch, text);
    let silence: NodeJS.Timeout | undefined;
    const result = await new Promise<PingResult | Error>((resolve) => {
      if (!last) {
        silence = setTimeout(() => {
          if (txn.state !== 'trying') return; // a provisional response: it is there, let it finish
          resolve(new Error(`no response from ${destination} within ${failoverMs} ms`));
          txn.terminate();
        }, failoverMs);
      }
      txn.on('response', (res) => {
        if (res.status >= 200) resolve({ status: res.status, rttMs: Math.round((performance.now() - started) * 10) / 10, destination });
      });
      txn.on('timeout', () => resolve(new Error(`no response from ${destination}`)));
      txn.on('transportError', (err) => resolve(err));
      // The stack closing ends transactions without a response: settle instead of hanging.
      txn.once('terminated', () => resolve(new Error(`no response from ${destination} (transaction ended)`)));
      txn.start();
    });
    clearTimeout(silence);
    if (!(result instanceof Error)) return result;
    lastError = result;
  }
  throw lastError;
}
