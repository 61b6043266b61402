//! What a client sends, decoded once into typed messages the way a
//! command-line is parsed into a command: each message is its own type, and
//! each type says who handles it and who may send it.
//!
//! - [`ConnMsg`]: the connection itself answers (`join`, `ping`, `leave`);
//! - [`RoomMsg`]: the room applies it in its order (chat, reactions, polls,
//!   Q&A, moderation, the end of the show);
//! - [`ShopMsg`]: the commerce engine answers after its durable commit
//!   (buys, coupon claims, the host's shop actions).
//!
//! Every message is declared once, in the table at the bottom of this file,
//! with its wire `type`, its group and the least role allowed to send it.
//! The groups are matched exhaustively by their handlers, so a new message
//! that is not handled, or has no role, does not compile.
//!
//! On the wire a frame is flat, `{"type": "chat", "text": "hi", "ref": 7}`,
//! in both encodings; unknown fields are ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::commerce::{CouponScope, Discount};
use crate::ids::{
    CouponId, IdemKey, PollId, ProductId, QuestionId, RoomId, SaleId, Seq, Sku, UserId,
};
use crate::{ReactionKind, Role};

/// A client frame: an optional correlation number (echoed in any `error`
/// caused by this frame) and the message itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub reference: Option<u32>,
    pub msg: ClientMsg,
}

impl ClientFrame {
    /// Decodes a frame's fields; `None` for a `type` this version does not
    /// know (the connection answers `unknown_type`).
    pub(crate) fn from_wire(raw: RawFrame) -> Option<ClientFrame> {
        Some(ClientFrame {
            reference: raw.reference,
            msg: raw.msg.into_msg()?,
        })
    }
}

/// A frame as it is on the wire: the message's fields and `ref` side by
/// side in one map.
#[derive(Deserialize)]
pub(crate) struct RawFrame {
    #[serde(rename = "ref", default)]
    reference: Option<u32>,
    #[serde(flatten)]
    msg: Tagged,
}

#[derive(Serialize)]
struct WireFrameRef<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<u32>,
    #[serde(flatten)]
    msg: TaggedRef<'a>,
}

impl Serialize for ClientFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireFrameRef {
            reference: self.reference,
            msg: TaggedRef::from(&self.msg),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    /// For readers of recorded or logged frames; an unknown `type` is an
    /// error here (connections use `Encoding::decode`, which tells the two
    /// apart).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ClientFrame::from_wire(RawFrame::deserialize(d)?)
            .ok_or_else(|| serde::de::Error::custom("unknown message type"))
    }
}

impl Serialize for ClientMsg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TaggedRef::from(self).serialize(s)
    }
}

/// A client message, sorted by who handles it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Conn(ConnMsg),
    Room(RoomMsg),
    Shop(ShopMsg),
}

impl ClientMsg {
    /// The wire `type`: a short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Conn(m) => m.kind(),
            ClientMsg::Room(m) => m.kind(),
            ClientMsg::Shop(m) => m.kind(),
        }
    }

    /// The least role allowed to send this message.
    pub fn required_role(&self) -> Role {
        match self {
            ClientMsg::Conn(m) => m.required_role(),
            ClientMsg::Room(m) => m.required_role(),
            ClientMsg::Shop(m) => m.required_role(),
        }
    }
}

/// A client message type: its wire name and who may send it.
pub trait Message: Into<ClientMsg> {
    /// The wire `type`.
    const TYPE: &'static str;
    /// The least role allowed to send it.
    const ROLE: Role;
}

/// Must be the first message. `last_seq` asks to resume after that event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<Seq>,
    /// The `epoch` from the earlier `joined`; a different epoch means the
    /// room restarted and `last_seq` no longer applies (you get a gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Echoed as `pong`; `t` is returned untouched, for round-trip timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct React {
    pub kind: ReactionKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub poll_id: PollId,
    pub option: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upvote {
    pub question_id: QuestionId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPoll {
    pub question: String,
    pub options: Vec<String>,
    /// Makes it a quiz: the index of the right option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<u8>,
    /// Quiz only: how many first correct voters to name at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winners: Option<u32>,
    /// Close automatically after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosePoll {
    pub poll_id: PollId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub question_id: QuestionId,
    pub text: String,
}

/// `question_id: null` unpins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinQuestion {
    pub question_id: Option<QuestionId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMessage {
    pub seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    pub user_id: UserId,
    pub seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmute {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unban {
    pub user_id: UserId,
}

/// Minimum seconds between two chat messages of one viewer; 0 turns it off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowMode {
    pub seconds: u32,
}

/// Replaces the room's banned-word list (case-insensitive substrings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetBannedWords {
    pub words: Vec<String>,
}

/// Ends the show, closes the room for everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndShow {}

/// Reserves `qty` units of the SKU's running sale. The server computes the
/// price; the same `key` returns the same order on a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buy {
    pub sku: Sku,
    pub qty: u32,
    pub key: IdemKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<CouponId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCoupon {
    pub coupon_id: CouponId,
}

/// Shows a product card to every viewer; `product_id: null` unpins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinProduct {
    pub product_id: Option<ProductId>,
}

/// Schedules (or starts now) a flash sale on one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSale {
    pub sku: Sku,
    pub sale_price_minor: u64,
    pub stock: u32,
    pub per_user_limit: u32,
    /// Unix ms; absent starts now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    pub duration_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_window_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSale {
    pub sale_id: SaleId,
}

/// Drops `count` first-come coupons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCoupon {
    pub count: u32,
    pub discount: Discount,
    #[serde(default = "room_scope")]
    pub scope: CouponScope,
    pub expires_in_secs: u64,
}

fn room_scope() -> CouponScope {
    CouponScope::Room
}

/// Declares every client message once: its group, its wire `type` and the
/// least role allowed to send it. Builds the groups, their `kind` and
/// `required_role`, each type's [`Message`] impl and the flat wire form.
macro_rules! client_messages {
    ($(
        $(#[$group_meta:meta])*
        $variant:ident($group:ident) {
            $( $name:ident = $wire:literal, $role:ident; )*
        }
    )*) => {
        $(
            $(#[$group_meta])*
            #[derive(Debug, Clone, PartialEq)]
            pub enum $group {
                $( $name($name), )*
            }

            impl $group {
                /// The wire `type`.
                pub fn kind(&self) -> &'static str {
                    match self {
                        $( $group::$name(_) => <$name as Message>::TYPE, )*
                    }
                }

                /// The least role allowed to send this message.
                pub fn required_role(&self) -> Role {
                    match self {
                        $( $group::$name(_) => <$name as Message>::ROLE, )*
                    }
                }
            }

            $(
                impl Message for $name {
                    const TYPE: &'static str = $wire;
                    const ROLE: Role = Role::$role;
                }

                impl From<$name> for ClientMsg {
                    fn from(m: $name) -> ClientMsg {
                        ClientMsg::$variant($group::$name(m))
                    }
                }
            )*
        )*

        /// The flat wire form, decoded by serde.
        #[derive(Deserialize)]
        #[serde(tag = "type")]
        enum Tagged {
            $($( #[serde(rename = $wire)] $name($name), )*)*
            /// Any `type` this server does not know.
            #[serde(other)]
            Unknown,
        }

        impl Tagged {
            fn into_msg(self) -> Option<ClientMsg> {
                match self {
                    $($( Tagged::$name(m) => Some(m.into()), )*)*
                    Tagged::Unknown => None,
                }
            }
        }

        /// The flat wire form, borrowed for encoding.
        #[derive(Serialize)]
        #[serde(tag = "type")]
        enum TaggedRef<'a> {
            $($( #[serde(rename = $wire)] $name(&'a $name), )*)*
        }

        impl<'a> From<&'a ClientMsg> for TaggedRef<'a> {
            fn from(msg: &'a ClientMsg) -> TaggedRef<'a> {
                match msg {
                    $( ClientMsg::$variant(m) => match m {
                        $( $group::$name(m) => TaggedRef::$name(m), )*
                    }, )*
                }
            }
        }
    };
}

client_messages! {
    /// Answered by the connection itself.
    Conn(ConnMsg) {
        Join = "join", Guest;
        Ping = "ping", Guest;
        Leave = "leave", Guest;
    }
    /// Applied by the room, in its order.
    Room(RoomMsg) {
        Chat = "chat", Guest;
        React = "react", Guest;
        Vote = "vote", Guest;
        Ask = "ask", Guest;
        Upvote = "upvote", Guest;
        Announce = "announce", Moderator;
        OpenPoll = "open_poll", Moderator;
        ClosePoll = "close_poll", Moderator;
        Answer = "answer", Moderator;
        PinQuestion = "pin_question", Moderator;
        DeleteMessage = "delete_message", Moderator;
        Mute = "mute", Moderator;
        Unmute = "unmute", Moderator;
        Ban = "ban", Moderator;
        Unban = "unban", Moderator;
        SlowMode = "slow_mode", Moderator;
        SetBannedWords = "set_banned_words", Moderator;
        EndShow = "end_show", Host;
    }
    /// Answered by the commerce engine after the durable commit.
    Shop(ShopMsg) {
        Buy = "buy", Viewer;
        ClaimCoupon = "claim_coupon", Viewer;
        PinProduct = "pin_product", Host;
        StartSale = "start_sale", Host;
        EndSale = "end_sale", Host;
        DropCoupon = "drop_coupon", Host;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_flat_and_keep_their_field_order() {
        let frame = ClientFrame {
            reference: Some(3),
            msg: Chat { text: "hi".into() }.into(),
        };
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"ref":3,"type":"chat","text":"hi"}"#
        );
        let leave = ClientFrame {
            reference: None,
            msg: Leave {}.into(),
        };
        assert_eq!(
            serde_json::to_string(&leave).unwrap(),
            r#"{"type":"leave"}"#
        );
        let back: ClientFrame = serde_json::from_str(r#"{"type":"leave","x":1}"#).unwrap();
        assert_eq!(back.msg, ClientMsg::Conn(ConnMsg::Leave(Leave {})));
    }

    #[test]
    fn each_message_names_its_group_and_role() {
        let end: ClientMsg = EndShow {}.into();
        assert!(matches!(end, ClientMsg::Room(RoomMsg::EndShow(_))));
        assert_eq!(end.required_role(), Role::Host);
        assert_eq!(end.kind(), "end_show");
        let buy: ClientMsg = Buy {
            sku: Sku::new("A").unwrap(),
            qty: 1,
            key: IdemKey::new("k").unwrap(),
            coupon_id: None,
        }
        .into();
        assert_eq!(buy.required_role(), Role::Viewer);
        assert_eq!(<Mute as Message>::ROLE, Role::Moderator);
        assert_eq!(<Ping as Message>::TYPE, "ping");
    }

    /// The flat enum these types replaced, as it was declared: the typed
    /// messages must encode byte for byte like it, in both encodings.
    #[derive(Serialize)]
    struct OldFrame {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
        #[serde(flatten)]
        msg: OldMsg,
    }

    #[derive(Clone, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OldMsg {
        Join {
            room: RoomId,
            #[serde(skip_serializing_if = "Option::is_none")]
            token: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            last_seq: Option<Seq>,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<u64>,
        },
        Leave,
        Buy {
            sku: Sku,
            qty: u32,
            key: IdemKey,
            #[serde(skip_serializing_if = "Option::is_none")]
            coupon_id: Option<CouponId>,
        },
        EndShow,
        DropCoupon {
            count: u32,
            discount: Discount,
            scope: CouponScope,
            expires_in_secs: u64,
        },
    }

    #[test]
    fn typed_messages_encode_like_the_flat_enum_they_replaced() {
        let room = RoomId::new("demo").unwrap();
        let sku = Sku::new("TEE-M").unwrap();
        let key = IdemKey::new("k1").unwrap();
        let pairs: Vec<(ClientMsg, OldMsg)> = vec![
            (
                Join {
                    room: room.clone(),
                    token: None,
                    last_seq: Some(7),
                    epoch: Some(3),
                }
                .into(),
                OldMsg::Join {
                    room,
                    token: None,
                    last_seq: Some(7),
                    epoch: Some(3),
                },
            ),
            (Leave {}.into(), OldMsg::Leave),
            (EndShow {}.into(), OldMsg::EndShow),
            (
                Buy {
                    sku: sku.clone(),
                    qty: 2,
                    key: key.clone(),
                    coupon_id: Some(CouponId(4)),
                }
                .into(),
                OldMsg::Buy {
                    sku,
                    qty: 2,
                    key,
                    coupon_id: Some(CouponId(4)),
                },
            ),
            (
                DropCoupon {
                    count: 5,
                    discount: Discount::Percent { percent: 10 },
                    scope: CouponScope::Room,
                    expires_in_secs: 60,
                }
                .into(),
                OldMsg::DropCoupon {
                    count: 5,
                    discount: Discount::Percent { percent: 10 },
                    scope: CouponScope::Room,
                    expires_in_secs: 60,
                },
            ),
        ];
        for (new, old) in pairs {
            for reference in [None, Some(9)] {
                let new = ClientFrame {
                    reference,
                    msg: new.clone(),
                };
                let old = OldFrame {
                    reference,
                    msg: old.clone(),
                };
                assert_eq!(
                    serde_json::to_string(&new).unwrap(),
                    serde_json::to_string(&old).unwrap()
                );
                assert_eq!(
                    rmp_serde::to_vec_named(&new).unwrap(),
                    rmp_serde::to_vec_named(&old).unwrap()
                );
            }
        }
    }
}
