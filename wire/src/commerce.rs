//! The shop as viewers and the admin API see it: product cards, sales,
//! coupon drops and orders. The commerce engine (in the server) builds these
//! views; the wire carries them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use crate::money::{Currency, Money};

/// One variant: a size, a colour... with its own SKU and regular price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub sku: Sku,
    /// e.g. `{"size": "M", "colour": "red"}`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Regular price in minor units of the product's currency.
    pub price_minor: u64,
}

/// A product as stored and shown (the product card viewers see when it is
/// pinned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    pub id: ProductId,
    pub room: RoomId,
    pub title: String,
    pub description: String,
    pub images: Vec<String>,
    pub currency: Currency,
    pub variants: Vec<Variant>,
}

impl Product {
    pub fn variant(&self, sku: &Sku) -> Option<&Variant> {
        self.variants.iter().find(|v| &v.sku == sku)
    }

    pub fn price_of(&self, variant: &Variant) -> Money {
        Money::new(variant.price_minor, self.currency)
    }

    /// "Tee (M, red)": how a variant is named in sale cards and order exports.
    pub fn label(&self, variant: &Variant) -> String {
        if variant.options.is_empty() {
            self.title.clone()
        } else {
            let opts: Vec<&str> = variant.options.values().map(String::as_str).collect();
            format!("{} ({})", self.title, opts.join(", "))
        }
    }
}

/// How much a coupon takes off an order's subtotal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Discount {
    /// 1-100 percent off, rounded down to a minor unit.
    Percent { percent: u8 },
    /// A fixed amount off (never below zero); same currency as the sale.
    Fixed { amount: Money },
}

/// What a coupon applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CouponScope {
    /// Any sale in the room.
    Room,
    Sale {
        sale_id: SaleId,
    },
    Sku {
        sku: Sku,
    },
}

/// A drop as viewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CouponView {
    pub id: CouponId,
    pub discount: Discount,
    pub scope: CouponScope,
    /// Coupons in the drop.
    pub count: u32,
    /// Coupons not claimed yet.
    pub left: u32,
    /// Unix ms.
    pub expires_at: u64,
}

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

/// Where a sale is in its life, at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    Ended,
}

/// A sale as viewers and the admin API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaleView {
    pub id: SaleId,
    pub product_id: ProductId,
    pub sku: Sku,
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub regular_price: Money,
    pub sale_price: Money,
    /// Units the sale started with.
    pub stock: u32,
    /// Units left now (rises when reservations expire or are cancelled).
    pub available: u32,
    pub per_user_limit: u32,
    /// Unix ms.
    pub starts_at: u64,
    /// Unix ms: the scheduled end, or the moment it was ended early.
    pub ends_at: u64,
    /// Seconds a buyer has to pay a reservation.
    pub payment_window_secs: u64,
    pub status: SaleStatus,
}
