//! Fanout-paced batching over real WebSocket connections, with a one-second
//! `tick_ms` so that the tick and the fanout's pace are far apart: with a
//! small room, whose fanout takes well under a millisecond, every chat
//! message leaves on its own as soon as it arrives, back to back, instead
//! of waiting for a tick; reactions, which carry no event, still go out
//! aggregated within a tick.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flashcast_wire::{Encoding, Event, ReactionKind, Role, ServerMsg};

const TICK: Duration = Duration::from_secs(1);
const LEADING: &str = "flashcast_batches_leading_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_follow_the_fanout_and_the_tick_bounds_aggregates() {
    let srv = TestServer::start(&[
        "--tick-ms",
        "1000",
        "--chat-per-sec",
        "100",
        "--chat-burst",
        "100",
    ])
    .await;
    let mut watcher = srv
        .joined(Encoding::MsgPack, "demo", "watcher", Role::Viewer)
        .await;
    let mut sender = srv
        .joined(Encoding::Json, "demo", "sender", Role::Viewer)
        .await;
    // Both have the viewer count, so its fanout is over on every worker.
    watcher.read_until(|c| c.viewers == Some(2)).await;
    sender.read_until(|c| c.viewers == Some(2)).await;
    let leading_before = srv.metric(LEADING).await;

    // One after the other, each once the previous one reached both (the
    // fanout is then idle), so each leaves at once. Under a fixed tick the
    // second and third would each wait for the next tick.
    let started = Instant::now();
    for text in ["first", "second", "third"] {
        let sent = Instant::now();
        sender.chat(text).await;
        let (texts, at) = next_chat_batch(&mut watcher).await;
        assert_eq!(texts, [text]);
        assert_eq!(next_chat_batch(&mut sender).await.0, [text]);
        let waited = at - sent;
        assert!(
            waited < TICK / 4,
            "{text} waited {waited:?} for an idle fanout (tick {TICK:?})"
        );
    }
    assert!(started.elapsed() < TICK, "three messages took a tick");
    // Each normally counts as sent on arrival; on a loaded machine a
    // worker preempted between its last send and reporting it done makes
    // the next message wait for that report (still far from a tick).
    let leading = srv.metric(LEADING).await - leading_before;
    assert!(
        (1..=3).contains(&leading),
        "{leading} of 3 messages counted as sent on arrival"
    );

    // Reactions carry no event: counted, and sent within a tick.
    sender
        .send(serde_json::json!({"type": "react", "kind": "heart"}))
        .await;
    let reacted = Instant::now();
    let hearts = loop {
        match watcher.recv().await {
            Incoming::Msg(ServerMsg::Batch { reactions, .. }) => {
                if let Some(n) = reactions.get(&ReactionKind::Heart) {
                    break *n;
                }
            }
            Incoming::Msg(_) => {}
            other => panic!("connection ended while waiting for reactions: {other:?}"),
        }
    };
    assert_eq!(hearts, 1);
    assert!(
        reacted.elapsed() < TICK + Duration::from_millis(300),
        "a reaction waited {:?}",
        reacted.elapsed()
    );
    srv.stop().await;
}

/// Reads until a batch with chat events arrives; returns their texts and
/// when it arrived.
async fn next_chat_batch(c: &mut Client) -> (Vec<String>, Instant) {
    loop {
        let events = match c.recv().await {
            Incoming::Msg(ServerMsg::Batch { events, .. }) => events,
            Incoming::Msg(_) => continue,
            other => panic!("connection ended while waiting for chat: {other:?}"),
        };
        let events: Vec<Event> = events.iter().map(|e| (**e).clone()).collect();
        let texts = chat_texts(&events);
        if !texts.is_empty() {
            return (texts, Instant::now());
        }
    }
}
