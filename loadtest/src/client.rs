//! One viewer connection: a real WebSocket from a chosen loopback source
//! address, the MessagePack subprotocol, a guest `join`, then a read loop
//! that checks every event's sequence number and delivery latency. A viewer
//! may also be a sender, chatting on a fixed schedule.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flashcast::protocol::codec::{decode_server, SUBPROTOCOL_MSGPACK};
use flashcast::protocol::{ClientFrame, ClientMsg, Encoding, EventBody, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::stats::{SeqCheck, SeqVerdict, Stats};

pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the URL for the handshake and its resolved address.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Resolves the host of a `ws://host:port/path` URL.
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("not a ws:// URL: {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{host_port} has no IPv4 address"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
        })
    }
}

/// The `index`-th loopback source address: 127.0.0.1, 127.0.0.2, ...
/// 127.0.0.254, 127.0.1.1, ... (skipping .0 and .255).
pub fn source_ip(index: u32) -> Ipv4Addr {
    let host = index % 254 + 1;
    let net = index / 254;
    Ipv4Addr::new(127, (net / 256 % 256) as u8, (net % 256) as u8, host as u8)
}

/// Opens a WebSocket from `source` (any free port) with the MessagePack
/// subprotocol. The error is a short reason, used as a counter key.
pub async fn connect(target: &Target, source: Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddrV4::new(source, 0).into())
        .map_err(|e| format!("bind {source}: {}", e.kind()))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL_MSGPACK),
    );
    // Server frames are small; tungstenite's default 128 KiB read buffer
    // (zero-filled, so resident) would cost 128 KiB per simulated viewer.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => format!("http {}", resp.status().as_u16()),
            other => format!("handshake: {other}"),
        })?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if chosen != Some(SUBPROTOCOL_MSGPACK) {
        return Err(format!("subprotocol not accepted: {chosen:?}"));
    }
    Ok(ws)
}

/// Where the storm is. Viewers follow it through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and joining; nobody sends yet.
    Joining,
    /// Senders send on their schedule, counted from this instant.
    Sending(Instant),
    /// Sending is over; everybody keeps reading.
    Draining,
    /// Close politely and report.
    Stop,
}

/// A sender's schedule: message `k` (0-based) goes at `start + offset + k * period`.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// Global sender number, part of every message text.
    pub sender: u32,
    pub count: u64,
    pub period: Duration,
    pub offset: Duration,
}

/// What every viewer of one process shares.
pub struct ViewerCtx {
    pub target: Target,
    pub room: String,
    /// Prefix of every chat text this run sends; other chat is not counted
    /// as "ours".
    pub tag: String,
    pub stats: Arc<Stats>,
    pub join_timeout: Duration,
    pub join_retries: u32,
}

/// One viewer, from connect to close.
pub struct Viewer {
    pub index: u32,
    pub source: Ipv4Addr,
    pub send: Option<SendPlan>,
}

/// What a viewer reports when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ViewerOutcome {
    pub joined: bool,
    /// Chat events of this run received live (in batches).
    pub chat_received: u64,
}

impl Viewer {
    /// Joins (with retries), reports the join on `joined_tx`, then reads
    /// until the phase becomes `Stop`.
    pub async fn run(
        self,
        ctx: Arc<ViewerCtx>,
        mut phase: watch::Receiver<Phase>,
        joined_tx: mpsc::UnboundedSender<bool>,
    ) -> ViewerOutcome {
        let stats = &ctx.stats;
        Stats::add(&stats.join_attempts, 1);
        let mut attempt = 0;
        let (ws, joined_seq) = loop {
            let result = tokio::time::timeout(ctx.join_timeout, self.join(&ctx))
                .await
                .unwrap_or_else(|_| Err("join timeout".into()));
            match result {
                Ok(ok) => break ok,
                Err(reason) if attempt >= ctx.join_retries => {
                    stats.join_failure(reason);
                    let _ = joined_tx.send(false);
                    return ViewerOutcome::default();
                }
                Err(_) => {
                    attempt += 1;
                    // Spread retries so a refused burst does not come back as one.
                    let jitter = (self.index % 500) as u64;
                    tokio::time::sleep(Duration::from_millis(1_000 + jitter)).await;
                }
            }
        };
        Stats::add(&stats.joined, 1);
        let _ = joined_tx.send(true);
        let chat_received = self.serve(&ctx, ws, joined_seq, &mut phase).await;
        ViewerOutcome {
            joined: true,
            chat_received,
        }
    }

    /// Connect, send `join`, wait for `joined`. Returns the socket and `joined.seq`.
    async fn join(&self, ctx: &ViewerCtx) -> Result<(Ws, u64), String> {
        let mut ws = connect(&ctx.target, self.source).await?;
        let join = ClientFrame {
            reference: None,
            msg: ClientMsg::Join {
                room: flashcast::ids::RoomId::new(&ctx.room)
                    .map_err(|e| format!("bad room id: {e}"))?,
                token: None,
                last_seq: None,
                epoch: None,
            },
        };
        let bytes = rmp_serde::to_vec_named(&join).map_err(|e| format!("encode: {e}"))?;
        ws.send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| format!("send join: {e}"))?;
        let mut last_error = None;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => match decode_server(Encoding::MsgPack, &b) {
                    Some(ServerMsg::Joined { seq, .. }) => return Ok((ws, seq)),
                    Some(ServerMsg::Error { code, .. }) => last_error = Some(code.as_str()),
                    Some(_) => {}
                    None => return Err("undecodable frame before joined".into()),
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return Err(match last_error {
                        Some(e) => format!("close {code} ({e})"),
                        None => format!("close {code}"),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("eof before joined".into()),
            }
        }
    }

    /// The joined read loop (and send schedule). Returns the number of this
    /// run's chat events received.
    async fn serve(
        &self,
        ctx: &ViewerCtx,
        mut ws: Ws,
        joined_seq: u64,
        phase: &mut watch::Receiver<Phase>,
    ) -> u64 {
        let stats = &ctx.stats;
        let shard = self.index as usize;
        let mut seq = SeqCheck::starting_at(joined_seq);
        let mut chat_received = 0u64;
        let mut latencies = Vec::with_capacity(16);
        let mut sent = 0u64;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let next_send = tokio::time::sleep_until(far);
        tokio::pin!(next_send);
        let mut current = *phase.borrow_and_update();
        if let (Phase::Sending(start), Some(plan)) = (current, self.send) {
            next_send.as_mut().reset(start + plan.offset);
        }
        let sending = |p: Phase| matches!(p, Phase::Sending(_));
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(_)) | None => {
                            stats.close(1006);
                            break;
                        }
                    };
                    let bytes = match msg {
                        Message::Binary(b) => b,
                        Message::Close(frame) => {
                            stats.close(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                            break;
                        }
                        Message::Text(_) => {
                            Stats::add(&stats.decode_errors, 1);
                            continue;
                        }
                        _ => continue,
                    };
                    match decode_server::<ServerMsg>(Encoding::MsgPack, &bytes) {
                        Some(ServerMsg::Batch { events, .. }) => {
                            let now = flashcast::protocol::now_ms();
                            Stats::add(&stats.frames, 1);
                            Stats::add(&stats.events, events.len() as u64);
                            latencies.clear();
                            for ev in &events {
                                match seq.observe(ev.seq) {
                                    SeqVerdict::InOrder => {}
                                    SeqVerdict::Gap(missing) => {
                                        Stats::add(&stats.gaps, 1);
                                        Stats::add(&stats.missed, missing);
                                    }
                                    SeqVerdict::Duplicate => {
                                        Stats::add(&stats.duplicates, 1);
                                        continue;
                                    }
                                }
                                latencies.push(now.saturating_sub(ev.ts));
                                if let EventBody::Chat { text, .. } = &ev.body {
                                    if text.starts_with(&ctx.tag) {
                                        chat_received += 1;
                                    }
                                }
                            }
                            stats.record_latencies(shard, &latencies);
                        }
                        Some(ServerMsg::Error { code, reference, .. }) => {
                            stats.error(code.as_str());
                            if reference.is_some() {
                                Stats::add(&stats.chat_rejected, 1);
                            }
                        }
                        Some(_) => {}
                        None => Stats::add(&stats.decode_errors, 1),
                    }
                }
                _ = &mut next_send, if sending(current) => {
                    let plan = self.send.expect("only senders are scheduled");
                    let text = format!("{}{}:{}", ctx.tag, plan.sender, sent);
                    let frame = ClientFrame {
                        reference: Some(sent as u32 + 1),
                        msg: ClientMsg::Chat { text },
                    };
                    let bytes = rmp_serde::to_vec_named(&frame).expect("chat encodes");
                    if ws.send(Message::Binary(bytes.into())).await.is_err() {
                        stats.close(1006);
                        break;
                    }
                    Stats::add(&stats.chat_sent, 1);
                    sent += 1;
                    let Phase::Sending(start) = current else { unreachable!() };
                    if sent < plan.count {
                        let at = start + plan.offset + plan.period.mul_f64(sent as f64);
                        next_send.as_mut().reset(at);
                    } else {
                        next_send.as_mut().reset(far);
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() {
                        current = Phase::Stop;
                    } else {
                        current = *phase.borrow_and_update();
                    }
                    match current {
                        Phase::Sending(start) => {
                            if let Some(plan) = self.send.filter(|p| p.count > 0) {
                                next_send.as_mut().reset(start + plan.offset);
                            }
                        }
                        Phase::Stop => {
                            close_politely(&mut ws).await;
                            break;
                        }
                        Phase::Joining | Phase::Draining => {}
                    }
                }
            }
        }
        chat_received
    }
}

/// Sends a 1000 close and waits briefly for the server's answer.
async fn close_politely(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "storm done".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_network_and_broadcast_octets() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_ip(254), Ipv4Addr::new(127, 0, 1, 1));
    }
}
