//! Orders: the immutable facts of a buy, plus a status that moves only
//! forward: `reserved` -> `paid` | `expired` | `cancelled`, `paid` ->
//! `cancelled`. A change is claimed in memory first (one at a time per order,
//! by a compare-and-swap on `busy`), committed durably, then applied; a
//! failed commit leaves the order as it was.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use super::money::Money;
use crate::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OrderStatus {
    /// Units are held for the buyer until `deadline`.
    Reserved = 0,
    Paid = 1,
    /// Not paid before its deadline; units went back to stock.
    Expired = 2,
    /// Cancelled by an admin; units went back to stock.
    Cancelled = 3,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Expired,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Expired => "expired",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Reserved and paid orders hold units; the others gave them back.
    pub fn is_live(self) -> bool {
        matches!(self, OrderStatus::Reserved | OrderStatus::Paid)
    }

    fn from_u8(v: u8) -> OrderStatus {
        OrderStatus::ALL[v as usize]
    }
}

/// An order as the buyer, the admin API and the CSV export see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: OrderId,
    pub room: RoomId,
    pub sale_id: SaleId,
    pub product_id: ProductId,
    pub sku: Sku,
    /// Product title and variant options, as they were at the sale.
    pub label: String,
    pub user_id: UserId,
    pub user_name: String,
    /// The buyer's idempotency key.
    pub key: IdemKey,
    pub qty: u32,
    /// The sale price of one unit.
    pub unit_price: Money,
    /// Minor units taken off by the coupon (0 without one).
    pub discount_minor: u64,
    /// What the payment must be: `unit_price x qty - discount`.
    pub total: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<CouponId>,
    pub status: OrderStatus,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms: an unpaid reservation expires after this.
    pub deadline: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<u64>,
    /// Unix ms when it expired or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<u64>,
}

/// A live order in memory: the facts, the status, and the one-change-at-a-
/// time flag.
#[derive(Debug)]
pub struct OrderCell {
    facts: OrderView,
    status: AtomicU8,
    busy: AtomicBool,
    /// Unix ms; 0 for none.
    paid_at: AtomicU64,
    closed_at: AtomicU64,
}

impl OrderCell {
    pub fn new(view: OrderView) -> Self {
        Self {
            status: AtomicU8::new(view.status as u8),
            busy: AtomicBool::new(false),
            paid_at: AtomicU64::new(view.paid_at.unwrap_or(0)),
            closed_at: AtomicU64::new(view.closed_at.unwrap_or(0)),
            facts: view,
        }
    }

    pub fn facts(&self) -> &OrderView {
        &self.facts
    }

    pub fn status(&self) -> OrderStatus {
        OrderStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    pub fn view(&self) -> OrderView {
        let status = self.status();
        let at = |a: &AtomicU64| Some(a.load(Ordering::Acquire)).filter(|t| *t > 0);
        let mut v = self.facts.clone();
        v.status = status;
        v.paid_at = at(&self.paid_at);
        v.closed_at = at(&self.closed_at);
        v
    }

    /// Claims the right to change this order; None while another change is
    /// being committed.
    pub fn begin(&self) -> Option<OrderChange<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| OrderChange { cell: self })
    }
}

/// The claim on one order's next change. Dropping it without `finish`
/// leaves the order as it was.
pub struct OrderChange<'a> {
    cell: &'a OrderCell,
}

impl OrderChange<'_> {
    pub fn status(&self) -> OrderStatus {
        self.cell.status()
    }

    /// Applies the committed change.
    pub fn finish(self, to: OrderStatus, at: u64) {
        let from = self.cell.status();
        assert!(
            matches!(
                (from, to),
                (OrderStatus::Reserved, _) | (OrderStatus::Paid, OrderStatus::Cancelled)
            ) && from != to,
            "illegal order transition {from:?} -> {to:?}"
        );
        let stamp = if to == OrderStatus::Paid {
            &self.cell.paid_at
        } else {
            &self.cell.closed_at
        };
        stamp.store(at, Ordering::Release);
        self.cell.status.store(to as u8, Ordering::Release);
    }
}

impl Drop for OrderChange<'_> {
    fn drop(&mut self) {
        self.cell.busy.store(false, Ordering::Release);
    }
}
