// Real-browser test of live video on the Flashcast page (web/index.html),
// run by run.sh after the other browser tests.
//
// The host publishes chromium's fake camera and microphone over WHIP
// (POST /whip/{room}); a signed-in viewer and a guest play it over WHEP
// (POST /whep/{room}) and must render frames that advance. Then the host
// stops (DELETE on the WHIP session URL) and the viewer must show
// "offline"; the host goes live again and the viewer must play again on its
// own. Every check reads the rendered page or the real HTTP exchanges, so a
// broken page or server fails the test.
//
// Env: FLASHCAST_URL, FLASHCAST_ADMIN_KEY, CHROMIUM_PATH (as page.test.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { BASE, CHROMIUM, SHOTS, api, byId, eventually, openPage, tokens } from './helpers.mjs';

const ROOM = `video-${Date.now().toString(36)}`;

let browser;
let host; // { context, page, errors, http }
let viewer;
let viewerToken;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const token = tokens(ROOM);
const attr = (page, id, name) => byId(page, id).getAttribute(name);
const videoState = (page) => attr(page, 'video-box', 'data-state');
const badgeState = (page) => attr(page, 'live-badge', 'data-state');

/** Opens the page as one user; records its WHIP/WHEP requests and answers. */
async function openAs(tok) {
  const http = []; // {method, path, headers, body, status, location}, status once answered
  const { context, page, errors } = await openPage(browser, tok, ROOM, {
    prepare: async (context, page) => {
      await context.grantPermissions(['camera', 'microphone'], { origin: BASE });
      page.on('request', async (req) => {
        const path = new URL(req.url()).pathname;
        if (!/^\/(whip|whep)\//.test(path)) return;
        const entry = { method: req.method(), path, body: req.postData() };
        http.push(entry);
        entry.headers = await req.allHeaders();
        const res = await req.response().catch(() => null);
        entry.status = res ? res.status() : 'failed';
        entry.location = res ? await res.headerValue('location') : null;
      });
    },
  });
  // Counts the video frames the page presents (requestVideoFrameCallback
  // fires once per frame shown, whatever the source).
  await page.evaluate(() => {
    const video = document.querySelector('[data-testid="video"]');
    window.framesShown = 0;
    const tick = () => { window.framesShown++; video.requestVideoFrameCallback(tick); };
    video.requestVideoFrameCallback(tick);
  });
  return { context, page, errors, http };
}

/** Frames must keep coming: the frame count and currentTime both advance. */
async function assertFramesAdvance(page, label) {
  const v0 = await page.evaluate(() => ({
    frames: window.framesShown,
    time: document.querySelector('[data-testid="video"]').currentTime,
  }));
  await eventually(async () => {
    const v = await page.evaluate(() => ({
      frames: window.framesShown,
      time: document.querySelector('[data-testid="video"]').currentTime,
    }));
    assert.ok(v.frames >= v0.frames + 20, `${label}: frames shown ${v0.frames} -> ${v.frames}`);
    assert.ok(v.time >= v0.time + 0.5, `${label}: currentTime ${v0.time} -> ${v.time}`);
  }, 10000);
}

/** What the page's WHEP session receives, from the peer connection's stats. */
async function inbound(page) {
  return page.evaluate(async () => {
    const pc = V.play && V.play.pc;
    if (!pc) return null;
    const out = { state: pc.connectionState };
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const codec = s.codecId && stats.get(s.codecId);
      out[s.kind] = { packets: s.packetsReceived, frames: s.framesDecoded, codec: codec && codec.mimeType };
    });
    return out;
  });
}

/** The viewer renders the host's stream: size, advancing frames, audio too. */
async function assertPlaying(page, label) {
  await eventually(async () => {
    assert.equal(await badgeState(page), 'live', `${label}: badge`);
    assert.equal(await videoState(page), 'playing', `${label}: player state`);
  }, 20000);
  const size = await page.evaluate(() => {
    const v = document.querySelector('[data-testid="video"]');
    return { w: v.videoWidth, h: v.videoHeight };
  });
  assert.ok(size.w > 0 && size.h > 0, `${label}: video size ${size.w}x${size.h}`);
  assert.equal(await byId(page, 'video-cover').isVisible(), false, `${label}: cover hides the video`);
  await assertFramesAdvance(page, label);
  // Sound as well as pictures: audio RTP keeps arriving.
  const a0 = (await inbound(page)).audio?.packets ?? 0;
  await eventually(async () => {
    const s = await inbound(page);
    assert.ok(s && s.audio && s.audio.packets > a0 + 10, `${label}: audio ${JSON.stringify(s)}`);
  }, 10000);
  return { size, stats: await inbound(page) };
}

async function assertOffline(page, label) {
  await eventually(async () => {
    assert.equal(await badgeState(page), 'offline', `${label}: badge`);
    assert.equal(await videoState(page), 'offline', `${label}: player state`);
    assert.equal(await byId(page, 'video-cover').isVisible(), true, `${label}: cover`);
    assert.equal(await byId(page, 'video-cover-text').textContent(), 'Offline');
    assert.equal(await byId(page, 'live-badge').textContent(), 'OFFLINE');
  }, 15000);
  // Playback is torn down, not left hanging on a dead connection.
  assert.equal(await page.evaluate(() => V.play), null, `${label}: WHEP session left open`);
}

const systemLines = (page) => byId(page, 'system-msg').allTextContents();

// ---------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  await api('POST', '/api/v1/rooms', { id: ROOM, title: 'Live video test', allow_guests: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // A synthetic camera (moving test pattern) and microphone (beeps),
      // granted without a prompt; playback may start without a gesture.
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
  host = await openAs(await token('h1', 'Host Hana', 'host'));
  viewerToken = await token('v1', 'Viewer Vic', 'viewer');
  viewer = await openAs(viewerToken);
});

after(async () => {
  const errs = [...(host?.errors || []), ...(viewer?.errors || [])];
  if (browser) await browser.close();
  assert.deepEqual(errs, [], 'uncaught page errors');
});

// ---------------------------------------------------------------------------
// Tests (in order: they share the pages)
// ---------------------------------------------------------------------------

test('before the host goes live the viewer sees "offline"; only the host gets the buttons', async () => {
  await assertOffline(viewer.page, 'viewer');
  assert.equal(await byId(viewer.page, 'go-live').isVisible(), false);
  assert.equal(await byId(host.page, 'go-live').isVisible(), true);
  assert.equal(await byId(host.page, 'go-live').isDisabled(), false);
  assert.equal(await byId(host.page, 'stop-live').isDisabled(), true);
  assert.equal(await byId(host.page, 'whip-url').textContent(), `${BASE}/whip/${ROOM}`);
  assert.equal(viewer.http.length, 0, 'no WHEP request while offline');
});

/** A bare offer: enough SDP for the server to read the sections, no more. */
const offer = (direction) => ['v=0', 'o=- 1 1 IN IP4 0.0.0.0', 's=-', 't=0 0',
  'm=video 9 UDP/TLS/RTP/SAVPF 96', 'c=IN IP4 0.0.0.0', `a=${direction}`, 'a=rtpmap:96 VP8/90000', ''].join('\r\n');

async function post(path, { tok, type = 'application/sdp', body }) {
  const headers = { 'content-type': type };
  if (tok) headers.authorization = `Bearer ${tok}`;
  const res = await fetch(`${BASE}${path}`, { method: 'POST', headers, body });
  const text = await res.text();
  return { status: res.status, code: text.startsWith('{') ? JSON.parse(text).error.code : null };
}

test('WHIP/WHEP refusals are the documented ones (docs/video.md)', async () => {
  const whip = `/whip/${ROOM}`;
  const whep = `/whep/${ROOM}`;
  const send = offer('sendonly');
  assert.deepEqual(await post(whip, { body: send }), { status: 401, code: 'unauthorized' });
  assert.deepEqual(await post(whip, { tok: viewerToken, body: send }), { status: 403, code: 'forbidden' });
  assert.deepEqual(await post(whep, { tok: viewerToken, type: 'text/plain', body: offer('recvonly') }),
    { status: 415, code: 'unsupported_media_type' });
  assert.deepEqual(await post(whep, { tok: viewerToken, body: 'hello' }), { status: 400, code: 'bad_sdp' });
  assert.deepEqual(await post(whep, { tok: viewerToken, body: offer('recvonly') }), { status: 409, code: 'stream_offline' });
  assert.deepEqual(await post('/whep/no-such-room', { body: offer('recvonly') }), { status: 404, code: 'room_not_found' });
  const patch = await fetch(`${BASE}${whip}/00000000000000000000000000000000`, { method: 'PATCH' });
  assert.equal(patch.status, 405);
  // OPTIONS tells what the endpoint takes (and the ICE servers, if any).
  const options = await fetch(`${BASE}${whep}`, { method: 'OPTIONS' });
  assert.equal(options.status, 204);
  assert.equal(options.headers.get('accept-post'), 'application/sdp');
});

test('host goes live over WHIP; the viewer plays it over WHEP, frames advancing', async (t) => {
  await byId(host.page, 'go-live').click();
  await eventually(async () => {
    const why = await byId(host.page, 'broadcast-error').textContent();
    assert.equal(await videoState(host.page), 'publishing', `host not publishing: ${why}`);
    assert.equal(await byId(host.page, 'stop-live').isDisabled(), false);
  }, 15000);

  // The WHIP exchange, as the RFC shapes it.
  const whip = host.http.find((r) => r.method === 'POST' && r.path === `/whip/${ROOM}`);
  assert.ok(whip, 'host sent POST /whip/{room}');
  assert.equal(whip.headers['content-type'], 'application/sdp');
  assert.match(whip.headers.authorization, /^Bearer ey/);
  assert.match(whip.body, /^v=0/);
  assert.match(whip.body, /a=sendonly/);
  assert.equal(whip.status, 201);
  assert.match(whip.location, new RegExp(`/whip/${ROOM}/[^/]+$`));
  // One broadcast per room.
  const host2 = await token('h2', 'Second Host', 'host');
  assert.deepEqual(await post(`/whip/${ROOM}`, { tok: host2, body: offer('sendonly') }), { status: 409, code: 'conflict' });
  // The host's own connection comes up, and its page says so.
  await eventually(async () =>
    assert.match(await byId(host.page, 'broadcast-status').textContent(), /You are live/), 15000);

  const { size, stats } = await assertPlaying(viewer.page, 'viewer');
  const whep = viewer.http.find((r) => r.method === 'POST' && r.path === `/whep/${ROOM}`);
  assert.ok(whep, 'viewer sent POST /whep/{room}');
  assert.equal(whep.headers['content-type'], 'application/sdp');
  assert.equal(whep.headers.authorization, `Bearer ${viewerToken}`);
  assert.match(whep.body, /a=recvonly/);
  assert.equal(whep.status, 201);
  assert.match(whep.location, new RegExp(`/whep/${ROOM}/[^/]+$`));
  t.diagnostic(`viewer plays ${size.w}x${size.h}, ${stats.video.codec} + ${stats.audio.codec}`);

  // The room told everyone, in the chat too.
  await eventually(async () =>
    assert.ok((await systemLines(viewer.page)).includes('🎥 The host is live')));
  assert.equal(await byId(viewer.page, 'live-badge').textContent(), '● LIVE');
  // Playback starts muted (autoplay rules); the button unmutes.
  assert.equal(await byId(viewer.page, 'video-unmute').isVisible(), true);
  await byId(viewer.page, 'video-unmute').click();
  await eventually(async () => {
    assert.equal(await viewer.page.evaluate(() => document.querySelector('[data-testid="video"]').muted), false);
    assert.equal(await byId(viewer.page, 'video-unmute').isVisible(), false);
  });
  await viewer.page.screenshot({ path: join(SHOTS, 'video-viewer.png') });
  await host.page.screenshot({ path: join(SHOTS, 'video-host.png') });
});

test('someone who joins while live gets it from the join snapshot and plays (a guest, no token)', async () => {
  const guest = await openAs(null);
  try {
    await assertPlaying(guest.page, 'guest');
    const whep = guest.http.find((r) => r.method === 'POST');
    assert.equal(whep.status, 201);
    assert.equal(whep.headers.authorization, undefined, 'a guest has no token to send');
  } finally {
    await guest.context.close();
  }
  assert.deepEqual(guest.errors, []);
});

test('host stops; the viewer shows offline and a chat line', async () => {
  await byId(host.page, 'stop-live').click();
  await eventually(async () => {
    const del = host.http.find((r) => r.method === 'DELETE');
    assert.ok(del, 'host sent DELETE on the session URL');
    const whip = host.http.find((r) => r.method === 'POST');
    assert.equal(del.path, new URL(whip.location, BASE).pathname);
    assert.ok(del.status >= 200 && del.status < 300, `DELETE -> ${del.status}`);
  });
  await assertOffline(viewer.page, 'viewer');
  await eventually(async () =>
    assert.ok((await systemLines(viewer.page)).includes('📴 The video is offline')));
  // The host's page is off the air too, and ready to go live again.
  await assertOffline(host.page, 'host');
  assert.equal(await byId(host.page, 'go-live').isDisabled(), false);
  assert.equal(await byId(host.page, 'stop-live').isDisabled(), true);
  await viewer.page.screenshot({ path: join(SHOTS, 'video-offline.png') });
});

test('host goes live again, in H.264 as OBS sends it; the viewer reconnects by itself', async () => {
  // This time the host's browser puts H.264 first, like OBS's WHIP offer
  // (the page itself sends what the browser prefers, VP8 in chromium).
  await host.page.evaluate(() => {
    const add = RTCPeerConnection.prototype.addTransceiver;
    RTCPeerConnection.prototype.addTransceiver = function (trackOrKind, init) {
      const t = add.call(this, trackOrKind, init);
      if (t.sender.track && t.sender.track.kind === 'video') {
        const codecs = RTCRtpSender.getCapabilities('video').codecs;
        t.setCodecPreferences([...codecs.filter((c) => c.mimeType === 'video/H264'),
          ...codecs.filter((c) => c.mimeType !== 'video/H264')]);
      }
      return t;
    };
  });
  const posts = viewer.http.filter((r) => r.method === 'POST').length;
  await byId(host.page, 'go-live').click();
  const { stats } = await assertPlaying(viewer.page, 'viewer, second broadcast');
  assert.equal(stats.video.codec, 'video/H264');
  assert.ok(viewer.http.filter((r) => r.method === 'POST').length > posts, 'a new WHEP session');
  await byId(host.page, 'stop-live').click();
  await assertOffline(viewer.page, 'viewer, after the second broadcast');
});
