//! Recordings of a room's client actions, for replay by a load tester.
//!
//! The format is JSON lines: a header line, then one line per client action
//! in the order the server handled them (docs/recording.md):
//!
//! ```text
//! {"flashcast_recording":1,"room":"demo","started_unix_ms":1795000000000}
//! {"t_ms":0,"conn":1,"action":"join","role":"guest"}
//! {"t_ms":120,"conn":1,"action":"chat","text":"hello"}
//! {"t_ms":900,"conn":1,"action":"leave"}
//! ```
//!
//! A connection is named by a small per-recording number (`conn`), never by
//! its user id, name, address or token: a recording can be handed to load
//! testers. Moderator and host actions appear as `host` lines with the
//! message type only, without their arguments.
//!
//! This module is the format, shared by the server (which writes it through
//! its `recording::recorder`) and the load tester (which reads it, and may
//! write its own actions in the same format with [`TraceWriter`]).

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::client::{
    Ask, Chat, ClaimCoupon, ClientMsg, ConnMsg, React, RoomMsg, ShopMsg, Upvote, Vote,
};
use crate::ids::{CouponId, Sku};
use crate::Role;

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Longest line [`read_trace`] accepts, in bytes. Client frames are far
/// smaller (`max_frame_bytes`), so only a corrupt or foreign file hits it.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// The format version, [`FORMAT_VERSION`].
    pub flashcast_recording: u32,
    /// The room the actions were sent to.
    pub room: String,
    /// When the recording started; every `t_ms` counts from here.
    pub started_unix_ms: u64,
}

impl TraceHeader {
    /// A header of the current format version.
    pub fn new(room: impl Into<String>, started_unix_ms: u64) -> Self {
        Self {
            flashcast_recording: FORMAT_VERSION,
            room: room.into(),
            started_unix_ms,
        }
    }
}

/// One client action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    /// Milliseconds since the header's `started_unix_ms`; never decreases
    /// from one line to the next.
    pub t_ms: u64,
    /// The connection, numbered 1, 2, ... within one recording.
    pub conn: u32,
    #[serde(flatten)]
    pub action: TraceAction,
}

/// What a connection did. A viewer's action is the client message itself
/// (`client::Chat`, `client::Vote`...), so a replayer turns those lines
/// straight back into the message they came from; field names are the wire
/// protocol's (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TraceAction {
    /// The connection joined (or, for a connection already in the room when
    /// the recording started, was first seen) with this role.
    Join {
        role: Role,
    },
    Chat(Chat),
    React(React),
    Vote(Vote),
    Ask(Ask),
    Upvote(Upvote),
    /// A `buy` without its idempotency key: a replay makes its own.
    Buy {
        sku: Sku,
        qty: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coupon_id: Option<CouponId>,
    },
    ClaimCoupon(ClaimCoupon),
    /// A moderator or host action, by message type only (`open_poll`,
    /// `start_sale`, `mute`...): its arguments are not recorded.
    Host {
        kind: String,
    },
    /// The connection ended, for whatever reason.
    Leave,
}

impl TraceAction {
    /// The action a decoded client message records, or None for messages
    /// that are not recorded (`join`, `ping`, `leave`: a joined
    /// connection's join and leave are written by the server itself).
    pub fn from_client(msg: &ClientMsg) -> Option<TraceAction> {
        let host = || TraceAction::Host {
            kind: msg.kind().to_string(),
        };
        Some(match msg {
            ClientMsg::Conn(ConnMsg::Join(_) | ConnMsg::Ping(_) | ConnMsg::Leave(_)) => {
                return None
            }
            ClientMsg::Room(m) => match m {
                RoomMsg::Chat(m) => TraceAction::Chat(m.clone()),
                RoomMsg::React(m) => TraceAction::React(m.clone()),
                RoomMsg::Vote(m) => TraceAction::Vote(m.clone()),
                RoomMsg::Ask(m) => TraceAction::Ask(m.clone()),
                RoomMsg::Upvote(m) => TraceAction::Upvote(m.clone()),
                RoomMsg::Announce(_)
                | RoomMsg::OpenPoll(_)
                | RoomMsg::ClosePoll(_)
                | RoomMsg::Answer(_)
                | RoomMsg::PinQuestion(_)
                | RoomMsg::DeleteMessage(_)
                | RoomMsg::Mute(_)
                | RoomMsg::Unmute(_)
                | RoomMsg::Ban(_)
                | RoomMsg::Unban(_)
                | RoomMsg::SlowMode(_)
                | RoomMsg::SetBannedWords(_)
                | RoomMsg::EndShow(_) => host(),
            },
            ClientMsg::Shop(m) => match m {
                ShopMsg::Buy(b) => TraceAction::Buy {
                    sku: b.sku.clone(),
                    qty: b.qty,
                    coupon_id: b.coupon_id,
                },
                ShopMsg::ClaimCoupon(m) => TraceAction::ClaimCoupon(m.clone()),
                ShopMsg::PinProduct(_)
                | ShopMsg::StartSale(_)
                | ShopMsg::EndSale(_)
                | ShopMsg::DropCoupon(_) => host(),
            },
        })
    }

    /// The `action` name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            TraceAction::Join { .. } => "join",
            TraceAction::Chat(_) => "chat",
            TraceAction::React(_) => "react",
            TraceAction::Vote(_) => "vote",
            TraceAction::Ask(_) => "ask",
            TraceAction::Upvote(_) => "upvote",
            TraceAction::Buy { .. } => "buy",
            TraceAction::ClaimCoupon(_) => "claim_coupon",
            TraceAction::Host { .. } => "host",
            TraceAction::Leave => "leave",
        }
    }
}

/// Why a recording could not be read, and on which line (1-based; the
/// header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    pub line: usize,
    pub kind: TraceErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceErrorKind {
    /// The input could not be read.
    Io(String),
    /// Not a JSON object of the expected shape.
    BadJson(String),
    /// An `action` this version does not know.
    UnknownAction(String),
    /// The input is empty, or its first line is not a recording header.
    MissingHeader,
    /// A header of another format version.
    UnsupportedVersion(u32),
    /// `t_ms` is lower than on the line before.
    TimeWentBackwards { previous: u64, t_ms: u64 },
    /// More action lines than the reader allows.
    TooManyLines(usize),
    /// A line longer than [`MAX_LINE_BYTES`].
    LineTooLong,
}

impl fmt::Display for TraceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceErrorKind::Io(e) => write!(f, "read error: {e}"),
            TraceErrorKind::BadJson(e) => write!(f, "bad JSON: {e}"),
            TraceErrorKind::UnknownAction(a) => write!(f, "unknown action `{a}`"),
            TraceErrorKind::MissingHeader => f.write_str(
                "missing header: the first line must be \
                 {\"flashcast_recording\":1,\"room\":...,\"started_unix_ms\":...}",
            ),
            TraceErrorKind::UnsupportedVersion(v) => write!(
                f,
                "unsupported recording version {v} (this build reads {FORMAT_VERSION})"
            ),
            TraceErrorKind::TimeWentBackwards { previous, t_ms } => {
                write!(f, "t_ms went backwards: {t_ms} after {previous}")
            }
            TraceErrorKind::TooManyLines(max) => write!(f, "more than {max} action lines"),
            TraceErrorKind::LineTooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "recording line {}: {}", self.line, self.kind)
    }
}

impl std::error::Error for TraceError {}

/// Reads a whole recording: the header and at most `max_lines` action
/// lines. Blank lines are skipped (they still count in line numbers).
/// Unknown fields are ignored, so later versions may add some.
pub fn read_trace(
    mut r: impl BufRead,
    max_lines: usize,
) -> Result<(TraceHeader, Vec<TraceLine>), TraceError> {
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut header: Option<TraceHeader> = None;
    let mut lines = Vec::new();
    let mut previous = 0u64;
    loop {
        buf.clear();
        line_no += 1;
        let err = |kind| TraceError {
            line: line_no,
            kind,
        };
        let n = r
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| err(TraceErrorKind::Io(e.to_string())))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if n > MAX_LINE_BYTES {
            return Err(err(TraceErrorKind::LineTooLong));
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(err(TraceErrorKind::LineTooLong));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if header.is_none() {
            header = Some(parse_header(&buf).map_err(err)?);
            continue;
        }
        if lines.len() >= max_lines {
            return Err(err(TraceErrorKind::TooManyLines(max_lines)));
        }
        let line = parse_line(&buf).map_err(err)?;
        if line.t_ms < previous {
            return Err(err(TraceErrorKind::TimeWentBackwards {
                previous,
                t_ms: line.t_ms,
            }));
        }
        previous = line.t_ms;
        lines.push(line);
    }
    match header {
        Some(h) => Ok((h, lines)),
        None => Err(TraceError {
            line: 1,
            kind: TraceErrorKind::MissingHeader,
        }),
    }
}

fn parse_header(buf: &[u8]) -> Result<TraceHeader, TraceErrorKind> {
    let value: serde_json::Value =
        serde_json::from_slice(buf).map_err(|e| TraceErrorKind::BadJson(e.to_string()))?;
    let Some(version) = value.get("flashcast_recording") else {
        return Err(TraceErrorKind::MissingHeader);
    };
    match version.as_u64() {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(TraceErrorKind::UnsupportedVersion(
                v.min(u32::MAX as u64) as u32
            ))
        }
        None => {
            return Err(TraceErrorKind::BadJson(
                "flashcast_recording must be a number".into(),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| TraceErrorKind::BadJson(e.to_string()))
}

fn parse_line(buf: &[u8]) -> Result<TraceLine, TraceErrorKind> {
    serde_json::from_slice(buf).map_err(|e| {
        // Only a failed line is parsed twice, to say what was wrong with it.
        match serde_json::from_slice::<serde_json::Value>(buf) {
            Ok(v) => match v.get("action").and_then(|a| a.as_str()) {
                Some(a) if !KNOWN_ACTIONS.contains(&a) => {
                    TraceErrorKind::UnknownAction(a.to_string())
                }
                _ => TraceErrorKind::BadJson(e.to_string()),
            },
            Err(_) => TraceErrorKind::BadJson(e.to_string()),
        }
    })
}

const KNOWN_ACTIONS: [&str; 10] = [
    "join",
    "chat",
    "react",
    "vote",
    "ask",
    "upvote",
    "buy",
    "claim_coupon",
    "host",
    "leave",
];

/// Writes a recording: [`write_header`](Self::write_header) once, then
/// [`write_line`](Self::write_line) per action. Each line is one `write_all`
/// of the line and its newline, so a buffered output only ever holds whole
/// lines at a flush. Wrap files in a `BufWriter`.
pub struct TraceWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    header_written: bool,
    last_t: u64,
    lines: u64,
    bytes: u64,
    byte_limit: Option<u64>,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(256),
            header_written: false,
            last_t: 0,
            lines: 0,
            bytes: 0,
            byte_limit: None,
        }
    }

    /// Refuses (with `ErrorKind::FileTooLarge`, writing nothing) any line
    /// that would take the output past `max_bytes`, header included.
    pub fn with_byte_limit(mut self, max_bytes: u64) -> Self {
        self.byte_limit = Some(max_bytes);
        self
    }

    pub fn write_header(&mut self, header: &TraceHeader) -> io::Result<()> {
        if self.header_written {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the header is already written",
            ));
        }
        self.encode(header)?;
        self.emit()?;
        self.header_written = true;
        Ok(())
    }

    /// Writes one action. Refuses (`ErrorKind::InvalidInput`) a line before
    /// the header or with a `t_ms` lower than the previous line's.
    pub fn write_line(&mut self, line: &TraceLine) -> io::Result<()> {
        if !self.header_written {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write the header first",
            ));
        }
        if line.t_ms < self.last_t {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("t_ms went backwards: {} after {}", line.t_ms, self.last_t),
            ));
        }
        self.encode(line)?;
        self.emit()?;
        self.last_t = line.t_ms;
        self.lines += 1;
        Ok(())
    }

    fn encode(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, value)?;
        self.buf.push(b'\n');
        Ok(())
    }

    fn emit(&mut self) -> io::Result<()> {
        let len = self.buf.len() as u64;
        if let Some(max) = self.byte_limit {
            if self.bytes + len > max {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("the recording would exceed {max} bytes"),
                ));
            }
        }
        self.out.write_all(&self.buf)?;
        self.bytes += len;
        Ok(())
    }

    /// Action lines written (the header not counted).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes written, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The `t_ms` of the last line written (0 before any).
    pub fn last_t_ms(&self) -> u64 {
        self.last_t
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Buy, Leave, Mute, Ping};
    use crate::ids::{PollId, QuestionId};
    use crate::ReactionKind;

    fn sample() -> (TraceHeader, Vec<TraceLine>) {
        let line = |t_ms, conn, action| TraceLine { t_ms, conn, action };
        let header = TraceHeader::new("demo", 1_795_000_000_000);
        let lines = vec![
            line(0, 1, TraceAction::Join { role: Role::Guest }),
            line(
                120,
                1,
                TraceAction::Chat(Chat {
                    text: "hello \"you\" 🔥".into(),
                }),
            ),
            line(
                130,
                1,
                TraceAction::React(React {
                    kind: ReactionKind::Heart,
                }),
            ),
            line(200, 2, TraceAction::Join { role: Role::Host }),
            line(
                210,
                2,
                TraceAction::Host {
                    kind: "open_poll".into(),
                },
            ),
            line(
                400,
                1,
                TraceAction::Vote(Vote {
                    poll_id: PollId(3),
                    option: 1,
                }),
            ),
            line(500, 1, TraceAction::Ask(Ask { text: "...".into() })),
            line(
                510,
                1,
                TraceAction::Upvote(Upvote {
                    question_id: QuestionId(2),
                }),
            ),
            line(
                600,
                3,
                TraceAction::Buy {
                    sku: Sku::new("SKU-1").unwrap(),
                    qty: 1,
                    coupon_id: None,
                },
            ),
            line(
                650,
                3,
                TraceAction::Buy {
                    sku: Sku::new("SKU-1").unwrap(),
                    qty: 2,
                    coupon_id: Some(CouponId(4)),
                },
            ),
            line(
                700,
                3,
                TraceAction::ClaimCoupon(ClaimCoupon {
                    coupon_id: CouponId(4),
                }),
            ),
            line(700, 1, TraceAction::Leave),
        ];
        (header, lines)
    }

    fn write(header: &TraceHeader, lines: &[TraceLine]) -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new());
        w.write_header(header).unwrap();
        for l in lines {
            w.write_line(l).unwrap();
        }
        assert_eq!(w.lines(), lines.len() as u64);
        assert_eq!(w.bytes(), w.get_ref().len() as u64);
        w.into_inner()
    }

    fn read(text: &str) -> Result<(TraceHeader, Vec<TraceLine>), TraceError> {
        read_trace(text.as_bytes(), 100)
    }

    fn fails_at(text: &str, line: usize) -> TraceErrorKind {
        let e = read(text).unwrap_err();
        assert_eq!(e.line, line, "{e}");
        e.kind
    }

    #[test]
    fn round_trip() {
        let (header, lines) = sample();
        let bytes = write(&header, &lines);
        let (h, l) = read_trace(&bytes[..], 100).unwrap();
        assert_eq!(h, header);
        assert_eq!(l, lines);
    }

    #[test]
    fn the_documented_example_reads() {
        let text = r#"{"flashcast_recording":1,"room":"demo","started_unix_ms":1795000000000}
{"t_ms":0,"conn":1,"action":"join","role":"guest"}
{"t_ms":120,"conn":1,"action":"chat","text":"hello"}
{"t_ms":130,"conn":1,"action":"react","kind":"heart"}
{"t_ms":400,"conn":1,"action":"vote","poll_id":3,"option":1}
{"t_ms":500,"conn":1,"action":"ask","text":"..."}
{"t_ms":510,"conn":1,"action":"upvote","question_id":2}
{"t_ms":600,"conn":2,"action":"buy","sku":"SKU-1","qty":1}
{"t_ms":700,"conn":2,"action":"claim_coupon","coupon_id":4}
{"t_ms":800,"conn":3,"action":"host","kind":"open_poll"}
{"t_ms":900,"conn":1,"action":"leave"}
"#;
        let (h, lines) = read(text).unwrap();
        assert_eq!(h.room, "demo");
        assert_eq!(lines.len(), 10);
        // Written back, each line is byte for byte the same.
        let again = String::from_utf8(write(&h, &lines)).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn the_written_form_is_flat_and_stable() {
        let line = TraceLine {
            t_ms: 5,
            conn: 7,
            action: TraceAction::Join {
                role: Role::Moderator,
            },
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"t_ms":5,"conn":7,"action":"join","role":"moderator"}"#
        );
        let leave = TraceLine {
            t_ms: 6,
            conn: 7,
            action: TraceAction::Leave,
        };
        assert_eq!(
            serde_json::to_string(&leave).unwrap(),
            r#"{"t_ms":6,"conn":7,"action":"leave"}"#
        );
    }

    #[test]
    fn blank_lines_crlf_and_unknown_fields_are_accepted() {
        let text =
            "{\"flashcast_recording\":1,\"room\":\"r\",\"started_unix_ms\":1,\"node\":\"a\"}\r\n\
                    \n\
                    {\"t_ms\":1,\"conn\":1,\"action\":\"leave\",\"extra\":true}\r\n\n";
        let (_, lines) = read(text).unwrap();
        assert_eq!(lines.len(), 1);
    }

    const HEADER: &str = r#"{"flashcast_recording":1,"room":"r","started_unix_ms":1}"#;

    #[test]
    fn bad_json_names_its_line() {
        let text = format!("{HEADER}\n{{\"t_ms\":1,\"conn\":1,\"action\":\"leave\"}}\n{{nope\n");
        assert!(matches!(fails_at(&text, 3), TraceErrorKind::BadJson(_)));
        // Valid JSON, wrong shape.
        let text = format!("{HEADER}\n{{\"t_ms\":\"x\",\"conn\":1,\"action\":\"leave\"}}\n");
        assert!(matches!(fails_at(&text, 2), TraceErrorKind::BadJson(_)));
        let text = format!("{HEADER}\n{{\"t_ms\":1,\"conn\":1,\"action\":\"chat\"}}\n");
        assert!(matches!(fails_at(&text, 2), TraceErrorKind::BadJson(_)));
        let text =
            format!("{HEADER}\n{{\"t_ms\":1,\"conn\":1,\"action\":\"react\",\"kind\":\"meh\"}}\n");
        assert!(matches!(fails_at(&text, 2), TraceErrorKind::BadJson(_)));
        let text = "{not json\n";
        assert!(matches!(fails_at(text, 1), TraceErrorKind::BadJson(_)));
    }

    #[test]
    fn unknown_action_names_its_line() {
        let text = format!("{HEADER}\n\n{{\"t_ms\":1,\"conn\":1,\"action\":\"dance\"}}\n");
        assert_eq!(
            fails_at(&text, 3),
            TraceErrorKind::UnknownAction("dance".into())
        );
    }

    #[test]
    fn missing_header() {
        assert_eq!(fails_at("", 1), TraceErrorKind::MissingHeader);
        assert_eq!(fails_at("\n\n", 1), TraceErrorKind::MissingHeader);
        let text = "{\"t_ms\":1,\"conn\":1,\"action\":\"leave\"}\n";
        assert_eq!(fails_at(text, 1), TraceErrorKind::MissingHeader);
        // After blank lines, the header's line is still named.
        assert_eq!(
            fails_at(&format!("\n{text}"), 2),
            TraceErrorKind::MissingHeader
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let text = "{\"flashcast_recording\":2,\"room\":\"r\",\"started_unix_ms\":1}\n";
        assert_eq!(fails_at(text, 1), TraceErrorKind::UnsupportedVersion(2));
        let e = read(text).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("version 2"), "{e}");
    }

    #[test]
    fn time_going_backwards_is_refused() {
        let text = format!(
            "{HEADER}\n{{\"t_ms\":10,\"conn\":1,\"action\":\"leave\"}}\n\
             {{\"t_ms\":10,\"conn\":2,\"action\":\"leave\"}}\n\
             {{\"t_ms\":9,\"conn\":3,\"action\":\"leave\"}}\n"
        );
        assert_eq!(
            fails_at(&text, 4),
            TraceErrorKind::TimeWentBackwards {
                previous: 10,
                t_ms: 9
            }
        );
    }

    #[test]
    fn too_many_lines() {
        let (header, lines) = sample();
        let bytes = write(&header, &lines);
        let e = read_trace(&bytes[..], 3).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert_eq!(e.kind, TraceErrorKind::TooManyLines(3));
        assert!(read_trace(&bytes[..], lines.len()).is_ok());
    }

    #[test]
    fn overlong_lines_are_refused_without_reading_them_whole() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!(
            "{HEADER}\n{{\"t_ms\":1,\"conn\":1,\"action\":\"chat\",\"text\":\"{long}\"}}\n"
        );
        assert_eq!(fails_at(&text, 2), TraceErrorKind::LineTooLong);
        // Without a final newline too.
        let text = format!("{HEADER}\n{long}");
        assert_eq!(fails_at(&text, 2), TraceErrorKind::LineTooLong);
    }

    #[test]
    fn the_writer_refuses_disorder_and_respects_its_limit() {
        let (header, lines) = sample();
        let mut w = TraceWriter::new(Vec::new());
        let e = w.write_line(&lines[0]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        w.write_header(&header).unwrap();
        assert!(w.write_header(&header).is_err());
        w.write_line(&lines[2]).unwrap();
        let e = w.write_line(&lines[1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

        let mut w = TraceWriter::new(Vec::new()).with_byte_limit(120);
        w.write_header(&header).unwrap();
        let mut refused = false;
        for l in &lines {
            match w.write_line(l) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
        assert!(w.bytes() <= 120);
        assert_eq!(w.bytes(), w.get_ref().len() as u64);
        // What was written is a valid recording.
        let (_, read_back) = read_trace(&w.get_ref()[..], 100).unwrap();
        assert_eq!(read_back.len() as u64, w.lines());
    }

    #[test]
    fn client_messages_map_to_actions() {
        let chat: ClientMsg = Chat { text: "hi".into() }.into();
        assert_eq!(
            TraceAction::from_client(&chat),
            Some(TraceAction::Chat(Chat { text: "hi".into() }))
        );
        assert_eq!(TraceAction::from_client(&Ping { t: None }.into()), None);
        assert_eq!(TraceAction::from_client(&Leave {}.into()), None);
        let mute: ClientMsg = Mute {
            user_id: crate::ids::UserId::new("secret-user").unwrap(),
            seconds: 5,
        }
        .into();
        let action = TraceAction::from_client(&mute).unwrap();
        assert_eq!(
            action,
            TraceAction::Host {
                kind: "mute".into()
            }
        );
        assert!(!serde_json::to_string(&action).unwrap().contains("secret"));
        let buy: ClientMsg = Buy {
            sku: Sku::new("A").unwrap(),
            qty: 2,
            key: crate::ids::IdemKey::new("private-key").unwrap(),
            coupon_id: None,
        }
        .into();
        let json = serde_json::to_string(&TraceAction::from_client(&buy).unwrap()).unwrap();
        assert_eq!(json, r#"{"action":"buy","sku":"A","qty":2}"#);
        for name in KNOWN_ACTIONS {
            assert!(sample().1.iter().any(|l| l.action.name() == name), "{name}");
        }
    }
}
