import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import { fileURLToPath } from 'node:url';
import type { GatewayConfig } from './config.js';

const root = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));

/** The web softphone's files: the page from the source tree, the bundle from dist/ (built by `npm run build`). */
const FILES: Record<string, { path: string; type: string }> = {
  '/': { path: root('src/web/index.html'), type: 'text/html; charset=utf-8' },
  '/index.html': { path: root('src/web/index.html'), type: 'text/html; charset=utf-8' },
  '/style.css': { path: root('src/web/style.css'), type: 'text/css; charset=utf-8' },
  '/app.js': { path: root('dist/web/app.js'), type: 'text/javascript; charset=utf-8' },
  '/app.js.map': { path: root('dist/web/app.js.map'), type: 'application/json' },
};

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(body));
}

/** GET only: the softphone page and its settings; SIP over WebSocket is handled on `upgrade`, not here. */
export async function serveWeb(req: http.IncomingMessage, res: http.ServerResponse, config: GatewayConfig): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://gateway').pathname;
  if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'GET only' } });
  if (path === '/healthz') return json(res, 200, { status: 'ok' });
  if (path === '/config.json') {
    const ext = config.testExtensions;
    return json(res, 200, {
      wsPath: '/ws',
      domain: config.sip.realm ?? config.media.announceAddress,
      extensions: ext.enabled ? { echo: ext.echo, tone: ext.tone } : {},
    });
  }
  const file = FILES[path];
  if (!file) return json(res, 404, { error: { code: 'NOT_FOUND', message: `no ${path}` } });
  try {
    const body = await readFile(file.path);
    res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' }).end(req.method === 'HEAD' ? undefined : body);
  } catch {
    json(res, 404, { error: { code: 'NOT_BUILT', message: `${path} is missing: run npm run build` } });
  }
}
