// Real-browser test of the Flashcast page (web/index.html), run by run.sh.
//
// A host and a viewer open the page in two separate browser contexts (two
// independent users) and check each other's view: chat both ways, a poll
// and its tally, Q&A, reactions, moderation, close-code handling. Every
// check reads the rendered DOM, so a broken page fails the test.
//
// Env: FLASHCAST_URL (e.g. http://127.0.0.1:8080), FLASHCAST_ADMIN_KEY,
// CHROMIUM_PATH (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { BASE, CHROMIUM, SHOTS, api, byId, eventually, tokens } from './helpers.mjs';

// The server binary, for the test that restarts a server of its own.
const BIN = process.env.FLASHCAST_BIN;
// A room of our own, so nothing else in the server can disturb the checks.
const ROOM = `browser-${Date.now().toString(36)}`;
const NONCE = Math.random().toString(36).slice(2, 8);

let browser;
let host; // { context, page, frames }
let viewer;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const token = tokens(ROOM);

/** Opens the page as one user in its own browser context. */
async function openAs(tok, viewport = { width: 1280, height: 800 }, base = BASE, room = ROOM) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // Every frame the page sends, to check what it puts on the wire.
  const sent = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => {
    try { sent.push(JSON.parse(f.payload)); } catch { /* not JSON */ }
  }));
  const hash = tok ? `#token=${encodeURIComponent(tok)}` : '';
  await page.goto(`${base}/?room=${encodeURIComponent(room)}${hash}`);
  await eventually(async () => assert.equal(await status(page), 'live'));
  return { context, page, errors, sent };
}

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitHealthy(base) {
  await eventually(async () => assert.ok((await fetch(`${base}/healthz`)).ok), 30000);
}

const status = (page) => byId(page, 'status').getAttribute('data-state');

async function chatTexts(page) {
  return byId(page, 'chat-text').allTextContents();
}

async function sendChat(page, text) {
  await byId(page, 'chat-input').fill(text);
  await byId(page, 'chat-send').click();
}

function chatMsg(page, text) {
  return byId(page, 'chat-msg').filter({ hasText: text });
}

// ---------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  await api('POST', '/api/v1/rooms', { id: ROOM, title: 'Spring sneaker drop', allow_guests: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  host = await openAs(await token('h1', 'Host Hana', 'host'));
  viewer = await openAs(await token('v1', 'Viewer Vic', 'viewer'));
});

after(async () => {
  // No uncaught script errors on either page, whatever else happened.
  const errs = [...(host?.errors || []), ...(viewer?.errors || [])];
  if (browser) await browser.close();
  assert.deepEqual(errs, [], 'uncaught page errors');
});

// ---------------------------------------------------------------------------
// Tests (run in order: they share the two pages)
// ---------------------------------------------------------------------------

test('both pages join with the right role and the host panel only for the host', async () => {
  assert.equal(await byId(host.page, 'room-title').textContent(), 'Spring sneaker drop');
  assert.match(await byId(host.page, 'you').textContent(), /host\s*Host Hana/);
  assert.match(await byId(viewer.page, 'you').textContent(), /viewer\s*Viewer Vic/);
  assert.equal(await byId(host.page, 'host-panel').isVisible(), true);
  assert.equal(await byId(viewer.page, 'host-panel').isVisible(), false);
  assert.equal(await byId(viewer.page, 'end-show').isVisible(), false);
  // The page speaks the JSON subprotocol and joins the room from ?room=.
  const join = viewer.sent.find((m) => m.type === 'join');
  assert.equal(join.room, ROOM);
  assert.ok(join.token, 'viewer joined with the token from #token=');
  await eventually(async () =>
    assert.equal(await byId(host.page, 'viewers').textContent(), '2 watching'));
});

test('chat goes both ways, rendered as text', async () => {
  await sendChat(host.page, `Welcome everyone ${NONCE}`);
  await eventually(async () =>
    assert.ok((await chatTexts(viewer.page)).includes(`Welcome everyone ${NONCE}`)));

  // Markup in chat must show up as literal text, never as elements.
  const nasty = `<img src=x onerror="window.__pwned=1"><b>bold</b> ${NONCE}`;
  await sendChat(viewer.page, nasty);
  await eventually(async () => assert.ok((await chatTexts(host.page)).includes(nasty)));
  assert.equal(await byId(host.page, 'chat-list').locator('img, b').count(), 0);
  assert.equal(await host.page.evaluate(() => window.__pwned), undefined);
  // The sender sees its own message too (it comes back in the room batch).
  await eventually(async () => assert.ok((await chatTexts(viewer.page)).includes(nasty)));
});

test('host opens a poll, the viewer votes, both see the tally', async () => {
  const p = host.page;
  await byId(p, 'poll-question-input').fill('Which colour should we restock?');
  await byId(p, 'poll-options-input').fill('Red\nOcean blue\nBlack');
  await byId(p, 'poll-duration-input').fill('300');
  await byId(p, 'poll-open').click();

  const v = viewer.page;
  await eventually(async () =>
    assert.equal(await byId(v, 'poll-question').textContent(), 'Which colour should we restock?'));
  const options = byId(v, 'poll-option');
  assert.equal(await options.count(), 3);
  await options.nth(1).click();

  for (const page of [v, p]) {
    await eventually(async () => {
      const counts = await byId(page, 'poll-count').allTextContents();
      assert.deepEqual(counts, ['0 · 0%', '1 · 100%', '0 · 0%']);
    });
  }
  // One vote per viewer: the options are locked after voting.
  assert.equal(await options.nth(0).isDisabled(), true);
  assert.match(await byId(v, 'poll-meta').textContent(), /you voted/);
  assert.match(await byId(v, 'poll-meta').textContent(), /closes in \d+ s/);
});

test('viewer asks a question; host sees it, upvotes and answers; viewer sees both', async () => {
  const question = `Do these run true to size? ${NONCE}`;
  await byId(viewer.page, 'ask-input').fill(question);
  await byId(viewer.page, 'ask-send').click();

  const hostQ = byId(host.page, 'question').filter({ hasText: question });
  await eventually(async () => assert.equal(await hostQ.count(), 1));
  await hostQ.getByTestId('question-upvote').click();
  await hostQ.getByTestId('question-answer-btn').click();
  await hostQ.getByTestId('answer-input').fill('Yes, order your usual size.');
  await hostQ.getByTestId('answer-send').click();

  const viewerQ = byId(viewer.page, 'question').filter({ hasText: question });
  await eventually(async () => {
    assert.equal(await viewerQ.getByTestId('question-upvotes').textContent(), '1');
    assert.match(await viewerQ.getByTestId('question-answer').textContent(), /order your usual size/);
  });
  // The viewer has no moderation tools on questions.
  assert.equal(await viewerQ.getByTestId('question-pin').count(), 0);
});

test('a reaction click shows up as a count on the other page', async () => {
  assert.equal(await byId(host.page, 'reaction-count-fire').textContent(), '0');
  await byId(viewer.page, 'react-fire').click();
  await byId(viewer.page, 'react-fire').click();
  await byId(viewer.page, 'react-fire').click();
  await eventually(async () =>
    assert.equal(await byId(host.page, 'reaction-count-fire').textContent(), '3'));
  assert.equal(await byId(host.page, 'reaction-count-heart').textContent(), '0');
});

test('host deletes a viewer message; it is marked deleted on the viewer page', async () => {
  const text = `this one gets deleted ${NONCE}`;
  await sendChat(viewer.page, text);
  const onHost = chatMsg(host.page, text);
  await eventually(async () => assert.equal(await onHost.count(), 1));
  // The viewer gets no moderation buttons.
  assert.equal(await byId(viewer.page, 'chat-delete').count(), 0);

  await onHost.hover();
  await onHost.getByTestId('chat-delete').click();

  await eventually(async () => {
    assert.ok(!(await chatTexts(viewer.page)).includes(text), 'text still shown to the viewer');
    assert.ok(!(await chatTexts(host.page)).includes(text), 'text still shown to the host');
  });
  const deleted = byId(viewer.page, 'chat-msg').and(viewer.page.locator('[data-deleted="true"]'));
  assert.equal(await deleted.count(), 1);
  assert.equal(await deleted.getByTestId('chat-text').textContent(), 'message deleted');
});

test('slow mode shows an indicator and its error next to the chat input', async () => {
  await byId(host.page, 'slow-mode-input').fill('30');
  await byId(host.page, 'slow-mode-set').click();
  await eventually(async () =>
    assert.match(await byId(viewer.page, 'slow-mode').textContent(), /one message every 30 s/));

  await sendChat(viewer.page, `first under slow mode ${NONCE}`);
  await eventually(async () =>
    assert.ok((await chatTexts(viewer.page)).includes(`first under slow mode ${NONCE}`)));
  await sendChat(viewer.page, 'second too soon');
  await eventually(async () =>
    assert.match(await byId(viewer.page, 'chat-error').textContent(), /Slow mode is on.*try again in \d+ s/));

  await byId(host.page, 'slow-mode-input').fill('0');
  await byId(host.page, 'slow-mode-set').click();
  await eventually(async () => assert.equal(await byId(viewer.page, 'slow-mode').isVisible(), false));
});

test('host mutes the author of a message; the viewer is told and cannot chat', async () => {
  const text = `please mute me ${NONCE}`;
  await sendChat(viewer.page, text);
  const onHost = chatMsg(host.page, text);
  await eventually(async () => assert.equal(await onHost.count(), 1));
  await byId(host.page, 'mute-seconds-input').fill('120');
  await onHost.hover();
  await onHost.getByTestId('chat-mute').click();

  await eventually(async () => {
    const system = await byId(viewer.page, 'system-msg').allTextContents();
    assert.ok(system.some((s) => s.startsWith('You were muted')), JSON.stringify(system));
  });
  await sendChat(viewer.page, 'am I muted?');
  await eventually(async () =>
    assert.match(await byId(viewer.page, 'chat-error').textContent(), /muted/i));

  // Unmute from the panel, by user id.
  await byId(host.page, 'mod-user-input').fill('v1');
  await byId(host.page, 'unmute-btn').click();
  await eventually(async () => {
    const system = await byId(viewer.page, 'system-msg').allTextContents();
    assert.ok(system.includes('You can chat again.'), JSON.stringify(system));
  });
});

test('on a 4008 close the page reconnects and resumes from its last seq', async () => {
  const v = viewer;
  const before = v.sent.filter((m) => m.type === 'join').length;
  const lastSeq = await v.page.evaluate(() => S.lastSeq);
  // A browser cannot be made a slow consumer on demand, so hand the page's
  // close handler the 4008 the server would send, after dropping the socket
  // quietly. Everything after that (back-off, resume join, replay) is real.
  await v.page.evaluate(() => {
    const old = S.ws;
    old.onclose = null;
    old.close();
    onClose({ code: 4008, reason: 'slow consumer, resume' });
  });
  const missed = `sent while you were away ${NONCE}`;
  await sendChat(host.page, missed);

  await eventually(async () => {
    const joins = v.sent.filter((m) => m.type === 'join');
    assert.equal(joins.length, before + 1);
    const resume = joins.at(-1);
    assert.ok(resume.last_seq >= lastSeq, `resumed from ${resume.last_seq}, had ${lastSeq}`);
    assert.equal(resume.epoch, await v.page.evaluate(() => S.epoch));
    assert.equal(await status(v.page), 'live');
  }, 10000);
  await eventually(async () => {
    const texts = await chatTexts(v.page);
    assert.equal(texts.filter((t) => t === missed).length, 1, 'missed message exactly once');
  });
  // A same-epoch resume replays only what was missed: nothing doubled.
  const welcome = (await chatTexts(v.page)).filter((t) => t === `Welcome everyone ${NONCE}`);
  assert.equal(welcome.length, 1);
  assert.match(await byId(v.page, 'status').textContent(), /Live/);
});

test('on a server restart (1012) the page says so, reconnects and rejoins', { skip: !BIN && 'FLASHCAST_BIN not set' }, async () => {
  // A second server of our own, so restarting it disturbs nothing else.
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'flashcast-restart-'));
  // No drain: this is about the page, not about a load balancer.
  const start = () => spawn(BIN, ['--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--admin-key', 'restartkey', '--shutdown-drain-ms', '0'], { stdio: 'ignore' });
  const base = `http://127.0.0.1:${port}`;
  let server = start();
  let guest;
  try {
    await waitHealthy(base);
    guest = await openAs(null, undefined, base, 'demo');
    // Record every status text, however briefly it shows.
    await guest.page.evaluate(() => {
      window.statusLog = [];
      const node = document.querySelector('[data-testid="status"]');
      new MutationObserver(() => window.statusLog.push(node.textContent))
        .observe(node, { childList: true, characterData: true, subtree: true });
    });
    await sendChat(guest.page, 'before the restart');
    await eventually(async () => assert.ok((await chatTexts(guest.page)).includes('before the restart')));

    // Graceful shutdown: the server closes every socket with 1012.
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    await eventually(async () => {
      const log = await guest.page.evaluate(() => window.statusLog);
      assert.ok(log.some((t) => t.startsWith('Server restarting')), JSON.stringify(log));
    });
    server = start();
    await waitHealthy(base);

    await eventually(async () => assert.equal(await status(guest.page), 'live'), 20000);
    // It resumed with its position; the new run of the room has another
    // epoch, so the server answers with a fresh snapshot and the page says
    // that earlier messages may be missing.
    const resume = guest.sent.filter((m) => m.type === 'join').at(-1);
    assert.equal(typeof resume.last_seq, 'number');
    assert.equal(typeof resume.epoch, 'number');
    const system = await byId(guest.page, 'system-msg').allTextContents();
    assert.ok(system.some((t) => t.startsWith('Reconnected')), JSON.stringify(system));
    await sendChat(guest.page, 'after the restart');
    await eventually(async () => assert.ok((await chatTexts(guest.page)).includes('after the restart')));
  } finally {
    if (guest) await guest.context.close();
    server.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a guest without a token can watch and chat', async () => {
  const guest = await openAs(null, { width: 390, height: 844 });
  try {
    assert.match(await byId(guest.page, 'you').textContent(), /guest/);
    assert.equal(await byId(guest.page, 'host-panel').isVisible(), false);
    // The join snapshot carries the open poll and recent chat.
    assert.equal(await byId(guest.page, 'poll-question').textContent(), 'Which colour should we restock?');
    assert.ok((await chatTexts(guest.page)).includes(`Welcome everyone ${NONCE}`));
    const hello = `hi from a guest ${NONCE}`;
    await sendChat(guest.page, hello);
    await eventually(async () => assert.ok((await chatTexts(host.page)).includes(hello)));
    const author = await chatMsg(host.page, hello).getAttribute('data-user-id');
    assert.match(author, /^guest-/);
    await guest.page.screenshot({ path: join(SHOTS, 'guest-mobile.png'), fullPage: true });
  } finally {
    await guest.context.close();
  }
});

test('screenshots of both pages', async () => {
  await byId(host.page, 'announce-input').fill('Free shipping for the next 10 minutes!');
  await byId(host.page, 'announce-send').click();
  await eventually(async () => assert.equal(await byId(viewer.page, 'announce-banner').isVisible(), true));
  // The page scrolls inside its columns, so a tall viewport shows the whole
  // host panel in one picture.
  await host.page.setViewportSize({ width: 1280, height: 1500 });
  await host.page.screenshot({ path: join(SHOTS, 'host.png') });
  await host.page.setViewportSize({ width: 1280, height: 800 });
  await viewer.page.screenshot({ path: join(SHOTS, 'viewer.png'), fullPage: true });
});

test('host ends the show; the viewer sees "Show ended" and does not reconnect', async () => {
  host.page.once('dialog', (d) => d.accept());
  const joinsBefore = viewer.sent.filter((m) => m.type === 'join').length;
  await byId(host.page, 'end-show').click();
  for (const page of [viewer.page, host.page]) {
    await eventually(async () => {
      assert.equal(await status(page), 'ended');
      assert.equal(await byId(page, 'status').textContent(), 'Show ended');
      assert.equal(await byId(page, 'ended-cover').isVisible(), true);
      assert.equal(await byId(page, 'chat-input').isDisabled(), true);
    });
  }
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(viewer.sent.filter((m) => m.type === 'join').length, joinsBefore, 'no reconnect after 4010');
  assert.equal(await status(viewer.page), 'ended');
  await viewer.page.screenshot({ path: join(SHOTS, 'viewer-ended.png'), fullPage: true });
});
