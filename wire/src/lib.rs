//! Flashcast's wire protocol: every message in both directions, both
//! encodings, error and close codes, ids, the shop's views and the recording
//! format. Shared by the server and the load tester, so neither can drift
//! from the protocol the other speaks. docs/protocol.md is the human version
//! of this crate; keep them in step.
//!
//! Field names are the same in both encodings (MessagePack maps use the JSON
//! names), so one set of serde types serves both.

pub mod client;
pub mod codec;
pub mod codes;
pub mod commerce;
pub mod ids;
pub mod money;
pub mod recording;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::commerce::{CouponView, OrderView, Product, SaleView};
use crate::ids::{CouponId, PollId, QuestionId, RoomId, SaleId, Seq, UserId};
pub use codec::{DecodeError, Encoding};
pub use codes::{CloseCode, ErrorCode};

/// What a connection may do. Ordered by power: a check like
/// `role >= Role::Moderator` reads as "moderator or host".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Joined without a token in a room that allows guests; a viewer with a
    /// server-assigned id.
    Guest,
    Viewer,
    Moderator,
    Host,
}

impl Role {
    pub fn can_moderate(self) -> bool {
        self >= Role::Moderator
    }
}

/// The reactions viewers can send. A closed set: reactions are counted per
/// kind per tick, never forwarded one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactionKind {
    Heart,
    Fire,
    Laugh,
    Wow,
    Clap,
}

impl ReactionKind {
    pub const ALL: [ReactionKind; 5] = [
        ReactionKind::Heart,
        ReactionKind::Fire,
        ReactionKind::Laugh,
        ReactionKind::Wow,
        ReactionKind::Clap,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a sale ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleEndReason {
    /// Its scheduled end time came.
    Time,
    /// The host or an admin ended it early.
    Host,
}

/// Whether the room's host video is on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    Live,
    Offline,
}

/// The room's video state and since when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub state: StreamState,
    pub since: u64,
}

/// Who a message is from, as shown to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: UserId,
    pub name: Arc<str>,
    pub role: Role,
}

/// A sequenced room event. Stored in the history ring, replayed on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: Seq,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Chat {
        user: UserRef,
        text: String,
        /// Set when a moderator deleted it; `text` is then empty.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
    },
    Announcement {
        user: UserRef,
        text: String,
    },
    PollOpened {
        poll: PollView,
    },
    PollClosed {
        poll_id: PollId,
        counts: Vec<u32>,
        /// Quiz only: the right option and the first correct voters, in order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        correct: Option<u8>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        winners: Vec<UserRef>,
    },
    QuestionAsked {
        question: QuestionView,
    },
    QuestionUpvoted {
        question_id: QuestionId,
        upvotes: u32,
    },
    QuestionAnswered {
        question_id: QuestionId,
        answer: String,
        by: UserRef,
    },
    QuestionPinned {
        question_id: Option<QuestionId>,
    },
    MessageDeleted {
        target_seq: Seq,
        by: UserRef,
    },
    UserMuted {
        user_id: UserId,
        /// Unix ms when the mute ends.
        until: u64,
    },
    UserUnmuted {
        user_id: UserId,
    },
    UserBanned {
        user_id: UserId,
    },
    UserUnbanned {
        user_id: UserId,
    },
    SlowMode {
        seconds: u32,
    },
    ShowEnded {},
    /// The host pinned a product: show its card.
    ProductPinned {
        product: Product,
    },
    ProductUnpinned {},
    /// A sale was created that starts later: show a countdown to `starts_at`.
    SaleScheduled {
        sale: SaleView,
    },
    /// A sale is live: buy until `ends_at`.
    SaleStarted {
        sale: SaleView,
    },
    SaleEnded {
        sale_id: SaleId,
        /// Units sold (reserved or paid) when it ended.
        sold: u32,
        reason: SaleEndReason,
    },
    /// Units left in a live sale; at most one per sale per 250 ms (the latest
    /// value). `available: 0` is sold out, and it can rise again when
    /// reservations expire or are cancelled.
    Stock {
        sale_id: SaleId,
        available: u32,
    },
    CouponDropped {
        coupon: CouponView,
    },
    /// Coupons of a drop not claimed yet; at most one per drop per 250 ms
    /// (zero at once).
    CouponsLeft {
        coupon_id: CouponId,
        left: u32,
    },
    /// The host's video went live (play it over WHEP) or offline.
    Stream {
        state: StreamState,
        /// Unix ms of the change.
        since: u64,
    },
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Chat { .. } => "chat",
            EventBody::Announcement { .. } => "announcement",
            EventBody::PollOpened { .. } => "poll_opened",
            EventBody::PollClosed { .. } => "poll_closed",
            EventBody::QuestionAsked { .. } => "question_asked",
            EventBody::QuestionUpvoted { .. } => "question_upvoted",
            EventBody::QuestionAnswered { .. } => "question_answered",
            EventBody::QuestionPinned { .. } => "question_pinned",
            EventBody::MessageDeleted { .. } => "message_deleted",
            EventBody::UserMuted { .. } => "user_muted",
            EventBody::UserUnmuted { .. } => "user_unmuted",
            EventBody::UserBanned { .. } => "user_banned",
            EventBody::UserUnbanned { .. } => "user_unbanned",
            EventBody::SlowMode { .. } => "slow_mode",
            EventBody::ShowEnded { .. } => "show_ended",
            EventBody::ProductPinned { .. } => "product_pinned",
            EventBody::ProductUnpinned { .. } => "product_unpinned",
            EventBody::SaleScheduled { .. } => "sale_scheduled",
            EventBody::SaleStarted { .. } => "sale_started",
            EventBody::SaleEnded { .. } => "sale_ended",
            EventBody::Stock { .. } => "stock",
            EventBody::CouponDropped { .. } => "coupon_dropped",
            EventBody::CouponsLeft { .. } => "coupons_left",
            EventBody::Stream { .. } => "stream",
        }
    }
}

/// A poll as viewers see it. `correct` is never shown while it is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollView {
    pub id: PollId,
    pub question: String,
    pub options: Vec<String>,
    pub quiz: bool,
    /// Unix ms of the automatic close, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<u64>,
    pub counts: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionView {
    pub id: QuestionId,
    /// The seq of its `question_asked` event: what `delete_message` takes.
    pub seq: Seq,
    pub user: UserRef,
    pub text: String,
    pub upvotes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Set when a moderator deleted it; `text` is then empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The current state of a room, sent on every join and resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub title: String,
    pub viewers: u32,
    pub slow_mode_secs: u32,
    pub ended: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_question: Option<QuestionId>,
    /// Open questions, most upvoted first (at most `snapshot_questions`).
    pub questions: Vec<QuestionView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_product: Option<Product>,
    /// Scheduled and live sales, with their current stock.
    #[serde(default)]
    pub sales: Vec<SaleView>,
    /// Coupon drops not expired yet.
    #[serde(default)]
    pub coupons: Vec<CouponView>,
    /// The video state; omitted until the room first goes live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// Live vote counts of an open poll, sent in a batch when they changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollTally {
    pub poll_id: PollId,
    pub counts: Vec<u32>,
}

/// Messages the server sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to `join`. `seq` is the last event this client now has;
    /// the next batch starts at `seq + 1`. `events` are either exactly the
    /// events after the requested `last_seq` (`gap: false`) or the recent
    /// tail of the room (fresh join, or `gap: true` when the requested
    /// position has left the history window).
    Joined {
        you: UserRef,
        room: RoomId,
        /// Identifies this run of the room; send it back with `last_seq`.
        epoch: u64,
        seq: Seq,
        gap: bool,
        state: Box<RoomState>,
        events: Vec<Arc<Event>>,
    },
    /// One tick of the room: sequenced events plus aggregated, unsequenced
    /// counts (reactions of this tick, viewer count and tallies if changed).
    Batch {
        events: Vec<Arc<Event>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        viewers: Option<u32>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        reactions: BTreeMap<ReactionKind, u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tallies: Vec<PollTally>,
    },
    /// A frame was rejected. `ref` echoes the client's `ref`, if it sent one.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
        /// For `rate_limited`, `slow_mode` and `muted`: when to try again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Confirms a moderator action that produces no room event
    /// (`set_banned_words`).
    Ack {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<u64>,
        server_time: u64,
    },
    /// The answer to `buy`, sent after the order is durably committed (or,
    /// for a retried key, the order it created before).
    Order {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
        order: OrderView,
    },
    /// The answer to `claim_coupon`, after the claim is durable.
    CouponClaimed {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
        coupon: CouponView,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<u32>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
            reference,
            retry_after_ms: None,
        }
    }
}

/// Milliseconds since the Unix epoch, the unit of every wire timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
