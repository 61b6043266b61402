//! Flash sales: where an order is decided.
//!
//! - `money`: integer minor units with a currency.
//! - `catalog`: products and their variants (SKUs).
//! - `stock`: the lock-free unit counter every buy and coupon claim goes through.
//! - `sale`: one flash sale; `Sale::reserve` decides a buy.
//! - `coupon`: first-come coupon drops and their use on an order.
//! - `order`: order facts and the status that only moves forward.
//! - `shop`: one room's catalog, pin, sales and coupons.
//! - `ledger`: the durable side (schema, group-committed writes, start-up load).
//! - `payment`: the signed payment webhook.
//!
//! `Commerce` ties them together: decide in memory (atomics, no lock on the
//! stock), commit through the group-commit writer, answer only after the
//! commit, and undo the in-memory decision if the commit fails.
//!
//! Buys and coupon claims are answered through an [`Answer`] that runs on
//! the writer thread right after the COMMIT: in a flash sale the thousand
//! winners are told the moment their orders are durable, not after their
//! tasks get a turn again among the refusals and fanouts of the same second.

pub mod catalog;
pub mod coupon;
pub mod ledger;
pub mod order;
pub mod payment;
pub mod sale;
pub mod shop;
pub mod stock;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::store::group_commit::GroupCommitConfig;
use crate::store::StoreError;
use flashcast_wire::client::{Buy, DropCoupon, StartSale};
use flashcast_wire::ids::{CouponId, OrderId, ProductId, RoomId, SaleId, Sku};
use flashcast_wire::{ErrorCode, UserRef};

use catalog::ProductSpec;
use coupon::{Coupon, CouponTerms};
use flashcast_wire::commerce::{
    CouponScope, CouponView, Discount, OrderStatus, OrderView, Product, SaleStatus, SaleView,
};
use flashcast_wire::money::{Money, MAX_MINOR};
use ledger::{Ledger, OrderFilter};
use order::OrderCell;
use payment::PaymentEvent;
use sale::{BuyFingerprint, Reserve, Sale, SaleTerms};
use shop::Shop;

/// Tells a buyer or claimant that it succeeded. Called exactly once when
/// the request succeeds, before `buy` / `claim_coupon` return: on the writer
/// thread right after the COMMIT for a new order or claim, on the caller's
/// thread for a retry answered from memory. Never called on failure (the
/// error is returned). Keep it short: other writes wait behind it.
pub type Answer<T> = Box<dyn FnOnce(&T) + Send>;

/// A refused commerce request: the code clients see and a readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct CommerceError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommerceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    fn store(e: StoreError) -> Self {
        tracing::error!(error = %e, "commerce write failed");
        Self::new(
            ErrorCode::Internal,
            "could not store the change; nothing was applied",
        )
    }
}

pub type CommerceResult<T> = Result<T, CommerceError>;

/// A flash sale as a host schedules it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleSpec {
    pub sku: Sku,
    /// Sale price of one unit, in minor units of the product's currency.
    pub sale_price_minor: u64,
    /// Units for sale.
    pub stock: u32,
    /// Most units one buyer may hold (reserved plus paid).
    pub per_user_limit: u32,
    /// Unix ms; absent or past means now.
    #[serde(default)]
    pub starts_at: Option<u64>,
    pub duration_secs: u64,
    /// Time to pay a reservation; defaults to `payment_window_secs`.
    #[serde(default)]
    pub payment_window_secs: Option<u64>,
}

/// A coupon drop as a host sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponSpec {
    /// Coupons in the drop: the first `count` claimers get one.
    pub count: u32,
    pub discount: Discount,
    #[serde(default = "room_scope")]
    pub scope: CouponScope,
    /// Claims and uses are refused after this many seconds.
    pub expires_in_secs: u64,
}

fn room_scope() -> CouponScope {
    CouponScope::Room
}

// The REST API refuses unknown fields and the WebSocket protocol ignores
// them (docs/protocol.md), so the two bodies are two serde types.
impl From<StartSale> for SaleSpec {
    fn from(m: StartSale) -> SaleSpec {
        let StartSale {
            sku,
            sale_price_minor,
            stock,
            per_user_limit,
            starts_at,
            duration_secs,
            payment_window_secs,
        } = m;
        SaleSpec {
            sku,
            sale_price_minor,
            stock,
            per_user_limit,
            starts_at,
            duration_secs,
            payment_window_secs,
        }
    }
}

impl From<DropCoupon> for CouponSpec {
    fn from(m: DropCoupon) -> CouponSpec {
        let DropCoupon {
            count,
            discount,
            scope,
            expires_in_secs,
        } = m;
        CouponSpec {
            count,
            discount,
            scope,
            expires_in_secs,
        }
    }
}

/// The node's commerce engine.
pub struct Commerce {
    ledger: Ledger,
    shops: DashMap<RoomId, Arc<Shop>>,
    /// Every order of this node's store, by id.
    orders: DashMap<OrderId, Arc<OrderCell>>,
    /// The reserved ones: what the expiry sweep looks at.
    reserved: DashMap<OrderId, Arc<OrderCell>>,
    /// Payment event ids seen within the signature tolerance.
    seen_events: DashMap<String, u64>,
    next_id: AtomicU64,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    webhook_secret: Vec<u8>,
    /// What "now" is for sale windows, deadlines and coupon expiry.
    clock: Clock,
}

impl Commerce {
    /// Opens the ledger in `data_dir`, expires reservations that fell due
    /// while the server was down, and rebuilds every shop: available stock
    /// = initial stock - units of live (reserved + paid) orders.
    pub fn open(
        data_dir: &Path,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        webhook_secret: Vec<u8>,
        clock: Clock,
    ) -> Result<Commerce, StoreError> {
        let ledger = Ledger::open(
            data_dir,
            GroupCommitConfig {
                queue: limits.commit_queue,
                max_batch: limits.commit_batch,
            },
        )?;
        let now = clock.now_ms();
        let loaded = ledger.load(
            now,
            now.saturating_sub(limits.webhook_tolerance_secs * 1000),
        )?;
        if loaded.expired_at_start > 0 {
            tracing::info!(
                expired = loaded.expired_at_start,
                "reservations expired while the server was down"
            );
        }
        let c = Commerce {
            ledger,
            shops: DashMap::new(),
            orders: DashMap::new(),
            reserved: DashMap::new(),
            seen_events: loaded.recent_events.into_iter().collect(),
            next_id: AtomicU64::new(loaded.next_id),
            limits,
            metrics,
            webhook_secret,
            clock,
        };
        for p in loaded.products {
            c.shop(&p.room.clone()).put_product(p);
        }
        for (room, product) in loaded.pins {
            c.shop(&room).set_pinned(Some(product));
        }
        for (terms, ended_early) in loaded.sales {
            let sale = Arc::new(Sale::new(terms));
            if let Some(at) = ended_early {
                sale.end_early(at);
            }
            c.shop(&sale.terms.room.clone()).add_sale(sale);
        }
        for terms in loaded.coupons {
            c.shop(&terms.room.clone())
                .add_coupon(Arc::new(Coupon::new(terms)));
        }
        let mut coupons_in_use = std::collections::HashSet::new();
        for o in loaded.orders {
            let shop = c.shop(&o.room);
            let sale = shop
                .sale(o.sale_id)
                .expect("every stored order belongs to a stored sale");
            let f = BuyFingerprint {
                sku: o.sku.clone(),
                qty: o.qty,
                coupon: o.coupon_id,
            };
            let live = o.status.is_live();
            sale.restore(&o.user_id, o.qty, live);
            shop.keys.insert(
                (o.user_id.clone(), o.key.clone()),
                sale::KeyState::Done(f, o.id),
            );
            if let (true, Some(coupon)) = (live, o.coupon_id) {
                coupons_in_use.insert((coupon, o.user_id.clone()));
            }
            let cell = Arc::new(OrderCell::new(o));
            if cell.status() == OrderStatus::Reserved {
                c.reserved.insert(cell.facts().id, cell.clone());
            }
            c.orders.insert(cell.facts().id, cell);
        }
        for (coupon_id, user) in loaded.claims {
            let coupon = c
                .shops
                .iter()
                .find_map(|s| s.coupon(coupon_id))
                .expect("every stored claim belongs to a stored coupon");
            coupon.restore(&user, coupons_in_use.contains(&(coupon_id, user.clone())));
        }
        Ok(c)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The room's shop, created empty on first use.
    pub fn shop(&self, room: &RoomId) -> Arc<Shop> {
        self.shops
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Shop::new(room.clone())))
            .clone()
    }

    fn existing_shop(&self, room: &RoomId) -> Option<Arc<Shop>> {
        self.shops.get(room).map(|s| s.clone())
    }

    // ------------------------------------------------------------ catalog

    pub async fn create_product(
        &self,
        room: &RoomId,
        spec: ProductSpec,
    ) -> CommerceResult<Product> {
        let spec = spec.validate()?;
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        if shop.products_len() >= self.limits.max_products_per_room {
            return Err(CommerceError::new(
                ErrorCode::LimitReached,
                "this room has max_products_per_room products",
            ));
        }
        self.check_skus_free(&shop, &spec, None)?;
        let product = spec.into_product(ProductId(self.next_id()), room.clone());
        self.ledger
            .write(ledger::put_product(&product))
            .await
            .map_err(CommerceError::store)?;
        shop.put_product(product.clone());
        Ok(product)
    }

    pub async fn update_product(
        &self,
        room: &RoomId,
        id: ProductId,
        spec: ProductSpec,
    ) -> CommerceResult<Product> {
        let spec = spec.validate()?;
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        if shop.product(id).is_none() {
            return Err(CommerceError::new(ErrorCode::NotFound, "no such product"));
        }
        self.check_skus_free(&shop, &spec, Some(id))?;
        let product = spec.into_product(id, room.clone());
        self.ledger
            .write(ledger::put_product(&product))
            .await
            .map_err(CommerceError::store)?;
        shop.put_product(product.clone());
        Ok(product)
    }

    /// SKUs are unique within a room.
    fn check_skus_free(
        &self,
        shop: &Shop,
        spec: &ProductSpec,
        editing: Option<ProductId>,
    ) -> CommerceResult<()> {
        for v in &spec.variants {
            if let Some(p) = shop.product_with_sku(&v.sku) {
                if Some(p.id) != editing {
                    return Err(CommerceError::new(
                        ErrorCode::Conflict,
                        format!("sku {} belongs to product {}", v.sku, p.id),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn products(&self, room: &RoomId) -> Vec<Arc<Product>> {
        self.existing_shop(room)
            .map_or_else(Vec::new, |s| s.products())
    }

    pub fn product(&self, room: &RoomId, id: ProductId) -> CommerceResult<Arc<Product>> {
        self.existing_shop(room)
            .and_then(|s| s.product(id))
            .ok_or_else(|| CommerceError::new(ErrorCode::NotFound, "no such product"))
    }

    /// Pins a product card for every viewer (`None` unpins).
    pub async fn pin(&self, room: &RoomId, product: Option<ProductId>) -> CommerceResult<()> {
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        if let Some(id) = product {
            if shop.product(id).is_none() {
                return Err(CommerceError::new(ErrorCode::NotFound, "no such product"));
            }
        }
        self.ledger
            .write(ledger::set_pin(room, product))
            .await
            .map_err(CommerceError::store)?;
        shop.set_pinned(product);
        Ok(())
    }

    // -------------------------------------------------------------- sales

    pub async fn start_sale(&self, room: &RoomId, spec: SaleSpec) -> CommerceResult<SaleView> {
        let l = &self.limits;
        let now = self.clock.now_ms();
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        let product = shop.product_with_sku(&spec.sku).ok_or_else(|| {
            CommerceError::new(
                ErrorCode::UnknownSku,
                "no product in this room has this sku",
            )
        })?;
        let variant = product.variant(&spec.sku).expect("found by sku");
        if spec.stock == 0 || spec.stock > l.max_sale_stock {
            return Err(CommerceError::invalid(format!(
                "stock must be 1-{}",
                l.max_sale_stock
            )));
        }
        if spec.per_user_limit == 0 || spec.per_user_limit > l.max_buy_qty {
            return Err(CommerceError::invalid(format!(
                "per_user_limit must be 1-{}",
                l.max_buy_qty
            )));
        }
        if spec.sale_price_minor > MAX_MINOR {
            return Err(CommerceError::invalid("sale_price_minor is out of range"));
        }
        if spec.duration_secs == 0 || spec.duration_secs > l.max_sale_secs {
            return Err(CommerceError::invalid(format!(
                "duration_secs must be 1-{}",
                l.max_sale_secs
            )));
        }
        let window = spec.payment_window_secs.unwrap_or(l.payment_window_secs);
        if window == 0 || window > l.max_payment_window_secs {
            return Err(CommerceError::invalid(format!(
                "payment_window_secs must be 1-{}",
                l.max_payment_window_secs
            )));
        }
        let starts_at = spec.starts_at.unwrap_or(now).max(now);
        if starts_at > now + l.max_sale_secs * 1000 {
            return Err(CommerceError::invalid(
                "starts_at is too far ahead (max_sale_secs)",
            ));
        }
        if shop.sales_len() >= l.max_sales_per_room {
            return Err(CommerceError::new(
                ErrorCode::LimitReached,
                "this room has max_sales_per_room sales",
            ));
        }
        if let Some(running) = shop.sale_for_sku(&spec.sku) {
            if running.status(now) != SaleStatus::Ended {
                return Err(CommerceError::new(
                    ErrorCode::Conflict,
                    format!("sale {} for this sku is not over yet", running.id()),
                ));
            }
        }
        let terms = SaleTerms {
            id: SaleId(self.next_id()),
            room: room.clone(),
            product_id: product.id,
            sku: spec.sku.clone(),
            label: product.label(variant),
            image: product.images.first().cloned(),
            regular_price: product.price_of(variant),
            sale_price: Money::new(spec.sale_price_minor, product.currency),
            stock: spec.stock,
            per_user_limit: spec.per_user_limit,
            starts_at,
            ends_at: starts_at + spec.duration_secs * 1000,
            payment_window_ms: window * 1000,
            created_at: now,
        };
        self.ledger
            .write(ledger::insert_sale(&terms))
            .await
            .map_err(CommerceError::store)?;
        let sale = Arc::new(Sale::new(terms));
        shop.add_sale(sale.clone());
        Ok(sale.view(self.clock.now_ms()))
    }

    /// Ends a sale now. Reservations already made can still be paid.
    pub async fn end_sale(&self, room: &RoomId, id: SaleId) -> CommerceResult<SaleView> {
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        let sale = shop
            .sale(id)
            .ok_or_else(|| CommerceError::new(ErrorCode::NotFound, "no such sale"))?;
        let now = self.clock.now_ms();
        if sale.status(now) == SaleStatus::Ended {
            return Err(CommerceError::new(
                ErrorCode::SaleEnded,
                "the sale has already ended",
            ));
        }
        self.ledger
            .write(ledger::end_sale(id, now))
            .await
            .map_err(CommerceError::store)?;
        sale.end_early(now);
        shop.changed();
        Ok(sale.view(now))
    }

    pub fn sales(&self, room: &RoomId) -> Vec<SaleView> {
        let now = self.clock.now_ms();
        self.existing_shop(room).map_or_else(Vec::new, |s| {
            s.sales().iter().map(|s| s.view(now)).collect()
        })
    }

    pub fn sale(&self, room: &RoomId, id: SaleId) -> CommerceResult<SaleView> {
        self.existing_shop(room)
            .and_then(|s| s.sale(id))
            .map(|s| s.view(self.clock.now_ms()))
            .ok_or_else(|| CommerceError::new(ErrorCode::NotFound, "no such sale"))
    }

    // ------------------------------------------------------------ coupons

    pub async fn drop_coupon(&self, room: &RoomId, spec: CouponSpec) -> CommerceResult<CouponView> {
        let l = &self.limits;
        let shop = self.shop(room);
        let _admin = shop.admin.lock().await;
        if spec.count == 0 || spec.count > l.max_coupon_count {
            return Err(CommerceError::invalid(format!(
                "count must be 1-{}",
                l.max_coupon_count
            )));
        }
        match spec.discount {
            Discount::Percent { percent } if !(1..=100).contains(&percent) => {
                return Err(CommerceError::invalid("percent must be 1-100"))
            }
            Discount::Fixed { amount } if amount.minor == 0 || amount.minor > MAX_MINOR => {
                return Err(CommerceError::invalid("a fixed discount must be positive"))
            }
            _ => {}
        }
        match &spec.scope {
            CouponScope::Room => {}
            CouponScope::Sale { sale_id } => {
                if shop.sale(*sale_id).is_none() {
                    return Err(CommerceError::new(
                        ErrorCode::NotFound,
                        "no such sale in this room",
                    ));
                }
            }
            CouponScope::Sku { sku } => {
                if shop.product_with_sku(sku).is_none() {
                    return Err(CommerceError::new(
                        ErrorCode::UnknownSku,
                        "no product has this sku",
                    ));
                }
            }
        }
        if spec.expires_in_secs == 0 || spec.expires_in_secs > l.max_sale_secs {
            return Err(CommerceError::invalid(format!(
                "expires_in_secs must be 1-{}",
                l.max_sale_secs
            )));
        }
        if shop.coupons().len() >= l.max_coupons_per_room {
            return Err(CommerceError::new(
                ErrorCode::LimitReached,
                "this room has max_coupons_per_room coupon drops",
            ));
        }
        let now = self.clock.now_ms();
        let terms = CouponTerms {
            id: CouponId(self.next_id()),
            room: room.clone(),
            count: spec.count,
            discount: spec.discount,
            scope: spec.scope,
            expires_at: now + spec.expires_in_secs * 1000,
            created_at: now,
        };
        self.ledger
            .write(ledger::insert_coupon(&terms))
            .await
            .map_err(CommerceError::store)?;
        let coupon = Arc::new(Coupon::new(terms));
        shop.add_coupon(coupon.clone());
        Ok(coupon.view())
    }

    pub fn coupons(&self, room: &RoomId) -> Vec<CouponView> {
        self.existing_shop(room)
            .map_or_else(Vec::new, |s| s.coupons().iter().map(|c| c.view()).collect())
    }

    /// First come, first served; answered (`answer`) once the claim is
    /// durable.
    pub async fn claim_coupon(
        &self,
        room: &RoomId,
        user: &UserRef,
        id: CouponId,
        answer: Answer<CouponView>,
    ) -> CommerceResult<CouponView> {
        let result = self.claim_inner(room, user, id, answer).await;
        let outcome = match &result {
            Ok(_) => "claimed",
            Err(e) => e.code.as_str(),
        };
        self.metrics
            .coupon_claims
            .with_label_values(&[outcome])
            .inc();
        result
    }

    async fn claim_inner(
        &self,
        room: &RoomId,
        user: &UserRef,
        id: CouponId,
        answer: Answer<CouponView>,
    ) -> CommerceResult<CouponView> {
        let coupon = self
            .existing_shop(room)
            .and_then(|s| s.coupon(id))
            .ok_or_else(|| CommerceError::new(ErrorCode::CouponUnknown, "no such coupon"))?;
        let now = self.clock.now_ms();
        let hold = coupon.claim(&user.id, now)?;
        let claimed = coupon.clone();
        let then = Box::new(move || {
            hold.commit();
            answer(&claimed.view());
        });
        self.ledger
            .write_then(ledger::insert_claim(id, &user.id, now), then)
            .await
            .map_err(CommerceError::store)?;
        Ok(coupon.view())
    }

    // -------------------------------------------------------------- buying

    /// Reserves units for a buyer: decided in memory without a lock on the
    /// stock, committed durably, answered (`answer`) after the commit.
    pub async fn buy(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserRef,
        req: Buy,
        answer: Answer<OrderView>,
    ) -> CommerceResult<OrderView> {
        let started = std::time::Instant::now();
        // An order is timed when its answer leaves (on the commit writer's
        // thread for a new one), not when this task resumes after it.
        let metrics = self.metrics.clone();
        let answer: Answer<OrderView> = Box::new(move |order| {
            answer(order);
            metrics.buy_seconds.observe(started.elapsed().as_secs_f64());
        });
        let result = self.buy_inner(room, user, req, answer).await;
        let outcome = match &result {
            Ok((_, true)) => "reserved",
            Ok((_, false)) => "existing",
            Err(e) => {
                self.metrics
                    .buy_seconds
                    .observe(started.elapsed().as_secs_f64());
                e.code.as_str()
            }
        };
        self.metrics.buys.with_label_values(&[outcome]).inc();
        result.map(|(order, _)| order)
    }

    async fn buy_inner(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserRef,
        req: Buy,
        answer: Answer<OrderView>,
    ) -> CommerceResult<(OrderView, bool)> {
        let shop = self.existing_shop(room).ok_or_else(unknown_sku)?;
        let fingerprint = BuyFingerprint {
            sku: req.sku.clone(),
            qty: req.qty,
            coupon: req.coupon_id,
        };
        // A retry is answered by its key alone, whatever became of the SKU
        // or its sale since (`reserve` checks again, atomically).
        let earlier = shop
            .keys
            .get(&(user.id.clone(), req.key.clone()))
            .map(|k| k.clone());
        if let Some(sale::KeyState::Done(f, id)) = earlier {
            if f != fingerprint {
                return Err(CommerceError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency key was used for a different request",
                ));
            }
            let order = self
                .orders
                .get(&id)
                .expect("a committed key names a stored order")
                .view();
            answer(&order);
            return Ok((order, false));
        }
        let sale = match shop.sale_for_sku(&req.sku) {
            Some(sale) => sale,
            None if shop.product_with_sku(&req.sku).is_some() => {
                return Err(CommerceError::new(
                    ErrorCode::NoSale,
                    "this sku has never been on sale in this room",
                ))
            }
            None => return Err(unknown_sku()),
        };
        let now = self.clock.now_ms();
        let hold = match sale.reserve(
            &shop.keys,
            &user.id,
            &req.key,
            fingerprint,
            self.limits.max_buy_qty,
            self.limits.max_orders_per_sale as u64,
            now,
        )? {
            Reserve::Existing(id) => {
                let order = self
                    .orders
                    .get(&id)
                    .expect("a committed key names a stored order")
                    .view();
                answer(&order);
                return Ok((order, false));
            }
            Reserve::New(hold) => hold,
        };
        let coupon_hold = match req.coupon_id {
            None => None,
            Some(id) => {
                let coupon = shop.coupon(id).ok_or_else(|| {
                    CommerceError::new(ErrorCode::CouponUnknown, "no such coupon")
                })?;
                Some(coupon.take_for_order(&user.id, sale.id(), &req.sku, now)?)
            }
        };
        let subtotal = sale.terms.sale_price.times(hold.qty()).ok_or_else(|| {
            CommerceError::new(ErrorCode::BadQuantity, "the total is out of range")
        })?;
        let discount = match &coupon_hold {
            Some(c) => c.coupon().discount_on(subtotal)?,
            None => 0,
        };
        let t = &sale.terms;
        let view = OrderView {
            id: OrderId(self.next_id()),
            room: room.clone(),
            sale_id: t.id,
            product_id: t.product_id,
            sku: t.sku.clone(),
            label: t.label.clone(),
            user_id: user.id.clone(),
            user_name: user.name.to_string(),
            key: req.key,
            qty: hold.qty(),
            unit_price: t.sale_price,
            discount_minor: discount,
            total: Money {
                minor: subtotal.minor - discount,
                ..subtotal
            },
            coupon_id: req.coupon_id,
            status: OrderStatus::Reserved,
            created_at: now,
            deadline: now + t.payment_window_ms,
            paid_at: None,
            closed_at: None,
        };
        // Everything a later request may look at (the order, the key, the
        // coupon) is in place before the buyer hears of the order; on a
        // failed commit the holds are dropped unrun and give the units back.
        let me = self.clone();
        let order = view.clone();
        let then = Box::new(move || {
            let cell = Arc::new(OrderCell::new(order.clone()));
            me.orders.insert(order.id, cell.clone());
            me.reserved.insert(order.id, cell);
            hold.commit(order.id);
            if let Some(c) = coupon_hold {
                c.commit();
            }
            answer(&order);
        });
        self.ledger
            .write_then(ledger::insert_order(&view), then)
            .await
            .map_err(CommerceError::store)?;
        Ok((view, true))
    }

    // ------------------------------------------------------------- orders

    pub fn order(&self, id: OrderId) -> CommerceResult<OrderView> {
        self.orders
            .get(&id)
            .map(|o| o.view())
            .ok_or_else(order_not_found)
    }

    /// Orders from the store (committed state), oldest first.
    pub async fn orders(self: &Arc<Self>, filter: OrderFilter) -> CommerceResult<Vec<OrderView>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.ledger.orders(&filter))
            .await
            .map_err(|e| CommerceError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(CommerceError::store)
    }

    /// Marks an order paid, from a verified payment webhook.
    pub async fn pay(&self, event: PaymentEvent) -> CommerceResult<OrderView> {
        if event.event_id.is_empty() || event.event_id.len() > payment::MAX_EVENT_ID_LEN {
            return Err(CommerceError::invalid(format!(
                "event_id must be 1-{} bytes",
                payment::MAX_EVENT_ID_LEN
            )));
        }
        let cell = self
            .orders
            .get(&event.order_id)
            .map(|c| c.clone())
            .ok_or_else(order_not_found)?;
        let facts = cell.facts();
        if event.amount != facts.total {
            return Err(CommerceError::new(
                ErrorCode::AmountMismatch,
                format!("the order total is {}", facts.total),
            ));
        }
        let now = self.clock.now_ms();
        match self.seen_events.entry(event.event_id.clone()) {
            Entry::Occupied(_) => {
                return Err(CommerceError::new(
                    ErrorCode::WebhookReplayed,
                    "this payment event was already processed",
                ))
            }
            Entry::Vacant(v) => {
                v.insert(now);
            }
        }
        let forget = |e: CommerceError| {
            self.seen_events.remove(&event.event_id);
            e
        };
        let change = cell.begin().ok_or_else(|| forget(order_busy()))?;
        match change.status() {
            OrderStatus::Reserved if now <= facts.deadline => {}
            OrderStatus::Reserved | OrderStatus::Expired => {
                return Err(forget(CommerceError::new(
                    ErrorCode::PaymentDeadlinePassed,
                    "the payment deadline has passed; the reservation expired",
                )))
            }
            OrderStatus::Paid => {
                return Err(forget(CommerceError::new(
                    ErrorCode::OrderFinal,
                    "the order is already paid",
                )))
            }
            OrderStatus::Cancelled => {
                return Err(forget(CommerceError::new(
                    ErrorCode::OrderFinal,
                    "the order was cancelled",
                )))
            }
        }
        self.ledger
            .write(ledger::pay_order(facts.id, event.event_id.clone(), now))
            .await
            .map_err(|e| forget(CommerceError::store(e)))?;
        change.finish(OrderStatus::Paid, now);
        self.reserved.remove(&facts.id);
        self.metrics
            .order_changes
            .with_label_values(&["paid"])
            .inc();
        Ok(cell.view())
    }

    /// Cancels a reserved or paid order; its units go back to stock.
    pub async fn cancel(&self, id: OrderId) -> CommerceResult<OrderView> {
        let cell = self
            .orders
            .get(&id)
            .map(|c| c.clone())
            .ok_or_else(order_not_found)?;
        let change = cell.begin().ok_or_else(order_busy)?;
        if !change.status().is_live() {
            return Err(CommerceError::new(
                ErrorCode::OrderFinal,
                format!("the order is already {}", change.status().as_str()),
            ));
        }
        let now = self.clock.now_ms();
        self.ledger
            .write(ledger::close_order(id, OrderStatus::Cancelled, now))
            .await
            .map_err(CommerceError::store)?;
        change.finish(OrderStatus::Cancelled, now);
        self.reserved.remove(&id);
        self.release(cell.facts());
        self.metrics
            .order_changes
            .with_label_values(&["cancelled"])
            .inc();
        Ok(cell.view())
    }

    /// Expires every reservation past its deadline; returns how many.
    pub async fn expire_due(&self) -> usize {
        let now = self.clock.now_ms();
        let due: Vec<Arc<OrderCell>> = self
            .reserved
            .iter()
            .filter(|o| o.facts().deadline < now)
            .map(|o| o.value().clone())
            .collect();
        // All of them at once: the writer commits them in one batch.
        let expiries = due.iter().map(|cell| async move {
            let change = cell.begin()?;
            if change.status() != OrderStatus::Reserved {
                return None;
            }
            let id = cell.facts().id;
            match self
                .ledger
                .write(ledger::close_order(id, OrderStatus::Expired, now))
                .await
            {
                Ok(()) => {
                    change.finish(OrderStatus::Expired, now);
                    self.reserved.remove(&id);
                    self.release(cell.facts());
                    Some(())
                }
                Err(e) => {
                    tracing::warn!(order = %id, error = %e, "could not expire; will retry");
                    None
                }
            }
        });
        let n = futures_util::future::join_all(expiries)
            .await
            .into_iter()
            .flatten()
            .count();
        if n > 0 {
            self.metrics
                .order_changes
                .with_label_values(&["expired"])
                .inc_by(n as u64);
        }
        n
    }

    /// Gives an order's units, allowance and coupon back.
    fn release(&self, o: &OrderView) {
        let shop = self.shop(&o.room);
        let sale = shop.sale(o.sale_id).expect("a live order's sale is loaded");
        sale.release(&o.user_id, o.qty);
        if let Some(coupon) = o.coupon_id.and_then(|c| shop.coupon(c)) {
            coupon.give_back(&o.user_id);
        }
    }

    /// Forgets payment event ids older than the signature tolerance: a
    /// replay of them is refused by its timestamp (and by the store).
    fn prune_events(&self) {
        let horizon = self
            .clock
            .now_ms()
            .saturating_sub(self.limits.webhook_tolerance_secs * 1000 * 2);
        self.seen_events.retain(|_, seen| *seen >= horizon);
    }

    pub fn webhook_secret(&self) -> &[u8] {
        &self.webhook_secret
    }

    /// Runs the expiry sweep until `stop` flips.
    pub async fn run_expiry(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.limits.expiry_sweep_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    self.expire_due().await;
                    self.prune_events();
                }
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
            }
        }
    }
}

fn unknown_sku() -> CommerceError {
    CommerceError::new(
        ErrorCode::UnknownSku,
        "no product in this room has this sku",
    )
}

fn order_not_found() -> CommerceError {
    CommerceError::new(ErrorCode::OrderNotFound, "no such order")
}

fn order_busy() -> CommerceError {
    CommerceError::new(ErrorCode::OrderBusy, "the order is being changed; retry")
}
