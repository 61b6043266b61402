//! docs/protocol.md must stay in step with the code:
//!
//! - every error code (wire name) and close code (number, reason text and the
//!   error sent before it) has its table row;
//! - every client message type, event kind and server message type is
//!   documented, with every field it serializes. The names are derived by
//!   serializing sample values, and the samples are built by exhaustive
//!   matches, so adding a variant breaks this test until it is documented;
//! - every example message on the page decodes as the server would decode it
//!   and re-encodes to the same JSON (no misspelled or invented fields);
//! - the defaults quoted in the limits table are the defaults in
//!   `src/limits.rs`;
//! - the decoding rules the page states (unknown fields ignored, `null` for
//!   absent, ...) hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use flashcast::limits::Limits;
use flashcast::ws_frame;
use flashcast_wire::client::{
    Announce, Answer, Ask, Ban, Buy, Chat, ClaimCoupon, ClientFrame, ClientMsg, ClosePoll, ConnMsg,
    DeleteMessage, DropCoupon, EndSale, EndShow, Join, Leave, Mute, OpenPoll, PinProduct,
    PinQuestion, Ping, React, RoomMsg, SetBannedWords, ShopMsg, SlowMode, StartSale, Unban, Unmute,
    Upvote, Vote,
};
use flashcast_wire::codes::{CloseCode, ErrorCode};
use flashcast_wire::commerce::{CouponScope, CouponView, Discount};
use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::commerce::{Product, Variant};
use flashcast_wire::commerce::{SaleStatus, SaleView};
use flashcast_wire::ids::{
    CouponId, IdemKey, OrderId, PollId, ProductId, QuestionId, RoomId, SaleId, Sku, UserId,
};
use flashcast_wire::money::{Currency, Money};
use flashcast_wire::{
    Encoding, Event, EventBody, PollTally, PollView, QuestionView, ReactionKind, Role, RoomState,
    SaleEndReason, ServerMsg, StreamState, StreamStatus, UserRef,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The text of the `## title` section, up to the next `## ` heading.
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let heading = format!("\n## {title}\n");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has no section `## {title}`"))
        + 1;
    let rest = &doc[start + heading.len() - 1..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i + 1);
    &doc[start..start + heading.len() - 1 + end]
}

/// The first table row of `text` starting with `prefix`.
fn row<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

// ---------------------------------------------------------------- samples

fn user(id: &str, role: Role) -> UserRef {
    UserRef {
        id: UserId::new(id).unwrap(),
        name: Arc::from(id),
        role,
    }
}

fn poll_view() -> PollView {
    PollView {
        id: PollId(1),
        question: "q".into(),
        options: vec!["a".into(), "b".into()],
        quiz: true,
        closes_at: Some(1),
        counts: vec![0, 0],
    }
}

fn question_view() -> QuestionView {
    QuestionView {
        id: QuestionId(1),
        seq: 1,
        user: user("u", Role::Viewer),
        text: "t".into(),
        upvotes: 0,
        answer: Some("a".into()),
        deleted: true,
    }
}

fn usd(minor: u64) -> Money {
    Money::new(minor, Currency::new("USD").unwrap())
}

fn sku() -> Sku {
    Sku::new("SHIRT-M").unwrap()
}

fn variant() -> Variant {
    Variant {
        sku: sku(),
        options: [("size".to_string(), "M".to_string())].into(),
        price_minor: 4900,
    }
}

fn product() -> Product {
    Product {
        id: ProductId(1),
        room: RoomId::new("r").unwrap(),
        title: "t".into(),
        description: "d".into(),
        images: vec!["https://cdn.example/i.jpg".into()],
        currency: Currency::new("USD").unwrap(),
        variants: vec![variant()],
    }
}

fn sale_view() -> SaleView {
    SaleView {
        id: SaleId(2),
        product_id: ProductId(1),
        sku: sku(),
        label: "t (M)".into(),
        image: Some("https://cdn.example/i.jpg".into()),
        regular_price: usd(4900),
        sale_price: usd(2900),
        stock: 10,
        available: 10,
        per_user_limit: 2,
        starts_at: 1,
        ends_at: 2,
        payment_window_secs: 600,
        status: SaleStatus::Live,
    }
}

fn coupon_view() -> CouponView {
    CouponView {
        id: CouponId(3),
        discount: Discount::Percent { percent: 10 },
        scope: CouponScope::Room,
        count: 100,
        left: 100,
        expires_at: 1,
    }
}

fn order_view() -> OrderView {
    OrderView {
        id: OrderId(4),
        room: RoomId::new("r").unwrap(),
        sale_id: SaleId(2),
        product_id: ProductId(1),
        sku: sku(),
        label: "t (M)".into(),
        user_id: UserId::new("u").unwrap(),
        user_name: "u".into(),
        key: IdemKey::new("k").unwrap(),
        qty: 1,
        unit_price: usd(2900),
        discount_minor: 290,
        total: usd(2610),
        coupon_id: Some(CouponId(3)),
        status: OrderStatus::Paid,
        created_at: 1,
        deadline: 2,
        paid_at: Some(1),
        closed_at: Some(2),
    }
}

/// One value of every client message, every optional field set. The match
/// has no wildcard: a new variant does not compile until it is added here.
fn client_samples() -> Vec<ClientMsg> {
    let room = RoomId::new("r").unwrap();
    let uid = UserId::new("u").unwrap();
    let all = vec![
        Join {
            room,
            token: Some("t".into()),
            last_seq: Some(1),
            epoch: Some(1),
        }
        .into(),
        Chat { text: "t".into() }.into(),
        React {
            kind: ReactionKind::Heart,
        }
        .into(),
        Vote {
            poll_id: PollId(1),
            option: 0,
        }
        .into(),
        Ask { text: "t".into() }.into(),
        Upvote {
            question_id: QuestionId(1),
        }
        .into(),
        Ping { t: Some(1) }.into(),
        Leave {}.into(),
        Announce { text: "t".into() }.into(),
        OpenPoll {
            question: "q".into(),
            options: vec!["a".into(), "b".into()],
            correct: Some(0),
            winners: Some(1),
            duration_secs: Some(1),
        }
        .into(),
        ClosePoll { poll_id: PollId(1) }.into(),
        Answer {
            question_id: QuestionId(1),
            text: "t".into(),
        }
        .into(),
        PinQuestion {
            question_id: Some(QuestionId(1)),
        }
        .into(),
        DeleteMessage { seq: 1 }.into(),
        Mute {
            user_id: uid.clone(),
            seconds: 1,
        }
        .into(),
        Unmute {
            user_id: uid.clone(),
        }
        .into(),
        Ban {
            user_id: uid.clone(),
        }
        .into(),
        Unban { user_id: uid }.into(),
        SlowMode { seconds: 1 }.into(),
        SetBannedWords {
            words: vec!["w".into()],
        }
        .into(),
        EndShow {}.into(),
        Buy {
            sku: sku(),
            qty: 1,
            key: IdemKey::new("k").unwrap(),
            coupon_id: Some(CouponId(3)),
        }
        .into(),
        ClaimCoupon {
            coupon_id: CouponId(3),
        }
        .into(),
        PinProduct {
            product_id: Some(ProductId(1)),
        }
        .into(),
        StartSale {
            sku: sku(),
            sale_price_minor: 2900,
            stock: 10,
            per_user_limit: 2,
            starts_at: Some(1),
            duration_secs: 60,
            payment_window_secs: Some(600),
        }
        .into(),
        EndSale { sale_id: SaleId(2) }.into(),
        DropCoupon {
            count: 100,
            discount: Discount::Fixed { amount: usd(500) },
            scope: CouponScope::Sale { sale_id: SaleId(2) },
            expires_in_secs: 60,
        }
        .into(),
    ];
    let mut seen = BTreeSet::new();
    for msg in &all {
        // Exhaustive on purpose.
        let slot = match msg {
            ClientMsg::Conn(ConnMsg::Join(_)) => 0,
            ClientMsg::Room(RoomMsg::Chat(_)) => 1,
            ClientMsg::Room(RoomMsg::React(_)) => 2,
            ClientMsg::Room(RoomMsg::Vote(_)) => 3,
            ClientMsg::Room(RoomMsg::Ask(_)) => 4,
            ClientMsg::Room(RoomMsg::Upvote(_)) => 5,
            ClientMsg::Conn(ConnMsg::Ping(_)) => 6,
            ClientMsg::Conn(ConnMsg::Leave(_)) => 7,
            ClientMsg::Room(RoomMsg::Announce(_)) => 8,
            ClientMsg::Room(RoomMsg::OpenPoll(_)) => 9,
            ClientMsg::Room(RoomMsg::ClosePoll(_)) => 10,
            ClientMsg::Room(RoomMsg::Answer(_)) => 11,
            ClientMsg::Room(RoomMsg::PinQuestion(_)) => 12,
            ClientMsg::Room(RoomMsg::DeleteMessage(_)) => 13,
            ClientMsg::Room(RoomMsg::Mute(_)) => 14,
            ClientMsg::Room(RoomMsg::Unmute(_)) => 15,
            ClientMsg::Room(RoomMsg::Ban(_)) => 16,
            ClientMsg::Room(RoomMsg::Unban(_)) => 17,
            ClientMsg::Room(RoomMsg::SlowMode(_)) => 18,
            ClientMsg::Room(RoomMsg::SetBannedWords(_)) => 19,
            ClientMsg::Room(RoomMsg::EndShow(_)) => 20,
            ClientMsg::Shop(ShopMsg::Buy(_)) => 21,
            ClientMsg::Shop(ShopMsg::ClaimCoupon(_)) => 22,
            ClientMsg::Shop(ShopMsg::PinProduct(_)) => 23,
            ClientMsg::Shop(ShopMsg::StartSale(_)) => 24,
            ClientMsg::Shop(ShopMsg::EndSale(_)) => 25,
            ClientMsg::Shop(ShopMsg::DropCoupon(_)) => 26,
        };
        seen.insert(slot);
    }
    assert_eq!(seen.len(), 27, "one sample per client message");
    all
}

/// One value of every event kind, every optional field set.
fn event_samples() -> Vec<EventBody> {
    let u = || user("u", Role::Viewer);
    let uid = || UserId::new("u").unwrap();
    let all = vec![
        EventBody::Chat {
            user: u(),
            text: String::new(),
            deleted: true,
        },
        EventBody::Announcement {
            user: u(),
            text: "t".into(),
        },
        EventBody::PollOpened { poll: poll_view() },
        EventBody::PollClosed {
            poll_id: PollId(1),
            counts: vec![1, 0],
            correct: Some(0),
            winners: vec![u()],
        },
        EventBody::QuestionAsked {
            question: question_view(),
        },
        EventBody::QuestionUpvoted {
            question_id: QuestionId(1),
            upvotes: 1,
        },
        EventBody::QuestionAnswered {
            question_id: QuestionId(1),
            answer: "a".into(),
            by: u(),
        },
        EventBody::QuestionPinned {
            question_id: Some(QuestionId(1)),
        },
        EventBody::MessageDeleted {
            target_seq: 1,
            by: u(),
        },
        EventBody::UserMuted {
            user_id: uid(),
            until: 1,
        },
        EventBody::UserUnmuted { user_id: uid() },
        EventBody::UserBanned { user_id: uid() },
        EventBody::UserUnbanned { user_id: uid() },
        EventBody::SlowMode { seconds: 1 },
        EventBody::ShowEnded {},
        EventBody::ProductPinned { product: product() },
        EventBody::ProductUnpinned {},
        EventBody::SaleScheduled {
            sale: SaleView {
                status: SaleStatus::Scheduled,
                ..sale_view()
            },
        },
        EventBody::SaleStarted { sale: sale_view() },
        EventBody::SaleEnded {
            sale_id: SaleId(2),
            sold: 10,
            reason: SaleEndReason::Time,
        },
        EventBody::Stock {
            sale_id: SaleId(2),
            available: 0,
        },
        EventBody::CouponDropped {
            coupon: coupon_view(),
        },
        EventBody::CouponsLeft {
            coupon_id: CouponId(3),
            left: 0,
        },
        EventBody::Stream {
            state: StreamState::Live,
            since: 1,
        },
    ];
    let mut seen = BTreeSet::new();
    for body in &all {
        let slot = match body {
            EventBody::Chat { .. } => 0,
            EventBody::Announcement { .. } => 1,
            EventBody::PollOpened { .. } => 2,
            EventBody::PollClosed { .. } => 3,
            EventBody::QuestionAsked { .. } => 4,
            EventBody::QuestionUpvoted { .. } => 5,
            EventBody::QuestionAnswered { .. } => 6,
            EventBody::QuestionPinned { .. } => 7,
            EventBody::MessageDeleted { .. } => 8,
            EventBody::UserMuted { .. } => 9,
            EventBody::UserUnmuted { .. } => 10,
            EventBody::UserBanned { .. } => 11,
            EventBody::UserUnbanned { .. } => 12,
            EventBody::SlowMode { .. } => 13,
            EventBody::ShowEnded {} => 14,
            EventBody::ProductPinned { .. } => 15,
            EventBody::ProductUnpinned {} => 16,
            EventBody::SaleScheduled { .. } => 17,
            EventBody::SaleStarted { .. } => 18,
            EventBody::SaleEnded { .. } => 19,
            EventBody::Stock { .. } => 20,
            EventBody::CouponDropped { .. } => 21,
            EventBody::CouponsLeft { .. } => 22,
            EventBody::Stream { .. } => 23,
        };
        seen.insert(slot);
    }
    assert_eq!(seen.len(), 24, "one sample per event kind");
    all
}

/// One value of every server message, every optional field set.
fn server_samples() -> Vec<ServerMsg> {
    let event = Arc::new(Event {
        seq: 1,
        ts: 1,
        body: EventBody::SlowMode { seconds: 0 },
    });
    let all = vec![
        ServerMsg::Joined {
            you: user("u", Role::Guest),
            room: RoomId::new("r").unwrap(),
            epoch: 1,
            seq: 1,
            gap: false,
            state: Box::new(RoomState {
                title: "t".into(),
                viewers: 1,
                slow_mode_secs: 0,
                ended: false,
                poll: Some(poll_view()),
                pinned_question: Some(QuestionId(1)),
                questions: vec![question_view()],
                pinned_product: Some(product()),
                sales: vec![sale_view()],
                coupons: vec![coupon_view()],
                stream: Some(StreamStatus {
                    state: StreamState::Live,
                    since: 1,
                }),
            }),
            events: vec![event.clone()],
        },
        ServerMsg::Batch {
            events: vec![event],
            viewers: Some(1),
            reactions: [(ReactionKind::Heart, 1)].into(),
            tallies: vec![PollTally {
                poll_id: PollId(1),
                counts: vec![1],
            }],
        },
        ServerMsg::Error {
            code: ErrorCode::Internal,
            message: "m".into(),
            reference: Some(1),
            retry_after_ms: Some(1),
        },
        ServerMsg::Ack { reference: Some(1) },
        ServerMsg::Pong {
            t: Some(1),
            server_time: 1,
        },
        ServerMsg::Order {
            reference: Some(1),
            order: order_view(),
        },
        ServerMsg::CouponClaimed {
            reference: Some(1),
            coupon: coupon_view(),
        },
    ];
    let mut seen = BTreeSet::new();
    for msg in &all {
        let slot = match msg {
            ServerMsg::Joined { .. } => 0,
            ServerMsg::Batch { .. } => 1,
            ServerMsg::Error { .. } => 2,
            ServerMsg::Ack { .. } => 3,
            ServerMsg::Pong { .. } => 4,
            ServerMsg::Order { .. } => 5,
            ServerMsg::CouponClaimed { .. } => 6,
        };
        seen.insert(slot);
    }
    assert_eq!(seen.len(), 7, "one sample per server message");
    all
}

fn object(v: impl serde::Serialize) -> serde_json::Map<String, Value> {
    match serde_json::to_value(v).unwrap() {
        Value::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

fn name_of(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

// ------------------------------------------------------------------ tests

#[test]
fn every_error_code_has_its_row() {
    let doc = doc();
    let table = section(&doc, "Error codes");
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|name| row(table, &format!("| `{name}` |")).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the error code table of docs/protocol.md lacks {missing:?}"
    );
    for code in ErrorCode::ALL {
        let wire = serde_json::to_value(code).unwrap();
        assert_eq!(wire, Value::from(code.as_str()), "as_str matches serde");
    }
}

#[test]
fn every_close_code_has_its_row_with_reason_and_error() {
    let doc = doc();
    let table = section(&doc, "Close codes");
    let mut wrong = Vec::new();
    for code in CloseCode::ALL {
        let error = match code.error_code() {
            Some(e) => format!("`{}`", e.as_str()),
            None => "none".to_string(),
        };
        let expected = format!("| {} | `{}` | {} |", code.code(), code.reason(), error);
        if row(table, &expected).is_none() {
            wrong.push(expected);
        }
    }
    assert!(
        wrong.is_empty(),
        "the close code table of docs/protocol.md lacks rows starting {wrong:#?}"
    );
}

#[test]
fn every_client_message_is_documented_with_its_fields() {
    let doc = doc();
    let text = section(&doc, "Client messages");
    let mut problems = Vec::new();
    for msg in client_samples() {
        let obj = object(ClientFrame {
            reference: Some(1),
            msg: msg.clone(),
        });
        let name = name_of(&obj["type"]);
        assert_eq!(name, msg.kind(), "kind() matches the wire name");
        let Some(line) = row(text, &format!("| `{name}` |")) else {
            problems.push(format!("no row for client message `{name}`"));
            continue;
        };
        for field in obj.keys().filter(|k| *k != "type" && *k != "ref") {
            if !line.contains(&format!("`{field}`")) {
                problems.push(format!("`{name}` row does not name field `{field}`"));
            }
        }
    }
    for kind in ReactionKind::ALL {
        let name = name_of(&serde_json::to_value(kind).unwrap());
        if !text.contains(&format!("`{name}`")) {
            problems.push(format!("reaction kind `{name}`"));
        }
    }
    for role in [Role::Guest, Role::Viewer, Role::Moderator, Role::Host] {
        let name = name_of(&serde_json::to_value(role).unwrap());
        if row(&doc, &format!("| `{name}` |")).is_none() {
            problems.push(format!("no roles-table row for `{name}`"));
        }
    }
    assert!(problems.is_empty(), "docs/protocol.md: {problems:#?}");
}

#[test]
fn every_event_kind_is_documented_with_its_fields() {
    let doc = doc();
    let text = section(&doc, "Events");
    let mut problems = Vec::new();
    for body in event_samples() {
        let obj = object(Event {
            seq: 1,
            ts: 1,
            body: body.clone(),
        });
        let name = name_of(&obj["kind"]);
        assert_eq!(name, body.kind(), "kind() matches the wire name");
        let Some(line) = row(text, &format!("| `{name}` |")) else {
            problems.push(format!("no row for event kind `{name}`"));
            continue;
        };
        for field in obj
            .keys()
            .filter(|k| !["seq", "ts", "kind"].contains(&k.as_str()))
        {
            if !line.contains(&format!("`{field}`")) {
                problems.push(format!("`{name}` row does not name field `{field}`"));
            }
        }
    }
    for field in ["seq", "ts", "kind"] {
        if row(text, &format!("| `{field}` |")).is_none() {
            problems.push(format!("no row for the common event field `{field}`"));
        }
    }
    // The nested shapes: user, poll, question.
    let shapes = [
        ("user", object(user("u", Role::Viewer))),
        ("poll", object(poll_view())),
        ("question", object(question_view())),
    ];
    for (shape, obj) in shapes {
        let Some(line) = text
            .lines()
            .find(|l| l.starts_with(&format!("- **{shape}**:")))
        else {
            problems.push(format!("no shape line for {shape}"));
            continue;
        };
        for field in obj.keys() {
            if !line.contains(&format!("\"{field}\"")) {
                problems.push(format!("{shape} shape does not name `{field}`"));
            }
        }
    }
    assert!(problems.is_empty(), "docs/protocol.md: {problems:#?}");
}

/// The commerce shapes (product, sale, coupon, order, money...) each have a
/// `- **name**: {...}` line in the Commerce section naming every field, and
/// every value of their closed enums (statuses, discount and scope kinds).
#[test]
fn every_commerce_shape_is_documented_with_its_fields() {
    let doc = doc();
    let text = section(&doc, "Commerce");
    let mut problems = Vec::new();
    // A tagged enum is checked with one sample per variant: every variant's
    // fields and its `kind` value must be on the line.
    let shapes: Vec<(&str, Vec<Value>)> = vec![
        ("money", vec![serde_json::to_value(usd(1)).unwrap()]),
        ("variant", vec![serde_json::to_value(variant()).unwrap()]),
        ("product", vec![serde_json::to_value(product()).unwrap()]),
        ("sale", vec![serde_json::to_value(sale_view()).unwrap()]),
        ("coupon", vec![serde_json::to_value(coupon_view()).unwrap()]),
        (
            "discount",
            [
                Discount::Percent { percent: 10 },
                Discount::Fixed { amount: usd(500) },
            ]
            .iter()
            .map(|d| serde_json::to_value(d).unwrap())
            .collect(),
        ),
        (
            "scope",
            [
                CouponScope::Room,
                CouponScope::Sale { sale_id: SaleId(2) },
                CouponScope::Sku { sku: sku() },
            ]
            .iter()
            .map(|d| serde_json::to_value(d).unwrap())
            .collect(),
        ),
        ("order", vec![serde_json::to_value(order_view()).unwrap()]),
    ];
    // Exhaustive on purpose: a new variant fails to compile until its sample
    // is added above (and below, for the statuses).
    let _ = |d: Discount, sc: CouponScope, st: SaleStatus| {
        match d {
            Discount::Percent { .. } | Discount::Fixed { .. } => {}
        }
        match sc {
            CouponScope::Room | CouponScope::Sale { .. } | CouponScope::Sku { .. } => {}
        }
        match st {
            SaleStatus::Scheduled | SaleStatus::Live | SaleStatus::Ended => {}
        }
    };
    for (shape, samples) in shapes {
        let Some(line) = text
            .lines()
            .find(|l| l.starts_with(&format!("- **{shape}**:")))
        else {
            problems.push(format!("no shape line for {shape}"));
            continue;
        };
        for sample in samples {
            let Value::Object(obj) = sample else {
                panic!("{shape} is not an object")
            };
            for (field, value) in &obj {
                if !line.contains(&format!("\"{field}\"")) {
                    problems.push(format!("{shape} shape does not name `{field}`"));
                }
                if field == "kind" && !line.contains(&format!("\"{}\"", name_of(value))) {
                    problems.push(format!("{shape} shape does not name kind {value}"));
                }
            }
        }
    }
    // The closed sets of values.
    let values: Vec<(&str, Vec<Value>)> = vec![
        (
            "sale",
            [SaleStatus::Scheduled, SaleStatus::Live, SaleStatus::Ended]
                .iter()
                .map(|s| serde_json::to_value(s).unwrap())
                .collect(),
        ),
        (
            "order",
            OrderStatus::ALL
                .iter()
                .map(|s| serde_json::to_value(s).unwrap())
                .collect(),
        ),
    ];
    for (shape, names) in values {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("- **{shape}**:")))
            .unwrap_or("");
        for v in names {
            if !line.contains(&format!("\"{}\"", name_of(&v))) {
                problems.push(format!("{shape} shape does not name status {v}"));
            }
        }
    }
    let events = section(&doc, "Events");
    let ended = row(events, "| `sale_ended` |").unwrap_or("");
    for reason in [SaleEndReason::Time, SaleEndReason::Host] {
        let name = match reason {
            SaleEndReason::Time | SaleEndReason::Host => {
                name_of(&serde_json::to_value(reason).unwrap())
            }
        };
        if !ended.contains(&format!("`{name}`")) {
            problems.push(format!("the sale_ended row does not name reason `{name}`"));
        }
    }
    assert!(problems.is_empty(), "docs/protocol.md: {problems:#?}");
}

#[test]
fn every_server_message_is_documented_with_its_fields() {
    let doc = doc();
    let text = section(&doc, "Server messages");
    let mut problems = Vec::new();
    for msg in server_samples() {
        let obj = object(&msg);
        let name = name_of(&obj["type"]);
        let heading = format!("\n### `{name}`\n");
        let Some(start) = text.find(&heading) else {
            problems.push(format!("no `### `{name}`` heading"));
            continue;
        };
        let rest = &text[start + heading.len()..];
        let sub = &rest[..rest.find("\n### ").unwrap_or(rest.len())];
        let mut fields: Vec<String> = obj.keys().filter(|k| *k != "type").cloned().collect();
        if let Some(Value::Object(state)) = obj.get("state") {
            fields.extend(state.keys().cloned());
        }
        for field in fields {
            if !sub.contains(&format!("`{field}`")) {
                problems.push(format!("`{name}` section does not name field `{field}`"));
            }
        }
    }
    assert!(problems.is_empty(), "docs/protocol.md: {problems:#?}");
}

/// The lines inside ``` fences.
fn fenced_lines(text: &str) -> Vec<&str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if inside {
            lines.push(line);
        }
    }
    lines
}

/// Decodes a client frame exactly as a connection does.
fn decode_client(json: &str) -> Result<ClientFrame, ErrorCode> {
    ws_frame::decode(Encoding::Json, &Message::Text(json.to_string().into())).map_err(|e| e.code)
}

fn is_server_type(v: &Value) -> bool {
    let names: Vec<String> = server_samples()
        .iter()
        .map(|m| name_of(&object(m)["type"]))
        .collect();
    v.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| names.iter().any(|n| n == t))
}

/// Checks one example message: it decodes as the right kind of message and
/// re-encodes to the same JSON (so no field is misspelled or invented).
fn check_example(json: &str, server: Option<bool>) -> Result<(), String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e}): {json}"))?;
    let server = server.unwrap_or_else(|| is_server_type(&value));
    let again = if server {
        let msg: ServerMsg = serde_json::from_value(value.clone())
            .map_err(|e| format!("not a server message ({e}): {json}"))?;
        serde_json::to_value(&msg).unwrap()
    } else {
        let frame = decode_client(json).map_err(|code| format!("refused ({code:?}): {json}"))?;
        serde_json::to_value(&frame).unwrap()
    };
    if again != value {
        return Err(format!(
            "re-encodes differently:\n  doc:  {json}\n  code: {again}"
        ));
    }
    Ok(())
}

#[test]
fn every_example_message_decodes_and_round_trips() {
    let doc = doc();
    let mut problems = Vec::new();
    let mut checked = 0;

    // Single-message ```json blocks anywhere on the page.
    let mut in_json = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_json = line.trim() == "```json";
            continue;
        }
        if in_json && line.trim_start().starts_with('{') {
            checked += 1;
            if let Err(e) = check_example(line.trim(), None) {
                problems.push(e);
            }
        }
    }

    // The example session: `name → {...}`, `name ← {...}`, `name ← close N "reason"`.
    let session = section(&doc, "Example session");
    let mut arrows = 0;
    for line in fenced_lines(session) {
        let (sent, rest) = match (line.find(" → "), line.find(" ← ")) {
            (Some(i), _) => (true, &line[i + " → ".len()..]),
            (None, Some(i)) => (false, &line[i + " ← ".len()..]),
            _ => continue,
        };
        let rest = rest.trim();
        arrows += 1;
        if rest.starts_with('{') {
            checked += 1;
            if let Err(e) = check_example(rest, Some(!sent)) {
                problems.push(e);
            }
        } else if let Some(close) = rest.strip_prefix("close ") {
            let (num, reason) = close.split_once(' ').unwrap_or((close, ""));
            let num: u16 = num.parse().unwrap_or(0);
            match CloseCode::ALL.iter().find(|c| c.code() == num) {
                Some(c) if reason == format!("\"{}\"", c.reason()) => {}
                _ => problems.push(format!("bad close line: {line}")),
            }
        } else if !rest.starts_with('(') {
            problems.push(format!("unreadable session line: {line}"));
        }
    }
    assert!(
        arrows >= 30,
        "the example session looks too short ({arrows} lines)"
    );
    assert!(checked >= 40, "too few example messages found ({checked})");
    assert!(
        problems.is_empty(),
        "docs/protocol.md examples: {problems:#?}"
    );
}

/// Every example batch in the session that goes to one receiver continues
/// that receiver's `seq` by exactly one, as the protocol promises.
#[test]
fn example_session_sequence_numbers_are_contiguous() {
    let doc = doc();
    let session = section(&doc, "Example session");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for line in fenced_lines(session) {
        let Some(i) = line.find(" ← {") else {
            continue;
        };
        let who = line[..i].trim().to_string();
        let msg: ServerMsg = match serde_json::from_str(line[i + " ← ".len()..].trim()) {
            Ok(m) => m,
            Err(_) => continue, // reported by the round-trip test
        };
        let receivers: Vec<String> = if who == "all" {
            last.keys().cloned().collect()
        } else {
            vec![who.clone()]
        };
        match msg {
            ServerMsg::Joined { seq, events, .. } => {
                if let Some(first) = events.first() {
                    if events.last().unwrap().seq != seq
                        || events.iter().zip(first.seq..).any(|(e, s)| e.seq != s)
                    {
                        problems.push(format!("{who}: joined events do not end at seq {seq}"));
                    }
                }
                last.insert(who, seq);
            }
            ServerMsg::Batch { events, .. } => {
                for r in receivers {
                    let at = last.entry(r.clone()).or_insert(0);
                    for e in &events {
                        if e.seq != *at + 1 {
                            problems.push(format!("{r}: seq {} after {}", e.seq, at));
                        }
                        *at = e.seq;
                    }
                }
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "example session: {problems:#?}");
}

/// Every default quoted in the limits table (`| ... (\`option\`...) | default |`)
/// is the default in src/limits.rs.
#[test]
fn limit_defaults_match_the_code() {
    let doc = doc();
    let text = section(&doc, "Limits and rates");
    let defaults = object(Limits::default());
    let mut problems = Vec::new();
    let mut checked = 0;
    for line in text.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 3 {
            continue;
        }
        let numbers: BTreeSet<u64> = cells[1]
            .split(|c: char| !c.is_ascii_digit() && c != ',')
            .filter_map(|n| n.replace(',', "").parse().ok())
            .collect();
        for name in cells[0].split('`').skip(1).step_by(2) {
            let Some(value) = defaults.get(name).and_then(Value::as_u64) else {
                continue;
            };
            checked += 1;
            if !numbers.contains(&value) {
                problems.push(format!(
                    "`{name}` defaults to {value}, the doc says {}",
                    cells[1]
                ));
            }
        }
    }
    assert!(
        checked >= 20,
        "too few limits found in the table ({checked})"
    );
    assert!(
        problems.is_empty(),
        "docs/protocol.md limits: {problems:#?}"
    );
}

/// The decoding rules the page states.
#[test]
fn documented_decoding_rules_hold() {
    // Unknown fields are ignored; `null` means absent.
    let f = decode_client(r#"{"type":"chat","text":"hi","color":"red","ref":3}"#).unwrap();
    assert_eq!(f.reference, Some(3));
    let f = decode_client(r#"{"type":"join","room":"demo","token":null,"last_seq":null}"#).unwrap();
    assert!(matches!(
        f.msg,
        ClientMsg::Conn(ConnMsg::Join(Join {
            token: None,
            last_seq: None,
            ..
        }))
    ));
    // `pin_question` with `null` or without the field unpins.
    for json in [
        r#"{"type":"pin_question","question_id":null}"#,
        r#"{"type":"pin_question"}"#,
    ] {
        assert!(matches!(
            decode_client(json).unwrap().msg,
            ClientMsg::Room(RoomMsg::PinQuestion(PinQuestion { question_id: None }))
        ));
    }
    // `pin_product` likewise; `drop_coupon` without `scope` is room-wide.
    for json in [
        r#"{"type":"pin_product","product_id":null}"#,
        r#"{"type":"pin_product"}"#,
    ] {
        assert!(matches!(
            decode_client(json).unwrap().msg,
            ClientMsg::Shop(ShopMsg::PinProduct(PinProduct { product_id: None }))
        ));
    }
    assert!(matches!(
        decode_client(
            r#"{"type":"drop_coupon","count":5,"discount":{"kind":"percent","percent":10},"expires_in_secs":60}"#
        )
        .unwrap()
        .msg,
        ClientMsg::Shop(ShopMsg::DropCoupon(DropCoupon {
            scope: CouponScope::Room,
            ..
        }))
    ));
    // Also in the messages that are REST bodies too (which refuse them).
    assert!(matches!(
        decode_client(
            r#"{"type":"start_sale","sku":"SHIRT-M","sale_price_minor":1,"stock":1,"per_user_limit":1,"duration_secs":60,"colour":"red"}"#
        )
        .unwrap()
        .msg,
        ClientMsg::Shop(ShopMsg::StartSale(StartSale { stock: 1, starts_at: None, .. }))
    ));
    // A price sent with a buy is an unknown field: ignored, never used.
    assert!(matches!(
        decode_client(r#"{"type":"buy","sku":"SHIRT-M","qty":1,"key":"k1","price_minor":1}"#)
            .unwrap()
            .msg,
        ClientMsg::Shop(ShopMsg::Buy(Buy {
            qty: 1,
            coupon_id: None,
            ..
        }))
    ));
    // Money: non-negative integers and an upper-case ISO 4217 code.
    for json in [
        r#"{"type":"drop_coupon","count":5,"discount":{"kind":"fixed","amount":{"minor":-1,"currency":"USD"}},"expires_in_secs":60}"#,
        r#"{"type":"drop_coupon","count":5,"discount":{"kind":"fixed","amount":{"minor":100,"currency":"usd"}},"expires_in_secs":60}"#,
        r#"{"type":"drop_coupon","count":5,"discount":{"kind":"fixed","amount":{"minor":1.5,"currency":"USD"}},"expires_in_secs":60}"#,
        r#"{"type":"buy","sku":"has space","qty":1,"key":"k1"}"#,
    ] {
        assert_eq!(
            decode_client(json).unwrap_err(),
            ErrorCode::Malformed,
            "{json}"
        );
    }
    // Malformed: missing field, out-of-range integer, bad id, non-u32 ref, no type.
    for json in [
        r#"{"type":"chat"}"#,
        r#"{"type":"vote","poll_id":1,"option":300}"#,
        r#"{"type":"join","room":"has space"}"#,
        r#"{"type":"ping","ref":-1}"#,
        r#"{"type":"ping","ref":4294967296}"#,
        r#"{"text":"no type"}"#,
        r#"not json"#,
    ] {
        assert_eq!(
            decode_client(json).unwrap_err(),
            ErrorCode::Malformed,
            "{json}"
        );
    }
    assert_eq!(
        decode_client(r#"{"type":"teleport","ref":1}"#).unwrap_err(),
        ErrorCode::UnknownType
    );
    // Wrong frame kind for the encoding.
    assert_eq!(
        ws_frame::decode(Encoding::Json, &Message::Binary(Bytes::from_static(b"{}")))
            .unwrap_err()
            .code,
        ErrorCode::WrongEncoding
    );
    assert_eq!(
        ws_frame::decode(Encoding::MsgPack, &Message::Text("{}".into()))
            .unwrap_err()
            .code,
        ErrorCode::WrongEncoding
    );
    // MessagePack: maps with the JSON field names.
    let packed = rmp_serde::to_vec_named(&serde_json::json!({
        "type": "vote", "poll_id": 2, "option": 1, "ref": 9
    }))
    .unwrap();
    let f = ws_frame::decode(Encoding::MsgPack, &Message::Binary(Bytes::from(packed))).unwrap();
    assert_eq!(f.reference, Some(9));
    assert!(matches!(
        f.msg,
        ClientMsg::Room(RoomMsg::Vote(Vote { option: 1, .. }))
    ));
    // The subprotocols and the default.
    assert_eq!(
        Encoding::from_subprotocol(None),
        Some(Encoding::MsgPack),
        "MessagePack is the default"
    );
    assert_eq!(
        Encoding::from_subprotocol(Some("flashcast.json.v1")),
        Some(Encoding::Json)
    );
    assert_eq!(
        Encoding::from_subprotocol(Some("flashcast.msgpack.v1")),
        Some(Encoding::MsgPack)
    );
    let doc = doc();
    for name in [
        flashcast_wire::codec::SUBPROTOCOL_JSON,
        flashcast_wire::codec::SUBPROTOCOL_MSGPACK,
    ] {
        assert!(doc.contains(&format!("`{name}`")), "subprotocol {name}");
    }
}
