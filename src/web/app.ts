/**
 * The web softphone page: wires the DOM in index.html to a Phone (phone.ts) and renders its
 * status. Served by the gateway (GET /, /style.css, /app.js, /config.json); SIP goes over the
 * gateway's WebSocket on the same host, wss:// when the page came over https://.
 */
import { Phone } from './phone.js';
import type { CallState, RegistrationState, SoftphoneStatus } from './status.js';

declare global {
  interface Window {
    /** Live status for tests and debugging (see status.ts). */
    __softphone: SoftphoneStatus;
  }
}

/** What GET /config.json says; every field optional so the page still works without it. */
interface PageConfig {
  wsPath?: string;
  domain?: string;
  extensions?: Record<string, string>;
  iceServers?: RTCIceServer[];
}

const KEYS: ReadonlyArray<readonly [key: string, letters: string, label: string]> = [
  ['1', '', '1'], ['2', 'ABC', '2'], ['3', 'DEF', '3'],
  ['4', 'GHI', '4'], ['5', 'JKL', '5'], ['6', 'MNO', '6'],
  ['7', 'PQRS', '7'], ['8', 'TUV', '8'], ['9', 'WXYZ', '9'],
  ['*', '', 'star'], ['0', '+', '0'], ['#', '', 'hash'],
];

const EXTENSION_LABELS: Record<string, string> = { echo: 'Echo test', tone: 'Tone 440 Hz' };
const USER_KEY = 'softphone.user';

const REG_TEXT: Record<RegistrationState, string> = {
  'logged-out': 'Not logged in',
  connecting: 'Connecting…',
  registering: 'Registering…',
  registered: 'Registered',
  failed: 'Registration failed',
  disconnected: 'Disconnected',
};

const CALL_TEXT: Record<CallState, string> = {
  idle: 'Ready',
  calling: 'Calling…',
  ringback: 'Ringing…',
  incoming: 'Incoming call',
  answering: 'Connecting…',
  'in-call': 'In call',
  ending: 'Hanging up…',
};

function el<T extends HTMLElement>(id: string, type: new () => T): T {
  const e = document.getElementById(id);
  if (!(e instanceof type)) throw new Error(`index.html is missing #${id}`);
  return e;
}

const ui = {
  regState: el('reg-state', HTMLElement),
  regDetail: el('reg-detail', HTMLElement),
  loginPanel: el('login-panel', HTMLElement),
  loginForm: el('login-form', HTMLFormElement),
  loginUser: el('login-user', HTMLInputElement),
  loginPassword: el('login-password', HTMLInputElement),
  loginServer: el('login-server', HTMLElement),
  loginSubmit: el('login-submit', HTMLButtonElement),
  loginError: el('login-error', HTMLElement),
  phonePanel: el('phone-panel', HTMLElement),
  logout: el('logout', HTMLButtonElement),
  callStatus: el('call-status', HTMLElement),
  callStateText: el('call-state-text', HTMLElement),
  callPeer: el('call-peer', HTMLElement),
  callTimer: el('call-timer', HTMLElement),
  incoming: el('incoming', HTMLElement),
  incomingCaller: el('incoming-caller', HTMLElement),
  answer: el('answer', HTMLButtonElement),
  reject: el('reject', HTMLButtonElement),
  dialForm: el('dial-form', HTMLFormElement),
  target: el('target', HTMLInputElement),
  backspace: el('backspace', HTMLButtonElement),
  quickDial: el('quick-dial', HTMLElement),
  dialpad: el('dialpad', HTMLElement),
  call: el('call', HTMLButtonElement),
  hangup: el('hangup', HTMLButtonElement),
  mute: el('mute', HTMLButtonElement),
  hold: el('hold', HTMLButtonElement),
  dtmfSent: el('dtmf-sent', HTMLOutputElement),
  holdNote: el('hold-note', HTMLElement),
  callError: el('call-error', HTMLElement),
  lastEnd: el('last-end', HTMLElement),
  enableAudio: el('enable-audio', HTMLButtonElement),
  remoteAudio: el('remote-audio', HTMLAudioElement),
  stCodec: el('st-codec', HTMLElement),
  stSent: el('st-sent', HTMLElement),
  stReceived: el('st-received', HTMLElement),
  stLost: el('st-lost', HTMLElement),
  stJitter: el('st-jitter', HTMLElement),
  stRtt: el('st-rtt', HTMLElement),
  stLevelIn: el('st-level-in', HTMLMeterElement),
  stLevelOut: el('st-level-out', HTMLMeterElement),
  stPath: el('st-path', HTMLElement),
};

const phone = new Phone();
window.__softphone = phone.status;
let config: PageConfig = {};
let connectedAt: number | undefined;
let busy = false;
const quickButtons: HTMLButtonElement[] = [];
const padButtons: HTMLButtonElement[] = [];

function serverUrl(): string {
  const url = new URL(config.wsPath ?? '/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

function showError(target: HTMLElement, err: unknown): void {
  target.textContent = err instanceof Error ? err.message : String(err);
}

/** Runs a UI action once at a time; its error goes to the call's error line. */
function act(fn: () => Promise<unknown> | unknown, errorTarget: HTMLElement = ui.callError): void {
  phone.tones.unlock(); // every action is a user gesture: let WebAudio start
  errorTarget.textContent = '';
  Promise.resolve()
    .then(fn)
    .catch((err: unknown) => showError(errorTarget, err))
    .finally(render);
}

// ---- rendering -----------------------------------------------------------------------------

const fmtInt = (n: number | undefined) => (n === undefined ? '–' : n.toLocaleString('en'));
const fmtMs = (n: number | undefined) => (n === undefined ? '–' : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`);

function fmtDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function render(): void {
  const s = phone.status;
  ui.regState.textContent = REG_TEXT[s.registration];
  ui.regState.dataset['state'] = s.registration;
  ui.regDetail.textContent = s.registrationDetail;

  const loggedIn = phone.loggedIn;
  ui.loginPanel.hidden = loggedIn;
  ui.phonePanel.hidden = !loggedIn;
  ui.loginSubmit.disabled = !s.ready || busy;

  const call = s.call;
  const idle = call === 'idle';
  const inCall = call === 'in-call';
  ui.callStatus.dataset['state'] = call;
  let stateText = idle && s.registration !== 'registered' ? 'Not registered' : CALL_TEXT[call];
  if (inCall && s.held) stateText += s.holdMode === 'local' ? ' · on hold (local)' : ' · on hold';
  if (inCall && s.muted) stateText += ' · muted';
  ui.callStateText.textContent = stateText;
  ui.callPeer.textContent = idle ? '' : `${s.direction === 'incoming' ? 'from' : 'to'} ${s.peer ?? ''}`;
  if (inCall) connectedAt ??= Date.now();
  else connectedAt = undefined;
  ui.callTimer.textContent = connectedAt === undefined ? '' : fmtDuration(Date.now() - connectedAt);

  ui.incoming.hidden = call !== 'incoming';
  ui.incomingCaller.textContent = s.peer ?? '';
  document.title = call === 'incoming' ? `Incoming call · ${s.peer ?? ''}` : 'Softphone · SIP-to-WebRTC gateway';

  const canCall = idle && s.registration === 'registered';
  ui.call.disabled = !canCall;
  ui.target.disabled = !idle;
  ui.backspace.disabled = !idle;
  for (const b of quickButtons) b.disabled = !canCall;
  for (const b of padButtons) b.disabled = !(idle || inCall);
  ui.hangup.disabled = !(call === 'calling' || call === 'ringback' || call === 'answering' || inCall);
  ui.mute.disabled = !inCall;
  ui.hold.disabled = !inCall;
  ui.mute.setAttribute('aria-pressed', String(s.muted));
  ui.mute.textContent = s.muted ? 'Unmute' : 'Mute';
  ui.hold.setAttribute('aria-pressed', String(s.held));
  ui.hold.textContent = s.held ? 'Resume' : 'Hold';
  ui.holdNote.hidden = !(s.held && s.holdMode === 'local');
  ui.dtmfSent.value = s.dtmfSent;
  ui.lastEnd.textContent = idle && s.lastEnd ? `Last call: ${s.lastEnd}` : '';
  if (idle) ui.enableAudio.hidden = true;

  const st = s.stats;
  ui.stCodec.textContent = st?.codec ? `${st.codec}${st.payloadType !== undefined ? ` (PT ${st.payloadType})` : ''}` : '–';
  ui.stSent.textContent = fmtInt(st?.packetsSent);
  ui.stReceived.textContent = fmtInt(st?.packetsReceived);
  ui.stLost.textContent = st
    ? `${fmtInt(st.packetsLost)}${st.packetsReceived + st.packetsLost > 0 ? ` (${((100 * st.packetsLost) / (st.packetsReceived + st.packetsLost)).toFixed(1)} %)` : ''}`
    : '–';
  ui.stJitter.textContent = fmtMs(st?.jitterMs);
  ui.stRtt.textContent = st?.rttMs === undefined ? '–' : `${fmtMs(st.rttMs)}${st.rttSource === 'ice' ? ' (ICE)' : ''}`;
  // audioLevel is linear; a square root makes quiet speech visible on the meter.
  ui.stLevelIn.value = inCall ? Math.sqrt(st?.audioLevelIn ?? 0) : 0;
  ui.stLevelOut.value = inCall ? Math.sqrt(st?.audioLevelOut ?? 0) : 0;
  ui.stPath.textContent = st?.candidatePair ? `${st.candidatePair}${st.dtlsRole ? `, DTLS ${st.dtlsRole}` : ''}` : '–';
}

let lastCall: CallState = 'idle';

function onPhoneChange(): void {
  render();
  // Move focus to what the user most likely wants next, once per change of call state.
  if (phone.status.call === lastCall) return;
  lastCall = phone.status.call;
  if (lastCall === 'incoming') ui.answer.focus();
  else if (lastCall === 'in-call') ui.hangup.focus();
}

// ---- wiring ---------------------------------------------------------------------------------

function buildDialpad(): void {
  for (const [key, letters, label] of KEYS) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset['key'] = key;
    b.dataset['testid'] = `dialpad-${label}`;
    b.setAttribute('aria-label', label);
    b.append(key);
    const small = document.createElement('small');
    small.textContent = letters;
    small.setAttribute('aria-hidden', 'true');
    b.append(small);
    b.addEventListener('click', () => pressKey(key));
    padButtons.push(b);
    ui.dialpad.append(b);
  }
}

function pressKey(key: string): void {
  phone.tones.unlock();
  if (phone.status.call === 'in-call') {
    ui.callError.textContent = '';
    try {
      phone.sendDtmf(key);
    } catch (err) {
      showError(ui.callError, err);
    }
  } else if (phone.status.call === 'idle') {
    ui.target.value += key;
    phone.tones.beep(key, 80);
  }
  render();
}

function buildQuickDial(): void {
  const ext = Object.entries(config.extensions ?? {});
  ui.quickDial.hidden = ext.length === 0;
  for (const [name, number] of ext) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset['testid'] = `quick-${name}`;
    b.textContent = `${EXTENSION_LABELS[name] ?? name} (${number})`;
    b.addEventListener('click', () => {
      ui.target.value = number;
      act(() => phone.call(number));
    });
    quickButtons.push(b);
    ui.quickDial.append(b);
  }
}

function attachRemoteAudio(stream: MediaStream | null): void {
  ui.remoteAudio.srcObject = stream;
  if (!stream) return;
  // Autoplay with sound needs a user gesture; Call and Answer clicks are one. If the browser
  // still refuses (an answer from the keyboard in some browsers), offer a button.
  ui.remoteAudio.play().catch(() => {
    ui.enableAudio.hidden = false;
  });
}

async function loadConfig(): Promise<void> {
  try {
    const res = await fetch('config.json', { cache: 'no-store' });
    if (res.ok) config = (await res.json()) as PageConfig;
  } catch {
    // Served without the gateway's /config.json: fall back to this host and /ws.
  }
}

async function main(): Promise<void> {
  buildDialpad();
  phone.onChange = onPhoneChange;
  phone.onRemoteStream = attachRemoteAudio;
  ui.loginUser.value = localStorage.getItem(USER_KEY) ?? '';
  render();
  await loadConfig();
  buildQuickDial();
  ui.loginServer.textContent = serverUrl();
  phone.status.ready = true;
  render();

  ui.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (busy) return;
    busy = true;
    const user = ui.loginUser.value.trim();
    localStorage.setItem(USER_KEY, user);
    act(async () => {
      try {
        await phone.login({
          server: serverUrl(),
          domain: config.domain ?? location.hostname,
          user,
          password: ui.loginPassword.value,
          iceServers: config.iceServers ?? [],
        });
        ui.loginPassword.value = '';
        ui.target.focus();
      } finally {
        busy = false;
      }
    }, ui.loginError);
  });
  ui.logout.addEventListener('click', () => act(() => phone.logout()));
  ui.dialForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (phone.status.call !== 'idle') return;
    const target = ui.target.value;
    if (!target.trim()) {
      ui.callError.textContent = 'Enter a number or SIP address first.';
      ui.target.focus();
      return;
    }
    act(() => phone.call(target));
  });
  ui.backspace.addEventListener('click', () => {
    ui.target.value = ui.target.value.slice(0, -1);
    ui.target.focus();
  });
  ui.hangup.addEventListener('click', () => act(() => phone.hangup()));
  ui.answer.addEventListener('click', () => act(() => phone.answer()));
  ui.reject.addEventListener('click', () => act(() => phone.reject()));
  ui.mute.addEventListener('click', () => act(() => phone.setMuted(!phone.status.muted)));
  ui.hold.addEventListener('click', () => {
    ui.hold.disabled = true; // until the re-INVITE is answered
    act(() => phone.setHeld(!phone.status.held));
  });
  ui.enableAudio.addEventListener('click', () => {
    ui.enableAudio.hidden = true;
    ui.remoteAudio.play().catch((err: unknown) => showError(ui.callError, err));
  });
  // Keyboard DTMF during a call, unless typing into a field.
  document.addEventListener('keydown', (ev) => {
    if (phone.status.call !== 'in-call' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLTextAreaElement) return;
    if (/^[0-9*#]$/.test(ev.key)) {
      ev.preventDefault();
      pressKey(ev.key);
    }
  });
  setInterval(() => {
    if (phone.status.call === 'in-call') ui.callTimer.textContent = fmtDuration(Date.now() - (connectedAt ?? Date.now()));
  }, 1000);
  // Best effort on leaving: BYE and un-REGISTER go out before the WebSocket closes.
  window.addEventListener('pagehide', () => void phone.logout());
}

main().catch((err: unknown) => showError(ui.loginError, err));
