import assert from 'node:assert/strict';
import { orderSrv, SipResolver, type ResolverOptions } from '../../sip/dns-resolver.js';
import { GatewayError } from '../../src/util/errors.js';
import { TestDnsServer } from '../support/dns-server.js';

/** Settles with `p`, or rejects once `ms` passed: every wait in these tests is bounded. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
  }
}

describe('SipResolver (RFC 3263) against a DNS server on 127.0.0.1', function () {
  let dns: TestDnsServer;
  const resolver = (opts: ResolverOptions = {}) => new SipResolver({ servers: [dns.server], ...opts });
  const summary = (ds: { transport: string; address: string; port: number }[]) => ds.map((d) => `${d.transport}:${d.address}:${d.port}`);

  before(async () => {
    dns = await TestDnsServer.start();
  });
  afterEach(() => dns.reset());
  after(() => dns.close());

  describe('IP literals and explicit ports', () => {
    it('takes an IP literal as the one destination, with default port and transport, and asks DNS nothing', async () => {
      const r = resolver();
      assert.deepEqual(await r.resolve({ host: '192.0.2.7' }), [{ transport: 'udp', address: '192.0.2.7', port: 5060, hostname: '192.0.2.7' }]);
      assert.deepEqual(await r.resolve({ host: '192.0.2.7', transport: 'tls' }), [{ transport: 'tls', address: '192.0.2.7', port: 5061, hostname: '192.0.2.7' }]);
      assert.deepEqual(await r.resolve({ host: '[2001:db8::1]', port: 5070, transport: 'tcp' }), [{ transport: 'tcp', address: '2001:db8::1', port: 5070, hostname: '2001:db8::1' }]);
      assert.equal(dns.queries.length, 0);
    });

    it('looks up only A/AAAA for a domain with an explicit port (no NAPTR, no SRV)', async () => {
      dns.a('pbx.test', ['127.0.0.10', '127.0.0.11']).aaaa('pbx.test', ['::1']);
      dns.srv('_sip._udp.pbx.test', [{ priority: 1, weight: 1, port: 9999, target: 'pbx.test' }]);
      const dests = await resolver().resolve({ host: 'pbx.test', port: 5080 });
      assert.deepEqual(summary(dests), ['udp:127.0.0.10:5080', 'udp:127.0.0.11:5080', 'udp:::1:5080']);
      assert.ok(dests.every((d) => d.hostname === 'pbx.test'));
      assert.deepEqual([...new Set(dns.queries.map((q) => q.type))].sort(), ['A', 'AAAA']);
    });

    it('keeps the given transport with an explicit port', async () => {
      dns.a('pbx.test', ['127.0.0.10']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test', port: 5080, transport: 'tcp' })), ['tcp:127.0.0.10:5080']);
    });
  });

  describe('SRV', () => {
    it('uses _sips._tcp for TLS and names the original domain (not the SRV target) for certificate checks', async () => {
      dns.srv('_sips._tcp.example.test', [{ priority: 10, weight: 0, port: 5071, target: 'edge1.example.test' }]).a('edge1.example.test', ['127.0.0.21']);
      const dests = await resolver().resolve({ host: 'example.test', transport: 'tls' });
      assert.deepEqual(dests, [{ transport: 'tls', address: '127.0.0.21', port: 5071, hostname: 'example.test' }]);
      assert.ok(!dns.queries.some((q) => q.type === 'NAPTR'), 'a given transport skips NAPTR');
    });

    it('orders by priority, lowest first, and expands each target to all its addresses, A before AAAA', async () => {
      dns.srv('_sip._tcp.pbx.test', [
        { priority: 30, weight: 0, port: 5003, target: 'c.pbx.test' },
        { priority: 10, weight: 0, port: 5001, target: 'a.pbx.test' },
        { priority: 20, weight: 0, port: 5002, target: 'b.pbx.test' },
      ]);
      dns.a('a.pbx.test', ['127.0.0.1', '127.0.0.2']).aaaa('a.pbx.test', ['::1']).a('b.pbx.test', ['127.0.0.3']).aaaa('c.pbx.test', ['::3']);
      const dests = await resolver().resolve({ host: 'pbx.test', transport: 'tcp' });
      assert.deepEqual(summary(dests), ['tcp:127.0.0.1:5001', 'tcp:127.0.0.2:5001', 'tcp:::1:5001', 'tcp:127.0.0.3:5002', 'tcp:::3:5003']);
    });

    it('falls back to A/AAAA on the default port when a transport has no SRV records', async () => {
      dns.a('pbx.test', ['127.0.0.9']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test', transport: 'tls' })), ['tls:127.0.0.9:5061']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test', transport: 'tcp' })), ['tcp:127.0.0.9:5060']);
    });

    it('skips a "." target (service not offered there) and a target without addresses', async () => {
      dns.srv('_sip._udp.pbx.test', [
        { priority: 1, weight: 0, port: 5060, target: '.' },
        { priority: 2, weight: 0, port: 5061, target: 'gone.pbx.test' },
        { priority: 3, weight: 0, port: 5062, target: 'ok.pbx.test' },
      ]);
      dns.a('ok.pbx.test', ['127.0.0.5']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test', transport: 'udp' })), ['udp:127.0.0.5:5062']);
    });

    it('picks the heavier of two equal-priority records first more often, and both orders occur', async () => {
      dns.srv('_sip._udp.pbx.test', [
        { priority: 10, weight: 10, port: 5001, target: 'light.pbx.test' },
        { priority: 10, weight: 30, port: 5002, target: 'heavy.pbx.test' },
      ]);
      dns.a('light.pbx.test', ['127.0.0.1']).a('heavy.pbx.test', ['127.0.0.2']);
      const r = resolver(); // the records come from the cache after the first run; the draw is per call
      let heavyFirst = 0;
      const runs = 400;
      for (let i = 0; i < runs; i++) if ((await r.resolve({ host: 'pbx.test', transport: 'udp' }))[0]!.port === 5002) heavyFirst++;
      // P(heavy first) = 30/41 (draws 0..40): expected ~293; these bounds fail with probability < 1e-9.
      assert.ok(heavyFirst > 230 && heavyFirst < 350, `heavy first in ${heavyFirst} of ${runs}`);
    });

    it('chooses a weight-0 record first only on a zero draw (RFC 2782), and shuffles an all-zero set', () => {
      const recs = [
        { priority: 1, weight: 100, id: 'w100' },
        { priority: 1, weight: 0, id: 'w0' },
      ];
      assert.deepEqual(orderSrv(recs, () => 0).map((r) => r.id), ['w0', 'w100']);
      assert.deepEqual(orderSrv(recs, () => 0.5).map((r) => r.id), ['w100', 'w0']);
      let zeroFirst = 0;
      for (let i = 0; i < 1000; i++) if (orderSrv(recs)[0]!.id === 'w0') zeroFirst++;
      // P = 1/101: expected ~10; more than 60 has probability < 1e-20.
      assert.ok(zeroFirst < 60, `weight 0 first in ${zeroFirst} of 1000`);
      const zeros = [1, 2, 3].map((id) => ({ priority: 1, weight: 0, id }));
      const firsts = new Set(Array.from({ length: 200 }, () => orderSrv(zeros)[0]!.id));
      assert.equal(firsts.size, 3, 'each all-zero record comes first sometimes');
      assert.deepEqual(orderSrv([{ priority: 5, weight: 1 }, { priority: 1, weight: 0 }], () => 0.99).map((r) => r.priority), [1, 5]);
    });
  });

  describe('NAPTR and the fallbacks for a bare domain', () => {
    it('follows NAPTR (order, then preference) to SRV to addresses, ignoring services and flags it cannot use', async () => {
      dns.naptr('pbx.test', [
        { order: 20, preference: 10, flags: 's', services: 'SIP+D2U', replacement: '_sip._udp.pbx.test' },
        { order: 10, preference: 50, flags: 's', services: 'SIPS+D2T', replacement: '_sips._tcp.pbx.test' },
        { order: 10, preference: 20, flags: 'S', services: 'sip+d2t', replacement: '_sip._tcp.pbx.test' },
        { order: 1, preference: 1, flags: 's', services: 'SIP+D2S', replacement: '_sip._sctp.pbx.test' },
        { order: 1, preference: 1, flags: 'u', services: 'E2U+sip', regexp: '!^.*$!sip:x@y!', replacement: '' },
      ]);
      dns.srv('_sip._udp.pbx.test', [{ priority: 1, weight: 0, port: 5060, target: 'u.pbx.test' }]);
      dns.srv('_sip._tcp.pbx.test', [{ priority: 1, weight: 0, port: 5060, target: 't.pbx.test' }]);
      dns.srv('_sips._tcp.pbx.test', [{ priority: 1, weight: 0, port: 5061, target: 't.pbx.test' }]);
      dns.srv('_sip._sctp.pbx.test', [{ priority: 1, weight: 0, port: 5060, target: 's.pbx.test' }]);
      dns.a('u.pbx.test', ['127.0.0.1']).a('t.pbx.test', ['127.0.0.2']).a('s.pbx.test', ['127.0.0.3']);
      const dests = await resolver().resolve({ host: 'pbx.test' });
      assert.deepEqual(summary(dests), ['tcp:127.0.0.2:5060', 'tls:127.0.0.2:5061', 'udp:127.0.0.1:5060']);
      assert.ok(dests.every((d) => d.hostname === 'pbx.test'));
    });

    it('without NAPTR records tries SRV for UDP, TCP and TLS, in that order', async () => {
      dns.a('pbx.test', ['127.0.0.99']); // the domain exists, with no NAPTR
      dns.srv('_sips._tcp.pbx.test', [{ priority: 1, weight: 0, port: 5061, target: 'x.pbx.test' }]);
      dns.srv('_sip._udp.pbx.test', [{ priority: 1, weight: 0, port: 5070, target: 'x.pbx.test' }]);
      dns.srv('_sip._tcp.pbx.test', [{ priority: 1, weight: 0, port: 5080, target: 'x.pbx.test' }]);
      dns.a('x.pbx.test', ['127.0.0.1']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test' })), ['udp:127.0.0.1:5070', 'tcp:127.0.0.1:5080', 'tls:127.0.0.1:5061']);
    });

    it('falls back to SRV when the NAPTR records lead nowhere', async () => {
      dns.naptr('pbx.test', [{ order: 1, preference: 1, flags: 's', services: 'SIP+D2T', replacement: '_sip._tcp.elsewhere.test' }]);
      dns.srv('_sip._udp.pbx.test', [{ priority: 1, weight: 0, port: 5070, target: 'x.pbx.test' }]).a('x.pbx.test', ['127.0.0.1']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'pbx.test' })), ['udp:127.0.0.1:5070']);
    });

    it('with neither NAPTR nor SRV uses A and AAAA, UDP on 5060', async () => {
      dns.a('pbx.test', ['127.0.0.7']).aaaa('pbx.test', ['::7']);
      assert.deepEqual(await resolver().resolve({ host: 'pbx.test' }), [
        { transport: 'udp', address: '127.0.0.7', port: 5060, hostname: 'pbx.test' },
        { transport: 'udp', address: '::7', port: 5060, hostname: 'pbx.test' },
      ]);
    });

    it('resolves an IPv6-only host through AAAA', async () => {
      dns.srv('_sip._tcp.v6.test', [{ priority: 1, weight: 0, port: 5090, target: 'h.v6.test' }]).aaaa('h.v6.test', ['::1', '2001:db8::5']);
      assert.deepEqual(summary(await resolver().resolve({ host: 'v6.test' })), ['tcp:::1:5090', 'tcp:2001:db8::5:5090']);
    });

    it('does not wait for a silent AAAA once A has answered, and still waits for AAAA when A has nothing', async () => {
      // c-ares would wait 5 s for the dropped AAAA query; the resolver goes on shortly after A.
      dns.a('v4.test', ['127.0.0.8']).silence('v4.test', 'AAAA');
      const r = resolver({ timeoutMs: 5000, tries: 1, budgetMs: 8000 });
      assert.deepEqual(summary(await within(r.resolve({ host: 'v4.test', port: 5060 }), 2500, 'resolve')), ['udp:127.0.0.8:5060']);
      assert.ok(dns.queries.some((q) => q.type === 'AAAA' && q.name === 'v4.test'), 'AAAA was asked');
      dns.aaaa('v6only.test', ['::8']).silence('v6only.test', 'A');
      const quick = resolver({ timeoutMs: 300, tries: 1, budgetMs: 3000 });
      assert.deepEqual(summary(await within(quick.resolve({ host: 'v6only.test', port: 5060 }), 5000, 'resolve')), ['udp:::8:5060']);
    });

    it('resolves an unknown domain to no destination (NXDOMAIN is not an error)', async () => {
      assert.deepEqual(await resolver().resolve({ host: 'nowhere.test' }), []);
    });
  });

  describe('failures, bounds and cache', () => {
    it('rejects with a clear error naming the host when the DNS server never answers, within its time budget', async () => {
      dns.silence('dead.test');
      const r = resolver({ timeoutMs: 100, tries: 1, budgetMs: 3000 });
      const err = await within(r.resolve({ host: 'dead.test' }).then(() => undefined, (e: unknown) => e), 10_000, 'resolve');
      assert.ok(err instanceof GatewayError, String(err));
      assert.equal(err.code, 'GW_DNS_FAILED');
      assert.match(err.message, /dead\.test/);
      assert.match(err.message, /NAPTR dead\.test: ETIMEOUT/);
    });

    it('stops waiting once its budget is spent, even with slow per-query timeouts', async () => {
      dns.silence('dead.test');
      const r = resolver({ timeoutMs: 5000, tries: 3, budgetMs: 300 });
      const err = await within(r.resolve({ host: 'dead.test', transport: 'udp' }).then(() => undefined, (e: unknown) => e), 10_000, 'resolve');
      assert.ok(err instanceof GatewayError);
      assert.match(err.message, /dead\.test.*within the 300 ms budget/);
    });

    it('returns what did resolve when one step fails (SERVFAIL on one SRV target)', async () => {
      dns.srv('_sip._udp.pbx.test', [
        { priority: 1, weight: 0, port: 5001, target: 'broken.pbx.test' },
        { priority: 2, weight: 0, port: 5002, target: 'fine.pbx.test' },
      ]);
      dns.serverFailure('broken.pbx.test').a('fine.pbx.test', ['127.0.0.2']);
      assert.deepEqual(summary(await resolver({ tries: 1 }).resolve({ host: 'pbx.test', transport: 'udp' })), ['udp:127.0.0.2:5002']);
    });

    it('reports SERVFAIL when nothing resolves', async () => {
      dns.serverFailure('pbx.test');
      await assert.rejects(resolver({ tries: 1 }).resolve({ host: 'pbx.test', port: 5060 }), (e: unknown) => e instanceof GatewayError && /pbx\.test: ESERVFAIL/.test(e.message));
    });

    it('reuses answers within their lifetime and asks again without a cache', async () => {
      dns.a('pbx.test', ['127.0.0.1']);
      const cached = resolver();
      await cached.resolve({ host: 'pbx.test', port: 5060 });
      await cached.resolve({ host: 'pbx.test', port: 5060 });
      assert.equal(dns.queries.filter((q) => q.type === 'A').length, 1);
      const uncached = resolver({ cacheTtlMs: 0 });
      await uncached.resolve({ host: 'pbx.test', port: 5060 });
      await uncached.resolve({ host: 'pbx.test', port: 5060 });
      assert.equal(dns.queries.filter((q) => q.type === 'A').length, 3);
    });

    it('shares one query among concurrent lookups of the same name', async () => {
      dns.a('pbx.test', ['127.0.0.1']);
      const r = resolver();
      const all = await Promise.all(Array.from({ length: 10 }, () => r.resolve({ host: 'pbx.test', port: 5060 })));
      assert.ok(all.every((d) => d.length === 1));
      assert.equal(dns.queries.filter((q) => q.type === 'A').length, 1);
    });

    it('does not keep a failed lookup: the next call asks again', async () => {
      dns.serverFailure('pbx.test');
      const r = resolver({ tries: 1 });
      await assert.rejects(r.resolve({ host: 'pbx.test', port: 5060 }));
      dns.reset();
      dns.a('pbx.test', ['127.0.0.1']);
      assert.deepEqual(summary(await r.resolve({ host: 'pbx.test', port: 5060 })), ['udp:127.0.0.1:5060']);
    });

    it('caps the number of destinations', async () => {
      dns.a('many.test', Array.from({ length: 30 }, (_, i) => `127.0.1.${i + 1}`));
      assert.equal((await resolver({ maxDestinations: 5 }).resolve({ host: 'many.test', port: 5060 })).length, 5);
    });

    it('rejects bad targets and options with a TypeError', async () => {
      const r = resolver();
      for (const bad of [{ host: '' }, { host: 'a b' }, { host: 'pbx.test', port: 0 }, { host: 'pbx.test', port: 70000 }, { host: 'pbx.test', transport: 'ws' }]) {
        await assert.rejects(r.resolve(bad as never), TypeError, JSON.stringify(bad));
      }
      assert.throws(() => new SipResolver({ servers: ['not an address'] }), TypeError);
      assert.throws(() => new SipResolver({ servers: [] }), TypeError);
      assert.throws(() => new SipResolver({ timeoutMs: -1 }), TypeError);
      assert.throws(() => new SipResolver({ budgetMs: 1.5 }), TypeError);
    });
  });
});
