//! Recording a room's client actions (docs/recording.md), against a real
//! server with real WebSocket clients: what the file holds and in which
//! order, what it must never hold (tokens, user ids, names, idempotency
//! keys), the REST answers, and the limits (size, queue, the show's end,
//! shutdown) that stop a recording without disturbing the room.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flashcast_wire::client::{Ask, Chat, React, Vote};
use flashcast_wire::ids::{PollId, Sku};
use flashcast_wire::recording::{read_trace, TraceAction, TraceHeader, TraceLine};
use flashcast_wire::{Encoding, EventBody, ReactionKind, Role, ServerMsg};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PATH: &str = "/api/v1/rooms/demo/recording";

async fn start(s: &TestServer) -> Value {
    let resp = s.admin(Method::POST, PATH).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "start recording: {body}");
    body
}

async fn stop(s: &TestServer) -> Value {
    let resp = s.admin(Method::DELETE, PATH).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "stop recording: {body}");
    body
}

/// GETs the recording: (state header, body).
async fn download(s: &TestServer) -> (String, String) {
    let resp = s.admin(Method::GET, PATH).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let state = resp.headers()["x-flashcast-recording"]
        .to_str()
        .unwrap()
        .to_string();
    (state, resp.text().await.unwrap())
}

fn parse(text: &str) -> (TraceHeader, Vec<TraceLine>) {
    read_trace(text.as_bytes(), 100_000).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("JSON error body");
    body["error"]["code"].as_str().unwrap().to_string()
}

/// Waits until the connection's earlier frames have all been handled (and
/// so recorded): the server answers a ping only after them.
async fn sync(c: &mut Client) {
    c.send(json!({"type": "ping", "t": 7})).await;
    loop {
        if let ServerMsg::Pong { t: Some(7), .. } = c.next_other().await {
            return;
        }
    }
}

/// Downloads the running recording until `pred` holds for its lines.
async fn wait_for_lines(s: &TestServer, pred: impl Fn(&[TraceLine]) -> bool) -> Vec<TraceLine> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = download(s).await;
        let (_, lines) = parse(&text);
        if pred(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "recording never got there: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the room's recording has stopped by itself.
async fn wait_stopped(s: &TestServer) {
    let deadline = Instant::now() + WAIT;
    while download(s).await.0 != "stopped" {
        assert!(Instant::now() < deadline, "the recording did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn actions(lines: &[TraceLine]) -> Vec<(u32, TraceAction)> {
    lines.iter().map(|l| (l.conn, l.action.clone())).collect()
}

#[tokio::test]
async fn a_show_is_recorded_in_order_without_identities() {
    let s = TestServer::start(&[]).await;
    create_product(&s, "demo", &["REC-1"]).await;
    create_sale(&s, "demo", "REC-1", 10, json!({})).await;

    // Nothing recorded yet: 404 for both stop and download.
    for method in [Method::GET, Method::DELETE] {
        let resp = s.admin(method.clone(), PATH).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method}");
        assert_eq!(error_code(resp).await, "not_found");
    }
    // The key is required for all three.
    for method in [Method::POST, Method::GET, Method::DELETE] {
        let resp = reqwest::Client::new()
            .request(method.clone(), s.http(PATH))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method}");
        assert_eq!(error_code(resp).await, "unauthorized");
    }
    let resp = s
        .admin(Method::POST, "/api/v1/rooms/nowhere/recording")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "room_not_found");

    // A viewer already in the room before the recording starts.
    let mut early = s
        .joined(Encoding::Json, "demo", "rec-early-5v8", Role::Viewer)
        .await;

    let began = Instant::now();
    let started = start(&s).await;
    let file = started["file"].as_str().unwrap().to_string();
    assert!(
        file.starts_with("demo-") && file.ends_with(".jsonl"),
        "{file}"
    );
    let started_ms = started["started_unix_ms"].as_u64().unwrap();
    assert!(file.contains(&started_ms.to_string()));
    assert!(s.dir.path().join("recordings").join(&file).is_file());

    // A second start is a conflict; the first recording goes on.
    let resp = s.admin(Method::POST, PATH).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(resp).await, "conflict");

    // conn 1: a guest; conn 2: a signed-in viewer; conn 3: the host.
    let mut guest = s.guest(Encoding::MsgPack).await;
    sync(&mut guest).await;
    let ann_token = s.token("demo", "rec-ann-7q1", Role::Viewer);
    let mut ann = s.client(Encoding::Json).await;
    ann.join("demo", Some(&ann_token), None).await;
    sync(&mut ann).await;
    let mut host = s
        .joined(Encoding::Json, "demo", "rec-host-3k9", Role::Host)
        .await;
    sync(&mut host).await;

    guest.chat("hello from the guest").await;
    guest.send(json!({"type": "react", "kind": "heart"})).await;
    sync(&mut guest).await;
    ann.chat("hi all").await;
    sync(&mut ann).await;
    let order = ann
        .buy("REC-1", 1, "rec-secret-key-42", None)
        .await
        .unwrap();
    assert_eq!(order["qty"], 1);

    host.send(json!({
        "type": "open_poll", "question": "Red or blue?", "options": ["red", "blue"]
    }))
    .await;
    let opened = ann
        .wait_event(|e| matches!(e.body, EventBody::PollOpened { .. }))
        .await;
    let EventBody::PollOpened { poll } = opened.body else {
        unreachable!()
    };
    ann.send(json!({"type": "vote", "poll_id": poll.id, "option": 1}))
        .await;
    ann.send(json!({"type": "ask", "text": "Does it come in green?"}))
        .await;
    sync(&mut ann).await;
    // A guest may not buy: refused, but still recorded (a replay
    // reproduces the load, not the outcomes).
    guest
        .send(json!({"type": "buy", "sku": "REC-1", "qty": 2, "key": "rec-guest-key"}))
        .await;
    sync(&mut guest).await;

    // The early viewer shows up once the room sends it a frame; it chats.
    early.chat("I was here first").await;
    sync(&mut early).await;

    // The guest leaves: its leave is recorded.
    guest.ws.close(None).await.unwrap();
    let guest_user_id = guest
        .events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Chat { user, text, .. } if text == "hello from the guest" => {
                Some(user.id.to_string())
            }
            _ => None,
        })
        .expect("the guest saw its own chat");
    wait_for_lines(&s, |lines| {
        let guest = lines
            .iter()
            .find(|l| l.action == TraceAction::Join { role: Role::Guest });
        guest.is_some_and(|g| {
            lines
                .iter()
                .any(|l| l.conn == g.conn && l.action == TraceAction::Leave)
        })
    })
    .await;

    let summary = stop(&s).await;
    let elapsed = began.elapsed().as_millis() as u64;
    assert_eq!(summary["file"], file.as_str());
    assert_eq!(summary["started_unix_ms"], started_ms);
    assert_eq!(summary["dropped"], 0);
    assert_eq!(summary["stopped_by"], "request");

    let (state, text) = download(&s).await;
    assert_eq!(state, "stopped");
    assert_eq!(summary["bytes"], text.len() as u64);
    let (header, lines) = parse(&text);
    assert_eq!(summary["lines"], lines.len() as u64);
    assert_eq!(header.flashcast_recording, 1);
    assert_eq!(header.room, "demo");
    assert_eq!(header.started_unix_ms, started_ms);

    // Time never goes back (read_trace checks) and stays within the test.
    assert!(lines.last().unwrap().t_ms <= elapsed);

    // Connections are numbered in the order they were seen. The early
    // viewer is seen at its first frame after the start (a tick frame, or
    // its own chat), so its number depends on timing: find it by its chat.
    let conn_of = |pred: &dyn Fn(&TraceAction) -> bool| {
        lines
            .iter()
            .find(|l| pred(&l.action))
            .map(|l| l.conn)
            .expect("a line")
    };
    let early_conn =
        conn_of(&|a| matches!(a, TraceAction::Chat(Chat { text }) if text == "I was here first"));
    let guest_c = conn_of(&|a| *a == TraceAction::Join { role: Role::Guest });
    let host_c = conn_of(&|a| *a == TraceAction::Join { role: Role::Host });
    let ann_c = conn_of(&|a| matches!(a, TraceAction::Chat(Chat { text }) if text == "hi all"));
    let mine: Vec<(u32, TraceAction)> = actions(&lines)
        .into_iter()
        .filter(|(c, _)| *c != early_conn)
        .collect();
    let sku = Sku::new("REC-1").unwrap();
    assert_eq!(
        mine,
        vec![
            (guest_c, TraceAction::Join { role: Role::Guest }),
            (ann_c, TraceAction::Join { role: Role::Viewer }),
            (host_c, TraceAction::Join { role: Role::Host }),
            (
                guest_c,
                TraceAction::Chat(Chat {
                    text: "hello from the guest".into()
                })
            ),
            (
                guest_c,
                TraceAction::React(React {
                    kind: ReactionKind::Heart
                })
            ),
            (
                ann_c,
                TraceAction::Chat(Chat {
                    text: "hi all".into()
                })
            ),
            (
                ann_c,
                TraceAction::Buy {
                    sku: sku.clone(),
                    qty: 1,
                    coupon_id: None
                }
            ),
            (
                host_c,
                TraceAction::Host {
                    kind: "open_poll".into()
                }
            ),
            (
                ann_c,
                TraceAction::Vote(Vote {
                    poll_id: PollId(poll.id.0),
                    option: 1
                })
            ),
            (
                ann_c,
                TraceAction::Ask(Ask {
                    text: "Does it come in green?".into()
                })
            ),
            (
                guest_c,
                TraceAction::Buy {
                    sku,
                    qty: 2,
                    coupon_id: None
                }
            ),
            (guest_c, TraceAction::Leave),
        ]
    );
    let early_lines: Vec<TraceAction> = actions(&lines)
        .into_iter()
        .filter(|(c, _)| *c == early_conn)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        early_lines,
        vec![
            TraceAction::Join { role: Role::Viewer },
            TraceAction::Chat(Chat {
                text: "I was here first".into()
            })
        ]
    );
    let mut conns: Vec<u32> = lines.iter().map(|l| l.conn).collect();
    conns.sort();
    conns.dedup();
    assert_eq!(conns, vec![1, 2, 3, 4], "small numbers from 1");

    // Nothing that names a person or grants access.
    let host_token = s.token("demo", "rec-host-3k9", Role::Host);
    for secret in [
        "rec-ann-7q1",
        "rec-host-3k9",
        "rec-early-5v8",
        "name", // the test tokens' display names are "<user> name"
        &guest_user_id,
        &ann_token,
        &host_token[..40],
        "rec-secret-key-42",
        "rec-guest-key",
        "127.0.0.1",
        "Red or blue", // the host's arguments are not recorded
    ] {
        assert!(!text.contains(secret), "the recording contains {secret:?}");
    }

    // Stopping again answers the same recording.
    let again = stop(&s).await;
    assert_eq!(again, summary);
    // Written lines are counted.
    assert!(s.metric("flashcast_recording_lines_total").await >= lines.len() as u64);
    assert_eq!(
        s.metric("flashcast_recording_stops_total{reason=\"request\"}")
            .await,
        1
    );
    assert_eq!(s.metric("flashcast_recordings_active").await, 0);

    // A new recording starts afresh: new file, new numbering; the download
    // is now the running one, header only so far.
    let second = start(&s).await;
    assert_ne!(second["file"], file.as_str());
    ann.chat("second take").await;
    sync(&mut ann).await;
    let take = TraceAction::Chat(Chat {
        text: "second take".into(),
    });
    let lines = wait_for_lines(&s, |l| l.iter().any(|l| l.action == take)).await;
    let c = lines.iter().find(|l| l.action == take).unwrap().conn;
    assert!(c <= 3, "numbered afresh: {c}");
    let ann_lines: Vec<TraceAction> = actions(&lines)
        .into_iter()
        .filter(|(n, _)| *n == c)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        ann_lines,
        vec![TraceAction::Join { role: Role::Viewer }, take]
    );
    assert_eq!(download(&s).await.0, "active");
    s.stop().await;
}

#[tokio::test]
async fn a_size_limit_stops_the_recording_and_the_room_goes_on() {
    let s = TestServer::start(&[
        "--max-recording-bytes",
        "1024",
        "--chat-per-sec",
        "1000",
        "--chat-burst",
        "1000",
    ])
    .await;
    start(&s).await;
    let mut ann = s
        .joined(Encoding::Json, "demo", "rec-ann", Role::Viewer)
        .await;
    let text = "x".repeat(200);
    for _ in 0..10 {
        ann.chat(&text).await;
    }
    sync(&mut ann).await;
    wait_stopped(&s).await;

    let summary = stop(&s).await;
    assert_eq!(summary["stopped_by"], "max_recording_bytes");
    let bytes = summary["bytes"].as_u64().unwrap();
    assert!(bytes <= 1024, "{summary}");
    let (_, body) = download(&s).await;
    assert_eq!(body.len() as u64, bytes);
    let (_, lines) = parse(&body);
    assert_eq!(summary["lines"], lines.len() as u64);
    // The join and a few chats fit, not all ten.
    assert!(lines.len() >= 2 && lines.len() < 11, "{}", lines.len());
    assert_eq!(lines[0].action, TraceAction::Join { role: Role::Viewer });
    assert_eq!(
        s.metric("flashcast_recording_stops_total{reason=\"max_recording_bytes\"}")
            .await,
        1
    );

    // The room never noticed: chat goes on and every message arrives.
    ann.chat("still here").await;
    ann.wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "still here"))
        .await;
    assert_eq!(chat_texts(&ann.events).len(), 11);
    // And a new recording can start.
    start(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_tiny_queue_drops_lines_but_never_holds_up_the_room() {
    let s = TestServer::start(&[
        "--recording-queue",
        "1",
        "--reactions-per-sec",
        "100000",
        "--reactions-burst",
        "100000",
    ])
    .await;
    start(&s).await;
    let mut viewers = Vec::new();
    for i in 0..4 {
        viewers.push(
            s.joined(
                Encoding::MsgPack,
                "demo",
                &format!("rec-v{i}"),
                Role::Viewer,
            )
            .await,
        );
    }
    const EACH: usize = 500;
    let mut tasks = Vec::new();
    for mut v in viewers {
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                v.send(json!({"type": "react", "kind": "fire"})).await;
            }
            sync(&mut v).await;
            v
        }));
    }
    let mut viewers = Vec::new();
    for t in tasks {
        viewers.push(t.await.unwrap());
    }
    // Every reaction reached the room, whatever the recording kept.
    let total = 4 * EACH as u32;
    viewers[0]
        .read_until(|c| c.reactions.get("fire").copied().unwrap_or(0) >= total)
        .await;
    assert_eq!(viewers[0].reactions["fire"], total);

    let summary = stop(&s).await;
    let (lines, dropped) = (
        summary["lines"].as_u64().unwrap(),
        summary["dropped"].as_u64().unwrap(),
    );
    // Each action was either written or counted as dropped (a refused
    // join is retried, so it may be counted more than once).
    assert!(lines + dropped >= total as u64 + 4, "{summary}");
    assert!(lines <= total as u64 + 4, "{summary}");
    assert_eq!(s.metric("flashcast_recording_dropped_total").await, dropped);
    let (_, body) = download(&s).await;
    let (_, read) = parse(&body);
    assert_eq!(read.len() as u64, lines);
    s.stop().await;
}

#[tokio::test]
async fn the_show_ending_stops_the_recording_after_the_leaves() {
    let s = TestServer::start(&[]).await;
    start(&s).await;
    let mut ann = s
        .joined(Encoding::Json, "demo", "rec-ann", Role::Viewer)
        .await;
    let mut bob = s.guest(Encoding::MsgPack).await;
    ann.chat("last words").await;
    sync(&mut ann).await;
    sync(&mut bob).await;

    let resp = s
        .admin(Method::DELETE, "/api/v1/rooms/demo")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    ann.expect_close(4010).await;
    bob.expect_close(4010).await;
    wait_stopped(&s).await;

    let summary = stop(&s).await;
    assert_eq!(summary["stopped_by"], "room_closed");
    let (_, body) = download(&s).await;
    let (_, lines) = parse(&body);
    let leaves = lines
        .iter()
        .filter(|l| l.action == TraceAction::Leave)
        .count();
    assert_eq!(leaves, 2, "{body}");
    assert_eq!(lines.last().unwrap().action, TraceAction::Leave);

    // An ended show cannot be recorded.
    let resp = s.admin(Method::POST, PATH).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(resp).await, "room_closed");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_the_recording_with_every_leave() {
    let s = TestServer::start(&[]).await;
    let started = start(&s).await;
    let mut ann = s
        .joined(Encoding::Json, "demo", "rec-ann", Role::Viewer)
        .await;
    ann.chat("before the restart").await;
    sync(&mut ann).await;
    let dir = s.stop().await;

    let path = dir
        .path()
        .join("recordings")
        .join(started["file"].as_str().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, lines) = parse(&text);
    assert_eq!(
        actions(&lines),
        vec![
            (1, TraceAction::Join { role: Role::Viewer }),
            (
                1,
                TraceAction::Chat(Chat {
                    text: "before the restart".into()
                })
            ),
            (1, TraceAction::Leave),
        ]
    );
    drop(ann);

    // After a restart, the file is still the room's latest recording.
    let s = TestServer::start_in(dir, &[]).await;
    let (state, body) = download(&s).await;
    assert_eq!(state, "stopped");
    assert_eq!(body, text);
    // But it is not this run's to stop.
    let resp = s.admin(Method::DELETE, PATH).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}
