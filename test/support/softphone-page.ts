/**
 * The gateway's web softphone (src/web/) in a Chromium tab, seen through its data-testid
 * attributes and its `window.__softphone` status object. Every wait is bounded and fails with
 * the page's recent state changes and console output, which is what one needs to debug it.
 */
import type { Page } from 'playwright-core';
import type { SoftphoneStatus } from '../../src/web/status.js';
import type { ChromiumSession } from './browser.js';

export type { SoftphoneStatus };

const POLL_MS = 50;

/** Dial pad labels for data-testid="dialpad-<label>". */
const PAD_LABEL: Record<string, string> = { '*': 'star', '#': 'hash' };

export class SoftphonePage {
  constructor(
    readonly page: Page,
    private readonly browser: ChromiumSession,
  ) {}

  /** Opens the page at the gateway's HTTP address and waits until it has loaded /config.json. */
  static async open(browser: ChromiumSession, httpPort: number): Promise<SoftphonePage> {
    const page = await browser.newPage();
    const phone = new SoftphonePage(page, browser);
    await page.goto(`http://127.0.0.1:${httpPort}/`, { timeout: 10_000 });
    await phone.waitFor((s) => s.ready, 'the page to load its settings', 5_000);
    return phone;
  }

  testId(id: string) {
    return this.page.getByTestId(id);
  }

  status(): Promise<SoftphoneStatus> {
    return this.page.evaluate(() => (globalThis as unknown as { __softphone: SoftphoneStatus }).__softphone);
  }

  /** Polls the status object until `check` holds. */
  async waitFor(check: (s: SoftphoneStatus) => boolean, what: string, timeoutMs = 10_000): Promise<SoftphoneStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: SoftphoneStatus | undefined;
    for (;;) {
      last = await this.status().catch(() => undefined);
      if (last && check(last)) return last;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe(last)}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /** The status and the page's console, for assertion messages. */
  describe(s?: SoftphoneStatus): string {
    const log = this.browser.log(this.page);
    const status = s ? JSON.stringify({ ...s, events: s.events.slice(-30) }) : '(no status)';
    return `page status: ${status}\npage errors: ${log.errors.join('\n') || '(none)'}\nconsole (last 20):\n${log.console.slice(-20).join('\n')}`;
  }

  async login(user: string, password: string): Promise<void> {
    await this.testId('login-user').fill(user);
    await this.testId('login-password').fill(password);
    await this.testId('login-submit').click();
    await this.waitFor((s) => s.registration === 'registered', `${user} to register`);
  }

  async dial(target: string): Promise<void> {
    await this.testId('target').fill(target);
    await this.testId('call-button').click();
  }

  async pressKeys(keys: string): Promise<void> {
    for (const k of keys) await this.testId(`dialpad-${PAD_LABEL[k] ?? k}`).click();
  }

  /** Uncaught exceptions in the page so far. */
  get errors(): readonly string[] {
    return this.browser.log(this.page).errors;
  }

  close(): Promise<void> {
    return this.page.close({ runBeforeUnload: false });
  }
}
