import { isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import type { Destination, SipTarget } from './backend.js';

export interface ResolverOptions {
  /** DNS servers ("ip" or "ip:port"); default: the system's. */
  servers?: string[];
}

/**
 * RFC 3263 resolution of a SIP target to destinations in order of preference.
 * PLACEHOLDER: IP literals and A/AAAA only; NAPTR/SRV come next.
 */
export class SipResolver {
  constructor(_opts: ResolverOptions = {}) {}

  async resolve(target: SipTarget): Promise<Destination[]> {
    const transport = target.transport ?? 'udp';
    const port = target.port ?? (transport === 'tls' ? 5061 : 5060);
    if (isIP(target.host)) return [{ transport, address: target.host, port, hostname: target.host }];
    const addrs = await lookup(target.host, { all: true });
    return addrs.map((a) => ({ transport, address: a.address, port, hostname: target.host }));
  }
}
