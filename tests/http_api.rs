//! The REST admin API, health and metrics, node limits, persistence across a
//! restart, and graceful shutdown.

mod common;

use common::*;
use flashcast_wire::{Encoding, ErrorCode, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("JSON error body");
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string()
}

#[tokio::test]
async fn admin_api_requires_the_key_and_manages_rooms() {
    let srv = TestServer::start(&[]).await;
    let rooms = srv.http("/api/v1/rooms");

    let resp = http().get(&rooms).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(resp).await, "unauthorized");
    let resp = http()
        .get(&rooms)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = srv
        .create_room(json!({"id": "spring-sale", "title": "Spring sale"}))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let room: Value = resp.json().await.unwrap();
    assert_eq!(room["id"], "spring-sale");
    assert_eq!(room["allow_guests"], true);
    assert_eq!(room["closed"], false);

    let resp = srv
        .create_room(json!({"id": "spring-sale", "title": "again"}))
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = srv
        .create_room(json!({"id": "bad id!", "title": "x"}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "invalid_argument");
    let resp = srv.create_room(json!({"title": ""})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = srv
        .admin(Method::POST, "/api/v1/rooms")
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "malformed");
    let resp = srv
        .create_room(json!({"title": "t", "colour": "red"}))
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    let resp = srv.create_room(json!({"title": "x".repeat(100_000)})).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let resp = srv.create_room(json!({"title": "Generated id"})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let generated: Value = resp.json().await.unwrap();
    assert!(generated["id"].as_str().unwrap().starts_with("room-"));

    let list: Vec<Value> = srv.admin_get("/api/v1/rooms").await;
    let ids: Vec<&str> = list.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"demo") && ids.contains(&"spring-sale"));

    let resp = srv
        .admin(Method::GET, "/api/v1/rooms/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "room_not_found");

    let mut viewer = srv
        .joined(Encoding::Json, "spring-sale", "v", Role::Viewer)
        .await;
    let one: Value = srv.admin_get("/api/v1/rooms/spring-sale").await;
    assert_eq!(one["viewers"], 1);

    let resp = srv
        .admin(Method::DELETE, "/api/v1/rooms/spring-sale")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    viewer.expect_close(4010).await;
    let resp = srv
        .admin(Method::DELETE, "/api/v1/rooms/spring-sale")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(resp).await, "room_closed");
    srv.stop().await;
}

#[tokio::test]
async fn minted_tokens_work_and_bad_requests_are_refused() {
    let srv = TestServer::start(&["--max-token-ttl-secs", "3600"]).await;
    let tokens = srv.http("/api/v1/tokens");
    let resp = srv.admin(Method::POST, "/api/v1/tokens")
        .json(&json!({"room": "demo", "user_id": "mod-1", "name": "Mina", "role": "moderator", "ttl_secs": 600}))
        .send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let minted: Value = resp.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_string();
    assert!(minted["expires_at"].as_u64().unwrap() > flashcast_wire::now_ms() / 1000);

    let mut c = srv.client(Encoding::MsgPack).await;
    match c.join("demo", Some(&token), None).await {
        flashcast_wire::ServerMsg::Joined { you, .. } => {
            assert_eq!(you.id.as_str(), "mod-1");
            assert_eq!(&*you.name, "Mina");
            assert_eq!(you.role, Role::Moderator);
        }
        _ => unreachable!(),
    }

    for (body, status, code) in [
        (
            json!({"room": "demo", "user_id": "g", "name": "G", "role": "guest"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"room": "demo", "user_id": "g", "name": "G", "role": "emperor"}),
            400,
            "malformed",
        ),
        (
            json!({"room": "demo", "user_id": "has space", "name": "G", "role": "viewer"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"room": "demo", "user_id": "g", "name": "", "role": "viewer"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"room": "demo", "user_id": "g", "name": "G", "role": "viewer", "ttl_secs": 3601}),
            400,
            "invalid_argument",
        ),
        (
            json!({"room": "nowhere", "user_id": "g", "name": "G", "role": "viewer"}),
            404,
            "room_not_found",
        ),
    ] {
        let resp = http()
            .post(&tokens)
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        assert_eq!(error_code(resp).await, code, "{body}");
    }
    let resp = http().post(&tokens).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    srv.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let srv = TestServer::start(&[]).await;
    assert_eq!(
        http()
            .get(srv.http("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(srv.http("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut c = srv
        .joined(Encoding::MsgPack, "demo", "m", Role::Viewer)
        .await;
    c.chat("counted").await;
    c.wait_event(|_| true).await;
    c.send(json!({"type": "teleport"})).await;
    c.expect_error(ErrorCode::UnknownType).await;
    let text = http()
        .get(srv.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "flashcast_connections 1",
        "flashcast_rooms 1",
        "flashcast_viewers 1",
        "flashcast_events_in_total{type=\"chat\"} 1",
        "flashcast_events_out_total{kind=\"chat\"} 1",
        "flashcast_rejected_total{reason=\"unknown_type\"} 1",
        "flashcast_tick_seconds_count",
        "flashcast_fanout_batch_events_count",
        "flashcast_queue_overflows_total 0",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn node_limits_refuse_cleanly() {
    // Joins per address.
    let srv =
        TestServer::start(&["--joins-per-ip-per-sec", "1", "--joins-per-ip-burst", "2"]).await;
    let _a = srv.client(Encoding::Json).await;
    let _b = srv.client(Encoding::Json).await;
    match tokio_tungstenite::connect_async(srv.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
    }
    srv.stop().await;

    // Connections per node.
    let srv = TestServer::start(&["--max-connections", "2"]).await;
    let _a = srv.client(Encoding::Json).await;
    let _b = srv.client(Encoding::Json).await;
    match tokio_tungstenite::connect_async(srv.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    srv.stop().await;

    // Viewers per room, and rooms per node.
    let srv = TestServer::start(&["--max-viewers-per-room", "1", "--max-rooms", "1"]).await;
    let _first = srv.guest(Encoding::Json).await;
    let mut second = srv.client(Encoding::Json).await;
    second.send(json!({"type": "join", "room": "demo"})).await;
    second.expect_error(ErrorCode::RoomFull).await;
    second.expect_close(4009).await;
    let resp = srv.create_room(json!({"title": "one too many"})).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(resp).await, "limit_reached");
    srv.stop().await;
}

#[tokio::test]
async fn rooms_bans_and_closed_shows_survive_a_restart() {
    let srv = TestServer::start(&[]).await;
    for (id, title) in [("kept", "Kept room"), ("ended", "Ended room")] {
        let resp = srv.create_room(json!({"id": id, "title": title})).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let mut host = srv.joined(Encoding::Json, "kept", "host", Role::Host).await;
    // Several at once, so a ban announced before its commit would show.
    for i in 0..20 {
        host.send(json!({"type": "ban", "user_id": format!("troll-{i}")}))
            .await;
    }
    host.send(json!({"type": "ban", "user_id": "troll"})).await;
    host.wait_event(|e| {
        matches!(&e.body, flashcast_wire::EventBody::UserBanned { user_id } if user_id.as_str() == "troll")
    })
    .await;
    // Announced means durable: the row is in the file already.
    let db = rusqlite::Connection::open(srv.dir.path().join("flashcast.db")).unwrap();
    let stored = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        stored("SELECT count(*) FROM bans WHERE room = 'kept'"),
        21,
        "every announced ban is committed"
    );
    let resp = srv
        .admin(Method::DELETE, "/api/v1/rooms/ended")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        stored("SELECT count(*) FROM rooms WHERE id = 'ended' AND closed_at IS NOT NULL"),
        1,
        "answered means durable: the close is committed"
    );
    drop(db);
    let dir = srv.stop().await;
    host.expect_close(1012).await;

    let srv = TestServer::start_in(dir, &[]).await;
    let one: Value = srv.admin_get("/api/v1/rooms/kept").await;
    assert_eq!(one["title"], "Kept room");
    assert_eq!(one["closed"], false);
    let mut troll = srv.client(Encoding::Json).await;
    let token = srv.token("kept", "troll", Role::Viewer);
    troll
        .send(json!({"type": "join", "room": "kept", "token": token}))
        .await;
    troll.expect_close(4003).await;
    let mut late = srv.client(Encoding::Json).await;
    late.send(json!({"type": "join", "room": "ended"})).await;
    late.expect_close(4010).await;
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_tells_viewers_to_reconnect_elsewhere() {
    let srv = TestServer::start(&[]).await;
    let mut joined = srv.guest(Encoding::MsgPack).await;
    let mut waiting = srv.client(Encoding::Json).await; // connected, not joined yet
    let addr = srv.addr;
    let stopping = tokio::spawn(srv.stop());
    joined.expect_error(ErrorCode::ShuttingDown).await;
    joined.expect_close(1012).await;
    waiting.expect_error(ErrorCode::ShuttingDown).await;
    waiting.expect_close(1012).await;
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
}

/// `start_sale` and `drop_coupon` are WebSocket messages too, where unknown
/// fields are ignored; as REST bodies they refuse them, as every body does.
#[tokio::test]
async fn sale_and_coupon_bodies_refuse_unknown_fields() {
    let srv = TestServer::start(&[]).await;
    create_product(&srv, "demo", &["SHIRT-M"]).await;
    let sale = json!({"sku": "SHIRT-M", "sale_price_minor": 1900, "stock": 5,
        "per_user_limit": 1, "duration_secs": 600});
    let coupon = json!({"count": 5, "discount": {"kind": "percent", "percent": 10},
        "expires_in_secs": 60});
    for (path, body) in [("sales", &sale), ("coupons", &coupon)] {
        let path = format!("/api/v1/rooms/demo/{path}");
        let mut extra = body.clone();
        extra["colour"] = json!("red");
        let resp = srv
            .admin(Method::POST, &path)
            .json(&extra)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let error: Value = resp.json().await.unwrap();
        assert_eq!(error["error"]["code"], "malformed", "{path}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("colour"), "{message}");
        let resp = srv
            .admin(Method::POST, &path)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{path}");
    }
    srv.stop().await;
}

/// Reads one HTTP/1.1 answer: (status line and headers, body).
async fn read_answer(tcp: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one raw HTTP/1.1 request and reads its answer.
async fn exchange(tcp: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_answer(tcp).await
}

#[tokio::test]
async fn shutdown_drains_before_closing_the_listener() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let drain = std::time::Duration::from_millis(1_500);
    let srv = TestServer::start(&["--shutdown-drain-ms", "1500"]).await;
    let addr = srv.addr;
    let mut viewer = srv.guest(Encoding::Json).await;
    // A keep-alive connection, opened before shutdown and used during it.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut kept, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    // A request whose body is still on its way when the listener closes.
    let body = json!({"id": "late-show", "title": "Late"}).to_string();
    let mut late = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    );
    late.write_all(request.as_bytes()).await.unwrap();

    let began = std::time::Instant::now();
    let stopping = tokio::spawn(srv.stop());
    viewer.expect_error(ErrorCode::ShuttingDown).await;
    viewer.expect_close(1012).await;

    // The drain: new connections are still accepted, and told what the
    // protocol says.
    let resp = http()
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("still accepting during the drain");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text().await.unwrap(), "shutting down");
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let (head, body_text) = exchange(
        &mut fresh,
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let error: Value = serde_json::from_str(&body_text).unwrap();
    assert_eq!(error["error"]["code"], "shutting_down");
    // The keep-alive connection is answered, and asked to close.
    let (head, _) = exchange(&mut kept, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(!stopping.is_finished(), "still draining");

    // Then the listener closes, not before the drain has run.
    while TcpStream::connect(addr).await.is_ok() {
        assert!(began.elapsed() < WAIT, "the listener never closed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        began.elapsed() >= drain,
        "the listener closed {:?} after shutdown began",
        began.elapsed()
    );
    // The request in flight is still answered, and shutdown waits for it.
    assert!(!stopping.is_finished(), "shutdown waits for the request");
    late.write_all(&body.as_bytes()[5..]).await.unwrap();
    let (head, created) = read_answer(&mut late).await;
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    assert!(created.contains("late-show"), "{created}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn ended_rooms_are_remembered_up_to_max_rooms() {
    let srv = TestServer::start(&["--max-rooms", "2", "--demo-room", "false"]).await;
    for i in 0..4 {
        let resp = srv
            .create_room(json!({"id": format!("show-{i}"), "title": "t"}))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let resp = srv
            .admin(Method::DELETE, &format!("/api/v1/rooms/show-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        // The next room is created later (rooms are forgotten oldest first).
        srv.clock.advance(std::time::Duration::from_millis(5));
    }
    let list: Vec<Value> = srv.admin_get("/api/v1/rooms").await;
    assert!(list.len() <= 3, "ended rooms are bounded: {list:?}");
    let mut newest = srv.client(Encoding::Json).await;
    newest.send(json!({"type": "join", "room": "show-3"})).await;
    newest.expect_close(4010).await;
    let mut oldest = srv.client(Encoding::Json).await;
    oldest.send(json!({"type": "join", "room": "show-0"})).await;
    oldest.expect_close(4004).await;
    srv.stop().await;
}
