//! What the store keeps and gives back: plain records, shared by the
//! writes (`Write`) and the reads (`ReadBackend`). The order and money
//! types they carry are the commerce views (`commerce::order`,
//! `commerce::money`, `commerce::coupon`).

use flashcast_wire::commerce::{CouponScope, Discount};
use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::Money;

/// A room as kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomRecord {
    pub id: RoomId,
    pub title: String,
    pub allow_guests: bool,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms when the show ended, if it has.
    pub closed_at: Option<u64>,
}

/// A sale as read back: its terms, and what its orders hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleRecord {
    pub terms: SaleTerms,
    pub ended_early_at: Option<u64>,
    /// Units each buyer holds in live (reserved or paid) orders.
    pub held: Vec<(UserId, u32)>,
    /// Orders ever stored on this sale.
    pub orders: u64,
}

/// A coupon drop as read back, with who claimed one and whether a live
/// order uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct CouponRecord {
    pub terms: CouponTerms,
    pub claims: Vec<(UserId, bool)>,
}

/// One room's shop as read back (see [`ReadBackend::shop`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShopRecord {
    /// Product JSON bodies, by id.
    pub products: Vec<String>,
    pub pin: Option<ProductId>,
    pub sales: Vec<SaleRecord>,
    pub coupons: Vec<CouponRecord>,
    /// Recent orders, for their idempotency keys.
    pub keys: Vec<OrderView>,
    /// True when `keys` holds the key of every order of the room.
    pub keys_complete: bool,
}

/// A filter for the order queries.
#[derive(Debug, Default, Clone)]
pub struct OrderFilter {
    pub room: Option<RoomId>,
    pub user: Option<UserId>,
    pub sale: Option<SaleId>,
    pub status: Option<OrderStatus>,
    /// Only orders with a larger id (paging).
    pub after: Option<OrderId>,
    pub limit: usize,
}

/// The fixed terms of a sale, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleTerms {
    pub id: SaleId,
    pub room: RoomId,
    pub product_id: ProductId,
    pub sku: Sku,
    pub label: String,
    pub image: Option<String>,
    pub regular_price: Money,
    pub sale_price: Money,
    pub stock: u32,
    pub per_user_limit: u32,
    /// Unix ms.
    pub starts_at: u64,
    /// Unix ms of the scheduled end.
    pub ends_at: u64,
    pub payment_window_ms: u64,
    pub created_at: u64,
}

/// The fixed terms of a coupon drop, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTerms {
    pub id: CouponId,
    pub room: RoomId,
    pub count: u32,
    pub discount: Discount,
    pub scope: CouponScope,
    /// Unix ms.
    pub expires_at: u64,
    pub created_at: u64,
}
