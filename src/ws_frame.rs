//! WebSocket framing of encoded wire frames (the payloads come from
//! `flashcast_wire::codec`). Server frames are not masked, so every
//! connection of one encoding is sent the very same bytes: a tick is framed
//! once.

use bytes::Bytes;
use flashcast_wire::client::ClientFrame;
use flashcast_wire::codec::{DecodeError, FrameKind, WireFrame};
use flashcast_wire::{Encoding, ErrorCode};
use tungstenite::protocol::frame::coding::{CloseCode as WsCloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::{Message, Utf8Bytes};

/// The whole WebSocket frame (header and payload) as it goes on the wire.
pub fn data(frame: &WireFrame) -> Bytes {
    let opcode = match frame.kind() {
        FrameKind::Binary => Data::Binary,
        FrameKind::Text => Data::Text,
    };
    format(Frame::message(
        frame.bytes().clone(),
        OpCode::Data(opcode),
        true,
    ))
}

/// A WebSocket close frame with `code` and `reason`, ready to write.
pub fn close(code: u16, reason: &str) -> Bytes {
    format(Frame::close(Some(CloseFrame {
        code: WsCloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    })))
}

fn format(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    frame
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    Bytes::from(out)
}

/// Decodes a client's data frame. The caller has already checked its size.
pub fn decode(encoding: Encoding, msg: &Message) -> Result<ClientFrame, DecodeError> {
    match msg {
        Message::Binary(bytes) => encoding.decode(FrameKind::Binary, bytes),
        Message::Text(text) => encoding.decode(FrameKind::Text, text.as_bytes()),
        _ => Err(DecodeError {
            code: ErrorCode::Malformed,
            message: "not a data frame".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frames_read_back_with_a_websocket_client() {
        use tungstenite::protocol::{Role as WsRole, WebSocketContext};
        let small = WireFrame::Text(Bytes::from_static(b"{\"type\":\"pong\"}"));
        // Past 65,535 bytes the header carries a 64-bit length.
        let big = WireFrame::Binary(Bytes::from(vec![0xab; 70_000]));
        let mut wire = Vec::new();
        wire.extend_from_slice(&data(&small));
        wire.extend_from_slice(&data(&big));
        wire.extend_from_slice(&close(4008, "slow consumer"));
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
    fn control_frames_are_not_messages() {
        let e = decode(Encoding::Json, &Message::Ping(Bytes::new())).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
    }
}
