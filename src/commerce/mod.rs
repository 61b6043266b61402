//! Flash sales: where an order is decided.
//!
//! - `money`: integer minor units with a currency.
//! - `catalog`: products and their variants (SKUs).
//! - `stock`: the lock-free unit counter every buy and coupon claim goes through.
//! - `sale`: one flash sale; `Sale::reserve` decides a buy.
//! - `coupon`: first-come coupon drops and their use on an order.
//! - `order`: order facts and the status that only moves forward.
//! - `shop`: one room's catalog, pin, sales and coupons.
//! - `payment`: the signed payment webhook.
//!
//! `Commerce` ties them together: decide in memory (atomics, no lock on the
//! stock), commit a [`Write`] through the store's group-commit writer,
//! answer only after the commit, and undo the in-memory decision if the
//! commit fails.
//!
//! Memory holds what live rooms and open sales need, not the history: the
//! shops of open rooms (loaded when the room opens), reserved orders (the
//! expiry sweep's work), and the idempotency keys of recent buys (at most
//! `max_idempotency_keys`, each for `idempotency_key_retention_secs`).
//! Everything else (paid and closed orders, old keys, the shops of ended
//! shows) is read from the store when asked for.
//!
//! Buys and coupon claims are answered through an [`Answer`] that runs on
//! the writer thread right after the COMMIT: in a flash sale the thousand
//! winners are told the moment their orders are durable, not after their
//! tasks get a turn again among the refusals and fanouts of the same second.

pub mod catalog;
pub mod coupon;
mod keys;
pub mod order;
pub mod payment;
pub mod sale;
pub mod shop;
pub mod stock;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{ShopRecord, Store, StoreError, Write};
use flashcast_wire::client::{Buy, DropCoupon, StartSale};
use flashcast_wire::ids::{CouponId, OrderId, ProductId, RoomId, SaleId, Sku};
use flashcast_wire::{ErrorCode, UserRef};

use catalog::ProductSpec;
use coupon::{Coupon, CouponTerms};
use flashcast_wire::commerce::{
    CouponScope, CouponView, Discount, OrderStatus, OrderView, Product, SaleStatus, SaleView,
};
use flashcast_wire::money::{Money, MAX_MINOR};
use keys::RecentKeys;
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

    /// `value` must be 1 to `max`: else `invalid_argument`, "`name` must
    /// be 1-`max`".
    fn check_range(name: &str, value: impl Into<u64>, max: impl Into<u64>) -> CommerceResult<()> {
        let (value, max) = (value.into(), max.into());
        if value == 0 || value > max {
            return Err(Self::invalid(format!("{name} must be 1-{max}")));
        }
        Ok(())
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

pub use crate::store::OrderFilter;

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
    store: Store,
    /// The shops of open rooms (and of rooms changed since the start).
    shops: DashMap<RoomId, Arc<Shop>>,
    /// Reserved orders (what the expiry sweep looks at), and any other
    /// order while a change of it is being committed. The rest are read
    /// from the store.
    orders: DashMap<OrderId, Arc<OrderCell>>,
    /// Held (shared) by every order close that gives units back, taken
    /// (exclusive) while a shop is read from the store: a shop's stock is
    /// read either before a close commits or after its units came back,
    /// never half-way (which would count the units twice).
    closing: tokio::sync::RwLock<()>,
    /// Idempotency keys in memory, oldest first, for eviction.
    recent_keys: RecentKeys,
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
    /// Expires the reservations that fell due while the server was down
    /// (durably, before anything else) and loads the ones still open. Shops
    /// are loaded room by room as rooms open (`load_shop`).
    pub async fn open(
        store: Store,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        webhook_secret: Vec<u8>,
        clock: Clock,
    ) -> Result<Commerce, StoreError> {
        let now = clock.now_ms();
        let reads = store.read();
        let reserved = reads.reserved_orders().await?;
        let overdue = reserved.iter().filter(|o| o.deadline < now).count();
        if overdue > 0 {
            store.write(Write::ExpireOverdue { now }).await?;
            tracing::info!(
                expired = overdue,
                "reservations expired while the server was down"
            );
        }
        let events = reads
            .payment_events(now.saturating_sub(limits.webhook_tolerance_secs * 1000))
            .await?;
        let next_id = reads.next_id().await?;
        let c = Commerce {
            shops: DashMap::new(),
            orders: DashMap::new(),
            closing: tokio::sync::RwLock::new(()),
            recent_keys: RecentKeys::new(
                limits.max_idempotency_keys,
                limits.idempotency_key_retention_secs * 1000,
            ),
            seen_events: events.into_iter().collect(),
            next_id: AtomicU64::new(next_id),
            limits,
            metrics,
            webhook_secret,
            store,
            clock,
        };
        for o in reserved.into_iter().filter(|o| o.deadline >= now) {
            c.orders.insert(o.id, Arc::new(OrderCell::new(o)));
        }
        Ok(c)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The shop of a room that is opening. Its stored state must have been
    /// loaded first (`load_shop`); a new room starts with an empty one.
    pub fn shop(&self, room: &RoomId) -> Arc<Shop> {
        self.shops
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Shop::new(room.clone())))
            .clone()
    }

    fn existing_shop(&self, room: &RoomId) -> Option<Arc<Shop>> {
        self.shops.get(room).map(|s| s.clone())
    }

    /// Brings a room's shop into memory (from the store, once) for a room
    /// that opens or a shop that changes.
    pub async fn load_shop(&self, room: &RoomId) -> Result<Arc<Shop>, StoreError> {
        if let Some(shop) = self.existing_shop(room) {
            return Ok(shop);
        }
        let _no_close_in_flight = self.closing.write().await;
        if let Some(shop) = self.existing_shop(room) {
            return Ok(shop);
        }
        let (shop, keys) = self.read_shop(room).await?;
        let shop = Arc::new(shop);
        for (created_at, id, user, key) in keys {
            self.recent_keys.insert(created_at, id, room, user, key);
        }
        self.shops.insert(room.clone(), shop.clone());
        self.evict_keys(self.clock.now_ms());
        Ok(shop)
    }

    /// Drops an ended show's shop from memory (it stays in the store).
    /// Its reservations still expire or get paid; their units then simply
    /// stay with the stored record.
    pub fn unload_shop(&self, room: &RoomId) {
        self.shops.remove(room);
    }

    /// A shop built from the store, not kept.
    async fn read_shop(&self, room: &RoomId) -> Result<(Shop, Vec<keys::KeyEntry>), StoreError> {
        let since = self
            .clock
            .now_ms()
            .saturating_sub(self.limits.idempotency_key_retention_secs * 1000);
        let record = self
            .store
            .read()
            .shop(room, since, self.limits.max_idempotency_keys)
            .await?;
        shop_from_record(room, record)
    }

    /// For the read-only queries: the shop in memory, else as stored
    /// (without keeping it). Never creates one.
    async fn shop_to_read(&self, room: &RoomId) -> CommerceResult<Option<Arc<Shop>>> {
        if let Some(shop) = self.existing_shop(room) {
            return Ok(Some(shop));
        }
        let (shop, _) = self.read_shop(room).await.map_err(CommerceError::store)?;
        Ok((!shop.is_empty()).then(|| Arc::new(shop)))
    }

    /// For a change: the shop in memory, loaded if it is not.
    async fn shop_to_change(&self, room: &RoomId) -> CommerceResult<Arc<Shop>> {
        self.load_shop(room).await.map_err(CommerceError::store)
    }

    // ------------------------------------------------------------ catalog

    pub async fn create_product(
        &self,
        room: &RoomId,
        spec: ProductSpec,
    ) -> CommerceResult<Product> {
        let spec = spec.validate()?;
        let shop = self.shop_to_change(room).await?;
        let _admin = shop.admin.lock().await;
        if shop.products_len() >= self.limits.max_products_per_room {
            return Err(CommerceError::new(
                ErrorCode::LimitReached,
                "this room has max_products_per_room products",
            ));
        }
        self.check_skus_free(&shop, &spec, None)?;
        let product = spec.into_product(ProductId(self.next_id()), room.clone());
        self.store
            .write(put_product(&product))
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
        let shop = self.shop_to_change(room).await?;
        let _admin = shop.admin.lock().await;
        if shop.product(id).is_none() {
            return Err(CommerceError::new(ErrorCode::NotFound, "no such product"));
        }
        self.check_skus_free(&shop, &spec, Some(id))?;
        let product = spec.into_product(id, room.clone());
        self.store
            .write(put_product(&product))
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

    pub async fn products(&self, room: &RoomId) -> CommerceResult<Vec<Arc<Product>>> {
        Ok(self
            .shop_to_read(room)
            .await?
            .map_or_else(Vec::new, |s| s.products()))
    }

    pub async fn product(&self, room: &RoomId, id: ProductId) -> CommerceResult<Arc<Product>> {
        self.shop_to_read(room)
            .await?
            .and_then(|s| s.product(id))
            .ok_or_else(|| CommerceError::new(ErrorCode::NotFound, "no such product"))
    }

    /// Pins a product card for every viewer (`None` unpins).
    pub async fn pin(&self, room: &RoomId, product: Option<ProductId>) -> CommerceResult<()> {
        let shop = self.shop_to_change(room).await?;
        let _admin = shop.admin.lock().await;
        if let Some(id) = product {
            if shop.product(id).is_none() {
                return Err(CommerceError::new(ErrorCode::NotFound, "no such product"));
            }
        }
        self.store
            .write(Write::SetPin {
                room: room.clone(),
                product,
            })
            .await
            .map_err(CommerceError::store)?;
        shop.set_pinned(product);
        Ok(())
    }

    // -------------------------------------------------------------- sales

    pub async fn start_sale(&self, room: &RoomId, spec: SaleSpec) -> CommerceResult<SaleView> {
        let l = &self.limits;
        let now = self.clock.now_ms();
        let shop = self.shop_to_change(room).await?;
        let _admin = shop.admin.lock().await;
        let product = shop.product_with_sku(&spec.sku).ok_or_else(|| {
            CommerceError::new(
                ErrorCode::UnknownSku,
                "no product in this room has this sku",
            )
        })?;
        let variant = product.variant(&spec.sku).expect("found by sku");
        CommerceError::check_range("stock", spec.stock, l.max_sale_stock)?;
        CommerceError::check_range("per_user_limit", spec.per_user_limit, l.max_buy_qty)?;
        if spec.sale_price_minor > MAX_MINOR {
            return Err(CommerceError::invalid("sale_price_minor is out of range"));
        }
        CommerceError::check_range("duration_secs", spec.duration_secs, l.max_sale_secs)?;
        let window = spec.payment_window_secs.unwrap_or(l.payment_window_secs);
        CommerceError::check_range("payment_window_secs", window, l.max_payment_window_secs)?;
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
        self.store
            .write(Write::PutSale(terms.clone()))
            .await
            .map_err(CommerceError::store)?;
        let sale = Arc::new(Sale::new(terms));
        shop.add_sale(sale.clone());
        Ok(sale.view(self.clock.now_ms()))
    }

    /// Ends a sale now. Reservations already made can still be paid.
    pub async fn end_sale(&self, room: &RoomId, id: SaleId) -> CommerceResult<SaleView> {
        let shop = self.shop_to_change(room).await?;
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
        self.store
            .write(Write::EndSale { sale: id, at: now })
            .await
            .map_err(CommerceError::store)?;
        sale.end_early(now);
        shop.changed();
        Ok(sale.view(now))
    }

    pub async fn sales(&self, room: &RoomId) -> CommerceResult<Vec<SaleView>> {
        let now = self.clock.now_ms();
        Ok(self.shop_to_read(room).await?.map_or_else(Vec::new, |s| {
            s.sales().iter().map(|s| s.view(now)).collect()
        }))
    }

    pub async fn sale(&self, room: &RoomId, id: SaleId) -> CommerceResult<SaleView> {
        self.shop_to_read(room)
            .await?
            .and_then(|s| s.sale(id))
            .map(|s| s.view(self.clock.now_ms()))
            .ok_or_else(|| CommerceError::new(ErrorCode::NotFound, "no such sale"))
    }

    // ------------------------------------------------------------ coupons

    pub async fn drop_coupon(&self, room: &RoomId, spec: CouponSpec) -> CommerceResult<CouponView> {
        let l = &self.limits;
        let shop = self.shop_to_change(room).await?;
        let _admin = shop.admin.lock().await;
        CommerceError::check_range("count", spec.count, l.max_coupon_count)?;
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
        CommerceError::check_range("expires_in_secs", spec.expires_in_secs, l.max_sale_secs)?;
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
        self.store
            .write(Write::PutCoupon(terms.clone()))
            .await
            .map_err(CommerceError::store)?;
        let coupon = Arc::new(Coupon::new(terms));
        shop.add_coupon(coupon.clone());
        Ok(coupon.view())
    }

    pub async fn coupons(&self, room: &RoomId) -> CommerceResult<Vec<CouponView>> {
        Ok(self
            .shop_to_read(room)
            .await?
            .map_or_else(Vec::new, |s| s.coupons().iter().map(|c| c.view()).collect()))
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
        let claim = Write::ClaimCoupon {
            coupon: id,
            user: user.id.clone(),
            at: now,
        };
        self.store
            .write_then(claim, then)
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
        let stored = match earlier {
            Some(sale::KeyState::Done(f, id)) => Some((f, id)),
            // The key may have left memory (or never been loaded): the
            // store still has its order.
            None if !shop.keys_complete() => {
                self.metrics.idempotency_store_lookups.inc();
                self.store
                    .read()
                    .order_by_key(room, &user.id, &req.key)
                    .await
                    .map_err(CommerceError::store)?
                    .map(|o| (fingerprint_of(&o), o.id))
            }
            _ => None,
        };
        if let Some((f, id)) = stored {
            if f != fingerprint {
                return Err(CommerceError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency key was used for a different request",
                ));
            }
            let order = self.order(id).await?;
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
                let order = self.order(id).await?;
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
            me.orders.insert(order.id, cell);
            hold.commit(order.id);
            if let Some(c) = coupon_hold {
                c.commit();
            }
            answer(&order);
            me.recent_keys.insert(
                order.created_at,
                order.id,
                &order.room,
                order.user_id.clone(),
                order.key.clone(),
            );
            me.evict_keys(order.created_at);
        });
        self.store
            .write_then(Write::PutOrder(view.clone()), then)
            .await
            .map_err(CommerceError::store)?;
        Ok((view, true))
    }

    // ------------------------------------------------------------- orders

    /// An order as it stands: from memory while it is reserved, else from
    /// the store.
    pub async fn order(&self, id: OrderId) -> CommerceResult<OrderView> {
        if let Some(cell) = self.orders.get(&id) {
            return Ok(cell.view());
        }
        self.store
            .read()
            .order(id)
            .await
            .map_err(CommerceError::store)?
            .ok_or_else(order_not_found)
    }

    /// The in-memory cell of an order about to change: the resident one,
    /// else one made from the store and kept while the change runs (so
    /// that two changes of it meet on the same cell). `settle` drops it.
    async fn order_cell(&self, id: OrderId) -> CommerceResult<Arc<OrderCell>> {
        if let Some(cell) = self.orders.get(&id) {
            return Ok(cell.clone());
        }
        let view = self
            .store
            .read()
            .order(id)
            .await
            .map_err(CommerceError::store)?
            .ok_or_else(order_not_found)?;
        Ok(self
            .orders
            .entry(id)
            .or_insert_with(|| Arc::new(OrderCell::new(view)))
            .clone())
    }

    /// Keeps an order in memory only while it is reserved.
    fn settle(&self, cell: &OrderCell) {
        let id = cell.facts().id;
        self.orders
            .remove_if(&id, |_, c| c.status() != OrderStatus::Reserved);
    }

    /// Orders from the store (committed state), oldest first.
    pub async fn orders(&self, filter: OrderFilter) -> CommerceResult<Vec<OrderView>> {
        self.store
            .read()
            .orders(&filter)
            .await
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
        let cell = self.order_cell(event.order_id).await?;
        let result = self.pay_cell(&cell, event).await;
        self.settle(&cell);
        result
    }

    async fn pay_cell(&self, cell: &OrderCell, event: PaymentEvent) -> CommerceResult<OrderView> {
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
        let pay = Write::PayOrder {
            order: facts.id,
            event_id: event.event_id.clone(),
            at: now,
        };
        self.store
            .write(pay)
            .await
            .map_err(|e| forget(changed_meanwhile(e)))?;
        change.finish(OrderStatus::Paid, now);
        self.metrics
            .order_changes
            .with_label_values(&["paid"])
            .inc();
        Ok(cell.view())
    }

    /// Cancels a reserved or paid order; its units go back to stock.
    pub async fn cancel(&self, id: OrderId) -> CommerceResult<OrderView> {
        let cell = self.order_cell(id).await?;
        let result = self.cancel_cell(&cell).await;
        self.settle(&cell);
        result
    }

    async fn cancel_cell(&self, cell: &OrderCell) -> CommerceResult<OrderView> {
        let id = cell.facts().id;
        let change = cell.begin().ok_or_else(order_busy)?;
        if !change.status().is_live() {
            return Err(CommerceError::new(
                ErrorCode::OrderFinal,
                format!("the order is already {}", change.status().as_str()),
            ));
        }
        let now = self.clock.now_ms();
        let _closing = self.closing.read().await;
        let close = Write::CloseOrder {
            order: id,
            to: OrderStatus::Cancelled,
            at: now,
        };
        self.store.write(close).await.map_err(changed_meanwhile)?;
        change.finish(OrderStatus::Cancelled, now);
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
            .orders
            .iter()
            .filter(|o| o.status() == OrderStatus::Reserved && o.facts().deadline < now)
            .map(|o| o.value().clone())
            .collect();
        // All of them at once: the writer commits them in one batch.
        let expiries = due.iter().map(|cell| async move {
            let change = cell.begin()?;
            if change.status() != OrderStatus::Reserved {
                return None;
            }
            let id = cell.facts().id;
            let _closing = self.closing.read().await;
            let close = Write::CloseOrder {
                order: id,
                to: OrderStatus::Expired,
                at: now,
            };
            match self.store.write(close).await {
                Ok(()) => {
                    change.finish(OrderStatus::Expired, now);
                    self.release(cell.facts());
                    self.settle(cell);
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

    /// Gives an order's units, allowance and coupon back to its shop, if
    /// the shop is in memory (else the store already tells: its stock is
    /// computed from live orders when it is loaded). Called under
    /// `closing`, right after the close committed.
    fn release(&self, o: &OrderView) {
        let Some(shop) = self.existing_shop(&o.room) else {
            return;
        };
        if let Some(sale) = shop.sale(o.sale_id) {
            sale.release(&o.user_id, o.qty);
        }
        if let Some(coupon) = o.coupon_id.and_then(|c| shop.coupon(c)) {
            coupon.give_back(&o.user_id);
        }
    }

    /// Lets idempotency keys older than the retention, or beyond
    /// `max_idempotency_keys`, leave memory (oldest first). A retry with
    /// one of them is still answered, from the store.
    fn evict_keys(&self, now: u64) {
        for (id, room, user, key) in self.recent_keys.evict(now) {
            if let Some(shop) = self.existing_shop(&room) {
                shop.forget_key(&user, &key, id);
            }
        }
        self.metrics
            .idempotency_keys
            .set(self.recent_keys.len() as i64);
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
                    self.evict_keys(self.clock.now_ms());
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

/// A conditional write found the order in another state than memory said
/// (another node or an earlier read changed it): the caller retries and
/// then sees the stored state.
fn changed_meanwhile(e: StoreError) -> CommerceError {
    match e {
        StoreError::Conflict(_) => order_busy(),
        e => CommerceError::store(e),
    }
}

fn fingerprint_of(o: &OrderView) -> BuyFingerprint {
    BuyFingerprint {
        sku: o.sku.clone(),
        qty: o.qty,
        coupon: o.coupon_id,
    }
}

fn put_product(p: &Product) -> Write {
    Write::PutProduct {
        id: p.id,
        room: p.room.clone(),
        body: serde_json::to_string(p).expect("products serialize"),
    }
}

/// A shop as stored, and the keys it brought into memory.
fn shop_from_record(
    room: &RoomId,
    record: ShopRecord,
) -> Result<(Shop, Vec<keys::KeyEntry>), StoreError> {
    let shop = Shop::new(room.clone());
    for body in record.products {
        let product: Product = serde_json::from_str(&body)
            .map_err(|e| StoreError::Backend(format!("stored product: {e}")))?;
        shop.put_product(product);
    }
    shop.set_pinned(record.pin);
    for s in record.sales {
        let sale = Arc::new(Sale::new(s.terms));
        if let Some(at) = s.ended_early_at {
            sale.end_early(at);
        }
        sale.restore(&s.held, s.orders);
        shop.add_sale(sale);
    }
    for c in record.coupons {
        let coupon = Arc::new(Coupon::new(c.terms));
        for (user, in_use) in &c.claims {
            coupon.restore(user, *in_use);
        }
        shop.add_coupon(coupon);
    }
    let mut keys = Vec::with_capacity(record.keys.len());
    for o in record.keys {
        shop.keys.insert(
            (o.user_id.clone(), o.key.clone()),
            sale::KeyState::Done(fingerprint_of(&o), o.id),
        );
        keys.push((o.created_at, o.id, o.user_id, o.key));
    }
    shop.set_keys_complete(record.keys_complete);
    Ok((shop, keys))
}

#[cfg(test)]
mod tests {
    //! What memory keeps and what is read from the store.

    use super::*;
    use flashcast_wire::commerce::Variant;
    use flashcast_wire::ids::IdemKey;
    use flashcast_wire::money;
    use flashcast_wire::Role;

    async fn open(dir: &std::path::Path, limits: Limits) -> (Arc<Commerce>, Store) {
        let store = Store::open_sqlite(dir, Default::default()).unwrap();
        let c = Commerce::open(
            store.clone(),
            Arc::new(limits),
            Arc::new(Metrics::new()),
            b"secret".to_vec(),
            Clock::system(),
        )
        .await
        .unwrap();
        (Arc::new(c), store)
    }

    fn room() -> RoomId {
        RoomId::new("show").unwrap()
    }

    fn buyer(id: &str) -> UserRef {
        UserRef {
            id: flashcast_wire::ids::UserId::new(id).unwrap(),
            name: id.into(),
            role: Role::Viewer,
        }
    }

    fn buy(key: &str) -> Buy {
        Buy {
            sku: Sku::new("A").unwrap(),
            qty: 1,
            key: IdemKey::new(key).unwrap(),
            coupon_id: None,
        }
    }

    /// A room with one product and a live sale of `stock` units.
    async fn stocked(c: &Commerce, stock: u32) {
        c.create_product(
            &room(),
            ProductSpec {
                title: "Shirt".into(),
                description: String::new(),
                images: vec![],
                currency: money::Currency::new("USD").unwrap(),
                variants: vec![Variant {
                    sku: Sku::new("A").unwrap(),
                    options: Default::default(),
                    price_minor: 200,
                }],
            },
        )
        .await
        .unwrap();
        let spec = SaleSpec {
            sku: Sku::new("A").unwrap(),
            sale_price_minor: 100,
            stock,
            per_user_limit: 100,
            starts_at: None,
            duration_secs: 600,
            payment_window_secs: None,
        };
        c.start_sale(&room(), spec).await.unwrap();
    }

    async fn buy_as(c: &Arc<Commerce>, user: &str, key: &str) -> OrderView {
        c.buy(&room(), &buyer(user), buy(key), Box::new(|_| {}))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn reading_a_shop_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = open(dir.path(), Limits::default()).await;
        let nowhere = RoomId::new("nowhere").unwrap();
        assert!(c.products(&nowhere).await.unwrap().is_empty());
        assert!(c.sales(&nowhere).await.unwrap().is_empty());
        assert!(c.coupons(&nowhere).await.unwrap().is_empty());
        assert!(c.product(&nowhere, ProductId(1)).await.is_err());
        assert!(c.sale(&nowhere, SaleId(1)).await.is_err());
        assert!(c.shops.is_empty(), "reads left no shop behind");
    }

    #[tokio::test]
    async fn a_retry_whose_key_left_memory_gets_its_order_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_idempotency_keys: 1,
            ..Limits::default()
        };
        let (c, store) = open(dir.path(), limits).await;
        stocked(&c, 10).await;
        let first = buy_as(&c, "ana", "k1").await;
        let second = buy_as(&c, "ana", "k2").await;
        assert_ne!(first.id, second.id);
        let shop = c.existing_shop(&room()).unwrap();
        assert_eq!(shop.keys.len(), 1, "only the newest key stays in memory");
        assert!(!shop.keys_complete());

        let again = buy_as(&c, "ana", "k1").await;
        assert_eq!(again.id, first.id, "the store answered the retry");
        let conflict = c
            .buy(
                &room(),
                &buyer("ana"),
                Buy {
                    qty: 2,
                    ..buy("k1")
                },
                Box::new(|_| {}),
            )
            .await
            .unwrap_err();
        assert_eq!(conflict.code, ErrorCode::IdempotencyConflict);
        let all = store
            .read()
            .orders(&OrderFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "no second order for a retried key");
        assert_eq!(c.metrics.idempotency_keys.get(), 1);
        assert!(c.metrics.idempotency_store_lookups.get() >= 1);
        assert_eq!(
            shop.sale_for_sku(&Sku::new("A").unwrap())
                .unwrap()
                .available(),
            8
        );
    }

    #[tokio::test]
    async fn start_up_keeps_reservations_and_open_shops_only() {
        let dir = tempfile::tempdir().unwrap();
        let paid;
        {
            let (c, _) = open(dir.path(), Limits::default()).await;
            stocked(&c, 10).await;
            let reserved = buy_as(&c, "ana", "k1").await;
            paid = buy_as(&c, "bob", "k2").await;
            let event = PaymentEvent {
                event_id: "evt-1".into(),
                order_id: paid.id,
                amount: paid.total,
            };
            c.pay(event).await.unwrap();
            assert_eq!(c.orders.len(), 1, "a paid order leaves memory");
            assert!(c.orders.contains_key(&reserved.id));
        }
        let (c, _) = open(dir.path(), Limits::default()).await;
        assert!(c.shops.is_empty(), "no room opened yet: no shop loaded");
        assert_eq!(c.orders.len(), 1, "only the reservation is in memory");
        assert_eq!(c.order(paid.id).await.unwrap().status, OrderStatus::Paid);
        let shop = c.load_shop(&room()).await.unwrap();
        let sale = shop.sale_for_sku(&Sku::new("A").unwrap()).unwrap();
        assert_eq!(sale.available(), 8, "stock = initial - live orders");
        assert_eq!(buy_as(&c, "bob", "k2").await.id, paid.id, "keys come back");
        let cancelled = c.cancel(paid.id).await.unwrap();
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(
            sale.available(),
            9,
            "a cancel read from the store gives back"
        );
        assert_eq!(c.orders.len(), 1, "and leaves memory again");
    }
}
