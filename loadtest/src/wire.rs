//! A lean reader of the server's MessagePack tick frames.
//!
//! Ten thousand simulated viewers receive millions of events per second on
//! the same two cores as the server; decoding each event into the
//! protocol's owned types (strings, `Arc`s, maps) would make the load
//! generator the bottleneck. A tick frame is therefore scanned, not decoded:
//! only each event's `seq`, `ts` and `kind` are read and everything else is
//! skipped. Frames that are not batches, and batches carrying an event the
//! viewer must act on (a poll, a sale, a coupon), are decoded in full.

/// Ends the text of the chat messages the storm makes up; the sender puts
/// its clock (Unix ms) right after it, so a receiver can time the message
/// from sender to viewer, including the server's queueing before `ts`.
pub const SENT_AT: &str = " sent@";

/// What a scan of one frame found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// `type` of the frame (`batch`, `joined`, `order`, ...).
    pub is_batch: bool,
    /// (seq, ts) of each sequenced event, in order.
    pub events: Vec<(u64, u64)>,
    /// The sender's clock of each chat message stamped with [`SENT_AT`],
    /// when `time_chat` is set.
    pub sent_at: Vec<u64>,
    /// Set by the caller: read chat texts for their stamp. Only sampled
    /// viewers do; the others skip the texts, as they skip every other
    /// field they do not use.
    pub time_chat: bool,
    /// A `poll_opened`, `sale_started`, `coupon_dropped` or `question_asked`
    /// is among them.
    pub needs_full_decode: bool,
    /// Reactions the batch carries (its `reactions` counts per kind, summed):
    /// the server aggregates them per tick instead of sending events.
    pub reactions: u64,
}

/// Event kinds a viewer acts on.
const TRIGGERS: [&[u8]; 4] = [
    b"poll_opened",
    b"sale_started",
    b"coupon_dropped",
    // The newest question is what an `upvotes` phase upvotes.
    b"question_asked",
];

/// Scans a frame; `None` if it is not well-formed MessagePack of the
/// expected shape (counted as a decode error by the caller).
pub fn scan(bytes: &[u8], out: &mut Scan) -> Option<()> {
    out.events.clear();
    out.sent_at.clear();
    out.is_batch = false;
    out.needs_full_decode = false;
    out.reactions = 0;
    let mut r = Reader { b: bytes, i: 0 };
    let n = r.map_len()?;
    let mut events_at = None;
    for _ in 0..n {
        let key = r.str()?;
        match key {
            b"type" => out.is_batch = r.str()? == b"batch",
            b"events" => {
                events_at = Some(r.i);
                r.skip()?;
            }
            b"reactions" => {
                for _ in 0..r.map_len()? {
                    r.skip()?;
                    out.reactions += r.uint()?;
                }
            }
            _ => r.skip()?,
        }
    }
    if !out.is_batch {
        return Some(());
    }
    let Some(at) = events_at else {
        return Some(());
    };
    r.i = at;
    let count = r.array_len()?;
    for _ in 0..count {
        let fields = r.map_len()?;
        let (mut seq, mut ts) = (None, None);
        for _ in 0..fields {
            match r.str()? {
                b"seq" => seq = Some(r.uint()?),
                b"ts" => ts = Some(r.uint()?),
                b"kind" => {
                    let kind = r.str()?;
                    if TRIGGERS.contains(&kind) {
                        out.needs_full_decode = true;
                    }
                }
                b"text" if out.time_chat => {
                    let at = r.i;
                    match r.str() {
                        Some(text) => out.sent_at.extend(sent_at(text)),
                        None => {
                            r.i = at;
                            r.skip()?;
                        }
                    }
                }
                _ => r.skip()?,
            }
        }
        out.events.push((seq?, ts?));
    }
    Some(())
}

/// The sender's clock after [`SENT_AT`] at the end of `text`, if any.
fn sent_at(text: &[u8]) -> Option<u64> {
    let mark = SENT_AT.as_bytes();
    let from = text.windows(mark.len()).rposition(|w| w == mark)? + mark.len();
    let digits = &text[from..];
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.i.checked_add(n)?;
        let s = self.b.get(self.i..end)?;
        self.i = end;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &x| (acc << 8) | x as u64),
        )
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2).map(|v| v as usize),
            0xdf => self.be(4).map(|v| v as usize),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x90..=0x9f => Some((m & 0x0f) as usize),
            0xdc => self.be(2).map(|v| v as usize),
            0xdd => self.be(4).map(|v| v as usize),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        self.take(n)
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x00..=0x7f => Some(m as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// Skips one value of any type.
    fn skip(&mut self) -> Option<()> {
        let m = self.byte()?;
        let skip_n = |r: &mut Self, n: usize| r.take(n).map(|_| ());
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
            0x80..=0x8f => self.skip_items(2 * (m & 0x0f) as usize),
            0x90..=0x9f => self.skip_items((m & 0x0f) as usize),
            0xa0..=0xbf => skip_n(self, (m & 0x1f) as usize),
            0xc4 | 0xd9 => {
                let n = self.be(1)? as usize;
                skip_n(self, n)
            }
            0xc5 | 0xda => {
                let n = self.be(2)? as usize;
                skip_n(self, n)
            }
            0xc6 | 0xdb => {
                let n = self.be(4)? as usize;
                skip_n(self, n)
            }
            0xc7 => {
                let n = self.be(1)? as usize;
                skip_n(self, n + 1)
            }
            0xc8 => {
                let n = self.be(2)? as usize;
                skip_n(self, n + 1)
            }
            0xc9 => {
                let n = self.be(4)? as usize;
                skip_n(self, n + 1)
            }
            0xca => skip_n(self, 4),
            0xcb => skip_n(self, 8),
            0xcc | 0xd0 => skip_n(self, 1),
            0xcd | 0xd1 => skip_n(self, 2),
            0xce | 0xd2 => skip_n(self, 4),
            0xcf | 0xd3 => skip_n(self, 8),
            0xd4 => skip_n(self, 2),
            0xd5 => skip_n(self, 3),
            0xd6 => skip_n(self, 5),
            0xd7 => skip_n(self, 9),
            0xd8 => skip_n(self, 17),
            0xdc => {
                let n = self.be(2)? as usize;
                self.skip_items(n)
            }
            0xdd => {
                let n = self.be(4)? as usize;
                self.skip_items(n)
            }
            0xde => {
                let n = self.be(2)? as usize;
                self.skip_items(2 * n)
            }
            0xdf => {
                let n = self.be(4)? as usize;
                self.skip_items(2 * n)
            }
            0xc1 => None,
        }
    }

    fn skip_items(&mut self, n: usize) -> Option<()> {
        // Every item is at least one byte: a count beyond what is left is
        // malformed, and refusing it early bounds the loop.
        if n > self.b.len() - self.i {
            return None;
        }
        for _ in 0..n {
            self.skip()?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcast_wire::ids::{PollId, UserId};
    use flashcast_wire::{
        Encoding, Event, EventBody, PollView, ReactionKind, Role, ServerMsg, UserRef,
    };
    use std::sync::Arc;

    fn encode(msg: &ServerMsg) -> Vec<u8> {
        match Encoding::MsgPack.encode(msg).unwrap() {
            flashcast_wire::codec::WireFrame::Binary(b) => b.to_vec(),
            _ => unreachable!(),
        }
    }

    fn chat(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            ts: 1_795_000_000_000 + seq * 1_000_000,
            body: EventBody::Chat {
                user: UserRef {
                    id: UserId::new("u1").unwrap(),
                    name: Arc::from("Ünïcode name 😍"),
                    role: Role::Viewer,
                },
                text: "x".repeat(300),
                deleted: false,
            },
        })
    }

    /// A stamped chat text gives the sender's clock; other texts, a mark
    /// without digits or with more than 16, give nothing.
    #[test]
    fn reads_the_senders_clock_of_stamped_chat() {
        let mut events: Vec<Arc<Event>> = Vec::new();
        for (seq, text) in [
            "storm 1 viewer 2 message 3 sent@1795000000123",
            "plain",
            "ends with the mark sent@",
            "too long sent@12345678901234567",
            "sent@1 sent@42",
        ]
        .iter()
        .enumerate()
        {
            let mut e = (*chat(seq as u64 + 1)).clone();
            if let EventBody::Chat { text: t, .. } = &mut e.body {
                *t = text.to_string();
            }
            events.push(Arc::new(e));
        }
        let msg = ServerMsg::Batch {
            events,
            viewers: None,
            reactions: Default::default(),
            tallies: vec![],
        };
        let mut s = Scan::default();
        scan(&encode(&msg), &mut s).unwrap();
        assert_eq!(s.events.len(), 5);
        assert!(s.sent_at.is_empty(), "not read unless asked");
        s.time_chat = true;
        scan(&encode(&msg), &mut s).unwrap();
        assert_eq!(s.sent_at, [1_795_000_000_123, 42]);
    }

    #[test]
    fn reads_seq_and_ts_of_every_event_of_a_real_batch() {
        let msg = ServerMsg::Batch {
            events: (1..=40).map(chat).collect(),
            viewers: Some(70_000),
            reactions: [(ReactionKind::Heart, 65_000), (ReactionKind::Fire, 3)].into(),
            tallies: vec![],
        };
        let mut s = Scan::default();
        scan(&encode(&msg), &mut s).unwrap();
        assert!(s.is_batch && !s.needs_full_decode);
        assert_eq!(s.reactions, 65_003);
        let want: Vec<(u64, u64)> = (1..=40)
            .map(|q| (q, 1_795_000_000_000 + q * 1_000_000))
            .collect();
        assert_eq!(s.events, want);
    }

    #[test]
    fn flags_the_events_a_viewer_acts_on_and_other_frames() {
        let poll = Arc::new(Event {
            seq: 9,
            ts: 5,
            body: EventBody::PollOpened {
                poll: PollView {
                    id: PollId(3),
                    question: "?".into(),
                    options: vec!["a".into(), "b".into()],
                    quiz: false,
                    closes_at: None,
                    counts: vec![0, 0],
                },
            },
        });
        let msg = ServerMsg::Batch {
            events: vec![chat(8), poll],
            viewers: None,
            reactions: Default::default(),
            tallies: vec![],
        };
        let mut s = Scan::default();
        scan(&encode(&msg), &mut s).unwrap();
        assert!(s.needs_full_decode);
        assert_eq!(s.events.len(), 2);
        let pong = ServerMsg::Pong {
            t: Some(1),
            server_time: 2,
        };
        scan(&encode(&pong), &mut s).unwrap();
        assert!(!s.is_batch && s.events.is_empty());
    }

    #[test]
    fn truncated_or_garbage_frames_are_refused_not_panicked_on() {
        let msg = ServerMsg::Batch {
            events: (1..=3).map(chat).collect(),
            viewers: None,
            reactions: Default::default(),
            tallies: vec![],
        };
        let bytes = encode(&msg);
        let mut s = Scan::default();
        for cut in 0..bytes.len() {
            assert!(scan(&bytes[..cut], &mut s).is_none(), "cut at {cut}");
        }
        assert!(scan(&[0xdf, 0xff, 0xff, 0xff, 0xff], &mut s).is_none());
        assert!(scan(&[0xc1], &mut s).is_none());
    }
}
