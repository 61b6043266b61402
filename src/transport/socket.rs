//! The WebSocket protocol on a connection's own TCP socket.
//!
//! Reads go through tungstenite (masking, fragments, control frames, size
//! limits). Writes go through the connection's [`Outbox`], which the
//! fanout workers share: a room's batch is written by the connection's
//! worker straight to the socket, formatted once for every viewer
//! (`WireFrame::to_ws`). What tungstenite itself answers (pongs, the reply
//! to a close) joins the same outbox, so nothing is reordered. The socket is
//! registered with the [`Transport`] for as long as it lives.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::outbox::{Outbox, Push};
use super::{ConnId, Transport};
use crate::ws_frame;
use flashcast_wire::codec::WireFrame;

pub struct WsSocket {
    tcp: Arc<TcpStream>,
    ctx: WebSocketContext,
    /// Bytes tungstenite wrote (pongs, close frames) not yet pushed.
    replies: Vec<u8>,
    pub outbox: Arc<Outbox>,
    /// Longest a backlog may take to drain (`write_timeout_ms`).
    write_timeout: Duration,
    conn: ConnId,
    transport: Arc<Transport>,
}

/// How a socket is set up (from the limits).
#[derive(Debug, Clone, Copy)]
pub struct SocketConfig {
    pub ws: WebSocketConfig,
    /// Frames that may wait behind a full socket (`outbound_queue`).
    pub max_backlog: usize,
    /// `write_timeout_ms`.
    pub write_timeout: Duration,
}

/// tungstenite's view of the socket: reads never wait (it copes with
/// `WouldBlock`), writes land in `replies`.
struct Io<'a> {
    tcp: &'a TcpStream,
    replies: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.try_read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.replies.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WsSocket {
    /// `already_read`: bytes the HTTP layer read past the upgrade request.
    /// The socket is `conn` on `transport` until dropped.
    pub fn new(
        tcp: TcpStream,
        already_read: Vec<u8>,
        config: SocketConfig,
        conn: ConnId,
        transport: Arc<Transport>,
    ) -> Self {
        let tcp = Arc::new(tcp);
        let outbox = Arc::new(Outbox::new(tcp.clone(), config.max_backlog));
        transport.register(conn, outbox.clone());
        Self {
            outbox,
            ctx: WebSocketContext::from_partially_read(already_read, Role::Server, Some(config.ws)),
            replies: Vec::new(),
            tcp,
            write_timeout: config.write_timeout,
            conn,
            transport,
        }
    }

    /// Writes the backlog as the peer reads. False when the socket is dead
    /// or the peer took longer than `write_timeout_ms` to take it (it is
    /// not reading, and is dropped).
    pub async fn drain(&self) -> bool {
        matches!(
            tokio::time::timeout(self.write_timeout, self.outbox.drain()).await,
            Ok(Ok(()))
        )
    }

    /// The next message from the client; `None` once the peer is gone.
    /// Cancel-safe: the only wait is for the socket to become readable.
    pub async fn recv(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        loop {
            let mut io = Io {
                tcp: &self.tcp,
                replies: &mut self.replies,
            };
            let result = self.ctx.read(&mut io);
            if result.is_ok() {
                // tungstenite queues the answer to a ping or a close and
                // writes it on the next call: make that now.
                let _ = self.ctx.flush(&mut io);
            }
            // Pongs and the reply to a close: bounded like any frame.
            self.push_replies(false);
            match result {
                Ok(msg) => return Some(Ok(msg)),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.tcp.readable().await.is_err() {
                        return None;
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return None
                }
                Err(tungstenite::Error::Io(_)) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Queues one data frame behind everything pushed before it.
    pub fn send(&self, frame: &WireFrame) -> Push {
        self.outbox.push(ws_frame::data(frame))
    }

    /// Queues a data frame that must go out even past the backlog limit:
    /// the error that explains a close.
    pub fn send_final(&self, frame: &WireFrame) -> Push {
        self.outbox.push_final(ws_frame::data(frame))
    }

    /// Starts the closing handshake with `code`.
    pub fn send_close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: reason.into(),
        };
        let _ = self.ctx.close(
            &mut Io {
                tcp: &self.tcp,
                replies: &mut self.replies,
            },
            Some(frame),
        );
        self.push_replies(true);
    }

    fn push_replies(&mut self, is_final: bool) {
        if !self.replies.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.replies));
            if is_final {
                self.outbox.push_final(bytes);
            } else {
                self.outbox.push(bytes);
            }
        }
    }
}

impl Drop for WsSocket {
    fn drop(&mut self) {
        self.transport.deregister(self.conn);
    }
}
