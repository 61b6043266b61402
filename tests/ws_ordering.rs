//! Fifty clients, two encodings, five concurrent senders: every client sees
//! the same events in the same order, with no gap and no duplicate. Three
//! ways: with the default fanout workers (one per CPU) sending through
//! io_uring; with one `send` per viewer instead (`fanout_io_uring` false);
//! and over four workers, so that the viewers' shards are written by
//! different threads at once (`fanout_threads`).

mod common;

use common::*;
use flashcast_wire::{Encoding, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_see_one_identical_order() {
    let srv = TestServer::start(&["--chat-per-sec", "1000", "--chat-burst", "1000"]).await;
    identical_order(&srv).await;
    assert!(
        srv.metric(URING).await > 0 || no_io_uring(),
        "io_uring sends are on by default"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_per_viewer_keeps_one_identical_order() {
    let srv = TestServer::start(&[
        "--chat-per-sec",
        "1000",
        "--chat-burst",
        "1000",
        "--fanout-io-uring",
        "false",
    ])
    .await;
    identical_order(&srv).await;
    assert_eq!(srv.metric(URING).await, 0, "io_uring was turned off");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_fanout_workers_keep_one_identical_order() {
    let srv = TestServer::start(&[
        "--chat-per-sec",
        "1000",
        "--chat-burst",
        "1000",
        "--fanout-threads",
        "4",
    ])
    .await;
    identical_order(&srv).await;
    srv.stop().await;
}

const URING: &str = "flashcast_fanout_uring_submissions_total";

async fn identical_order(srv: &TestServer) {
    let mut clients = Vec::new();
    for i in 0..50 {
        let enc = if i % 2 == 0 {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        clients.push(
            srv.joined(enc, "demo", &format!("watcher-{i}"), Role::Viewer)
                .await,
        );
    }
    let start_seq = clients[0].last_seq;
    assert!(clients.iter().all(|c| c.last_seq == start_seq));

    const SENDERS: usize = 5;
    const PER_SENDER: usize = 20;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut c = srv
            .joined(
                Encoding::MsgPack,
                "demo",
                &format!("sender-{s}"),
                Role::Viewer,
            )
            .await;
        senders.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                c.chat(&format!("s{s}-m{n}")).await;
            }
            c
        }));
    }
    let target = start_seq + (SENDERS * PER_SENDER) as u64;
    let mut readers = Vec::new();
    for mut c in clients {
        readers.push(tokio::spawn(async move {
            c.wait_seq(target).await;
            c.events
                .iter()
                .map(|e| (e.seq, serde_json::to_string(&e.body).unwrap()))
                .collect::<Vec<_>>()
        }));
    }
    let mut orders = Vec::new();
    for r in readers {
        orders.push(r.await.unwrap());
    }
    for s in senders {
        s.await.unwrap();
    }
    let first = &orders[0];
    assert_eq!(first.len(), SENDERS * PER_SENDER);
    for (i, o) in orders.iter().enumerate() {
        assert_eq!(o, first, "client {i} saw a different order");
    }
    // Each sender's own messages keep their send order within the room order.
    for s in 0..SENDERS {
        let mine: Vec<&String> = first
            .iter()
            .map(|(_, b)| b)
            .filter(|b| b.contains(&format!("\"s{s}-m")))
            .collect();
        for (n, body) in mine.iter().enumerate() {
            assert!(
                body.contains(&format!("\"s{s}-m{n}\"")),
                "sender {s} out of order at {n}"
            );
        }
    }
}

/// Set where io_uring is not available (an old kernel, a seccomp profile):
/// the tests that check it was used then only check order.
fn no_io_uring() -> bool {
    std::env::var_os("FLASHCAST_TEST_NO_IO_URING").is_some()
}
