//! One room's shop: its catalog, pinned product, sales and coupon drops.
//! Read on the purchase path (lookups only); changed by host and admin
//! actions, one at a time per room (`Shop::admin`), after they are durable.
//! The room actor polls `version` each tick to announce what changed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::coupon::Coupon;
use super::sale::{KeyState, Keys, Sale};
use flashcast_wire::commerce::Product;
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};

pub struct Shop {
    pub room: RoomId,
    products: RwLock<BTreeMap<ProductId, Arc<Product>>>,
    pinned: RwLock<Option<ProductId>>,
    sales: RwLock<Vec<Arc<Sale>>>,
    /// The latest sale of each SKU: where a buy for that SKU goes.
    by_sku: DashMap<Sku, Arc<Sale>>,
    coupons: RwLock<Vec<Arc<Coupon>>>,
    /// Buyers' idempotency keys in this room: in flight, and recent ones.
    pub keys: Arc<Keys>,
    /// True while `keys` holds the key of every order of the room, so a
    /// key missing from it is new without asking the store.
    keys_complete: AtomicBool,
    /// Bumped after every change of products, pin, sales or coupons.
    version: AtomicU64,
    /// Serializes host and admin changes of this shop (never held by buys).
    pub admin: tokio::sync::Mutex<()>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Shop {
    pub fn new(room: RoomId) -> Self {
        Self {
            room,
            products: RwLock::default(),
            pinned: RwLock::default(),
            sales: RwLock::default(),
            by_sku: DashMap::new(),
            coupons: RwLock::default(),
            keys: Arc::new(Keys::new()),
            keys_complete: AtomicBool::new(true),
            version: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    pub fn keys_complete(&self) -> bool {
        self.keys_complete.load(Ordering::Acquire)
    }

    pub(super) fn set_keys_complete(&self, complete: bool) {
        self.keys_complete.store(complete, Ordering::Release);
    }

    /// Lets a committed key leave memory (the store keeps its order).
    pub(super) fn forget_key(&self, user: &UserId, key: &IdemKey, order: OrderId) {
        // Cleared first: a buy that misses the key then asks the store.
        self.keys_complete.store(false, Ordering::Release);
        self.keys.remove_if(
            &(user.clone(), key.clone()),
            |_, state| matches!(state, KeyState::Done(_, id) if *id == order),
        );
    }

    /// Nothing in it: no product, sale or coupon drop.
    pub fn is_empty(&self) -> bool {
        read(&self.products).is_empty()
            && read(&self.sales).is_empty()
            && read(&self.coupons).is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(super) fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn products(&self) -> Vec<Arc<Product>> {
        read(&self.products).values().cloned().collect()
    }

    pub fn product(&self, id: ProductId) -> Option<Arc<Product>> {
        read(&self.products).get(&id).cloned()
    }

    /// The product that has this SKU among its variants.
    pub fn product_with_sku(&self, sku: &Sku) -> Option<Arc<Product>> {
        read(&self.products)
            .values()
            .find(|p| p.variant(sku).is_some())
            .cloned()
    }

    pub fn products_len(&self) -> usize {
        read(&self.products).len()
    }

    pub(super) fn put_product(&self, p: Product) {
        write(&self.products).insert(p.id, Arc::new(p));
        self.changed();
    }

    pub fn pinned(&self) -> Option<Arc<Product>> {
        let id = (*read(&self.pinned))?;
        self.product(id)
    }

    pub(super) fn set_pinned(&self, id: Option<ProductId>) {
        *write(&self.pinned) = id;
        self.changed();
    }

    pub fn sales(&self) -> Vec<Arc<Sale>> {
        read(&self.sales).clone()
    }

    pub fn sales_len(&self) -> usize {
        read(&self.sales).len()
    }

    pub fn sale(&self, id: SaleId) -> Option<Arc<Sale>> {
        read(&self.sales).iter().find(|s| s.id() == id).cloned()
    }

    pub fn sale_for_sku(&self, sku: &Sku) -> Option<Arc<Sale>> {
        self.by_sku.get(sku).map(|s| s.clone())
    }

    pub(super) fn add_sale(&self, sale: Arc<Sale>) {
        self.by_sku.insert(sale.terms.sku.clone(), sale.clone());
        write(&self.sales).push(sale);
        self.changed();
    }

    pub fn coupons(&self) -> Vec<Arc<Coupon>> {
        read(&self.coupons).clone()
    }

    pub fn coupon(&self, id: CouponId) -> Option<Arc<Coupon>> {
        read(&self.coupons).iter().find(|c| c.id() == id).cloned()
    }

    pub(super) fn add_coupon(&self, coupon: Arc<Coupon>) {
        write(&self.coupons).push(coupon);
        self.changed();
    }
}
