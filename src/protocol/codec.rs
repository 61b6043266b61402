//! The two encodings, chosen per connection by WebSocket subprotocol:
//! MessagePack in binary frames (the default) and JSON in text frames.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tungstenite::protocol::frame::coding::{CloseCode as WsCloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::{Message, Utf8Bytes};

use super::{ClientFrame, ClientMsg, ErrorCode};

/// Subprotocol for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "flashcast.msgpack.v1";
/// Subprotocol for JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "flashcast.json.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    MsgPack,
    Json,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

    /// The encoding for a negotiated subprotocol; MessagePack when the
    /// client named none.
    pub fn from_subprotocol(name: Option<&str>) -> Option<Encoding> {
        match name {
            None | Some(SUBPROTOCOL_MSGPACK) => Some(Encoding::MsgPack),
            Some(SUBPROTOCOL_JSON) => Some(Encoding::Json),
            Some(_) => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Encodes one message into a frame that can be shared by every
    /// connection of this encoding (cloning it is a reference-count bump).
    pub fn encode<T: Serialize>(self, msg: &T) -> Result<WireFrame, EncodeError> {
        match self {
            Encoding::MsgPack => {
                let bytes = rmp_serde::to_vec_named(msg).map_err(|e| EncodeError(e.to_string()))?;
                Ok(WireFrame::Binary(Bytes::from(bytes)))
            }
            Encoding::Json => {
                let text = serde_json::to_string(msg).map_err(|e| EncodeError(e.to_string()))?;
                Ok(WireFrame::Text(Utf8Bytes::from(text)))
            }
        }
    }

    /// Decodes one client frame. The caller has already checked its size.
    pub fn decode(self, frame: &Message) -> Result<ClientFrame, DecodeError> {
        match (self, frame) {
            (Encoding::MsgPack, Message::Binary(bytes)) => decode_with(bytes, |b| {
                rmp_serde::from_slice::<ClientFrame>(b).map_err(|e| e.to_string())
            }),
            (Encoding::Json, Message::Text(text)) => decode_with(text.as_bytes(), |b| {
                serde_json::from_slice::<ClientFrame>(b).map_err(|e| e.to_string())
            }),
            (Encoding::MsgPack, Message::Text(_)) => Err(DecodeError {
                code: ErrorCode::WrongEncoding,
                message: "text frame on a MessagePack connection; send binary frames".into(),
            }),
            (Encoding::Json, Message::Binary(_)) => Err(DecodeError {
                code: ErrorCode::WrongEncoding,
                message: "binary frame on a JSON connection; send text frames".into(),
            }),
            _ => Err(DecodeError {
                code: ErrorCode::Malformed,
                message: "not a data frame".into(),
            }),
        }
    }
}

fn decode_with(
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<ClientFrame, String>,
) -> Result<ClientFrame, DecodeError> {
    match parse(bytes) {
        Ok(ClientFrame {
            msg: ClientMsg::Unknown,
            ..
        }) => Err(DecodeError {
            code: ErrorCode::UnknownType,
            message: "unknown message type".into(),
        }),
        Ok(frame) => Ok(frame),
        Err(message) => Err(DecodeError {
            code: ErrorCode::Malformed,
            message: format!("malformed frame: {message}"),
        }),
    }
}

/// A frame ready to write, shared between connections.
#[derive(Debug, Clone)]
pub enum WireFrame {
    Binary(Bytes),
    Text(Utf8Bytes),
}

impl WireFrame {
    pub fn len(&self) -> usize {
        match self {
            WireFrame::Binary(b) => b.len(),
            WireFrame::Text(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole WebSocket frame (header and payload) as it goes on the
    /// wire. Server frames are not masked, so every connection of this
    /// encoding is sent the very same bytes: a tick is framed once.
    pub fn to_ws(&self) -> Bytes {
        let (opcode, payload) = match self {
            WireFrame::Binary(b) => (Data::Binary, b.clone()),
            WireFrame::Text(t) => (Data::Text, Bytes::from(t.clone())),
        };
        format_frame(Frame::message(payload, OpCode::Data(opcode), true))
    }
}

/// A WebSocket close frame with `code` and `reason`, ready to write.
pub fn ws_close_frame(code: u16, reason: &str) -> Bytes {
    format_frame(Frame::close(Some(CloseFrame {
        code: WsCloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    })))
}

fn format_frame(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    frame
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    Bytes::from(out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("encode failed: {0}")]
pub struct EncodeError(String);

/// Decodes a server frame; used by tests, the load tester and SDK examples.
pub fn decode_server<'a, T: Deserialize<'a>>(encoding: Encoding, bytes: &'a [u8]) -> Option<T> {
    match encoding {
        Encoding::MsgPack => rmp_serde::from_slice(bytes).ok(),
        Encoding::Json => serde_json::from_slice(bytes).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, EventBody, Role, ServerMsg, UserRef};
    use std::sync::Arc;

    fn chat_event() -> Event {
        Event {
            seq: 7,
            ts: 1,
            body: EventBody::Chat {
                user: UserRef {
                    id: crate::ids::UserId::new("u1").unwrap(),
                    name: Arc::from("민지 🎉"),
                    role: Role::Viewer,
                },
                text: "안녕하세요 👋".into(),
                deleted: false,
            },
        }
    }

    #[test]
    fn server_messages_round_trip_in_both_encodings() {
        let msg = ServerMsg::Batch {
            events: vec![Arc::new(chat_event())],
            viewers: Some(3),
            reactions: [(crate::protocol::ReactionKind::Heart, 4)].into(),
            tallies: vec![],
        };
        for enc in Encoding::ALL {
            let frame = enc.encode(&msg).unwrap();
            let bytes: Vec<u8> = match frame {
                WireFrame::Binary(b) => b.to_vec(),
                WireFrame::Text(t) => t.as_bytes().to_vec(),
            };
            let back: ServerMsg = decode_server(enc, &bytes).expect("decodes");
            match back {
                ServerMsg::Batch {
                    events, reactions, ..
                } => {
                    assert_eq!(*events[0], chat_event());
                    assert_eq!(reactions[&crate::protocol::ReactionKind::Heart], 4);
                }
                other => panic!("wrong message {other:?}"),
            }
        }
    }

    #[test]
    fn ws_frames_read_back_with_a_websocket_client() {
        use tungstenite::protocol::{Role as WsRole, WebSocketContext};
        let small = WireFrame::Text(Utf8Bytes::from("{\"type\":\"pong\"}"));
        // Past 65,535 bytes the header carries a 64-bit length.
        let big = WireFrame::Binary(Bytes::from(vec![0xab; 70_000]));
        let mut wire = Vec::new();
        wire.extend_from_slice(&small.to_ws());
        wire.extend_from_slice(&big.to_ws());
        wire.extend_from_slice(&ws_close_frame(4008, "slow consumer"));
        let mut io = std::io::Cursor::new(wire);
        let mut client = WebSocketContext::new(WsRole::Client, None);
        assert_eq!(
            client.read(&mut io).unwrap(),
            Message::Text("{\"type\":\"pong\"}".into())
        );
        assert_eq!(
            client.read(&mut io).unwrap(),
            Message::Binary(Bytes::from(vec![0xab; 70_000]))
        );
        match client.read(&mut io).unwrap() {
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4008);
                assert_eq!(f.reason.as_str(), "slow consumer");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn unknown_type_and_malformed_are_told_apart() {
        let unknown = Message::Text(r#"{"type":"teleport"}"#.into());
        assert_eq!(
            Encoding::Json.decode(&unknown).unwrap_err().code,
            ErrorCode::UnknownType
        );
        let missing_field = Message::Text(r#"{"type":"chat"}"#.into());
        assert_eq!(
            Encoding::Json.decode(&missing_field).unwrap_err().code,
            ErrorCode::Malformed
        );
        let garbage = Message::Binary(Bytes::from_static(&[0xc1, 0xff, 0x00]));
        assert_eq!(
            Encoding::MsgPack.decode(&garbage).unwrap_err().code,
            ErrorCode::Malformed
        );
        let wrong = Message::Binary(Bytes::from_static(b"{}"));
        assert_eq!(
            Encoding::Json.decode(&wrong).unwrap_err().code,
            ErrorCode::WrongEncoding
        );
    }

    #[test]
    fn client_frames_decode_with_ref_in_both_encodings() {
        let frame = ClientFrame {
            reference: Some(9),
            msg: ClientMsg::Vote {
                poll_id: crate::ids::PollId(2),
                option: 1,
            },
        };
        let packed = rmp_serde::to_vec_named(&frame).unwrap();
        let got = Encoding::MsgPack
            .decode(&Message::Binary(Bytes::from(packed)))
            .unwrap();
        assert_eq!(got.reference, Some(9));
        assert!(matches!(got.msg, ClientMsg::Vote { option: 1, .. }));
        let json = serde_json::to_string(&frame).unwrap();
        let got = Encoding::Json.decode(&Message::Text(json.into())).unwrap();
        assert!(matches!(got.msg, ClientMsg::Vote { option: 1, .. }));
    }
}
