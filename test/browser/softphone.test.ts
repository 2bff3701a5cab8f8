import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Gateway } from '../../src/gateway.js';
import { launchChromium, requireChromium, type ChromiumSession } from '../support/browser.js';
import { TEST_PASSWORD, assertClean, requireSipp, startGateway, waitFor } from '../support/gateway-harness.js';
import { startRtpSink, type RtpSink } from '../support/rtp-sink.js';
import { SoftphonePage } from '../support/softphone-page.js';
import { startSipp, type SippPeer } from '../support/sipp.js';

/**
 * The gateway's own web softphone (src/web/, served by its HTTP listener) in Debian's Chromium,
 * against SIPp through the trunk path: calls both ways, DTMF, mute and hold, the built-in echo
 * extension. Chromium's fake microphone plays a beep, so "audio" here is real audio energy.
 *
 * Run alone: npx mocha --no-config --timeout 60000 'dist/test/browser/**\/*.test.js'
 * UPDATE_DOCS_SCREENSHOT=1 also copies the in-call screenshot to docs/softphone.png.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const ARTIFACTS = join(ROOT, 'test-artifacts');
const BUNDLE = join(ROOT, 'dist/web/app.js');

describe('web softphone in Chromium', function () {
  this.timeout(60_000);

  let browser: ChromiumSession | undefined;
  let gw: Gateway | undefined;
  let sipp: SippPeer | undefined;
  let sink: RtpSink | undefined;
  let phone: SoftphonePage | undefined;

  before(async function () {
    requireChromium.call(this);
    requireSipp.call(this);
    if (!existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run npm run build (it bundles src/web/app.ts)`);
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
  });

  afterEach(async function () {
    const errors = phone ? [...phone.errors] : [];
    try {
      await phone?.close();
    } finally {
      await sipp?.stop();
      await sink?.close();
      await gw?.close();
      phone = sipp = sink = gw = undefined;
    }
    // A test that passed must not have hidden an exception in the page.
    if (this.currentTest?.state === 'passed') assert.deepEqual(errors, [], 'uncaught errors in the page');
  });

  async function openAs(user: string): Promise<SoftphonePage> {
    phone = await SoftphonePage.open(browser!, gw!.httpAddress.port);
    await phone.login(user, TEST_PASSWORD);
    return phone;
  }

  async function hangUpFromPage(p: SoftphonePage): Promise<void> {
    await p.testId('hangup-button').click();
    await p.waitFor((s) => s.call === 'idle', 'the page to return to idle');
  }

  async function byeReceivedBySipp(peer: SippPeer): Promise<void> {
    const done = await peer.done;
    assert.equal(done.code, 0, `sipp failed: ${done.errors}`);
    const msgs = await peer.messages();
    assert.ok(
      msgs.some((m) => m.kind === 'received' && m.method === 'BYE'),
      `SIPp saw no BYE; it got: ${msgs.filter((m) => m.kind === 'received').map((m) => m.method ?? m.status).join(', ')}`,
    );
  }

  it('registers, calls a SIP peer through the trunk, hears its echo, and hangs up with BYE', async () => {
    sipp = await startSipp({ scenario: 'uas-answer', rtpEcho: true, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port });
    const p = await openAs('alice');
    assert.equal(await p.testId('registration-state').getAttribute('data-state'), 'registered');

    await p.dial('5551000');
    await p.waitFor((s) => s.call === 'in-call', 'the call to be answered');
    const s = await p.waitFor(
      (st) => (st.stats?.packetsReceived ?? 0) > 25 && (st.stats?.totalAudioEnergy ?? 0) > 0,
      'echoed audio with energy in inbound-rtp',
    );
    assert.equal(s.direction, 'outgoing');
    assert.equal(s.stats!.codec, 'PCMU/8000', 'the codec SIPp answered');
    assert.ok(s.stats!.packetsSent > 0);
    assert.ok(s.events.includes('call:ringback'), `180 from SIPp should start ringback: ${s.events.join(' ')}`);
    assert.match(await p.testId('stats-codec').innerText(), /PCMU/);

    await hangUpFromPage(p);
    assert.equal((await p.status()).lastEnd, 'hung up');
    await byeReceivedBySipp(sipp);
    await assertClean(gw);
  });

  it("plays the trunk's early media (183 with SDP) instead of its own ringback, then the call goes on", async () => {
    sipp = await startSipp({ scenario: 'uas-early-media', keys: { early_ms: '4000' }, traceMsg: true });
    gw = await startGateway({ trunkPort: sipp.port });
    const p = await openAs('alice');
    await p.dial('5551000');
    // SIPp plays g711a.pcap (speech) during the 4 s before its 200.
    const early = await p.waitFor(
      (st) => st.call === 'ringback' && (st.stats?.packetsReceived ?? 0) > 25 && (st.stats?.totalAudioEnergy ?? 0) > 0,
      'early audio with energy while still ringing',
    );
    assert.ok(early.events.includes('early-media'), early.events.join(' '));
    assert.ok(!early.events.includes('tone:ringback'), `no local ringback over the far end's: ${early.events.join(' ')}`);
    assert.equal(early.stats!.codec, 'PCMA/8000');
    await p.waitFor((s) => s.call === 'in-call', 'the answer');
    await hangUpFromPage(p);
    await byeReceivedBySipp(sipp);
    await assertClean(gw);
  });

  it('rings on a call from the trunk; Answer connects audio both ways; the SIP side hangs up', async () => {
    gw = await startGateway({ trunkPort: 9 }); // inbound only: trunks are recognised by source address
    const p = await openAs('alice');
    sipp = await startSipp({
      scenario: 'uac-call',
      remote: `127.0.0.1:${gw.sipAddress('udp')!.port}`,
      rtpEcho: true,
      traceMsg: true,
      keys: { to_user: 'alice', hangup_ms: '3000', bye_wait_ms: '15000', linger_ms: '500' },
    });

    const ringing = await p.waitFor((s) => s.call === 'incoming', 'the page to ring');
    assert.equal(ringing.tone, 'ringing');
    assert.equal(ringing.direction, 'incoming');
    assert.ok(await p.testId('incoming').isVisible(), 'the ringing banner is shown');
    assert.match(await p.testId('incoming-caller').innerText(), /sipp/);

    await p.testId('answer-button').click();
    await p.waitFor((s) => s.call === 'in-call', 'the answered call');
    await p.waitFor((s) => (s.stats?.packetsReceived ?? 0) > 0, 'RTP received by the page');
    await waitFor(
      () => {
        const relay = gw!.controller.list()[0]?.relay;
        return !!relay && relay.toSip.packets > 0 && relay.toBrowser.packets > 0;
      },
      `relay counters both ways (${JSON.stringify(gw.controller.list()[0]?.relay)})`,
      5_000,
    );

    const ended = await p.waitFor((s) => s.call === 'idle', 'the page to return to idle after SIPp hangs up', 15_000);
    assert.equal(ended.lastEnd, 'the other party hung up');
    assert.ok(await p.testId('incoming').isHidden());
    const done = await sipp.done;
    assert.equal(done.code, 0, `sipp failed: ${done.errors}`);
    await assertClean(gw);
  });

  it('Reject answers an incoming call with 486 Busy Here', async () => {
    gw = await startGateway({ trunkPort: 9 });
    const p = await openAs('alice');
    sipp = await startSipp({
      scenario: 'uac-expect-status',
      remote: `127.0.0.1:${gw.sipAddress('udp')!.port}`,
      keys: { to_user: 'alice', status: '486', linger_ms: '500' },
    });
    await p.waitFor((s) => s.call === 'incoming', 'the page to ring');
    await p.testId('reject-button').click();
    const s = await p.waitFor((st) => st.call === 'idle', 'the page to return to idle');
    assert.match(s.lastEnd ?? '', /486/);
    assert.equal(s.tone, null, 'the ringer stopped');
    const done = await sipp.done;
    assert.equal(done.code, 0, `sipp expected 486: ${done.errors}`);
    await assertClean(gw);
  });

  it('sends dial pad keys as RFC 4733 telephone-events to the SIP side, also after mute and a refused hold', async () => {
    // SIPp's answer points the gateway's RTP at our sink; SIPp negotiates telephone-event as 101.
    sink = await startRtpSink({ telephoneEventPt: 101 });
    sipp = await startSipp({
      scenario: 'uas-answer-sink',
      traceMsg: true,
      keys: { pt: '0', codec: 'PCMU', sink_ip: '127.0.0.1', sink_port: String(sink.port) },
    });
    gw = await startGateway({ trunkPort: sipp.port });
    const p = await openAs('alice');
    await p.dial('5551000');
    await p.waitFor((s) => s.call === 'in-call', 'the call to be answered');
    await waitFor(() => (sink!.packetsByPt.get(0) ?? 0) > 10, 'PCMU at the sink', 5_000);

    await p.testId('mute-button').click();
    await p.waitFor((s) => s.muted, 'muted');
    assert.equal(await p.testId('mute-button').getAttribute('aria-pressed'), 'true');
    await p.testId('mute-button').click();
    await p.waitFor((s) => !s.muted, 'unmuted');

    // The gateway answers re-INVITE with 488: the page rolls its offer back and holds locally.
    await p.testId('hold-button').click();
    const held = await p.waitFor((s) => s.held, 'on hold');
    assert.equal(held.holdMode, 'local');
    assert.ok(held.events.includes('reinvite-refused:488'), held.events.join(' '));
    assert.ok(await p.testId('hold-note').isVisible(), 'the page explains the local hold');
    await p.testId('hold-button').click();
    await p.waitFor((s) => !s.held, 'resumed');
    assert.equal((await p.status()).call, 'in-call', 'the refused re-INVITE left the call up');

    await p.pressKeys('159#');
    await waitFor(() => sink!.keys() === '159#', `telephone-events 1 5 9 # at the sink (got '${sink.keys()}')`, 10_000);
    assert.ok(sink.events.every((e) => e.payloadType === 101));
    for (const e of sink.events.filter((ev) => ev.end)) {
      assert.ok(e.duration >= 400, `an event lasts at least 50 ms at 8 kHz (got ${e.duration})`);
    }
    assert.ok(sink.events.some((e) => e.marker), 'the first packet of an event carries the marker bit');
    const s = await p.status();
    assert.equal(s.dtmfSent, '159#');
    assert.equal(await p.testId('dtmf-sent').innerText(), '159#');

    await hangUpFromPage(p);
    await byeReceivedBySipp(sipp);
    await assertClean(gw);
  });

  it('calls the built-in echo extension from its quick-dial button (and saves an in-call screenshot)', async () => {
    gw = await startGateway({ trunkPort: 9 }); // 600 never reaches the trunk
    const p = await openAs('alice');
    await p.testId('quick-echo').click();
    await p.waitFor((s) => s.call === 'in-call', 'the echo extension to answer');
    const s = await p.waitFor(
      (st) => (st.stats?.packetsReceived ?? 0) > 50 && (st.stats?.totalAudioEnergy ?? 0) > 0 && st.stats?.rttMs !== undefined,
      'echoed audio from extension 600',
    );
    assert.equal(s.peer, '600');

    await mkdir(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, 'softphone-in-call.png');
    await p.page.screenshot({ path: shot, fullPage: true });
    if (process.env['UPDATE_DOCS_SCREENSHOT']) {
      await mkdir(join(ROOT, 'docs'), { recursive: true });
      await copyFile(shot, join(ROOT, 'docs/softphone.png'));
    }

    await hangUpFromPage(p);
    await assertClean(gw);
  });

  it('shows a failed registration for a wrong password and offers the login form again', async () => {
    gw = await startGateway({ trunkPort: 9 });
    phone = await SoftphonePage.open(browser!, gw.httpAddress.port);
    const p = phone;
    await p.testId('login-user').fill('alice');
    await p.testId('login-password').fill('not-the-password');
    await p.testId('login-submit').click();
    const s = await p.waitFor((st) => st.registration === 'failed', 'a failed registration');
    assert.match(s.registrationDetail, /^403\b/);
    // The page shows the error once it has logged out again, a moment after the state turns 'failed'.
    await p.testId('login-error').filter({ hasText: '403' }).waitFor({ timeout: 5_000 });
    assert.ok(await p.testId('login-form').isVisible());
    await waitFor(() => gw!.stats().wsConnections === 0, 'the page to close its WebSocket', 5_000);
    await assertClean(gw);
  });
});
