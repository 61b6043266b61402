//! The two encodings, chosen per connection by WebSocket subprotocol:
//! MessagePack in binary frames (the default) and JSON in text frames.
//!
//! This is the payload only; WebSocket framing belongs to whoever owns the
//! socket (the server's transport, a client library).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::{ClientFrame, RawFrame};
use crate::ErrorCode;

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
                let text = serde_json::to_vec(msg).map_err(|e| EncodeError(e.to_string()))?;
                Ok(WireFrame::Text(Bytes::from(text)))
            }
        }
    }

    /// Decodes one client frame's payload; `kind` is the WebSocket frame
    /// type it came in. The caller has already checked its size.
    pub fn decode(self, kind: FrameKind, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        match (self, kind) {
            (Encoding::MsgPack, FrameKind::Binary) => decode_with(bytes, |b| {
                rmp_serde::from_slice::<RawFrame>(b).map_err(|e| e.to_string())
            }),
            (Encoding::Json, FrameKind::Text) => decode_with(bytes, |b| {
                serde_json::from_slice::<RawFrame>(b).map_err(|e| e.to_string())
            }),
            (Encoding::MsgPack, FrameKind::Text) => Err(DecodeError {
                code: ErrorCode::WrongEncoding,
                message: "text frame on a MessagePack connection; send binary frames".into(),
            }),
            (Encoding::Json, FrameKind::Binary) => Err(DecodeError {
                code: ErrorCode::WrongEncoding,
                message: "binary frame on a JSON connection; send text frames".into(),
            }),
        }
    }
}

/// The two WebSocket data frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
}

fn decode_with(
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<RawFrame, String>,
) -> Result<ClientFrame, DecodeError> {
    match parse(bytes) {
        Ok(raw) => ClientFrame::from_wire(raw).ok_or_else(|| DecodeError {
            code: ErrorCode::UnknownType,
            message: "unknown message type".into(),
        }),
        Err(message) => Err(DecodeError {
            code: ErrorCode::Malformed,
            message: format!("malformed frame: {message}"),
        }),
    }
}

/// An encoded message ready to frame and write, shared between
/// connections (cloning it is a reference-count bump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// MessagePack, sent as a binary frame.
    Binary(Bytes),
    /// JSON (always UTF-8), sent as a text frame.
    Text(Bytes),
}

impl WireFrame {
    pub fn kind(&self) -> FrameKind {
        match self {
            WireFrame::Binary(_) => FrameKind::Binary,
            WireFrame::Text(_) => FrameKind::Text,
        }
    }

    /// The payload.
    pub fn bytes(&self) -> &Bytes {
        match self {
            WireFrame::Binary(b) | WireFrame::Text(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    use crate::client::{ClientMsg, RoomMsg, Vote};
    use crate::{Event, EventBody, Role, ServerMsg, UserRef};
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
            reactions: [(crate::ReactionKind::Heart, 4)].into(),
            tallies: vec![],
        };
        for enc in Encoding::ALL {
            let frame = enc.encode(&msg).unwrap();
            let back: ServerMsg = decode_server(enc, frame.bytes()).expect("decodes");
            match back {
                ServerMsg::Batch {
                    events, reactions, ..
                } => {
                    assert_eq!(*events[0], chat_event());
                    assert_eq!(reactions[&crate::ReactionKind::Heart], 4);
                }
                other => panic!("wrong message {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_type_and_malformed_are_told_apart() {
        let json = |text: &str| Encoding::Json.decode(FrameKind::Text, text.as_bytes());
        assert_eq!(
            json(r#"{"type":"teleport"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            json(r#"{"type":"chat"}"#).unwrap_err().code,
            ErrorCode::Malformed
        );
        let garbage = [0xc1, 0xff, 0x00];
        assert_eq!(
            Encoding::MsgPack
                .decode(FrameKind::Binary, &garbage)
                .unwrap_err()
                .code,
            ErrorCode::Malformed
        );
        assert_eq!(
            Encoding::Json
                .decode(FrameKind::Binary, b"{}")
                .unwrap_err()
                .code,
            ErrorCode::WrongEncoding
        );
    }

    #[test]
    fn client_frames_decode_with_ref_in_both_encodings() {
        let frame = ClientFrame {
            reference: Some(9),
            msg: Vote {
                poll_id: crate::ids::PollId(2),
                option: 1,
            }
            .into(),
        };
        let packed = rmp_serde::to_vec_named(&frame).unwrap();
        let got = Encoding::MsgPack
            .decode(FrameKind::Binary, &packed)
            .unwrap();
        assert_eq!(got.reference, Some(9));
        assert!(matches!(
            got.msg,
            ClientMsg::Room(RoomMsg::Vote(Vote { option: 1, .. }))
        ));
        let json = serde_json::to_string(&frame).unwrap();
        let got = Encoding::Json
            .decode(FrameKind::Text, json.as_bytes())
            .unwrap();
        assert!(matches!(
            got.msg,
            ClientMsg::Room(RoomMsg::Vote(Vote { option: 1, .. }))
        ));
    }
}
