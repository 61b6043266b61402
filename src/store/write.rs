//! Durable writes as data. Every change that must survive a restart is one
//! `Write`; a backend applies a batch of them in one transaction. Being
//! plain values (not closures over a connection), the same writes go to
//! SQLite today and to PostgreSQL in cluster mode, and tests can look at
//! them.

use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, OrderId, ProductId, RoomId, SaleId, UserId};

use super::{CouponTerms, RoomRecord, SaleTerms};

/// One durable change. Writes marked *conditional* change a row only from
/// the state they expect; when it is not there they fail with
/// [`super::StoreError::Conflict`] and leave nothing behind, so two racing
/// changes can never both commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Inserts a room or replaces its title, guest flag and closed time.
    PutRoom(RoomRecord),
    /// Marks a room's show ended (kept if it already was).
    CloseRoom {
        room: RoomId,
        at: u64,
    },
    Ban {
        room: RoomId,
        user: UserId,
    },
    Unban {
        room: RoomId,
        user: UserId,
    },
    /// Sets a named value unless it is already set (generated secrets).
    InitMeta {
        key: String,
        value: String,
    },
    /// Inserts or replaces a product; `body` is its JSON.
    PutProduct {
        id: ProductId,
        room: RoomId,
        body: String,
    },
    /// Pins a product card in a room (`None` unpins).
    SetPin {
        room: RoomId,
        product: Option<ProductId>,
    },
    PutSale(SaleTerms),
    /// Conditional: ends a sale that was not ended early yet.
    EndSale {
        sale: SaleId,
        at: u64,
    },
    PutCoupon(CouponTerms),
    /// A viewer's claim of one coupon of a drop (unique per viewer).
    ClaimCoupon {
        coupon: CouponId,
        user: UserId,
        at: u64,
    },
    /// A new order (unique per sale, buyer and idempotency key).
    PutOrder(OrderView),
    /// Conditional: marks a reserved order paid and records the payment
    /// event, whose id is unique (a replay cannot commit twice).
    PayOrder {
        order: OrderId,
        event_id: String,
        at: u64,
    },
    /// Conditional: expires a reserved order or cancels a live one.
    CloseOrder {
        order: OrderId,
        to: OrderStatus,
        at: u64,
    },
    /// Expires every reservation whose deadline is before `now` (at
    /// start-up: the ones that fell due while the server was down).
    ExpireOverdue {
        now: u64,
    },
    /// Conditional (cluster mode): records `term`, a new owner's lease term
    /// (`cluster::lease`), as the room's, if it is higher than the one
    /// recorded; a stale claim fails.
    ClaimRoom {
        room: RoomId,
        term: u64,
    },
    /// Conditional (cluster mode): applies `write` only while `term` is the
    /// room's recorded term, so an owner that lost the room (stalled past
    /// its lease) cannot commit anything once the new owner claimed it.
    /// `write` is not itself `Fenced`.
    Fenced {
        room: RoomId,
        term: u64,
        write: Box<Write>,
    },
}
