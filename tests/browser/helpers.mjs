// What every browser test shares: the server under test (from run.sh's
// environment), the admin API, tokens, and retrying a check.

import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BASE = process.env.FLASHCAST_URL;
export const ADMIN_KEY = process.env.FLASHCAST_ADMIN_KEY;
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SHOTS = join(dirname(fileURLToPath(import.meta.url)), 'screenshots');

if (!BASE || !ADMIN_KEY) {
  throw new Error('set FLASHCAST_URL and FLASHCAST_ADMIN_KEY (tests/browser/run.sh does)');
}

/** An admin API call; fails the test unless the status is `expect` (by
 * default any 2xx). Returns the JSON body, or null when there is none. */
export async function api(method, path, body, expect) {
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (expect !== undefined) assert.equal(res.status, expect, `${method} ${path} -> ${res.status} ${text}`);
  else assert.ok(res.ok, `${method} ${path} -> ${res.status} ${text}`);
  return json;
}

/** Mints tokens of `room`: `tokens(room)(userId, name, role)`. */
export function tokens(room) {
  return async (userId, name, role) =>
    (await api('POST', '/api/v1/tokens', { room, user_id: userId, name, role })).token;
}

/** Retries an assertion until it passes or the time is up. */
export async function eventually(check, timeout = 5000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export const byId = (page, id) => page.getByTestId(id);

/** Opens the page of `room` as one user (`tok`, or a guest with null) in a
 * browser context of its own, and waits until it is live. Collects the
 * page's errors and every JSON frame it sends; `prepare(context, page)` runs
 * before the page loads (permissions, more listeners). */
export async function openPage(browser, tok, room, {
  viewport = { width: 1280, height: 900 }, locale, base = BASE, prepare,
} = {}) {
  const context = await browser.newContext(locale ? { viewport, locale } : { viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // Every frame the page sends, to check what it puts on the wire.
  const sent = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => {
    try { sent.push(JSON.parse(f.payload)); } catch { /* not JSON */ }
  }));
  if (prepare) await prepare(context, page);
  const hash = tok ? `#token=${encodeURIComponent(tok)}` : '';
  await page.goto(`${base}/?room=${encodeURIComponent(room)}${hash}`);
  await eventually(async () => assert.equal(await byId(page, 'status').getAttribute('data-state'), 'live'));
  return { context, page, errors, sent };
}
