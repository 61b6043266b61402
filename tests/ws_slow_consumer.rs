//! A viewer that stops reading is told and closed with 4008 while a hundred
//! others keep receiving everything, in order; it then resumes without a gap.
//! Once with one `send` per viewer, once over four fanout workers sending
//! through io_uring (the slow viewer's shard is written by one of them).

mod common;

use common::*;
use flashcast_wire::{Encoding, ErrorCode, Role, ServerMsg};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::MaybeTlsStream;

/// A client whose socket receive buffer is tiny, so the server's writes
/// back up quickly once it stops reading.
async fn tiny_window_client(srv: &TestServer) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(srv.addr).await.unwrap();
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(subprotocol(Encoding::MsgPack)),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    Client::from_stream(ws, Encoding::MsgPack)
}

// One test, the two cases one after the other, so the two servers do not
// compete for the same two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_is_closed_while_others_lose_nothing() {
    // One `send` per viewer.
    let srv = slow_viewer_case(&["--fanout-io-uring", "false"]).await;
    assert_eq!(srv.metric(URING).await, 0, "io_uring was turned off");
    srv.stop().await;

    // Again over four workers, sent through io_uring (the default). The
    // io_uring path must really have run: where the kernel refuses it,
    // say so with FLASHCAST_TEST_NO_IO_URING, or this fails.
    let srv = slow_viewer_case(&["--fanout-threads", "4"]).await;
    let uring = srv.metric(URING).await;
    assert!(
        uring > 0 || std::env::var_os("FLASHCAST_TEST_NO_IO_URING").is_some(),
        "no io_uring submissions: the io_uring path did not run"
    );
    srv.stop().await;
}

const URING: &str = "flashcast_fanout_uring_submissions_total";

/// Runs the case on a server started with `extra` options; returns it.
async fn slow_viewer_case(extra: &[&str]) -> TestServer {
    let mut args = vec![
        // 16 frames (160 ms of 10 ms ticks) of slack for the fast readers,
        // whose tasks share this test's two runtime threads; the slow viewer
        // (600 frames of ~3 KB into a 4 KiB window) overflows it all the same.
        "--outbound-queue",
        "16",
        "--tick-ms",
        "10",
        "--chat-per-sec",
        "100000",
        "--chat-burst",
        "100000",
        "--max-chat-chars",
        "2000",
        "--max-frame-bytes",
        "16384",
        "--write-timeout-ms",
        "60000",
        "--socket-send-buffer",
        "16384",
    ];
    args.extend_from_slice(extra);
    let srv = TestServer::start(&args).await;
    let mut slow = tiny_window_client(&srv).await;
    let token = srv.token("demo", "slowpoke", Role::Viewer);
    slow.join("demo", Some(&token), None).await;
    let start = slow.last_seq;

    const MESSAGES: u64 = 600;
    let target = start + MESSAGES;
    let mut readers = Vec::new();
    for i in 0..100 {
        let enc = if i % 2 == 0 {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        let mut c = srv
            .joined(enc, "demo", &format!("fast-{i}"), Role::Viewer)
            .await;
        readers.push(tokio::spawn(async move {
            c.wait_seq(target).await;
            c.events.len()
        }));
    }

    let mut host = srv
        .joined(Encoding::MsgPack, "demo", "host", Role::Host)
        .await;
    let filler = "ß".repeat(1_500);
    for i in 0..MESSAGES {
        host.chat(&format!("{i} {filler}")).await;
        // The sender reads its own stream too, or it would be the next slow
        // consumer.
        if i % 25 == 24 {
            host.wait_seq(start + i + 1).await;
        }
    }
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            MESSAGES as usize,
            "a fast viewer missed events"
        );
    }

    // The slow viewer reads again: what it got is contiguous (checked on
    // every frame), then it is told why and closed with 4008.
    let reference = loop {
        match slow.recv().await {
            Incoming::Msg(ServerMsg::Error { code, .. }) => break code,
            Incoming::Msg(_) => {}
            other => panic!("expected slow_consumer error, got {other:?}"),
        }
    };
    assert_eq!(reference, ErrorCode::SlowConsumer);
    slow.expect_close(4008).await;
    assert!(slow.last_seq < target, "the slow viewer really fell behind");

    // It resumes from its last seq and gets exactly the rest.
    let mut back = srv.client(Encoding::MsgPack).await;
    back.epoch = slow.epoch;
    match back.join("demo", Some(&token), Some(slow.last_seq)).await {
        ServerMsg::Joined {
            gap, events, seq, ..
        } => {
            assert!(!gap);
            assert_eq!(seq, target);
            let got: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(got, (slow.last_seq + 1..=target).collect::<Vec<_>>());
        }
        _ => unreachable!(),
    }
    srv
}
