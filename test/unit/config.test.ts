import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, parseConfig } from '../../src/config.js';

const mainJs = fileURLToPath(new URL('../../src/main.js', import.meta.url));

describe('configuration', () => {
  it('loads the embedded defaults', () => {
    const c = loadConfig();
    assert.equal(c.http.host, '127.0.0.1');
    assert.deepEqual(c.media.rtpPorts, [20000, 29999]);
    assert.equal(c.trunks[0]!.port, 5090);
    assert.ok(c.sip.listen.every((l) => l.host === '127.0.0.1'), 'listens on loopback only by default');
  });

  it('merges a file over the defaults (objects by key, arrays replaced)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gwcfg-'));
    const f = join(dir, 'c.json');
    writeFileSync(f, JSON.stringify({ http: { port: 9000 }, trunks: [{ name: 't', host: '127.0.0.1', port: 5070, transport: 'tcp' }] }));
    const c = loadConfig(f);
    assert.equal(c.http.port, 9000);
    assert.equal(c.http.host, '127.0.0.1');
    assert.equal(c.trunks.length, 1);
    assert.equal(c.trunks[0]!.transport, 'tcp');
  });

  it('names the bad key in its error', () => {
    assert.throws(
      () => parseConfig({ ...loadConfig(), media: { ...loadConfig().media, rtpPorts: [30000, 20000] }, bogus: 1 }),
      (e: unknown) => e instanceof ConfigError && /media\.rtpPorts/.test(e.message) && /bogus/.test(e.message),
    );
    assert.throws(() => parseConfig({ ...loadConfig(), trunks: [{ name: 'x', host: '127.0.0.1', port: 5060, transport: 'sctp' }] }), /trunks\.0\.transport/);
    // A port in the host would otherwise be taken for an IPv6 address.
    assert.throws(() => parseConfig({ ...loadConfig(), trunks: [{ name: 'x', host: 'pbx.example.com:5060' }] }), /trunks\.0\.host: must be a host name or IP address \(a port goes in its own key\)/);
    assert.throws(() => parseConfig({ ...loadConfig(), trunks: [{ name: 'x', host: 'pbx example.com' }] }), /trunks\.0\.host/);
    for (const host of ['pbx.example.com', 'pbx.example.com.', 'localhost', '192.0.2.1', '2001:db8::1', 'sip-1.carrier.example']) {
      assert.doesNotThrow(() => parseConfig({ ...loadConfig(), trunks: [{ name: 'x', host }] }), host);
    }
  });

  it('refuses an admin API on a non-loopback address without a token, naming admin.token', () => {
    const base = loadConfig();
    assert.throws(() => parseConfig({ ...base, admin: { host: '0.0.0.0', port: 8089 } }), /admin\.token/);
    assert.doesNotThrow(() => parseConfig({ ...base, admin: { host: '0.0.0.0', port: 8089, token: 'a-long-enough-token-123' } }));
    assert.doesNotThrow(() => parseConfig({ ...base, admin: { host: '127.0.0.1', port: 8089 } }));
  });

  it('makes the process exit non-zero with the key named when started with a bad config file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gwcfg-'));
    const f = join(dir, 'bad.json');
    writeFileSync(f, JSON.stringify({ http: { port: 'eighty' } }));
    const r = spawnSync(process.execPath, [mainJs, '--config', f], { encoding: 'utf8', timeout: 10_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /http\.port/);
    const r2 = spawnSync(process.execPath, [mainJs, '--config', join(dir, 'missing.json')], { encoding: 'utf8', timeout: 10_000 });
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /cannot read config file/);
  });
});
