import { isIP } from 'node:net';
import tls from 'node:tls';
import type { FlowDestination } from './flow.js';

export { TransportError } from './errors.js';

/** PEM material for SIP over TLS (file contents, not paths). */
export interface TlsMaterial {
  /** Our certificate chain: served by the listener, offered as a client certificate. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Extra trusted roots for verifying peers, on top of Node's bundled ones. */
  ca?: string | Buffer;
}

/**
 * The name a TLS peer's certificate is checked against: the destination's domain, else its address.
 * Lower-cased so connection reuse compares names as DNS does.
 */
export function identityName(dest: FlowDestination): string {
  return (dnsName(dest) ?? dest.address).toLowerCase();
}

function dnsName(dest: FlowDestination): string | undefined {
  return dest.servername && isIP(dest.servername) === 0 ? dest.servername : undefined;
}

/** Listener side; throws a TypeError when the certificate or key is missing or unusable. */
export function createTlsServer(material: TlsMaterial, handshakeTimeoutMs: number): tls.Server {
  if (!material.cert || !material.key) throw new TypeError('a TLS listener needs a certificate and a key');
  try {
    return tls.createServer({ cert: material.cert, key: material.key, handshakeTimeout: handshakeTimeoutMs });
  } catch (err) {
    throw new TypeError(`unusable TLS certificate or key: ${(err as Error).message}`, { cause: err });
  }
}

/** Trusted roots for outgoing connections: Node's bundle plus the configured CA (`ca` replaces the default, so both go in). */
export function trustedRoots(material: TlsMaterial | undefined): string[] | undefined {
  if (!material?.ca) return undefined;
  return [...tls.rootCertificates, material.ca.toString()];
}

/**
 * Options for `tls.connect` to a SIP peer: SNI only for a DNS name (RFC 6066 forbids IP literals),
 * verification on unless the destination turns it off. Node checks the certificate against
 * `servername`, else `host`, so an IP destination is checked against the certificate's IP SANs.
 */
export function tlsConnectOptions(dest: FlowDestination, material: TlsMaterial | undefined, roots: string[] | undefined): tls.ConnectionOptions {
  const name = dnsName(dest);
  return {
    host: dest.address,
    port: dest.port,
    ...(name ? { servername: name } : {}),
    rejectUnauthorized: dest.verify ?? true,
    ...(roots ? { ca: roots } : {}),
    ...(material?.cert && material.key ? { cert: material.cert, key: material.key } : {}),
  };
}
