//! Reconnect and resume: exactly the missed events, or a snapshot with an
//! explicit gap marker. Never a silent hole, never a duplicate.

mod common;

use common::*;
use flashcast_wire::{Encoding, EventBody, Role, ServerMsg};

fn seqs(events: &[std::sync::Arc<flashcast_wire::Event>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn resume_returns_exactly_the_missed_events() {
    let srv = TestServer::start(&["--chat-per-sec", "1000", "--chat-burst", "1000"]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let mut v = srv.joined(enc, "demo", "v", Role::Viewer).await;
        host.chat("before").await;
        v.wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "before"))
            .await;
        let (last, epoch) = (v.last_seq, v.epoch);
        drop(v); // the connection drops without a goodbye

        for i in 0..5 {
            host.chat(&format!("missed {i}")).await;
        }
        host.wait_seq(last + 5).await;

        let mut back = srv.client(enc).await;
        back.epoch = epoch;
        let token = srv.token("demo", "v", Role::Viewer);
        match back.join("demo", Some(&token), Some(last)).await {
            ServerMsg::Joined {
                gap, events, seq, ..
            } => {
                assert!(
                    !gap,
                    "no gap when the history still holds the missed events"
                );
                assert_eq!(seqs(&events), (last + 1..=last + 5).collect::<Vec<_>>());
                let texts = chat_texts(&events.iter().map(|e| (**e).clone()).collect::<Vec<_>>());
                assert_eq!(
                    texts,
                    (0..5).map(|i| format!("missed {i}")).collect::<Vec<_>>()
                );
                assert_eq!(seq, last + 5);
            }
            _ => unreachable!(),
        }
        host.chat("after").await;
        let after = back
            .wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "after"))
            .await;
        assert_eq!(
            after.seq,
            last + 6,
            "stream continues right after the resumed events"
        );
        back.send(serde_json::json!({"type": "leave"})).await;
        host.send(serde_json::json!({"type": "leave"})).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn resume_outside_the_history_window_gets_a_gap_marker_and_snapshot() {
    let srv = TestServer::start(&[
        "--history-len",
        "10",
        "--snapshot-events",
        "4",
        "--chat-per-sec",
        "1000",
        "--chat-burst",
        "1000",
    ])
    .await;
    let mut host = srv
        .joined(Encoding::MsgPack, "demo", "host", Role::Host)
        .await;
    let mut v = srv.joined(Encoding::Json, "demo", "v", Role::Viewer).await;
    host.chat("seen").await;
    v.wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "seen"))
        .await;
    let (last, epoch) = (v.last_seq, v.epoch);
    drop(v);
    for i in 0..30 {
        host.chat(&format!("burst {i}")).await;
    }
    host.wait_seq(last + 30).await;

    let mut back = srv.client(Encoding::Json).await;
    back.epoch = epoch;
    match back.join("demo", None, Some(last)).await {
        ServerMsg::Joined {
            gap, events, seq, ..
        } => {
            assert!(
                gap,
                "the missed events left the 10-event window: gap must be explicit"
            );
            assert_eq!(seq, last + 30);
            assert_eq!(
                seqs(&events),
                (last + 27..=last + 30).collect::<Vec<_>>(),
                "snapshot tail"
            );
        }
        _ => unreachable!(),
    }
    host.chat("next").await;
    let next = back
        .wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "next"))
        .await;
    assert_eq!(next.seq, last + 31);
    srv.stop().await;
}

#[tokio::test]
async fn resume_from_another_epoch_the_future_or_without_epoch_is_a_gap() {
    let srv = TestServer::start(&[]).await;
    let mut host = srv
        .joined(Encoding::MsgPack, "demo", "host", Role::Host)
        .await;
    host.chat("one").await;
    host.wait_seq(1).await;

    let mut wrong_epoch = srv.client(Encoding::MsgPack).await;
    wrong_epoch.epoch = host.epoch ^ 1;
    match wrong_epoch.join("demo", None, Some(0)).await {
        ServerMsg::Joined { gap, .. } => assert!(gap, "another run of the room"),
        _ => unreachable!(),
    }
    let mut future = srv.client(Encoding::Json).await;
    future.epoch = host.epoch;
    match future.join("demo", None, Some(host.last_seq + 100)).await {
        ServerMsg::Joined { gap, seq, .. } => {
            assert!(gap, "a seq the room never reached");
            assert_eq!(seq, host.last_seq);
        }
        _ => unreachable!(),
    }
    // last_seq without the epoch cannot be trusted either.
    let mut c = srv.client(Encoding::Json).await;
    c.send(serde_json::json!({"type": "join", "room": "demo", "last_seq": 0}))
        .await;
    match c.recv().await {
        Incoming::Msg(ServerMsg::Joined { gap, .. }) => {
            assert!(gap, "last_seq without epoch cannot be trusted")
        }
        other => panic!("expected joined, got {other:?}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn resume_after_restart_of_the_server_is_a_gap() {
    let srv = TestServer::start(&[]).await;
    let mut host = srv
        .joined(Encoding::MsgPack, "demo", "host", Role::Host)
        .await;
    host.chat("before restart").await;
    host.wait_seq(1).await;
    let (last, epoch) = (host.last_seq, host.epoch);
    let dir = srv.stop().await;
    host.expect_close(1012).await;

    let srv = TestServer::start_in(dir, &[]).await;
    let mut back = srv.client(Encoding::MsgPack).await;
    back.epoch = epoch;
    let token = srv.token("demo", "host", Role::Host);
    match back.join("demo", Some(&token), Some(last)).await {
        ServerMsg::Joined {
            gap,
            epoch: new_epoch,
            ..
        } => {
            assert!(gap);
            assert_ne!(new_epoch, epoch);
        }
        _ => unreachable!(),
    }
    srv.stop().await;
}
