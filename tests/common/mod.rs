//! Test harness: a real server on a loopback port with its own data
//! directory, and a real WebSocket client that checks sequence contiguity on
//! every frame it reads.

#![allow(dead_code)]

use std::time::Duration;

use flashcast::clock::ManualClock;
use flashcast::{Server, Settings};
use flashcast_wire::codec::{decode_server, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{Encoding, ErrorCode, Event, Role, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const TOKEN_SECRET: &str = "test-token-secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<Server>,
    /// The server's clock: runs with the system clock until a test
    /// advances it past a deadline (instead of sleeping until then).
    pub clock: ManualClock,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with the demo room, generous join limits (all test
    /// clients share 127.0.0.1) and `extra` flags.
    pub async fn start(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestServer {
        let data = dir.path().to_str().unwrap().to_string();
        let mut args = vec![
            "flashcast",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--admin-key",
            ADMIN_KEY,
            "--token-secret",
            TOKEN_SECRET,
            "--joins-per-ip-per-sec",
            "10000",
            "--joins-per-ip-burst",
            "10000",
            "--shutdown-grace-ms",
            "2000",
            // Tests that stop a server do not wait for a load balancer.
            "--shutdown-drain-ms",
            "0",
        ];
        args.extend_from_slice(extra);
        let settings = Settings::load_from(args).expect("valid test settings");
        let clock = ManualClock::running();
        let server = flashcast::start_with_clock(settings, clock.clock())
            .await
            .expect("server starts");
        TestServer {
            clock,
            addr: server.addr,
            server: Some(server),
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// One sample of `/metrics` by its full name (labels included); 0 when
    /// the series has not appeared yet.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    pub fn token(&self, room: &str, user: &str, role: Role) -> String {
        let server = self.server.as_ref().unwrap();
        server
            .keys()
            .mint(
                &UserId::new(user).unwrap(),
                &format!("{user} name"),
                role,
                &RoomId::new(room).unwrap(),
                3600,
            )
            .0
    }

    pub async fn client(&self, enc: Encoding) -> Client {
        Client::connect(&self.ws_url(), enc).await
    }

    /// A client joined to `room` with a token for `user` in `role`.
    pub async fn joined(&self, enc: Encoding, room: &str, user: &str, role: Role) -> Client {
        let mut c = self.client(enc).await;
        let token = self.token(room, user, role);
        c.join(room, Some(&token), None).await;
        c
    }

    /// A guest joined to the demo room.
    pub async fn guest(&self, enc: Encoding) -> Client {
        let mut c = self.client(enc).await;
        c.join("demo", None, None).await;
        c
    }

    /// An admin API request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.http(path))
            .bearer_auth(ADMIN_KEY)
    }

    /// GETs an admin API path and decodes its JSON body.
    pub async fn admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.admin(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a room through the admin API; returns the response.
    pub async fn create_room(&self, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::POST, "/api/v1/rooms")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        self.server.take().unwrap().shutdown().await;
        self.dir
    }
}

/// What a client read.
// A test-only value read once per frame; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Incoming {
    Msg(ServerMsg),
    Close(u16, String),
    Gone,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub enc: Encoding,
    pub last_seq: u64,
    pub epoch: u64,
    /// Every sequenced event received since join (joined.events excluded).
    pub events: Vec<Event>,
    /// Every non-batch message received (errors, acks, pongs).
    pub others: Vec<ServerMsg>,
    pub reactions: std::collections::BTreeMap<String, u32>,
    pub viewers: Option<u32>,
    pub tallies: Vec<Vec<u32>>,
}

pub fn subprotocol(enc: Encoding) -> &'static str {
    match enc {
        Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
        Encoding::Json => SUBPROTOCOL_JSON,
    }
}

impl Client {
    pub async fn connect(url: &str, enc: Encoding) -> Client {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(subprotocol(enc)),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(subprotocol(enc)),
            "server selects the requested subprotocol"
        );
        Client::from_stream(ws, enc)
    }

    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, enc: Encoding) -> Client {
        Client {
            ws,
            enc,
            last_seq: 0,
            epoch: 0,
            events: Vec::new(),
            others: Vec::new(),
            reactions: Default::default(),
            viewers: None,
            tallies: Vec::new(),
        }
    }

    pub fn frame(&self, v: &Value) -> Message {
        match self.enc {
            Encoding::MsgPack => Message::Binary(rmp_serde::to_vec_named(v).unwrap().into()),
            Encoding::Json => Message::Text(v.to_string().into()),
        }
    }

    pub async fn send(&mut self, v: Value) {
        let frame = self.frame(&v);
        self.ws.send(frame).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Reads one message; panics after WAIT with nothing.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            let bytes = match next {
                None => return Incoming::Gone,
                Some(Err(e)) => {
                    eprintln!("websocket read error: {e}");
                    return Incoming::Gone;
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Incoming::Close(code, reason);
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(
                        self.enc,
                        Encoding::MsgPack,
                        "binary frame on JSON connection"
                    );
                    b.to_vec()
                }
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(
                        self.enc,
                        Encoding::Json,
                        "text frame on MessagePack connection"
                    );
                    t.as_bytes().to_vec()
                }
                Some(Ok(_)) => continue,
            };
            let msg: ServerMsg = decode_server(self.enc, &bytes).unwrap_or_else(|| {
                panic!(
                    "undecodable server frame {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            self.track(&msg);
            return Incoming::Msg(msg);
        }
    }

    /// Checks contiguity and records what arrived.
    fn track(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Joined { seq, epoch, .. } => {
                self.last_seq = *seq;
                self.epoch = *epoch;
            }
            ServerMsg::Batch {
                events,
                viewers,
                reactions,
                tallies,
            } => {
                for e in events {
                    assert_eq!(
                        e.seq,
                        self.last_seq + 1,
                        "gap or duplicate: got seq {} after {}",
                        e.seq,
                        self.last_seq
                    );
                    self.last_seq = e.seq;
                    self.events.push((**e).clone());
                }
                if viewers.is_some() {
                    self.viewers = *viewers;
                }
                for (k, n) in reactions {
                    let key = serde_json::to_value(k)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string();
                    *self.reactions.entry(key).or_default() += n;
                }
                for t in tallies {
                    self.tallies.push(t.counts.clone());
                }
            }
            other => self.others.push(other.clone()),
        }
    }

    /// Sends join and returns the `joined` message.
    pub async fn join(
        &mut self,
        room: &str,
        token: Option<&str>,
        last_seq: Option<u64>,
    ) -> ServerMsg {
        let mut msg = json!({"type": "join", "room": room});
        if let Some(t) = token {
            msg["token"] = json!(t);
        }
        if let Some(s) = last_seq {
            msg["last_seq"] = json!(s);
            msg["epoch"] = json!(self.epoch);
        }
        self.send(msg).await;
        match self.recv().await {
            Incoming::Msg(m @ ServerMsg::Joined { .. }) => m,
            other => panic!("expected joined, got {other:?}"),
        }
    }

    /// Reads until `pred` holds for some received event; returns it.
    pub async fn wait_event(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        loop {
            let before = self.events.len();
            match self.recv().await {
                Incoming::Msg(_) => {}
                other => panic!("connection ended while waiting for an event: {other:?}"),
            }
            if let Some(e) = self.events[before..].iter().find(|e| pred(e)) {
                return e.clone();
            }
        }
    }

    /// Reads until the client has events up to `seq`.
    pub async fn wait_seq(&mut self, seq: u64) {
        while self.last_seq < seq {
            match self.recv().await {
                Incoming::Msg(_) => {}
                other => panic!(
                    "connection ended at seq {} waiting for {seq}: {other:?}",
                    self.last_seq
                ),
            }
        }
    }

    /// Reads until an error frame arrives; returns (code, ref).
    pub async fn expect_error(&mut self, code: ErrorCode) -> Option<u32> {
        loop {
            match self.recv().await {
                Incoming::Msg(ServerMsg::Error {
                    code: c, reference, ..
                }) => {
                    assert_eq!(c, code, "unexpected error code");
                    return reference;
                }
                Incoming::Msg(_) => {}
                other => panic!("expected error {code:?}, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame; asserts its code.
    pub async fn expect_close(&mut self, code: u16) {
        loop {
            match self.recv().await {
                Incoming::Close(c, reason) => {
                    assert_eq!(c, code, "close code (reason {reason:?})");
                    return;
                }
                Incoming::Msg(_) => {}
                Incoming::Gone => panic!("connection dropped without close frame {code}"),
            }
        }
    }

    /// Reads until a reply that is not part of a batch (ack, pong, error).
    pub async fn next_other(&mut self) -> ServerMsg {
        let seen = self.others.len();
        while self.others.len() == seen {
            match self.recv().await {
                Incoming::Msg(_) => {}
                other => panic!("connection ended while waiting for a reply: {other:?}"),
            }
        }
        self.others[seen].clone()
    }

    /// Reads until `pred` holds for this client's accumulated state.
    pub async fn read_until(&mut self, pred: impl Fn(&Client) -> bool) {
        while !pred(self) {
            match self.recv().await {
                Incoming::Msg(_) => {}
                other => panic!("connection ended while waiting: {other:?}"),
            }
        }
    }

    pub async fn chat(&mut self, text: &str) {
        self.send(json!({"type": "chat", "text": text})).await;
    }
}

/// The chat texts in a list of events, in order.
pub fn chat_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            flashcast_wire::EventBody::Chat { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Adds a product with one variant per SKU (price 3,900 USD minor units)
/// to `room`; returns its JSON.
pub async fn create_product(s: &TestServer, room: &str, skus: &[&str]) -> Value {
    let variants: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "options": {"size": "M"}, "price_minor": 3900}))
        .collect();
    let body = json!({
        "title": "Linen shirt",
        "description": "Breathes.",
        "images": ["https://cdn.example/shirt.jpg"],
        "currency": "USD",
        "variants": variants,
    });
    let resp = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room}/products"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "create product");
    resp.json().await.unwrap()
}

/// Starts a sale through the admin API; `extra` fields override the
/// defaults (sale price 1,900, 10 minutes, limit 1).
pub async fn create_sale(s: &TestServer, room: &str, sku: &str, stock: u32, extra: Value) -> Value {
    let mut body = json!({
        "sku": sku,
        "sale_price_minor": 1900,
        "stock": stock,
        "per_user_limit": 1,
        "duration_secs": 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let resp = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room}/sales"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "create sale: {v}");
    v
}

impl Client {
    /// Sends a buy and returns the reply: `Ok(order)` or `Err(code)`.
    pub async fn buy(
        &mut self,
        sku: &str,
        qty: u32,
        key: &str,
        coupon: Option<u64>,
    ) -> Result<Value, ErrorCode> {
        let mut msg = json!({"type": "buy", "sku": sku, "qty": qty, "key": key});
        if let Some(c) = coupon {
            msg["coupon_id"] = json!(c);
        }
        self.send(msg).await;
        match self.next_other().await {
            ServerMsg::Order { order, .. } => Ok(serde_json::to_value(order).unwrap()),
            ServerMsg::Error { code, .. } => Err(code),
            other => panic!("expected order or error, got {other:?}"),
        }
    }

    /// Sends a message that is answered by `ack` or an error.
    pub async fn act(&mut self, msg: Value) -> Result<(), ErrorCode> {
        self.send(msg).await;
        match self.next_other().await {
            ServerMsg::Ack { .. } => Ok(()),
            ServerMsg::Error { code, .. } => Err(code),
            other => panic!("expected ack or error, got {other:?}"),
        }
    }
}
