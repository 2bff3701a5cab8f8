import type { SipTarget, TrunkTarget } from './backend.js';

/** `host[:port]` of a target, as configured (a domain stays a domain: RFC 3263 resolves it). */
export function hostPort(t: SipTarget): string {
  const host = t.host.includes(':') && !t.host.startsWith('[') ? `[${t.host}]` : t.host;
  return `${host}${t.port ? `:${t.port}` : ''}`;
}

/** A SIP URI for a target (with `user@` when given), `;transport=` for anything but UDP. */
export function targetUri(t: SipTarget, user?: string): string {
  const tp = t.transport && t.transport !== 'udp' ? `;transport=${t.transport}` : '';
  return `sip:${user ? `${user}@` : ''}${hostPort(t)}${tp}`;
}

/** The Route set for requests to a trunk: a loose route to its outbound proxy (RFC 3261 §8.1.2), if any. */
export function trunkRoutes(trunk: TrunkTarget): string[] {
  return trunk.outboundProxy ? [`<${targetUri(trunk.outboundProxy)};lr>`] : [];
}
