//! One WebSocket connection: the handshake (encoding by subprotocol), `join`,
//! then a single task that reads client frames, writes the room's shared tick
//! frames, and writes private replies.
//!
//! Checks that need no room state happen here, before anything is queued to
//! the room: frame size, decoding, role, per-user rate, text rules.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::DefaultDirectRateLimiter;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use super::{api_error, AppState};
use crate::auth::TokenError;
use crate::commerce::{BuyRequest, CouponSpec, SaleSpec};
use crate::engage::Rejection;
use crate::ids::UserId;
use crate::limits;
use crate::protocol::codec::{WireFrame, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::protocol::{
    now_ms, ClientFrame, ClientMsg, CloseCode, Encoding, ErrorCode, Role, ServerMsg, UserRef,
};
use crate::recording::recorder::ConnRecorder;
use crate::room::actor::clean_action_text;
use crate::room::{ConnId, JoinRequest, Outgoing, RoomHandle};

/// `GET /ws`: refuses early (HTTP status) when the node is full, shutting
/// down, or the address joins too fast; otherwise upgrades.
pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
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
    let max_frame = app.limits.max_frame_bytes;
    let ws = ws
        .protocols([SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON])
        // Frames up to 4x the limit are read and refused politely; beyond
        // that the WebSocket layer itself stops reading.
        .max_message_size(max_frame * 4)
        .max_frame_size(max_frame * 4)
        .read_buffer_size(app.limits.ws_buffer_bytes)
        .write_buffer_size(app.limits.ws_buffer_bytes);
    let chosen = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned);
    let Some(encoding) = Encoding::from_subprotocol(chosen.as_deref()) else {
        return (StatusCode::BAD_REQUEST, "unsupported subprotocol").into_response();
    };
    ws.on_upgrade(move |socket| async move {
        let conn = Connection {
            id: app.next_conn_id(),
            rejects: app.limiters.rejects(),
            app,
            encoding,
            recorder: None,
        };
        conn.run(socket).await;
        drop(slot);
    })
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

/// A joined connection's room, identity and streams.
struct Joined {
    room: RoomHandle,
    user: UserRef,
    frames: broadcast::Receiver<WireFrame>,
    direct: mpsc::Receiver<Outgoing>,
}

impl Connection {
    async fn run(mut self, mut socket: WebSocket) {
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
    async fn await_join(&mut self, socket: &mut WebSocket) -> Result<Joined, Option<CloseCode>> {
        let mut shutdown = self.app.shutdown.subscribe();
        loop {
            let msg = tokio::select! {
                msg = socket.recv() => msg,
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
                ClientMsg::Join {
                    room,
                    token,
                    last_seq,
                    epoch,
                } => {
                    return self
                        .join(socket, room, token, last_seq, epoch)
                        .await
                        .map_err(Some)
                }
                ClientMsg::Ping { t } => {
                    if !self
                        .send(
                            socket,
                            &ServerMsg::Pong {
                                t,
                                server_time: now_ms(),
                            },
                        )
                        .await
                    {
                        return Err(None);
                    }
                }
                _ => {
                    let r = Rejection::new(ErrorCode::NotJoined, "send join first");
                    if let Flow::Close(code) = self.reject(socket, r, frame.reference).await {
                        return Err(Some(code));
                    }
                }
            }
        }
    }

    async fn join(
        &mut self,
        socket: &mut WebSocket,
        room_id: crate::ids::RoomId,
        token: Option<String>,
        last_seq: Option<u64>,
        epoch: Option<u64>,
    ) -> Result<Joined, CloseCode> {
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
        let (direct_tx, direct) = mpsc::channel(self.app.limits.direct_queue);
        let grant = room
            .join(JoinRequest {
                conn: self.id,
                user: user.clone(),
                encoding: self.encoding,
                last_seq,
                epoch,
                direct: direct_tx,
            })
            .await
            .map_err(reject)?;
        self.app
            .metrics
            .events_in
            .with_label_values(&["join"])
            .inc();
        if !self.send(socket, &grant.joined).await {
            room.leave(self.id);
            return Err(CloseCode::Normal);
        }
        self.recorder = Some(self.app.recordings.connection(&room, user.role));
        Ok(Joined {
            room,
            user,
            frames: grant.frames,
            direct,
        })
    }

    /// The joined loop. Returns the close code to send, or None if the
    /// socket is already gone.
    async fn serve(&mut self, socket: &mut WebSocket, mut j: Joined) -> Option<CloseCode> {
        let mut shutdown = self.app.shutdown.subscribe();
        let mut frames_open = true;
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
                frame = j.frames.recv(), if frames_open => match frame {
                    Ok(frame) => {
                        if let Some(recorder) = &mut self.recorder {
                            recorder.touch();
                        }
                        if !self.write(socket, frame.into_message()).await {
                            return None;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.app.metrics.queue_overflows.inc();
                        return Some(CloseCode::SlowConsumer);
                    }
                    // The room stopped; its close code follows on `direct`.
                    Err(RecvError::Closed) => frames_open = false,
                },
                out = j.direct.recv() => match out {
                    Some(Outgoing::Frame(frame)) => {
                        if !self.write(socket, frame.into_message()).await {
                            return None;
                        }
                    }
                    Some(Outgoing::Close(code)) => {
                        // Deliver what the room published before closing.
                        while let Ok(frame) = j.frames.try_recv() {
                            if !self.write(socket, frame.into_message()).await {
                                return None;
                            }
                        }
                        return Some(code);
                    }
                    // The room dropped us: our private queue overflowed.
                    None => return Some(CloseCode::SlowConsumer),
                },
                _ = shutting_down(&mut shutdown) => return Some(CloseCode::ServiceRestart),
            }
        }
    }

    async fn on_frame(&mut self, socket: &mut WebSocket, j: &Joined, msg: Message) -> Flow {
        let frame = match self.decode(socket, &msg).await {
            Ok(frame) => frame,
            Err(flow) => return flow,
        };
        let ClientFrame { reference, mut msg } = frame;
        // Every decoded action, before the room decides on it: a replay
        // reproduces the load, not the outcomes.
        if let Some(recorder) = &mut self.recorder {
            recorder.record(&msg);
        }
        let result = match &msg {
            ClientMsg::Join { .. } => Err(Rejection::new(
                ErrorCode::AlreadyJoined,
                "this connection has already joined",
            )),
            ClientMsg::Leave => return Flow::Close(CloseCode::Normal),
            ClientMsg::Ping { t } => {
                let pong = ServerMsg::Pong {
                    t: *t,
                    server_time: now_ms(),
                };
                return if self.send(socket, &pong).await {
                    Flow::Continue
                } else {
                    Flow::Close(CloseCode::Normal)
                };
            }
            ClientMsg::React { kind } => limits::check(&self.app.limiters.reactions, &j.user.id)
                .map_err(rate_limited)
                .map(|()| {
                    j.room.react(*kind);
                    self.app
                        .metrics
                        .events_in
                        .with_label_values(&["react"])
                        .inc();
                }),
            _ if msg.required_role() > j.user.role => Err(Rejection::new(
                ErrorCode::Forbidden,
                match msg.required_role() {
                    Role::Host => format!("{} needs a host token", msg.kind()),
                    Role::Viewer => format!("{} needs a signed-in viewer token", msg.kind()),
                    _ => format!("{} needs a moderator or host token", msg.kind()),
                },
            )),
            ClientMsg::Buy { .. }
            | ClientMsg::ClaimCoupon { .. }
            | ClientMsg::PinProduct { .. }
            | ClientMsg::StartSale { .. }
            | ClientMsg::EndSale { .. }
            | ClientMsg::DropCoupon { .. } => {
                let kind = msg.kind();
                match self.commerce(j, reference, msg).await {
                    Ok(reply) => {
                        self.app.metrics.events_in.with_label_values(&[kind]).inc();
                        return if self.send(socket, &reply).await {
                            Flow::Continue
                        } else {
                            Flow::Close(CloseCode::Normal)
                        };
                    }
                    Err(rejection) => Err(rejection),
                }
            }
            _ => {
                let rate = match &msg {
                    ClientMsg::Chat { .. } | ClientMsg::Ask { .. } => {
                        limits::check(&self.app.limiters.chat, &j.user.id).map_err(rate_limited)
                    }
                    _ => Ok(()),
                };
                rate.and_then(|()| clean_action_text(&mut msg, &self.app.limits))
                    .and_then(|()| j.room.act(self.id, j.user.clone(), reference, msg))
            }
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(rejection) => self.reject(socket, rejection, reference).await,
        }
    }

    /// Buys, coupon claims and the host's shop actions. They are answered
    /// by the connection itself, after the durable commit; what every
    /// viewer sees (stock, sales, coupons, the pinned card) follows as room
    /// events.
    async fn commerce(
        &self,
        j: &Joined,
        reference: Option<u32>,
        msg: ClientMsg,
    ) -> Result<ServerMsg, Rejection> {
        let commerce = &self.app.commerce;
        let room = j.room.id();
        if j.room.shared.is_closed() {
            return Err(Rejection::new(ErrorCode::RoomClosed, "the show has ended"));
        }
        let ack = ServerMsg::Ack { reference };
        let result = match msg {
            ClientMsg::Buy {
                sku,
                qty,
                key,
                coupon_id,
            } => {
                limits::check(&self.app.limiters.buys, &j.user.id).map_err(rate_limited)?;
                let req = BuyRequest {
                    sku,
                    qty,
                    key,
                    coupon_id,
                };
                commerce
                    .buy(room, &j.user, req)
                    .await
                    .map(|order| ServerMsg::Order { reference, order })
            }
            ClientMsg::ClaimCoupon { coupon_id } => {
                limits::check(&self.app.limiters.buys, &j.user.id).map_err(rate_limited)?;
                commerce
                    .claim_coupon(room, &j.user, coupon_id)
                    .await
                    .map(|coupon| ServerMsg::CouponClaimed { reference, coupon })
            }
            ClientMsg::PinProduct { product_id } => {
                commerce.pin(room, product_id).await.map(|()| ack)
            }
            ClientMsg::StartSale {
                sku,
                sale_price_minor,
                stock,
                per_user_limit,
                starts_at,
                duration_secs,
                payment_window_secs,
            } => {
                let spec = SaleSpec {
                    sku,
                    sale_price_minor,
                    stock,
                    per_user_limit,
                    starts_at,
                    duration_secs,
                    payment_window_secs,
                };
                commerce.start_sale(room, spec).await.map(|_| ack)
            }
            ClientMsg::EndSale { sale_id } => commerce.end_sale(room, sale_id).await.map(|_| ack),
            ClientMsg::DropCoupon {
                count,
                discount,
                scope,
                expires_in_secs,
            } => {
                let spec = CouponSpec {
                    count,
                    discount,
                    scope,
                    expires_in_secs,
                };
                commerce.drop_coupon(room, spec).await.map(|_| ack)
            }
            _ => unreachable!("only commerce messages are routed here"),
        };
        result.map_err(|e| Rejection::new(e.code, e.message))
    }

    /// Size check then decode; a bad frame is answered here.
    async fn decode(&mut self, socket: &mut WebSocket, msg: &Message) -> Result<ClientFrame, Flow> {
        let len = match msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        if len > self.app.limits.max_frame_bytes {
            self.app.metrics.reject(ErrorCode::FrameTooLarge);
            return Err(Flow::Close(CloseCode::MessageTooBig));
        }
        match self.encoding.decode(msg) {
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
        socket: &mut WebSocket,
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

    /// Encodes and writes a private message.
    async fn send(&self, socket: &mut WebSocket, msg: &ServerMsg) -> bool {
        match self.encoding.encode(msg) {
            Ok(frame) => self.write(socket, frame.into_message()).await,
            Err(e) => {
                tracing::error!(error = %e, "encode failed");
                false
            }
        }
    }

    /// Writes one frame; a write that takes longer than `write_timeout_ms`
    /// means the peer is not reading, and the connection is dropped.
    async fn write(&self, socket: &mut WebSocket, msg: Message) -> bool {
        let timeout = Duration::from_millis(self.app.limits.write_timeout_ms);
        matches!(
            tokio::time::timeout(timeout, socket.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// Sends the error that explains the close, then the close frame, then
    /// waits briefly for the client's close so neither is lost to a reset.
    async fn close(&self, socket: &mut WebSocket, code: CloseCode) {
        if let Some(error) = code.error_code() {
            let msg = ServerMsg::error(error, code.reason(), None);
            if !self.send(socket, &msg).await {
                return;
            }
        }
        let frame = CloseFrame {
            code: code.code(),
            reason: code.reason().into(),
        };
        if !self.write(socket, Message::Close(Some(frame))).await {
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
fn read_error_close(e: axum::Error) -> Option<CloseCode> {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CloseCode::MessageTooBig),
        _ => None,
    }
}

/// The WebSocket layer queues the reply to a client's close frame; flush it
/// so the client sees a clean close with its own code.
async fn answer_close(socket: &mut WebSocket) {
    let _ =
        tokio::time::timeout(Duration::from_secs(1), futures_util::SinkExt::flush(socket)).await;
}

/// Resolves once the server starts shutting down.
async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
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
