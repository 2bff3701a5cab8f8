import assert from 'node:assert/strict';
import { ConfigError, loadConfig, parseConfig } from '../../src/config.js';
import { OutboundRouter } from '../../src/router.js';

const trunks = [
  { name: 'pstn', host: 'sip.carrier.example', transport: 'tls' },
  { name: 'pbx', host: '10.0.0.5', port: 5060, transport: 'udp', username: 'gw', password: 'secret', realm: 'pbx' },
];

function router(routes: unknown[] | undefined) {
  const base = loadConfig();
  return new OutboundRouter(parseConfig({ ...base, trunks, ...(routes ? { routes } : {}) }));
}

describe('outbound routing rules', () => {
  it('sends everything to the first trunk unchanged when no routes are configured', () => {
    const d = router(undefined).route('0301234', 'alice');
    assert.equal(d?.trunk.name, 'pstn');
    assert.equal(d?.toUser, '0301234');
  });

  it('takes the first rule whose prefix or regex matches, in config order', () => {
    const r = router([
      { to: { regex: '^2[0-9]{3}$' }, trunk: 'pbx' },
      { to: { prefix: '2' }, trunk: 'pstn' },
      { to: { prefix: '0' }, trunk: 'pstn', strip: 1, prepend: '+49' },
    ]);
    assert.equal(r.route('2001', 'alice')?.trunk.name, 'pbx');
    assert.equal(r.route('20011', 'alice')?.trunk.name, 'pstn');
    assert.deepEqual(
      (({ trunk, ...rest }) => ({ trunk: trunk.name, ...rest }))(r.route('0301234', 'alice')!),
      { trunk: 'pstn', toUser: '+49301234', rule: '#2' },
    );
    assert.equal(r.route('999', 'alice'), undefined, 'no match: the caller answers 404');
  });

  it('matches on the calling user as well when a rule says so', () => {
    const r = router([
      { name: 'bob-via-pbx', from: { prefix: 'bob' }, to: { prefix: '0' }, trunk: 'pbx' },
      { to: { prefix: '0' }, trunk: 'pstn' },
    ]);
    assert.equal(r.route('0301234', 'bob')?.rule, 'bob-via-pbx');
    assert.equal(r.route('0301234', 'alice')?.trunk.name, 'pstn');
  });

  it('stops at a rule whose rewriting empties the number (the caller gets 484), not at a later rule', () => {
    const r = router([
      { name: 'outside-line', to: { prefix: '9' }, trunk: 'pstn', strip: 1 },
      { name: 'anything', to: { regex: '.' }, trunk: 'pbx' },
    ]);
    assert.deepEqual({ ...r.route('9', 'alice')!, trunk: undefined }, { rule: 'outside-line', toUser: '', trunk: undefined });
    assert.equal(r.route('9123', 'alice')?.toUser, '123');
  });

  it('gives each trunk its target, credentials (with realm) and From settings', () => {
    const d = router([{ to: { prefix: '1' }, trunk: 'pbx' }]).route('100', 'alice')!;
    assert.deepEqual(d.trunk.target.target, { host: '10.0.0.5', port: 5060, transport: 'udp' });
    assert.deepEqual(d.trunk.credentials, { username: 'gw', password: 'secret', realm: 'pbx' });
    assert.equal(d.trunk.target.failoverTimeoutMs, 4000);
  });

  it('rejects routes to unknown trunks, broken regexes and ambiguous matches, naming the key', () => {
    const base = { ...loadConfig(), trunks };
    assert.throws(() => parseConfig({ ...base, routes: [{ to: { prefix: '0' }, trunk: 'nope' }] }), (e: unknown) => e instanceof ConfigError && /routes\.0\.trunk: no trunk "nope"/.test(e.message));
    assert.throws(() => parseConfig({ ...base, routes: [{ to: { regex: '([' }, trunk: 'pbx' }] }), /routes\.0\.to\.regex/);
    assert.throws(() => parseConfig({ ...base, routes: [{ to: { prefix: '0', regex: '^0' }, trunk: 'pbx' }] }), /routes\.0\.to: needs exactly one of prefix or regex/);
    assert.throws(() => parseConfig({ ...base, trunks: [...trunks, { name: 'pbx', host: '10.0.0.6' }] }), /trunk names must be unique/);
    assert.throws(() => parseConfig({ ...base, trunks: [{ name: 'r', host: '10.0.0.7', register: true }] }), /trunks\.0\.register: register needs username and password/);
    assert.throws(() => parseConfig({ ...base, sip: { ...base.sip, listen: [{ transport: 'tls', host: '127.0.0.1', port: 5061 }] } }), /sip\.listen\.0: a TLS listener needs sip\.tls/);
  });
});
