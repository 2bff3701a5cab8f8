import type { Destination, SipTarget, TrunkTarget } from './backend.js';
import { encodeSipUser } from './sip-user.js';
import type { StackContext } from './stack-context.js';
import type { Flow } from './transport/flow.js';

/** `host[:port]` of a target, as configured (a domain stays a domain: RFC 3263 resolves it). */
export function hostPort(t: SipTarget): string {
  const host = t.host.includes(':') && !t.host.startsWith('[') ? `[${t.host}]` : t.host;
  return `${host}${t.port ? `:${t.port}` : ''}`;
}

/** A SIP URI for a target (with `user@` when given), `;transport=` for anything but UDP. */
export function targetUri(t: SipTarget, user?: string): string {
  const tp = t.transport && t.transport !== 'udp' ? `;transport=${t.transport}` : '';
  return `sip:${user ? `${encodeSipUser(user)}@` : ''}${hostPort(t)}${tp}`;
}

/** The Route set for requests to a trunk: a loose route to its outbound proxy (RFC 3261 §8.1.2), if any. */
export function trunkRoutes(trunk: TrunkTarget): string[] {
  return trunk.outboundProxy ? [`<${targetUri(trunk.outboundProxy)};lr>`] : [];
}

/** The next hop of every request to a trunk: its outbound proxy, else the trunk itself (resolved per RFC 3263). */
export function nextHop(trunk: TrunkTarget): SipTarget {
  return trunk.outboundProxy ?? trunk.target;
}

/** "udp:10.0.0.1:5060", for logs and the admin API. */
export function destinationName(d: Destination): string {
  return `${d.transport}:${d.address}:${d.port}`;
}

/** A flow to one resolved destination of a trunk: TLS verifies the certificate against the trunk's domain (RFC 5922). */
export function flowToDestination(ctx: StackContext, trunk: TrunkTarget, d: Destination): Promise<Flow> {
  return ctx.flowTo(d.transport, { address: d.address, port: d.port, servername: d.hostname, verify: trunk.tlsVerify ?? true });
}
