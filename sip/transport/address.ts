import { isIP } from 'node:net';

const MAPPED = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;

/**
 * The address a peer is known by: an IPv4 peer reaching a dual-stack ('::') listener shows up as
 * `::ffff:a.b.c.d`, and trunk addresses, Via `received` and flow ids must read `a.b.c.d` as they
 * would on an IPv4 listener.
 */
export function unmapIPv4(address: string): string {
  const m = MAPPED.exec(address);
  return m ? m[1]! : address;
}

/** An IPv4 destination as a udp6 socket must be given it (a plain IPv4 address fails with EINVAL). */
export function mapIPv4(address: string): string {
  return isIP(address) === 4 ? `::ffff:${address}` : address;
}

/** A local IPv6 address that also carries IPv4 (the wildcard, dual-stack unless ipv6Only). */
export function isDualStack(localAddress: string): boolean {
  return localAddress === '::' || MAPPED.test(localAddress);
}
