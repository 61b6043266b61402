//! Tick batching over real WebSocket connections, with a one-second tick so
//! the two behaviours are far apart: a room that sent nothing for a whole
//! tick sends the next event at once (the leading edge), and after a batch
//! a viewer gets at most one more per tick, carrying everything that
//! arrived meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flashcast_wire::{Encoding, Event, Role, ServerMsg};

const TICK: Duration = Duration::from_secs(1);
const LEADING: &str = "flashcast_batches_leading_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_room_sends_at_once_busy_room_batches_per_tick() {
    let srv = TestServer::start(&[
        "--tick-ms",
        "1000",
        "--max-tick-ms",
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
    // The joins changed the viewer count, which goes out in a batch of its
    // own; the room is quiet one tick after that.
    watcher.read_until(|c| c.viewers == Some(2)).await;
    tokio::time::sleep(TICK + Duration::from_millis(200)).await;
    let leading_before = srv.metric(LEADING).await;

    // Quiet room: the first message goes out at once, not at the next tick.
    let sent = Instant::now();
    sender.chat("first").await;
    let (texts, first_at) = next_chat_batch(&mut watcher).await;
    assert_eq!(texts, ["first"]);
    let waited = first_at - sent;
    assert!(
        waited < TICK / 2,
        "a quiet room's event waited {waited:?} (tick {TICK:?})"
    );

    // Busy room: what arrives within the next tick shares one batch, sent
    // a tick after the previous one.
    sender.chat("second").await;
    sender.chat("third").await;
    let (texts, batched_at) = next_chat_batch(&mut watcher).await;
    assert_eq!(texts, ["second", "third"], "one batch for the tick");
    let gap = batched_at - first_at;
    assert!(
        gap >= TICK - Duration::from_millis(100),
        "the next batch came {gap:?} after the leading one (tick {TICK:?})"
    );

    // Quiet again for a tick: the leading edge again.
    tokio::time::sleep(TICK + Duration::from_millis(200)).await;
    let sent = Instant::now();
    sender.chat("fourth").await;
    let (texts, at) = next_chat_batch(&mut watcher).await;
    assert_eq!(texts, ["fourth"]);
    assert!(at - sent < TICK / 2, "waited {:?}", at - sent);

    assert_eq!(
        srv.metric(LEADING).await - leading_before,
        2,
        "\"first\" and \"fourth\" left on the leading edge, \"second\" and \"third\" at the tick"
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
