//! One WebSocket connection: the handshake (encoding by subprotocol), `join`,
//! then a single task that reads client frames and answers them. The room's
//! batches do not pass through this task: the transport's fanout workers
//! write them to the socket (`transport`); the task only writes a backlog
//! when the socket was full, and closes the connection when told to.
//!
//! Checks that need no room state happen here, before anything is queued to
//! the room: frame size, decoding, role, per-user rate, text rules. A frame
//! is decoded once into a typed message (`flashcast_wire::client`) and routed
//! by its group: connection messages are answered here, room messages go to
//! the room's queue, shop messages to the commerce engine.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::DefaultDirectRateLimiter;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use super::{api_error, AppState};
use crate::auth::TokenError;
use crate::commerce::Answer;
use crate::engage::text::clean_action_text;
use crate::engage::Rejection;
use crate::limits;
use crate::recording::recorder::ConnRecorder;
use crate::room::{ConnId, JoinRequest, RoomHandle};
use crate::transport::socket::SocketConfig;
use crate::transport::{Outbox, Push, Wake, WsSocket};
use crate::ws_frame;
use flashcast_wire::client::{
    ClaimCoupon, ClientFrame, ClientMsg, ConnMsg, EndSale, Join, PinProduct, Ping, React, RoomMsg,
    ShopMsg,
};
use flashcast_wire::codec::{SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use flashcast_wire::commerce::CouponView;
use flashcast_wire::commerce::OrderView;
use flashcast_wire::ids::UserId;
use flashcast_wire::{CloseCode, Encoding, ErrorCode, Role, ServerMsg, UserRef};

/// `GET /ws`: refuses early (HTTP status) when the node is full, shutting
/// down, or the address joins too fast; otherwise upgrades (RFC 6455) and
/// keeps the TCP socket, so the transport can write to it directly.
pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let handshake = match Handshake::check(req.method(), req.headers()) {
        Ok(h) => h,
        Err(refusal) => return refusal.into_response(),
    };
    if app.is_shutting_down() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "server is shutting down",
        );
    }
    if let Err(wait) = limits::check(&app.limiters.joins, &peer.ip()) {
        app.metrics.reject(ErrorCode::RateLimited);
        let mut resp = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections from this address",
        );
        let secs = wait.as_secs().max(1).to_string();
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_str(&secs).expect("digits"));
        return resp;
    }
    let Some(slot) = app.try_connection_slot() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitReached,
            "this node is at max_connections",
        );
    };
    if handshake.offered_protocols && handshake.protocol.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "unsupported subprotocol: offer flashcast.msgpack.v1 or flashcast.json.v1",
        )
            .into_response();
    }
    let Some(encoding) = Encoding::from_subprotocol(handshake.protocol) else {
        unreachable!("only our own subprotocols are selected");
    };
    let max_frame = app.limits.max_frame_bytes;
    let config = WebSocketConfig::default()
        // Frames up to 4x the limit are read and refused politely; beyond
        // that the WebSocket layer itself stops reading.
        .max_message_size(Some(max_frame * 4))
        .max_frame_size(Some(max_frame * 4))
        .read_buffer_size(app.limits.ws_buffer_bytes);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // The server loop (`http::serve`) hands hyper the bare socket, so
        // it comes back here whole.
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => return tracing::error!("upgraded connection is not a TCP socket"),
        };
        let id = app.next_conn_id();
        let config = SocketConfig {
            ws: config,
            max_backlog: app.limits.outbound_queue,
            write_timeout: Duration::from_millis(app.limits.write_timeout_ms),
        };
        let socket = WsSocket::new(
            parts.io.into_inner(),
            parts.read_buf.to_vec(),
            config,
            id,
            app.transport.clone(),
        );
        let conn = Connection {
            id,
            rejects: app.limiters.rejects(),
            app,
            encoding,
            recorder: None,
        };
        conn.run(socket).await;
        drop(slot);
    });
    handshake.response()
}

/// The client's half of the opening handshake, checked.
struct Handshake {
    accept: String,
    /// The first subprotocol offered that we speak, if any was offered.
    protocol: Option<&'static str>,
    offered_protocols: bool,
}

impl Handshake {
    fn check(method: &Method, headers: &HeaderMap) -> Result<Self, (StatusCode, &'static str)> {
        let refuse = |status: StatusCode, why: &'static str| (status, why);
        if method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "WebSocket upgrades use GET",
            ));
        }
        let has_token = |name: header::HeaderName, token: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket: send Connection: upgrade and Upgrade: websocket",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let offered: Vec<&str> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let protocol = [SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON]
            .into_iter()
            .find(|ours| offered.contains(ours));
        Ok(Self {
            accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            protocol,
            offered_protocols: !offered.is_empty(),
        })
    }

    fn response(&self) -> Response {
        let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64"),
        );
        if let Some(p) = self.protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        resp
    }
}

/// A WebSocket connection slot, counted against `max_connections`.
pub struct ConnectionSlot(AppState);

impl ConnectionSlot {
    pub(super) fn new(app: AppState) -> Self {
        app.metrics.connections.inc();
        Self(app)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

struct Connection {
    id: ConnId,
    app: AppState,
    encoding: Encoding,
    rejects: DefaultDirectRateLimiter,
    /// This connection's side of its room's recording, once joined.
    /// Dropped with the connection, which records its `leave`.
    recorder: Option<ConnRecorder>,
}

/// What the read side decided about the connection.
enum Flow {
    Continue,
    Close(CloseCode),
}

/// A joined connection's room and identity.
struct Joined {
    room: RoomHandle,
    user: UserRef,
}

impl Connection {
    async fn run(mut self, mut socket: WsSocket) {
        let join_timeout = Duration::from_millis(self.app.limits.join_timeout_ms);
        let joined = match tokio::time::timeout(join_timeout, self.await_join(&mut socket)).await {
            Ok(Ok(joined)) => joined,
            Ok(Err(Some(code))) => return self.close(&mut socket, code).await,
            Ok(Err(None)) => return,
            Err(_) => return self.close(&mut socket, CloseCode::JoinTimeout).await,
        };
        let room = joined.room.clone();
        if let Some(code) = self.serve(&mut socket, joined).await {
            self.close(&mut socket, code).await;
        }
        room.leave(self.id);
    }

    /// Reads until a valid `join`. `Err(None)`: the client went away.
    async fn await_join(&mut self, socket: &mut WsSocket) -> Result<Joined, Option<CloseCode>> {
        let mut shutdown = self.app.shutdown.subscribe();
        let outbox = socket.outbox.clone();
        loop {
            let msg = tokio::select! {
                msg = socket.recv() => msg,
                wake = outbox.woken() => match wake {
                    // Replies (pongs, errors) that found the socket full.
                    Wake::Backlog => {
                        if !self.drain(socket).await {
                            return Err(None);
                        }
                        continue;
                    }
                    Wake::Close(code) => return Err(Some(code)),
                },
                _ = shutting_down(&mut shutdown) => return Err(Some(CloseCode::ServiceRestart)),
            };
            let msg = match msg {
                Some(Err(e)) => return Err(read_error_close(e)),
                Some(Ok(Message::Close(_))) => {
                    answer_close(socket).await;
                    return Err(None);
                }
                None => return Err(None),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => m,
            };
            let frame = match self.decode(socket, &msg).await {
                Ok(frame) => frame,
                Err(Flow::Close(code)) => return Err(Some(code)),
                Err(Flow::Continue) => continue,
            };
            match frame.msg {
                ClientMsg::Conn(ConnMsg::Join(join)) => return self.join(join).await.map_err(Some),
                ClientMsg::Conn(ConnMsg::Ping(Ping { t })) => {
                    if !self
                        .send(
                            socket,
                            &ServerMsg::Pong {
                                t,
                                server_time: self.app.clock.now_ms(),
                            },
                        )
                        .await
                    {
                        return Err(None);
                    }
                }
                ClientMsg::Conn(ConnMsg::Leave(_)) | ClientMsg::Room(_) | ClientMsg::Shop(_) => {
                    let r = Rejection::new(ErrorCode::NotJoined, "send join first");
                    if let Flow::Close(code) = self.reject(socket, r, frame.reference).await {
                        return Err(Some(code));
                    }
                }
            }
        }
    }

    async fn join(&mut self, join: Join) -> Result<Joined, CloseCode> {
        let Join {
            room: room_id,
            token,
            last_seq,
            epoch,
        } = join;
        let reject = |code: CloseCode| {
            if let Some(e) = code.error_code() {
                self.app.metrics.reject(e);
            }
            code
        };
        let room = self
            .app
            .registry
            .get(&room_id)
            .ok_or_else(|| reject(CloseCode::RoomNotFound))?;
        let user = match token {
            Some(token) => {
                let claims = self.app.keys.verify(&token).map_err(|e| {
                    reject(match e {
                        TokenError::Expired => CloseCode::TokenExpired,
                        TokenError::Invalid => CloseCode::Unauthorized,
                    })
                })?;
                if claims.room != room_id {
                    return Err(reject(CloseCode::Forbidden));
                }
                claims.user_ref()
            }
            None if room.shared.info.allow_guests => guest(),
            None => return Err(reject(CloseCode::Unauthorized)),
        };
        room.join(JoinRequest {
            conn: self.id,
            user: user.clone(),
            encoding: self.encoding,
            last_seq,
            epoch,
        })
        .await
        .map_err(reject)?;
        self.app
            .metrics
            .events_in
            .with_label_values(&["join"])
            .inc();
        self.recorder = Some(self.app.recordings.connection(&room, user.role));
        Ok(Joined { room, user })
    }

    /// The joined loop. Returns the close code to send, or None if the
    /// socket is already gone.
    async fn serve(&mut self, socket: &mut WsSocket, j: Joined) -> Option<CloseCode> {
        let mut shutdown = self.app.shutdown.subscribe();
        let outbox = socket.outbox.clone();
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let msg = match incoming {
                        Some(Err(e)) => return read_error_close(e),
                        Some(Ok(Message::Close(_))) => {
                            answer_close(socket).await;
                            return None;
                        }
                        None => return None,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(m)) => m,
                    };
                    if let Flow::Close(code) = self.on_frame(socket, &j, msg).await {
                        return Some(code);
                    }
                }
                wake = outbox.woken() => match wake {
                    Wake::Backlog => {
                        if !self.drain(socket).await {
                            return None;
                        }
                    }
                    Wake::Close(code) => {
                        if code == CloseCode::SlowConsumer {
                            self.app.metrics.queue_overflows.inc();
                        }
                        return Some(code);
                    }
                },
                _ = recording_started(&mut self.recorder) => {
                    if let Some(recorder) = &mut self.recorder {
                        recorder.touch();
                    }
                }
                _ = shutting_down(&mut shutdown) => return Some(CloseCode::ServiceRestart),
            }
        }
    }

    async fn on_frame(&mut self, socket: &mut WsSocket, j: &Joined, msg: Message) -> Flow {
        let frame = match self.decode(socket, &msg).await {
            Ok(frame) => frame,
            Err(flow) => return flow,
        };
        let ClientFrame { reference, msg } = frame;
        // Every decoded action, before the room decides on it: a replay
        // reproduces the load, not the outcomes.
        if let Some(recorder) = &mut self.recorder {
            recorder.record(&msg);
        }
        let role = msg.required_role();
        if role > j.user.role {
            let r = Rejection::new(ErrorCode::Forbidden, forbidden(msg.kind(), role));
            return self.reject(socket, r, reference).await;
        }
        let result = match msg {
            ClientMsg::Conn(ConnMsg::Join(_)) => Err(Rejection::new(
                ErrorCode::AlreadyJoined,
                "this connection has already joined",
            )),
            ClientMsg::Conn(ConnMsg::Leave(_)) => return Flow::Close(CloseCode::Normal),
            ClientMsg::Conn(ConnMsg::Ping(Ping { t })) => {
                let pong = ServerMsg::Pong {
                    t,
                    server_time: self.app.clock.now_ms(),
                };
                return if self.send(socket, &pong).await {
                    Flow::Continue
                } else {
                    Flow::Close(CloseCode::Normal)
                };
            }
            // Counted on the spot, never queued: a tick sends the totals.
            ClientMsg::Room(RoomMsg::React(React { kind })) => {
                limits::check(&self.app.limiters.reactions, &j.user.id)
                    .map_err(rate_limited)
                    .map(|()| {
                        j.room.react(kind);
                        self.app
                            .metrics
                            .events_in
                            .with_label_values(&["react"])
                            .inc();
                    })
            }
            ClientMsg::Room(mut msg) => {
                let rate = match &msg {
                    RoomMsg::Chat(_) | RoomMsg::Ask(_) => {
                        limits::check(&self.app.limiters.chat, &j.user.id).map_err(rate_limited)
                    }
                    _ => Ok(()),
                };
                rate.and_then(|()| clean_action_text(&mut msg, &self.app.limits))
                    .and_then(|()| j.room.act(self.id, j.user.clone(), reference, msg))
            }
            ClientMsg::Shop(msg) => {
                let kind = msg.kind();
                match self.shop(j, &socket.outbox, reference, msg).await {
                    Ok(reply) => {
                        self.app.metrics.events_in.with_label_values(&[kind]).inc();
                        let sent = match reply {
                            Some(reply) => self.send(socket, &reply).await,
                            None => true, // answered from the commit
                        };
                        return if sent {
                            Flow::Continue
                        } else {
                            Flow::Close(CloseCode::Normal)
                        };
                    }
                    Err(rejection) => Err(rejection),
                }
            }
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(rejection) => self.reject(socket, rejection, reference).await,
        }
    }

    /// Buys, coupon claims and the host's shop actions, answered after the
    /// durable commit: buys and claims straight from the commit (see
    /// `commerce::Answer`; then there is nothing left to send, `None`), the
    /// host's actions by the connection. What every viewer sees (stock,
    /// sales, coupons, the pinned card) follows as room events.
    async fn shop(
        &self,
        j: &Joined,
        outbox: &Arc<Outbox>,
        reference: Option<u32>,
        msg: ShopMsg,
    ) -> Result<Option<ServerMsg>, Rejection> {
        let commerce = &self.app.commerce;
        let room = j.room.id();
        if j.room.shared.is_closed() {
            return Err(Rejection::new(ErrorCode::RoomClosed, "the show has ended"));
        }
        let ack = ServerMsg::Ack { reference };
        let result = match msg {
            ShopMsg::Buy(buy) => {
                limits::check(&self.app.limiters.buys, &j.user.id).map_err(rate_limited)?;
                let answer = self.answer(outbox, move |order: &OrderView| ServerMsg::Order {
                    reference,
                    order: order.clone(),
                });
                commerce.buy(room, &j.user, buy, answer).await.map(|_| None)
            }
            ShopMsg::ClaimCoupon(ClaimCoupon { coupon_id }) => {
                limits::check(&self.app.limiters.buys, &j.user.id).map_err(rate_limited)?;
                let answer = self.answer(outbox, move |coupon: &CouponView| {
                    ServerMsg::CouponClaimed {
                        reference,
                        coupon: coupon.clone(),
                    }
                });
                commerce
                    .claim_coupon(room, &j.user, coupon_id, answer)
                    .await
                    .map(|_| None)
            }
            ShopMsg::PinProduct(PinProduct { product_id }) => {
                commerce.pin(room, product_id).await.map(|()| Some(ack))
            }
            ShopMsg::StartSale(spec) => commerce
                .start_sale(room, spec.into())
                .await
                .map(|_| Some(ack)),
            ShopMsg::EndSale(EndSale { sale_id }) => {
                commerce.end_sale(room, sale_id).await.map(|_| Some(ack))
            }
            ShopMsg::DropCoupon(spec) => commerce
                .drop_coupon(room, spec.into())
                .await
                .map(|_| Some(ack)),
        };
        result.map_err(|e| Rejection::new(e.code, e.message))
    }

    /// Size check then decode; a bad frame is answered here.
    async fn decode(&mut self, socket: &mut WsSocket, msg: &Message) -> Result<ClientFrame, Flow> {
        let len = match msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        if len > self.app.limits.max_frame_bytes {
            self.app.metrics.reject(ErrorCode::FrameTooLarge);
            return Err(Flow::Close(CloseCode::MessageTooBig));
        }
        match ws_frame::decode(self.encoding, msg) {
            Ok(frame) => Ok(frame),
            Err(e) => Err(self
                .reject(socket, Rejection::new(e.code, e.message), None)
                .await),
        }
    }

    /// Answers a refused frame with an error; too many refusals in a short
    /// time close the connection (4029).
    async fn reject(
        &mut self,
        socket: &mut WsSocket,
        rejection: Rejection,
        reference: Option<u32>,
    ) -> Flow {
        self.app.metrics.reject(rejection.code);
        if self.rejects.check().is_err() {
            return Flow::Close(CloseCode::Flood);
        }
        let msg = ServerMsg::Error {
            code: rejection.code,
            message: rejection.message,
            reference,
            retry_after_ms: rejection.retry_after_ms,
        };
        if self.send(socket, &msg).await {
            Flow::Continue
        } else {
            Flow::Close(CloseCode::Normal)
        }
    }

    /// Encodes and queues a private message, in order with the room's
    /// frames. False when the connection is closing or its backlog is full
    /// (the outbox then wakes the task with the close code).
    async fn send(&self, socket: &mut WsSocket, msg: &ServerMsg) -> bool {
        match self.encoding.encode(msg) {
            Ok(frame) => matches!(socket.send(&frame), Push::Sent | Push::Queued),
            Err(e) => {
                tracing::error!(error = %e, "encode failed");
                false
            }
        }
    }

    /// An answer that the commit itself writes to this connection (on the
    /// writer thread): encoded there, in order with everything else pushed
    /// to the outbox. A full backlog closes the connection as usual.
    fn answer<T>(
        &self,
        outbox: &Arc<Outbox>,
        reply: impl FnOnce(&T) -> ServerMsg + Send + 'static,
    ) -> Answer<T> {
        let outbox = outbox.clone();
        let encoding = self.encoding;
        Box::new(move |value: &T| match encoding.encode(&reply(value)) {
            Ok(frame) => {
                outbox.push(ws_frame::data(&frame));
            }
            Err(e) => tracing::error!(error = %e, "encode failed"),
        })
    }

    /// Writes the backlog as the peer reads (see `WsSocket::drain`).
    async fn drain(&self, socket: &WsSocket) -> bool {
        socket.drain().await
    }

    /// Sends the error that explains the close, then the close frame, then
    /// waits briefly for the client's close so neither is lost to a reset.
    async fn close(&self, socket: &mut WsSocket, code: CloseCode) {
        if let Some(error) = code.error_code() {
            let msg = ServerMsg::error(error, code.reason(), None);
            match self.encoding.encode(&msg) {
                Ok(frame) => {
                    socket.send_final(&frame);
                }
                Err(e) => tracing::error!(error = %e, "encode failed"),
            }
        }
        socket.send_close(code.code(), code.reason());
        if !self.drain(socket).await {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// A frame too large even for the WebSocket layer (over 4x
/// `max_frame_bytes`) still gets its 1009; other read errors mean the peer
/// is gone or broke the protocol, and the socket is just dropped.
fn read_error_close(e: tungstenite::Error) -> Option<CloseCode> {
    match e {
        tungstenite::Error::Capacity(_) => Some(CloseCode::MessageTooBig),
        _ => None,
    }
}

/// The WebSocket layer queued the reply to a client's close frame; write it
/// so the client sees a clean close with its own code.
async fn answer_close(socket: &mut WsSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.outbox.drain()).await;
}

/// Resolves when the room starts recording (never when not joined).
async fn recording_started(recorder: &mut Option<ConnRecorder>) {
    match recorder {
        Some(r) => r.recording_started().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the server starts shutting down.
async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Why a role may not send a message.
fn forbidden(kind: &str, needed: Role) -> String {
    match needed {
        Role::Host => format!("{kind} needs a host token"),
        Role::Moderator => format!("{kind} needs a moderator or host token"),
        Role::Viewer => format!("{kind} needs a signed-in viewer token"),
        Role::Guest => format!("{kind} needs to join"),
    }
}

fn rate_limited(wait: Duration) -> Rejection {
    Rejection::new(ErrorCode::RateLimited, "slow down").retry_after(wait.as_millis() as u64 + 1)
}

/// A guest identity: a fresh random id per connection.
fn guest() -> UserRef {
    let n: u64 = rand::random();
    let id = format!("guest-{:012x}", n & 0xffff_ffff_ffff);
    UserRef {
        name: Arc::from(format!("Guest {}", &id[id.len() - 4..])),
        id: UserId::new(&id).expect("guest ids are valid"),
        role: Role::Guest,
    }
}
