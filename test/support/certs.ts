/**
 * Certificates for TLS tests, made fresh per run: a CA and leaves it signs, as PEM files in a temp
 * dir that `remove()` deletes. ECDSA P-256 keys keep generation fast.
 */
import { webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 24 * 3600 * 1000;

export interface PemFiles {
  cert: string;
  key: string;
}

export interface LeafOptions {
  /** Subject CN and DNS SANs (default ['localhost']). */
  dns?: string[];
  /** IP SANs (default ['127.0.0.1']). */
  ips?: string[];
}

export interface TestCa {
  /** The CA certificate's PEM file. */
  readonly caFile: string;
  readonly caPem: string;
  readonly dir: string;
  /** A server (and client) certificate signed by this CA, written as `<name>.crt` / `<name>.key`. */
  leaf(name: string, opts?: LeafOptions): Promise<PemFiles & { certPem: string; keyPem: string }>;
  remove(): Promise<void>;
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

function keys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
}

/** A fresh CA named `cn` in a new temp dir. */
export async function createTestCa(cn = 'Gateway Test CA'): Promise<TestCa> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-certs-'));
  try {
    const caKeys = await keys();
    const notBefore = new Date(Date.now() - DAY);
    const notAfter = new Date(Date.now() + 7 * DAY);
    const caCert = await x509.X509CertificateGenerator.createSelfSigned({
      name: `CN=${cn}`,
      keys: caKeys,
      signingAlgorithm: ALG,
      notBefore,
      notAfter,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
      ],
    });
    const caPem = caCert.toString('pem');
    const caFile = join(dir, 'ca.crt');
    await writeFile(caFile, caPem);
    return {
      caFile,
      caPem,
      dir,
      async leaf(name, opts = {}) {
        if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new TypeError(`bad certificate file name: ${name}`);
        const dns = opts.dns ?? ['localhost'];
        const ips = opts.ips ?? ['127.0.0.1'];
        const leafKeys = await keys();
        const cert = await x509.X509CertificateGenerator.create({
          subject: `CN=${dns[0] ?? ips[0] ?? name}`,
          issuer: caCert.subject,
          publicKey: leafKeys.publicKey,
          signingKey: caKeys.privateKey,
          signingAlgorithm: ALG,
          notBefore,
          notAfter,
          extensions: [
            new x509.BasicConstraintsExtension(false, undefined, true),
            new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
            new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
            new x509.SubjectAlternativeNameExtension([...dns.map((value) => ({ type: 'dns' as const, value })), ...ips.map((value) => ({ type: 'ip' as const, value }))]),
            await x509.AuthorityKeyIdentifierExtension.create(caCert),
          ],
        });
        const certPem = cert.toString('pem');
        const kPem = await keyPem(leafKeys.privateKey);
        const files = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
        await writeFile(files.cert, certPem);
        await writeFile(files.key, kPem, { mode: 0o600 });
        return { ...files, certPem, keyPem: kPem };
      },
      remove: () => rm(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
