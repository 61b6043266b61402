//! The WebSocket protocol on a connection's own TCP socket.
//!
//! Reads go through tungstenite (masking, fragments, control frames, size
//! limits). Writes go through the connection's [`Outbox`], which the room
//! shares: a tick's frame is written by the room's fanout straight to the
//! socket, formatted once for every viewer (`WireFrame::to_ws`). What
//! tungstenite itself answers (pongs, the reply to a close) joins the same
//! outbox, so nothing is reordered.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::room::outbox::{Outbox, Push};
use crate::ws_frame;
use flashcast_wire::codec::WireFrame;

pub struct WsSocket {
    tcp: Arc<TcpStream>,
    ctx: WebSocketContext,
    /// Bytes tungstenite wrote (pongs, close frames) not yet pushed.
    replies: Vec<u8>,
    pub outbox: Arc<Outbox>,
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
    pub fn new(
        tcp: TcpStream,
        already_read: Vec<u8>,
        config: WebSocketConfig,
        max_backlog: usize,
    ) -> Self {
        let tcp = Arc::new(tcp);
        Self {
            outbox: Arc::new(Outbox::new(tcp.clone(), max_backlog)),
            ctx: WebSocketContext::from_partially_read(already_read, Role::Server, Some(config)),
            replies: Vec::new(),
            tcp,
        }
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
