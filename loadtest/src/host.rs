//! The host's side of a scenario: one WebSocket with a host token, for the
//! actions only a host can take over the wire (opening a poll).

use std::time::Duration;

use anyhow::{bail, Context};
use flashcast_wire::client::{ClientFrame, ClientMsg, Join, OpenPoll};
use flashcast_wire::codec::{decode_server, SUBPROTOCOL_MSGPACK};
use flashcast_wire::ids::RoomId;
use flashcast_wire::{Encoding, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Host {
    ws: Socket,
    next_ref: u32,
}

impl Host {
    pub async fn connect(ws_url: &str, room: &str, token: Option<&str>) -> anyhow::Result<Host> {
        let mut request = ws_url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL_MSGPACK),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("host connection")?;
        let mut host = Host { ws, next_ref: 0 };
        host.send(
            Join {
                room: RoomId::new(room)?,
                token: token.map(str::to_string),
                last_seq: None,
                epoch: None,
            }
            .into(),
        )
        .await?;
        host.answer(|m| matches!(m, ServerMsg::Joined { .. }))
            .await
            .context("host join")?;
        Ok(host)
    }

    async fn send(&mut self, msg: ClientMsg) -> anyhow::Result<u32> {
        self.next_ref += 1;
        let frame = ClientFrame {
            reference: Some(self.next_ref),
            msg,
        };
        let bytes = rmp_serde::to_vec_named(&frame)?;
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(self.next_ref)
    }

    /// Reads until a frame `done` accepts; an error frame fails.
    async fn answer(&mut self, done: impl Fn(&ServerMsg) -> bool) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(msg) = self.ws.next().await {
                let Message::Binary(b) = msg? else { continue };
                match decode_server::<ServerMsg>(Encoding::MsgPack, &b) {
                    Some(ServerMsg::Error { code, message, .. }) => {
                        bail!("{}: {message}", code.as_str())
                    }
                    Some(m) if done(&m) => return Ok(()),
                    _ => {}
                }
            }
            bail!("connection closed")
        })
        .await
        .context("no answer within 10 s")?
    }

    /// Opens a poll that closes itself after `duration_secs`; returns once
    /// the room has announced it.
    pub async fn open_poll(
        &mut self,
        question: &str,
        options: &[String],
        duration_secs: u32,
    ) -> anyhow::Result<()> {
        self.send(
            OpenPoll {
                question: question.into(),
                options: options.to_vec(),
                correct: None,
                winners: None,
                duration_secs: Some(duration_secs),
            }
            .into(),
        )
        .await?;
        self.answer(|m| match m {
            ServerMsg::Batch { events, .. } => events
                .iter()
                .any(|e| matches!(e.body, flashcast_wire::EventBody::PollOpened { .. })),
            _ => false,
        })
        .await
        .context("opening the poll")
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
