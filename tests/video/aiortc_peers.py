#!/usr/bin/env python3
"""Real WebRTC peers for tests/video_e2e.rs, with aiortc.

One run is one broadcast of a room:

1. the host publishes a generated video track (a moving gradient, VP8 or
   H.264) and an audio track over WHIP;
2. a second host's publish is refused while the first is live (409);
3. three viewers play over WHEP and must each DECODE video frames;
4. a viewer with a token already in use is refused (429, one session per
   token), and a viewer beyond the room's limit too (503 room_full);
5. a late viewer joins a few seconds in and must decode within a few
   seconds (it needs a keyframe: the server asks the publisher for one);
6. PATCH answers 405; a viewer's DELETE answers 200 (then 404) and ends
   its connection;
6b. with --banned-token: that viewer plays, then the test bans it over the
   room's WebSocket (signalled by creating the file --ban-ready); its
   connection must end, its session URL answer 404 and playing again 403;
7. the broadcast ends, by DELETE (--end delete) or by the publisher
   vanishing without one (--end drop), and every viewer's connection ends;
8. playing again is refused with 409 stream_offline.

Everything uses 127.0.0.1 only (aioice is told to gather loopback host
candidates). Prints one JSON object with what it measured; exits non-zero
with the reason on the first failed check.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import aioice.ice
from aiortc import (
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import VideoFrame

# Loopback only: aioice otherwise gathers every interface but loopback.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

WIDTH, HEIGHT = 320, 240


class Failed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failed(message)


def log(*args):
    print(f"[{time.monotonic() - START:7.2f}]", *args, file=sys.stderr, flush=True)


START = time.monotonic()


class Gradient(VideoStreamTrack):
    """A gradient that moves one pixel per frame, so every frame differs."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.row = bytes(range(256)) * ((WIDTH // 256) + 2)

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        shift = self.n % 256
        self.n += 1
        frame = VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
        luma = self.row[shift : shift + WIDTH] * HEIGHT
        frame.planes[0].update(luma)
        frame.planes[1].update(bytes([96]) * frame.planes[1].buffer_size)
        frame.planes[2].update(bytes([160]) * frame.planes[2].buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


def http(method, url, body=None, headers=None):
    """(status, lower-cased headers as a list of pairs, body text)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, [(k.lower(), v) for k, v in resp.getheaders()], resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, [(k.lower(), v) for k, v in e.headers.items()], e.read().decode()


async def request(method, url, body=None, headers=None):
    return await asyncio.to_thread(http, method, url, body, headers)


def header(headers, name):
    return [v for k, v in headers if k == name]


def error_code(body):
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


async def post_offer(base, path, token, sdp):
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await request("POST", base + path, sdp.encode(), headers)


def prefer(transceiver, codec):
    caps = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in caps if c.mimeType.lower() == f"video/{codec}"]
    check(chosen, f"aiortc cannot send {codec}")
    transceiver.setCodecPreferences(chosen)


async def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class Publisher:
    def __init__(self, codec):
        self.pc = RTCPeerConnection()
        self.video = Gradient()
        self.audio = AudioStreamTrack()
        prefer(self.pc.addTransceiver(self.video, direction="sendonly"), codec)
        self.pc.addTransceiver(self.audio, direction="sendonly")
        self.location = None

    async def offer(self):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def publish(self, base, room, token):
        status, headers, body = await post_offer(base, f"/whip/{room}", token, await self.offer())
        check(status == 201, f"WHIP publish answered {status}: {body}")
        check(header(headers, "content-type") == ["application/sdp"], f"answer type {headers}")
        loc = header(headers, "location")
        check(len(loc) == 1 and loc[0].startswith(f"/whip/{room}/"), f"WHIP Location {loc}")
        self.location = loc[0]
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return headers


class Viewer:
    def __init__(self, name):
        self.name = name
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.frames = 0
        self.audio_frames = 0
        self.sizes = set()
        self.answered_at = None
        self.first_frame_at = None
        self.ended = False
        self.tasks = []
        self.location = None

        @self.pc.on("track")
        def on_track(track):
            self.tasks.append(asyncio.ensure_future(self.consume(track)))

        @self.pc.on("connectionstatechange")
        def on_state():
            if self.pc.connectionState in ("closed", "failed"):
                self.ended = True

    async def consume(self, track):
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames += 1
                    self.sizes.add((frame.width, frame.height))
                    if self.first_frame_at is None:
                        self.first_frame_at = time.monotonic()
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            self.ended = True

    async def play(self, base, room, token):
        """POSTs the offer; on 201 applies the answer. Returns the response."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, headers, body = await post_offer(base, f"/whep/{room}", token, self.pc.localDescription.sdp)
        if status != 201:
            return status, headers, body
        loc = header(headers, "location")
        check(len(loc) == 1 and loc[0].startswith(f"/whep/{room}/"), f"WHEP Location {loc}")
        self.location = loc[0]
        self.answered_at = time.monotonic()
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return status, headers, body

    def time_to_first_frame(self):
        return None if self.first_frame_at is None else self.first_frame_at - self.answered_at


async def play(base, room, token, name, wait_live=0.0):
    """A viewer that is playing; while the room is not live yet (409),
    retries for up to `wait_live` seconds."""
    deadline = time.monotonic() + wait_live
    while True:
        v = Viewer(name)
        status, _, body = await v.play(base, room, token)
        if status == 201:
            return v
        await v.pc.close()
        check(status == 409 and time.monotonic() < deadline,
              f"{name}: WHEP play answered {status}: {body}")
        await asyncio.sleep(0.2)


async def refused_play(base, room, token, status, code, name):
    v = Viewer(name)
    try:
        got, headers, body = await v.play(base, room, token)
        check(got == status and error_code(body) == code,
              f"{name}: expected {status} {code}, got {got}: {body}")
        return headers
    finally:
        await v.pc.close()


async def run(args):
    base, room = args.base, args.room
    out = {"codec": args.codec, "end": args.end}

    pub = Publisher(args.codec)
    headers = await pub.publish(base, room, args.host_token)
    out["links"] = header(headers, "link")
    await wait_for(lambda: pub.pc.connectionState == "connected", 15, "the publisher to connect")
    log("publisher connected", pub.location)

    # One broadcast per room: another host is refused while this one is live.
    other = Publisher(args.codec)
    try:
        status, _, body = await post_offer(base, f"/whip/{room}", args.host2_token, await other.offer())
        check(status == 409 and error_code(body) == "conflict",
              f"second publisher: expected 409 conflict, got {status}: {body}")
        out["second_publisher"] = status
    finally:
        await other.pc.close()

    # Viewers can play once the room is live (the publisher connected).
    viewers = []
    for i, token in enumerate(args.viewer_token[:3]):
        viewers.append(await play(base, room, token, f"viewer{i + 1}", wait_live=10))
    await wait_for(lambda: all(v.frames >= 20 for v in viewers), 20,
                   "every viewer to decode 20 video frames")
    out["first_frame_s"] = [round(v.time_to_first_frame(), 3) for v in viewers]
    check(all(v.sizes == {(WIDTH, HEIGHT)} for v in viewers),
          f"decoded sizes {[v.sizes for v in viewers]}")
    log("three viewers decoding", out["first_frame_s"])

    # One session per token (the server runs with media_max_sessions_per_token 1).
    h = await refused_play(base, room, args.viewer_token[0], 429, "limit_reached", "same-token viewer")

    # A late viewer gets a keyframe at once, not at the encoder's next one.
    await asyncio.sleep(args.late_after)
    late = await play(base, room, args.viewer_token[3], "late")
    await wait_for(lambda: late.frames >= 5, 15, "the late viewer to decode 5 frames")
    out["late_first_frame_s"] = round(late.time_to_first_frame(), 3)
    check(late.time_to_first_frame() < args.late_max_s,
          f"the late viewer waited {late.time_to_first_frame():.2f} s for its first frame")
    viewers.append(late)
    log("late viewer decoding after", out["late_first_frame_s"], "s")

    # The room is at media_max_viewers_per_room (4).
    h = await refused_play(base, room, args.viewer_token[4], 503, "room_full", "fifth viewer")
    check(header(h, "retry-after"), f"503 without Retry-After: {h}")

    # Trickle and ICE restart are not supported.
    status, h, body = await request("PATCH", base + viewers[0].location, b"",
                                    {"Content-Type": "application/trickle-ice-sdpfrag"})
    check(status == 405 and error_code(body) == "method_not_allowed" and header(h, "allow") == ["DELETE"],
          f"PATCH: {status} {h} {body}")

    # A viewer leaves: its session ends, and only its.
    first = viewers.pop(0)
    status, _, body = await request("DELETE", base + first.location)
    check(status == 200, f"viewer DELETE answered {status}: {body}")
    status, _, body = await request("DELETE", base + first.location)
    check(status == 404 and error_code(body) == "not_found", f"second DELETE: {status} {body}")
    await wait_for(lambda: first.ended, 15, "the deleted viewer's connection to end")
    before = [v.frames for v in viewers]
    await wait_for(lambda: all(v.frames > b + 10 for v, b in zip(viewers, before)), 15,
                   "the other viewers to keep decoding")
    await first.pc.close()
    log("viewer deleted")

    if args.banned_token:
        banned = await play(base, room, args.banned_token, "banned")
        await wait_for(lambda: banned.frames >= 5, 15, "the viewer to be banned to decode 5 frames")
        open(args.ban_ready, "w").close()
        banned_at = time.monotonic()
        await wait_for(lambda: banned.ended, 15, "the banned viewer's connection to end")
        out["banned_ended_after_s"] = round(time.monotonic() - banned_at, 3)
        status, _, body = await request("DELETE", base + banned.location)
        check(status == 404, f"banned viewer's session: DELETE answered {status}: {body}")
        await refused_play(base, room, args.banned_token, 403, "forbidden", "banned viewer again")
        await banned.pc.close()
        log("banned viewer ended after", out["banned_ended_after_s"], "s")

    # The broadcast ends: every viewer's connection ends with it.
    ended_at = time.monotonic()
    if args.end == "delete":
        status, _, body = await request("DELETE", base + pub.location)
        check(status == 200, f"publisher DELETE answered {status}: {body}")
    else:
        # The publisher vanishes without a word: its connection is gone.
        await pub.pc.close()
    await wait_for(lambda: all(v.ended for v in viewers), 20, "every viewer's connection to end")
    out["viewers_ended_after_s"] = round(time.monotonic() - ended_at, 3)
    out["frames"] = [v.frames for v in viewers]
    out["audio_frames"] = [v.audio_frames for v in viewers]
    log("viewers ended after", out["viewers_ended_after_s"], "s")

    # Nothing is live any more.
    await refused_play(base, room, args.viewer_token[1], 409, "stream_offline", "viewer after the end")
    if args.end == "delete":
        status, _, _ = await request("DELETE", base + pub.location)
        check(status == 404, f"publisher DELETE after the end answered {status}")

    for v in viewers:
        await v.pc.close()
    await pub.pc.close()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--room", required=True)
    p.add_argument("--host-token", required=True)
    p.add_argument("--host2-token", required=True, help="another host of the room")
    p.add_argument("--viewer-token", action="append", required=True, help="five, one per viewer")
    p.add_argument("--codec", choices=["vp8", "h264"], required=True)
    p.add_argument("--end", choices=["delete", "drop"], required=True)
    p.add_argument("--banned-token", help="a viewer the test bans while it watches")
    p.add_argument("--ban-ready", help="file created when the test may ban it")
    p.add_argument("--late-after", type=float, default=3.0)
    p.add_argument("--late-max-s", type=float, default=3.0)
    args = p.parse_args()
    if len(args.viewer_token) != 5:
        p.error("give five --viewer-token")
    try:
        out = asyncio.run(asyncio.wait_for(run(args), timeout=150))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except asyncio.TimeoutError:
        print("FAILED: the whole run took over 150 s", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
