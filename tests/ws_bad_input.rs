//! Bad input gets its documented error or close code; the room and the other
//! clients lose nothing.

mod common;

use common::*;
use flashcast_wire::{Encoding, ErrorCode, EventBody, Role, ServerMsg};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// An observer that must see every event, contiguous, while others misbehave.
async fn observer(srv: &TestServer) -> Client {
    srv.joined(Encoding::MsgPack, "demo", "observer", Role::Viewer)
        .await
}

async fn room_still_works(srv: &TestServer, obs: &mut Client, marker: &str) {
    let mut host = srv.joined(Encoding::Json, "demo", "host", Role::Host).await;
    host.chat(marker).await;
    obs.wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == marker))
        .await;
    host.send(json!({"type": "leave"})).await;
}

async fn still_alive(c: &mut Client) {
    c.send(json!({"type": "ping", "t": 42})).await;
    loop {
        match c.next_other().await {
            ServerMsg::Pong { t, .. } => {
                assert_eq!(t, Some(42));
                return;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn malformed_unknown_and_wrong_encoding_frames_get_errors_and_keep_the_connection() {
    let srv = TestServer::start(&[]).await;
    let mut obs = observer(&srv).await;
    for enc in Encoding::ALL {
        let mut c = srv
            .joined(enc, "demo", &format!("bad-{enc:?}"), Role::Viewer)
            .await;
        let garbage = match enc {
            Encoding::MsgPack => Message::Binary(vec![0xc1, 0x00, 0xff].into()),
            Encoding::Json => Message::Text("{\"type\": \"chat\", ".into()),
        };
        c.send_raw(garbage).await;
        c.expect_error(ErrorCode::Malformed).await;

        c.send(json!({"type": "chat", "text": 12, "ref": 3})).await;
        c.expect_error(ErrorCode::Malformed).await;

        c.send(json!({"type": "teleport", "to": "mars"})).await;
        c.expect_error(ErrorCode::UnknownType).await;

        let wrong = match enc {
            Encoding::MsgPack => Message::Text("{\"type\":\"ping\"}".into()),
            Encoding::Json => Message::Binary(
                rmp_serde::to_vec_named(&json!({"type": "ping"}))
                    .unwrap()
                    .into(),
            ),
        };
        c.send_raw(wrong).await;
        c.expect_error(ErrorCode::WrongEncoding).await;

        c.send(json!({"type": "join", "room": "demo"})).await;
        c.expect_error(ErrorCode::AlreadyJoined).await;

        c.chat("   ").await;
        c.expect_error(ErrorCode::InvalidText).await;
        c.chat(&"가".repeat(501)).await;
        c.expect_error(ErrorCode::InvalidText).await;
        c.chat(&"가".repeat(500)).await; // exactly at the limit, in characters not bytes
        obs.wait_event(
            |e| matches!(&e.body, EventBody::Chat { text, .. } if text.chars().count() == 500),
        )
        .await;

        still_alive(&mut c).await;
        c.send(json!({"type": "leave"})).await;
    }
    room_still_works(&srv, &mut obs, "still here after malformed frames").await;
    srv.stop().await;
}

#[tokio::test]
async fn oversize_frames_are_refused_with_1009() {
    let srv = TestServer::start(&["--max-frame-bytes", "1024"]).await;
    let mut obs = observer(&srv).await;
    for enc in Encoding::ALL {
        let mut c = srv.guest(enc).await;
        let text = "x".repeat(1_100);
        c.chat(&text).await;
        c.expect_error(ErrorCode::FrameTooLarge).await;
        c.expect_close(1009).await;
        // Far beyond the limit, the WebSocket layer stops reading; still 1009.
        let mut huge = srv.guest(enc).await;
        huge.chat(&"y".repeat(10_000)).await;
        huge.expect_error(ErrorCode::FrameTooLarge).await;
        huge.expect_close(1009).await;
    }
    room_still_works(&srv, &mut obs, "after oversize").await;
    srv.stop().await;
}

#[tokio::test]
async fn viewers_cannot_send_host_actions() {
    let srv = TestServer::start(&[]).await;
    let mut obs = observer(&srv).await;
    for enc in Encoding::ALL {
        let mut v = srv.joined(enc, "demo", "v", Role::Viewer).await;
        let mut g = srv.guest(enc).await;
        for (i, action) in [
            json!({"type": "announce", "text": "I am the host now"}),
            json!({"type": "ban", "user_id": "observer"}),
            json!({"type": "slow_mode", "seconds": 5}),
            json!({"type": "delete_message", "seq": 1}),
            json!({"type": "end_show"}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut a = action.clone();
            a["ref"] = json!(i);
            v.send(a.clone()).await;
            assert_eq!(v.expect_error(ErrorCode::Forbidden).await, Some(i as u32));
            g.send(a).await;
            assert_eq!(g.expect_error(ErrorCode::Forbidden).await, Some(i as u32));
        }
        still_alive(&mut v).await;
    }
    room_still_works(&srv, &mut obs, "after forbidden actions").await;
    assert!(obs.events.iter().all(|e| !matches!(
        e.body,
        EventBody::Announcement { .. } | EventBody::UserBanned { .. }
    )));
    srv.stop().await;
}

fn expired_token(room: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        name: &'a str,
        role: &'a str,
        room: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = flashcast_wire::now_ms() / 1000;
    let claims = Claims {
        sub: "old",
        name: "Old",
        role: "viewer",
        room,
        exp: now - 60,
        iat: now - 120,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn bad_tokens_and_rooms_are_refused_with_their_close_codes() {
    let srv = TestServer::start(&[]).await;
    let mut obs = observer(&srv).await;
    let resp = srv
        .create_room(json!({"id": "private", "title": "Members only", "allow_guests": false}))
        .await;
    assert_eq!(resp.status(), 201);

    let other_secret = flashcast::auth::TokenKeys::new(b"not the server's secret")
        .mint(
            &flashcast_wire::ids::UserId::new("mallory").unwrap(),
            "Mallory",
            Role::Host,
            &flashcast_wire::ids::RoomId::new("demo").unwrap(),
            3600,
        )
        .0;
    let cases: Vec<(serde_json::Value, ErrorCode, u16)> = vec![
        (
            json!({"type": "join", "room": "demo", "token": "garbage"}),
            ErrorCode::Unauthorized,
            4001,
        ),
        (
            json!({"type": "join", "room": "demo", "token": other_secret}),
            ErrorCode::Unauthorized,
            4001,
        ),
        (
            json!({"type": "join", "room": "demo", "token": expired_token("demo")}),
            ErrorCode::TokenExpired,
            4002,
        ),
        (
            json!({"type": "join", "room": "demo", "token": srv.token("private", "v", Role::Viewer)}),
            ErrorCode::Forbidden,
            4003,
        ),
        (
            json!({"type": "join", "room": "nowhere"}),
            ErrorCode::RoomNotFound,
            4004,
        ),
        (
            json!({"type": "join", "room": "private"}),
            ErrorCode::Unauthorized,
            4001,
        ),
    ];
    for enc in Encoding::ALL {
        for (join, error, close) in &cases {
            let mut c = srv.client(enc).await;
            c.send(join.clone()).await;
            c.expect_error(*error).await;
            c.expect_close(*close).await;
        }
    }
    // A token the server minted (valid for an hour) expires on the
    // server's clock.
    let short = srv.token("demo", "brief", Role::Viewer);
    srv.clock.advance(std::time::Duration::from_secs(3_601));
    let mut late = srv.client(Encoding::Json).await;
    late.send(json!({"type": "join", "room": "demo", "token": short}))
        .await;
    late.expect_error(ErrorCode::TokenExpired).await;
    late.expect_close(4002).await;
    // A valid token for the private room works.
    let mut ok = srv
        .joined(Encoding::Json, "private", "member", Role::Viewer)
        .await;
    ok.send(json!({"type": "leave"})).await;
    room_still_works(&srv, &mut obs, "after bad tokens").await;
    srv.stop().await;
}

#[tokio::test]
async fn messages_before_join_and_join_timeout() {
    let srv = TestServer::start(&["--join-timeout-ms", "500"]).await;
    let mut c = srv.client(Encoding::Json).await;
    c.chat("hello?").await;
    c.expect_error(ErrorCode::NotJoined).await;
    c.send(json!({"type": "ping"})).await;
    assert!(matches!(c.next_other().await, ServerMsg::Pong { .. }));
    // No join within the timeout.
    c.expect_error(ErrorCode::NotJoined).await;
    c.expect_close(4011).await;
    srv.stop().await;
}

#[tokio::test]
async fn chat_flood_is_rate_limited_then_closed_as_flood() {
    let srv = TestServer::start(&[]).await;
    let mut obs = observer(&srv).await;
    for enc in Encoding::ALL {
        let mut v = srv
            .joined(enc, "demo", &format!("flooder-{enc:?}"), Role::Viewer)
            .await;
        for i in 0..8 {
            v.chat(&format!("flood {i}")).await;
        }
        // The burst (5) passes, the rest are refused with a retry hint.
        let code = loop {
            match v.recv().await {
                Incoming::Msg(ServerMsg::Error {
                    code,
                    retry_after_ms,
                    ..
                }) => {
                    assert!(retry_after_ms.is_some_and(|ms| ms > 0));
                    break code;
                }
                Incoming::Msg(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(code, ErrorCode::RateLimited);
        // Keep flooding: after the rejection budget the connection is closed.
        for i in 0..60 {
            let frame = v.frame(&json!({"type": "chat", "text": format!("more {i}")}));
            if v.ws.send(frame).await.is_err() {
                break;
            }
        }
        v.expect_close(4029).await;
    }
    obs.read_until(|c| {
        chat_texts(&c.events)
            .iter()
            .filter(|t| t.starts_with("flood "))
            .count()
            == 10
    })
    .await;
    room_still_works(&srv, &mut obs, "after the flood").await;
    let flood_accepted: Vec<String> = chat_texts(&obs.events)
        .into_iter()
        .filter(|t| t.starts_with("flood "))
        .collect();
    assert_eq!(
        flood_accepted.len(),
        10,
        "5 per flooder passed the burst, nothing else"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_client_close_is_answered_cleanly() {
    use tokio_tungstenite::tungstenite::protocol::{
        frame::coding::CloseCode as WsCode, CloseFrame,
    };
    let srv = TestServer::start(&[]).await;
    for joined in [false, true] {
        let mut c = srv.client(Encoding::Json).await;
        if joined {
            c.join("demo", None, None).await;
        }
        c.ws.close(Some(CloseFrame {
            code: WsCode::from(4000),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match c.recv().await {
            Incoming::Close(code, _) => {
                assert_eq!(code, 4000, "the server echoes the client's code")
            }
            other => panic!("expected the close to be answered, got {other:?}"),
        }
    }
    srv.stop().await;
}

/// The WebSocket handshake is checked by hand (the server keeps the socket
/// after the upgrade): what is not a valid upgrade gets an HTTP answer that
/// says why, and a valid one still works next to it.
#[tokio::test]
async fn bad_upgrade_requests_get_http_errors() {
    let srv = TestServer::start(&[]).await;
    let http = reqwest::Client::new();
    let plain = http.get(srv.http("/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 426, "a plain GET is told to upgrade");
    let upgrade = |protocols: &'static str, version: &'static str| {
        http.get(srv.http("/ws"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version)
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", protocols)
            .send()
    };
    let unknown = upgrade("chat.v9, mqtt", "13").await.unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(unknown.text().await.unwrap().contains("flashcast.json.v1"));
    let old = upgrade("flashcast.json.v1", "8").await.unwrap();
    assert_eq!(old.status(), 400);
    let post = http.post(srv.http("/ws")).send().await.unwrap();
    assert!(
        post.status() == 405 || post.status() == 426,
        "got {}",
        post.status()
    );
    // The sample key of RFC 6455, section 1.3, and the subprotocol chosen
    // from a list (second choice offered first: ours is picked in order).
    let ok = upgrade("chat.v9, flashcast.json.v1", "13").await.unwrap();
    assert_eq!(ok.status(), 101);
    assert_eq!(
        ok.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(ok.headers()["sec-websocket-protocol"], "flashcast.json.v1");
    let mut obs = srv
        .joined(Encoding::Json, "demo", "after", Role::Viewer)
        .await;
    still_alive(&mut obs).await;
}
