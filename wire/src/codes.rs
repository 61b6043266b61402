//! Every error code and close code a client can see. docs/protocol.md lists
//! the same table; `tests/protocol_docs.rs` fails if they drift.

use serde::{Deserialize, Serialize};

/// The reason in an `error` frame. The connection stays open after an error
/// frame unless a close frame follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded, or a field is missing or of the wrong type.
    Malformed,
    /// The frame is larger than `max_frame_bytes` (the connection is closed with 1009).
    FrameTooLarge,
    /// The frame's `type` is not a known client message.
    UnknownType,
    /// A text frame on a MessagePack connection, or binary on a JSON one.
    WrongEncoding,
    /// A room message arrived before `join`.
    NotJoined,
    /// A second `join` on the same connection.
    AlreadyJoined,
    /// The token is missing, badly signed or malformed.
    Unauthorized,
    /// The token has expired.
    TokenExpired,
    /// The role may not do this, or the token is for another room.
    Forbidden,
    /// The room does not exist.
    RoomNotFound,
    /// The room has reached `max_viewers_per_room`.
    RoomFull,
    /// The show has ended; the room accepts nothing more.
    RoomClosed,
    /// The room's command queue is full; retry shortly.
    RoomBusy,
    /// Sent too fast: per-user chat or reaction rate, or joins per address.
    RateLimited,
    /// Slow mode is on and this user spoke less than `slow_mode` seconds ago.
    SlowMode,
    /// The user is muted in this room for a while.
    Muted,
    /// The user is banned from this room.
    Banned,
    /// The text contains a word on the room's banned list.
    BannedWord,
    /// Empty, too long, or containing control characters.
    InvalidText,
    /// A field is out of range (poll options, durations, ids...).
    InvalidArgument,
    /// The poll, question or message does not exist (or is closed).
    NotFound,
    /// This user already voted in this poll.
    AlreadyVoted,
    /// This user already upvoted this question.
    AlreadyUpvoted,
    /// A per-room collection (questions, mutes, bans, banned words) is full.
    LimitReached,
    /// Too many rejected frames in a short time (the connection is closed with 4029).
    Flood,
    /// This connection fell too far behind the room (closed with 4008; resume).
    SlowConsumer,
    /// The server is shutting down (closed with 1012; reconnect and resume).
    ShuttingDown,
    /// No product in this room has this SKU.
    UnknownSku,
    /// The SKU exists but has never been put on sale in this room (after a sale ends, buys get `sale_ended`).
    NoSale,
    /// The sale has not started yet (see its `starts_at`).
    SaleNotStarted,
    /// The sale has ended.
    SaleEnded,
    /// Not enough units left for this quantity (units may come back when reservations expire).
    SoldOut,
    /// This buy would take the user over the sale's per-user limit (reserved plus paid units).
    PerUserLimit,
    /// The quantity is zero or larger than `max_buy_qty`.
    BadQuantity,
    /// This idempotency key was already used for a different request (other SKU, quantity or coupon).
    IdempotencyConflict,
    /// A buy with this idempotency key is still being committed; retry with the same key.
    BuyInProgress,
    /// No such coupon drop in this room.
    CouponUnknown,
    /// The coupon drop has expired.
    CouponExpired,
    /// This user's coupon is already used by a live order.
    CouponUsed,
    /// The coupon does not apply to this sale or SKU (or is in another currency).
    CouponOutOfScope,
    /// This user already claimed this coupon drop.
    CouponAlreadyClaimed,
    /// A buy named a coupon this user has not claimed.
    CouponNotClaimed,
    /// Every coupon of this drop has been claimed.
    CouponsGone,
    /// The order's payment deadline has passed; the reservation expired.
    PaymentDeadlinePassed,
    /// No such order.
    OrderNotFound,
    /// The order can no longer change this way (already paid, expired or cancelled).
    OrderFinal,
    /// Another change to this order is being committed; retry.
    OrderBusy,
    /// A payment webhook's signature header is missing, malformed, wrong, or its timestamp is outside the tolerance.
    BadSignature,
    /// A payment webhook event id that was already processed.
    WebhookReplayed,
    /// A payment's amount or currency differs from the order total.
    AmountMismatch,
    /// The request conflicts with current state (an id that exists, a SKU that already has a sale running, a room that already has a live broadcast).
    Conflict,
    /// Video (WHIP/WHEP): the body is not a usable SDP offer (not SDP, no audio or video, no codec this server forwards or this client plays).
    BadSdp,
    /// Video (WHIP/WHEP): the request's `Content-Type` is not `application/sdp`.
    UnsupportedMediaType,
    /// Video (WHIP/WHEP): the offer is larger than `media_max_offer_bytes`.
    PayloadTooLarge,
    /// Video (WHEP): nothing is being broadcast in the room; play when its `stream` event says `live`.
    StreamOffline,
    /// Video: this method is not supported on this URL (WHIP/WHEP `PATCH`: no trickle ICE or ICE restart).
    MethodNotAllowed,
    /// An unexpected server fault; nothing was applied.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 57] = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownType,
        ErrorCode::WrongEncoding,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::RoomNotFound,
        ErrorCode::RoomFull,
        ErrorCode::RoomClosed,
        ErrorCode::RoomBusy,
        ErrorCode::RateLimited,
        ErrorCode::SlowMode,
        ErrorCode::Muted,
        ErrorCode::Banned,
        ErrorCode::BannedWord,
        ErrorCode::InvalidText,
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyVoted,
        ErrorCode::AlreadyUpvoted,
        ErrorCode::LimitReached,
        ErrorCode::Flood,
        ErrorCode::SlowConsumer,
        ErrorCode::ShuttingDown,
        ErrorCode::UnknownSku,
        ErrorCode::NoSale,
        ErrorCode::SaleNotStarted,
        ErrorCode::SaleEnded,
        ErrorCode::SoldOut,
        ErrorCode::PerUserLimit,
        ErrorCode::BadQuantity,
        ErrorCode::IdempotencyConflict,
        ErrorCode::BuyInProgress,
        ErrorCode::CouponUnknown,
        ErrorCode::CouponExpired,
        ErrorCode::CouponUsed,
        ErrorCode::CouponOutOfScope,
        ErrorCode::CouponAlreadyClaimed,
        ErrorCode::CouponNotClaimed,
        ErrorCode::CouponsGone,
        ErrorCode::PaymentDeadlinePassed,
        ErrorCode::OrderNotFound,
        ErrorCode::OrderFinal,
        ErrorCode::OrderBusy,
        ErrorCode::BadSignature,
        ErrorCode::WebhookReplayed,
        ErrorCode::AmountMismatch,
        ErrorCode::Conflict,
        ErrorCode::BadSdp,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::StreamOffline,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Internal,
    ];

    /// The wire name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::WrongEncoding => "wrong_encoding",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::RoomBusy => "room_busy",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowMode => "slow_mode",
            ErrorCode::Muted => "muted",
            ErrorCode::Banned => "banned",
            ErrorCode::BannedWord => "banned_word",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyVoted => "already_voted",
            ErrorCode::AlreadyUpvoted => "already_upvoted",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Flood => "flood",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::UnknownSku => "unknown_sku",
            ErrorCode::NoSale => "no_sale",
            ErrorCode::SaleNotStarted => "sale_not_started",
            ErrorCode::SaleEnded => "sale_ended",
            ErrorCode::SoldOut => "sold_out",
            ErrorCode::PerUserLimit => "per_user_limit",
            ErrorCode::BadQuantity => "bad_quantity",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::BuyInProgress => "buy_in_progress",
            ErrorCode::CouponUnknown => "coupon_unknown",
            ErrorCode::CouponExpired => "coupon_expired",
            ErrorCode::CouponUsed => "coupon_used",
            ErrorCode::CouponOutOfScope => "coupon_out_of_scope",
            ErrorCode::CouponAlreadyClaimed => "coupon_already_claimed",
            ErrorCode::CouponNotClaimed => "coupon_not_claimed",
            ErrorCode::CouponsGone => "coupons_gone",
            ErrorCode::PaymentDeadlinePassed => "payment_deadline_passed",
            ErrorCode::OrderNotFound => "order_not_found",
            ErrorCode::OrderFinal => "order_final",
            ErrorCode::OrderBusy => "order_busy",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::WebhookReplayed => "webhook_replayed",
            ErrorCode::AmountMismatch => "amount_mismatch",
            ErrorCode::Conflict => "conflict",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::StreamOffline => "stream_offline",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// WebSocket close codes Flashcast sends. 1xxx are the RFC 6455 ones; 4xxx
/// are Flashcast's own. Whether a client should reconnect is part of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The client sent `leave`, or closed first.
    Normal = 1000,
    /// Frame larger than `max_frame_bytes`. Do not resend it.
    MessageTooBig = 1009,
    /// The server is shutting down: reconnect (to another node) and resume.
    ServiceRestart = 1012,
    /// Missing, malformed or badly signed token. Do not retry with it.
    Unauthorized = 4001,
    /// The token expired: get a fresh one, then reconnect and resume.
    TokenExpired = 4002,
    /// Wrong room for the token, or the user is banned. Do not retry.
    Forbidden = 4003,
    /// No such room.
    RoomNotFound = 4004,
    /// The outbound queue overflowed: reconnect and resume from the last seq.
    SlowConsumer = 4008,
    /// The room is at its viewer limit; retry later.
    RoomFull = 4009,
    /// The show ended (or the room was closed). Do not reconnect.
    RoomClosed = 4010,
    /// No `join` within `join_timeout_ms` of connecting.
    JoinTimeout = 4011,
    /// Too many rejected frames, or joins from this address too fast. Back off.
    Flood = 4029,
}

impl CloseCode {
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::MessageTooBig,
        CloseCode::ServiceRestart,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::RoomNotFound,
        CloseCode::SlowConsumer,
        CloseCode::RoomFull,
        CloseCode::RoomClosed,
        CloseCode::JoinTimeout,
        CloseCode::Flood,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// The close frame's reason text (short, ASCII, under the 123-byte cap).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::MessageTooBig => "frame too large",
            CloseCode::ServiceRestart => "server shutting down, reconnect",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Forbidden => "forbidden",
            CloseCode::RoomNotFound => "room not found",
            CloseCode::SlowConsumer => "slow consumer, resume",
            CloseCode::RoomFull => "room full",
            CloseCode::RoomClosed => "room closed",
            CloseCode::JoinTimeout => "join timeout",
            CloseCode::Flood => "flood",
        }
    }

    /// The error code that precedes this close frame.
    pub fn error_code(self) -> Option<ErrorCode> {
        Some(match self {
            CloseCode::Normal => return None,
            CloseCode::MessageTooBig => ErrorCode::FrameTooLarge,
            CloseCode::ServiceRestart => ErrorCode::ShuttingDown,
            CloseCode::Unauthorized => ErrorCode::Unauthorized,
            CloseCode::TokenExpired => ErrorCode::TokenExpired,
            CloseCode::Forbidden => ErrorCode::Forbidden,
            CloseCode::RoomNotFound => ErrorCode::RoomNotFound,
            CloseCode::SlowConsumer => ErrorCode::SlowConsumer,
            CloseCode::RoomFull => ErrorCode::RoomFull,
            CloseCode::RoomClosed => ErrorCode::RoomClosed,
            CloseCode::JoinTimeout => ErrorCode::NotJoined,
            CloseCode::Flood => ErrorCode::Flood,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn close_codes_are_distinct_and_reasons_fit() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()), "duplicate close code {}", c.code());
            assert!(c.reason().len() <= 123);
        }
    }
}
