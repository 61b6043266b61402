//! Live video (issue #5) against a real server: WHIP ingest and WHEP
//! playback with real WebRTC peers, and every documented refusal.
//!
//! The peers are Python aiortc (tests/video/aiortc_peers.py): a publisher
//! sending generated VP8 (first broadcast) or H.264 (second) video plus
//! Opus audio, and viewers that decode what they receive. The Python
//! environment is made by tests/video/setup.sh (a venv under target/, from
//! PyPI); if it cannot be made, the test fails and says why. Meanwhile a
//! WebSocket client in the room checks the `stream` events and snapshots.
//!
//! Run alone: `cargo test --test video_e2e`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestServer;
use flashcast_wire::{Encoding, Event, EventBody, Role, ServerMsg, StreamState, StreamStatus};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ROOM: &str = "show";

/// The venv's python, made (or found ready) by tests/video/setup.sh.
fn python() -> PathBuf {
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/video/setup.sh");
    let out = std::process::Command::new(setup)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {setup}: {e}"));
    assert!(
        out.status.success(),
        "{setup} could not make the Python environment of the video test \
         (python3 with venv, and PyPI, are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(path.trim().lines().last().unwrap_or_default());
    assert!(path.exists(), "setup.sh printed no usable python: {path:?}");
    path
}

/// A token minted through the admin API.
async fn mint(s: &TestServer, room: &str, user: &str, role: &str) -> String {
    let resp = s
        .admin(Method::POST, "/api/v1/tokens")
        .json(&json!({"room": room, "user_id": user, "name": user, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "mint a {role} token");
    resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sends an SDP (or anything) to a WHIP/WHEP URL.
async fn post(
    s: &TestServer,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(s.http(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// POSTs an SDP offer with `token` until `done(status)` or 5 s have
/// passed (a ban or unban applies once the room's task has read it);
/// returns the last answer.
async fn post_until(
    s: &TestServer,
    path: &str,
    token: &str,
    offer: &str,
    done: impl Fn(u16) -> bool,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = post(s, path, Some(token), "application/sdp", offer.to_owned()).await;
        if done(resp.status().as_u16()) || std::time::Instant::now() > deadline {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a refusal's status and error code; returns its headers.
async fn refused(resp: reqwest::Response, status: u16, code: &str) -> reqwest::header::HeaderMap {
    let headers = resp.headers().clone();
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "a refusal explains itself"
    );
    headers
}

/// The sum of a metric's samples whose labels contain every `label`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(s: &TestServer) -> String {
    reqwest::get(s.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An offer that passes the server's own reading (one sendonly VP8 video
/// section) but carries no ICE credentials or fingerprint.
const HOLLOW_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
    a=rtpmap:96 VP8/90000\r\n";

/// A complete offer, but its only video codec is one the SFU does not
/// forward (AV1).
const AV1_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 45\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
    a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:45 AV1/90000\r\n\
    a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

/// A complete offer of VP8 video that no real peer stands behind: the
/// server answers it, then waits in vain for the connection.
fn phantom_offer() -> String {
    AV1_OFFER
        .replace(
            "m=video 9 UDP/TLS/RTP/SAVPF 45",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
        )
        .replace("a=rtpmap:45 AV1/90000", "a=rtpmap:96 VP8/90000")
}

const RECV_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n";

#[tokio::test]
async fn every_refusal_has_its_documented_status_and_code() {
    let s = TestServer::start(&[
        "--media-max-offer-bytes",
        "4096",
        "--media-connect-timeout-ms",
        "1000",
        "--media-ice-servers",
        "turn:127.0.0.1:3478?transport=udp username=flash credential=cast",
    ])
    .await;
    let resp = s
        .create_room(json!({"id": ROOM, "title": "Show", "allow_guests": false}))
        .await;
    assert_eq!(resp.status(), 201);
    let host = mint(&s, ROOM, "ana", "host").await;
    let viewer = mint(&s, ROOM, "mina", "viewer").await;
    let demo_host = mint(&s, "demo", "bo", "host").await;
    let sdp = "application/sdp";
    let whip = format!("/whip/{ROOM}");
    let whep = format!("/whep/{ROOM}");

    // 401, with WWW-Authenticate: no token, a bad token.
    for token in [None, Some("not-a-token")] {
        let h = refused(
            post(&s, &whip, token, sdp, HOLLOW_OFFER).await,
            401,
            "unauthorized",
        )
        .await;
        assert_eq!(h["www-authenticate"], "Bearer");
    }
    // 403: a viewer publishing; a host token of another room.
    refused(
        post(&s, &whip, Some(&viewer), sdp, HOLLOW_OFFER).await,
        403,
        "forbidden",
    )
    .await;
    refused(
        post(&s, &whip, Some(&demo_host), sdp, HOLLOW_OFFER).await,
        403,
        "forbidden",
    )
    .await;
    // 403: a viewer banned from the room's chat gets no video either (once
    // the room's task has applied the ban).
    let troll = mint(&s, ROOM, "troll", "viewer").await;
    let mut moderator = s.joined(Encoding::Json, ROOM, "ana", Role::Host).await;
    moderator
        .send(json!({"type": "ban", "user_id": "troll"}))
        .await;
    let resp = post_until(&s, &whep, &troll, HOLLOW_OFFER, |status| status == 403).await;
    refused(resp, 403, "forbidden").await;
    // Unbanned, the same viewer gets as far as a viewer gets here (409:
    // nothing is live).
    moderator
        .send(json!({"type": "unban", "user_id": "troll"}))
        .await;
    let resp = post_until(&s, &whep, &troll, RECV_OFFER, |status| status != 403).await;
    refused(resp, 409, "stream_offline").await;
    // 404: no such room (an impossible id too).
    refused(
        post(&s, "/whip/nope", Some(&host), sdp, HOLLOW_OFFER).await,
        404,
        "room_not_found",
    )
    .await;
    refused(
        post(&s, "/whip/no%20pe", Some(&host), sdp, HOLLOW_OFFER).await,
        404,
        "room_not_found",
    )
    .await;
    // 415: not application/sdp (parameters and case are fine).
    refused(
        post(&s, &whip, Some(&host), "application/json", "{}").await,
        415,
        "unsupported_media_type",
    )
    .await;
    refused(
        post(&s, &whip, Some(&host), "text/plain", HOLLOW_OFFER).await,
        415,
        "unsupported_media_type",
    )
    .await;
    // 413: over media_max_offer_bytes; exactly at it is read.
    let big = format!("v=0\r\n{}", "a=x\r\n".repeat(1000));
    refused(
        post(&s, &whip, Some(&host), sdp, big).await,
        413,
        "payload_too_large",
    )
    .await;
    let at_limit = format!("{:<4096}", "hello");
    refused(
        post(
            &s,
            &whip,
            Some(&host),
            "Application/SDP; charset=utf-8",
            at_limit,
        )
        .await,
        400,
        "bad_sdp",
    )
    .await;
    // 400: not SDP; nothing sent; no ICE credentials; no codec it forwards.
    refused(
        post(&s, &whip, Some(&host), sdp, "hello").await,
        400,
        "bad_sdp",
    )
    .await;
    refused(
        post(&s, &whip, Some(&host), sdp, RECV_OFFER).await,
        400,
        "bad_sdp",
    )
    .await;
    refused(
        post(&s, &whip, Some(&host), sdp, HOLLOW_OFFER).await,
        400,
        "bad_sdp",
    )
    .await;
    let resp = post(&s, &whip, Some(&host), sdp, AV1_OFFER).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_sdp");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("H.264"),
        "{body}"
    );
    // None of those left a broadcast or a session behind.
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "flashcast_media_publishers", &[]), 0.0);
    assert_eq!(
        metric(&m, "flashcast_media_sessions_refused_total", &["bad_offer"]),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "flashcast_media_sessions_refused_total",
            &["unauthorized"]
        ),
        2.0
    );

    // WHEP: nothing is live (409); a room without guests needs a token (401);
    // a guest may play where guests are allowed (then: nothing live).
    refused(
        post(&s, &whep, Some(&viewer), sdp, RECV_OFFER).await,
        409,
        "stream_offline",
    )
    .await;
    let h = refused(
        post(&s, &whep, None, sdp, RECV_OFFER).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(h["www-authenticate"], "Bearer");
    refused(
        post(&s, "/whep/demo", None, sdp, RECV_OFFER).await,
        409,
        "stream_offline",
    )
    .await;
    refused(
        post(&s, &whep, Some(&viewer), sdp, HOLLOW_OFFER).await,
        400,
        "bad_sdp",
    )
    .await;
    refused(
        post(&s, &whep, Some(&viewer), "application/json", "{}").await,
        415,
        "unsupported_media_type",
    )
    .await;

    // Sessions: unknown ones are 404; PATCH is 405 with Allow.
    let client = reqwest::Client::new();
    for path in [
        format!("/whip/{ROOM}/{}", "0".repeat(32)),
        format!("/whep/{ROOM}/{}", "0".repeat(32)),
        format!("/whep/{ROOM}/not-a-session"),
    ] {
        let resp = client.delete(s.http(&path)).send().await.unwrap();
        refused(resp, 404, "not_found").await;
        let resp = client
            .patch(s.http(&path))
            .body("a=end-of-candidates")
            .send()
            .await
            .unwrap();
        let h = refused(resp, 405, "method_not_allowed").await;
        assert_eq!(h["allow"], "DELETE");
    }

    // OPTIONS: the ICE servers as Link headers.
    for path in [&whip, &whep] {
        let resp = client
            .request(Method::OPTIONS, s.http(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["accept-post"], sdp);
        assert_eq!(
            resp.headers()["link"],
            "<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\"flash\"; credential=\"cast\"; credential-type=\"password\""
        );
    }

    // A publisher that never connects: answered (201), holds the room
    // (409 for another), and is ended after media_connect_timeout_ms.
    let resp = post(&s, &whip, Some(&host), sdp, phantom_offer()).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], sdp);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let session = location
        .strip_prefix(&format!("{whip}/"))
        .expect("Location is /whip/{room}/{session}");
    assert_eq!(session.len(), 32, "{location}");
    assert!(resp.headers()["link"]
        .to_str()
        .unwrap()
        .starts_with("<turn:127.0.0.1:3478"));
    let answer = resp.text().await.unwrap();
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!(
        answer.contains("a=recvonly") && answer.contains("VP8/90000"),
        "{answer}"
    );
    assert!(
        answer.contains(" 127.0.0.1 ") && answer.contains("typ host"),
        "non-trickle: candidates in the answer\n{answer}"
    );
    let host2 = mint(&s, ROOM, "bo", "host").await;
    refused(
        post(&s, &whip, Some(&host2), sdp, phantom_offer()).await,
        409,
        "conflict",
    )
    .await;
    // The session URL is per protocol: a WHEP DELETE does not end a broadcast.
    let wrong = client
        .delete(s.http(&format!("{whep}/{session}")))
        .send()
        .await
        .unwrap();
    refused(wrong, 404, "not_found").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&s).await;
        if metric(
            &m,
            "flashcast_media_sessions_ended_total",
            &["connect_timeout"],
        ) == 1.0
        {
            assert_eq!(metric(&m, "flashcast_media_publishers", &[]), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the phantom publisher was not ended:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = client.delete(s.http(&location)).send().await.unwrap();
    refused(resp, 404, "not_found").await;
    // The room is free again; this time DELETE ends it (200).
    let resp = post(&s, &whip, Some(&host2), sdp, phantom_offer()).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = client.delete(s.http(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(
        metric(
            &m,
            "flashcast_media_sessions_ended_total",
            &["reason=\"deleted\""]
        ),
        1.0
    );

    // 410: the show has ended.
    let resp = s
        .admin(Method::DELETE, &format!("/api/v1/rooms/{ROOM}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    refused(
        post(&s, &whip, Some(&host), sdp, HOLLOW_OFFER).await,
        410,
        "room_closed",
    )
    .await;
    refused(
        post(&s, &whep, Some(&viewer), sdp, RECV_OFFER).await,
        410,
        "room_closed",
    )
    .await;
    s.stop().await;

    // Video switched off: 404 not_found.
    let off = TestServer::start(&["--media-enabled", "false"]).await;
    let host = mint(&off, "demo", "ana", "host").await;
    refused(
        post(&off, "/whip/demo", Some(&host), sdp, HOLLOW_OFFER).await,
        404,
        "not_found",
    )
    .await;
    refused(
        post(&off, "/whep/demo", None, sdp, RECV_OFFER).await,
        404,
        "not_found",
    )
    .await;
    off.stop().await;

    // A one-port range whose port another program holds: 503, Retry-After.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let full =
        TestServer::start(&["--media-udp-port-min", &port, "--media-udp-port-max", &port]).await;
    let host = mint(&full, "demo", "ana", "host").await;
    let h = refused(
        post(&full, "/whip/demo", Some(&host), sdp, phantom_offer()).await,
        503,
        "limit_reached",
    )
    .await;
    assert_eq!(h["retry-after"], "10");
    drop(taken);
    // Free again: the range's one port carries the session.
    let resp = post(&full, "/whip/demo", Some(&host), sdp, phantom_offer()).await;
    assert_eq!(resp.status(), 201);
    let answer = resp.text().await.unwrap();
    assert!(
        answer.contains(&format!(" 127.0.0.1 {port} typ host")),
        "{answer}"
    );
    full.stop().await;
}

fn stream_event(e: &Event) -> Option<StreamStatus> {
    match e.body {
        EventBody::Stream { state, since } => Some(StreamStatus { state, since }),
        _ => None,
    }
}

fn snapshot_stream(joined: &ServerMsg) -> Option<StreamStatus> {
    match joined {
        ServerMsg::Joined { state, .. } => state.stream,
        other => panic!("expected joined, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_broadcasts_and_viewers_decode_over_whip_and_whep() {
    let py = python();
    let s = TestServer::start(&[
        "--media-max-viewers-per-room",
        "4",
        "--media-max-sessions-per-token",
        "1",
        "--media-publisher-timeout-ms",
        "3000",
        "--media-ice-servers",
        "turn:127.0.0.1:3478?transport=udp username=flash credential=cast",
    ])
    .await;
    let resp = s
        .create_room(json!({"id": ROOM, "title": "Show", "allow_guests": false}))
        .await;
    assert_eq!(resp.status(), 201);
    let host = mint(&s, ROOM, "ana", "host").await;
    let host2 = mint(&s, ROOM, "bo", "host").await;
    let mut viewers = Vec::new();
    for i in 1..=5 {
        viewers.push(mint(&s, ROOM, &format!("v{i}"), "viewer").await);
    }

    // A chat client in the room: nothing has been live yet.
    let mut room = s.client(Encoding::Json).await;
    let watcher = mint(&s, ROOM, "watcher", "viewer").await;
    let joined = room.join(ROOM, Some(&watcher), None).await;
    assert_eq!(
        snapshot_stream(&joined),
        None,
        "never live: no stream in the snapshot"
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/video/aiortc_peers.py");
    // In the first broadcast a viewer is banned while it watches: the
    // script creates `ban_ready` once it decodes, and a host bans it here.
    let troll = mint(&s, ROOM, "troll", "viewer").await;
    let ban_dir = tempfile::tempdir().unwrap();
    let ban_ready = ban_dir.path().join("ready");
    let mut last_since = 0;
    for (codec, end) in [("vp8", "delete"), ("h264", "drop")] {
        let mut cmd = tokio::process::Command::new(&py);
        cmd.arg(script)
            .args(["--base", &format!("http://{}", s.addr), "--room", ROOM])
            .args(["--host-token", &host, "--host2-token", &host2])
            .args(["--codec", codec, "--end", end]);
        for v in &viewers {
            cmd.args(["--viewer-token", v]);
        }
        let mut ban = None;
        if codec == "vp8" {
            cmd.args(["--banned-token", &troll])
                .arg("--ban-ready")
                .arg(&ban_ready);
            let mut moderator = s.joined(Encoding::Json, ROOM, "ana", Role::Host).await;
            let ready = ban_ready.clone();
            ban = Some(tokio::spawn(async move {
                while !ready.exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                moderator
                    .send(json!({"type": "ban", "user_id": "troll"}))
                    .await;
                moderator
            }));
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the aiortc peers start");

        // The room announces the broadcast, and a client joining now sees it.
        let live = room
            .wait_event(|e| stream_event(e).is_some_and(|s| s.state == StreamState::Live))
            .await;
        let live = stream_event(&live).unwrap();
        assert!(
            live.since > last_since,
            "{codec}: a new broadcast, a new `since`"
        );
        let mut late = s.client(Encoding::MsgPack).await;
        let token = mint(&s, ROOM, &format!("late-{codec}"), "viewer").await;
        assert_eq!(
            snapshot_stream(&late.join(ROOM, Some(&token), None).await),
            Some(live)
        );
        late.send(json!({"type": "leave"})).await;

        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .expect("the aiortc peers finish within 180 s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{codec}: the aiortc peers failed:\n{stderr}\n{stdout}"
        );
        eprintln!("{codec}: {stdout}");
        let result: Value = serde_json::from_str(stdout.trim()).expect("the peers print JSON");
        if let Some(ban) = ban {
            let moderator = tokio::time::timeout(Duration::from_secs(10), ban)
                .await
                .expect("the ban was sent while the script waited for it");
            drop(moderator.unwrap());
            assert!(
                result["banned_ended_after_s"].as_f64().unwrap() < 5.0,
                "{result}"
            );
        }
        assert_eq!(result["codec"], codec);
        assert_eq!(result["second_publisher"], 409);
        assert_eq!(
            result["links"],
            json!(["<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\"flash\"; credential=\"cast\"; credential-type=\"password\""])
        );
        for frames in result["frames"].as_array().unwrap() {
            assert!(frames.as_u64().unwrap() >= 5, "{codec}: {result}");
        }
        assert!(
            result["late_first_frame_s"].as_f64().unwrap() < 3.0,
            "{result}"
        );

        // ... and announces its end.
        let offline = room
            .wait_event(|e| stream_event(e).is_some_and(|s| s.state == StreamState::Offline))
            .await;
        let offline = stream_event(&offline).unwrap();
        assert!(offline.since >= live.since);
        let mut after = s.client(Encoding::Json).await;
        let token = mint(&s, ROOM, &format!("after-{codec}"), "viewer").await;
        assert_eq!(
            snapshot_stream(&after.join(ROOM, Some(&token), None).await),
            Some(offline)
        );
        after.send(json!({"type": "leave"})).await;
        // Only these two stream events, in this order, for this broadcast.
        let seen: Vec<StreamStatus> = room.events.iter().filter_map(stream_event).collect();
        assert_eq!(&seen[seen.len() - 2..], [live, offline]);
        room.events.clear();
        last_since = offline.since;
    }

    // What the server counted.
    let m = metrics(&s).await;
    let get = |name: &str, labels: &[&str]| metric(&m, name, labels);
    assert_eq!(get("flashcast_media_publishers", &[]), 0.0, "{m}");
    assert_eq!(get("flashcast_media_viewers", &[]), 0.0);
    // Each viewer that connected (3 + the late one, per broadcast, and the
    // banned one) asked for a keyframe; at least the late viewers'
    // requests became PLIs.
    assert_eq!(
        get(
            "flashcast_media_keyframe_requests_total",
            &["reason=\"join\""]
        ),
        9.0
    );
    assert!(get("flashcast_media_plis_sent_total", &[]) >= 2.0);
    assert!(
        get(
            "flashcast_media_rtp_packets_forwarded_total",
            &["kind=\"video\""]
        ) > 100.0
    );
    assert!(
        get(
            "flashcast_media_rtp_packets_forwarded_total",
            &["kind=\"audio\""]
        ) > 100.0
    );
    assert!(
        get(
            "flashcast_media_rtp_bytes_forwarded_total",
            &["kind=\"video\""]
        ) > 10_000.0
    );
    let ended = |kind: &str, reason: &str| {
        get(
            "flashcast_media_sessions_ended_total",
            &[&format!("kind=\"{kind}\""), &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(ended("publisher", "deleted"), 1.0);
    assert_eq!(
        ended("publisher", "dropped")
            + ended("publisher", "no_media")
            + ended("publisher", "disconnected"),
        1.0,
        "the vanished publisher was noticed: {m}"
    );
    assert_eq!(ended("viewer", "deleted"), 2.0);
    assert_eq!(ended("viewer", "broadcast_ended"), 6.0);
    assert_eq!(ended("viewer", "banned"), 1.0, "{m}");
    let refused = |reason: &str| {
        get(
            "flashcast_media_sessions_refused_total",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(refused("broadcast_live"), 2.0);
    assert_eq!(refused("too_many_sessions"), 2.0);
    assert_eq!(refused("room_full"), 2.0);
    s.stop().await;
}
