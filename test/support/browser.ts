/**
 * Debian's Chromium for browser tests, driven by playwright-core (never a downloaded browser).
 *
 *   before(requireChromium);
 *   const browser = await launchChromium();
 *   const page = await browser.newPage();
 *   ...
 *   await browser.close(); // closes every page, ends the process, removes the profile
 *
 * Each launch gets a fresh profile (--user-data-dir, through launchPersistentContext). Media come
 * from Chromium's fake devices: the microphone plays a beep, getUserMedia is granted without a
 * prompt, and audio may play without a user gesture.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type ConsoleMessage, type Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env['CHROMIUM'] ?? '/usr/bin/chromium';

/** The flags issue 6 asks for, plus loopback ICE candidates and autoplay. Playwright adds its own defaults. */
export const CHROMIUM_FLAGS: readonly string[] = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  // Without it Chromium gathers no 127.0.0.1 candidate and ICE with a loopback gateway fails.
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

const LAUNCH_TIMEOUT_MS = 30_000;
const CLOSE_TIMEOUT_MS = 10_000;

export function chromiumAvailable(): boolean {
  try {
    accessSync(CHROMIUM_PATH, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** mocha `before`: skips the suite without Chromium, except in CI, where it fails. */
export function requireChromium(this: Mocha.Context): void {
  if (chromiumAvailable()) return;
  if (process.env['CI']) throw new Error(`chromium is required in CI (apt-get install chromium), not found at ${CHROMIUM_PATH}`);
  this.skip();
}

export interface PageLog {
  /** Uncaught exceptions in the page. */
  readonly errors: string[];
  /** console.* output (type: text), for failure messages. */
  readonly console: string[];
}

export interface ChromiumSession {
  readonly context: BrowserContext;
  readonly userDataDir: string;
  /** A new tab; its console and uncaught errors are collected into `log(page)`. */
  newPage(): Promise<Page>;
  log(page: Page): PageLog;
  /** Closes the browser and removes the profile. Safe to call twice. */
  close(): Promise<void>;
}

export async function launchChromium(opts: { viewport?: { width: number; height: number } } = {}): Promise<ChromiumSession> {
  const userDataDir = await mkdtemp(join(tmpdir(), 'gw-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [...CHROMIUM_FLAGS],
      timeout: LAUNCH_TIMEOUT_MS,
      viewport: opts.viewport ?? { width: 1000, height: 800 },
      // Playwright closes the browser on exit signals; keep that so no Chromium outlives mocha.
      handleSIGINT: true,
      handleSIGTERM: true,
      handleSIGHUP: true,
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true });
    throw err;
  }
  const logs = new WeakMap<Page, PageLog>();
  let closing: Promise<void> | undefined;
  return {
    context,
    userDataDir,
    async newPage() {
      const page = await context.newPage();
      const log: PageLog = { errors: [], console: [] };
      logs.set(page, log);
      page.on('pageerror', (err) => log.errors.push(err.stack ?? err.message));
      page.on('console', (m: ConsoleMessage) => {
        log.console.push(`${m.type()}: ${m.text()}`);
        if (log.console.length > 500) log.console.shift();
      });
      return page;
    },
    log(page) {
      return logs.get(page) ?? { errors: [], console: [] };
    },
    close() {
      closing ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            context.close(),
            new Promise<void>((_, reject) => {
              timer = setTimeout(() => reject(new Error('closing Chromium timed out')), CLOSE_TIMEOUT_MS);
            }),
          ]);
        } finally {
          clearTimeout(timer);
          // Chromium writes into its profile until it exits; removal may need a second try.
          await rm(userDataDir, { recursive: true, force: true, maxRetries: 3, retryDelay: 200 });
        }
      })();
      return closing;
    },
  };
}
