//! A flash sale: where an order is decided. One SKU, a sale price, a stock of
//! units, a per-user limit and a time window.
//!
//! The purchase path takes no lock on the stock: `reserve` claims the
//! idempotency key and the buyer's per-user allowance (both keyed by the
//! buyer, so buyers never wait on each other), then takes the units with one
//! compare-and-swap on the sale's `Stock`. Every step is undone if a later
//! one fails, or if the durable commit that follows fails (the `Hold` guard),
//! so a refused or crashed buy leaves nothing taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::stock::Stock;
use super::CommerceError;
use flashcast_wire::commerce::{SaleStatus, SaleView};
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, SaleId, Sku, UserId};
use flashcast_wire::ErrorCode;

pub use crate::store::SaleTerms;

/// What makes two buys "the same request" for the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuyFingerprint {
    pub sku: Sku,
    pub qty: u32,
    pub coupon: Option<CouponId>,
}

#[derive(Debug, Clone)]
pub enum KeyState {
    InFlight(BuyFingerprint),
    Done(BuyFingerprint, OrderId),
}

/// A room's idempotency keys: one per buyer and key, whatever the SKU or
/// sale, so a retry can never create a second order. A key in flight stays
/// until its buy is decided; a committed one leaves memory after the
/// retention (`commerce::keys`), and the store answers for it then.
pub type Keys = DashMap<(UserId, IdemKey), KeyState>;

#[derive(Debug)]
pub struct Sale {
    pub terms: SaleTerms,
    /// Unix ms when it was ended early; 0 when not.
    ended_early_at: AtomicU64,
    stock: Stock,
    /// Units each buyer holds in live (reserved or paid) orders.
    held: DashMap<UserId, u32>,
    /// Orders ever committed on this sale (for `max_orders_per_sale`).
    orders: AtomicU64,
}

/// The answer of `reserve`: a fresh hold to commit, or the order an earlier
/// buy with the same key created.
pub enum Reserve {
    New(Hold),
    Existing(OrderId),
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> CommerceError {
    CommerceError::new(code, message)
}

impl Sale {
    pub fn new(terms: SaleTerms) -> Self {
        assert!(
            terms.starts_at < terms.ends_at,
            "a sale ends after it starts"
        );
        assert!(terms.per_user_limit > 0 && terms.stock > 0);
        Self {
            stock: Stock::new(terms.stock, terms.stock),
            terms,
            ended_early_at: AtomicU64::new(0),
            held: DashMap::new(),
            orders: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> SaleId {
        self.terms.id
    }

    pub fn available(&self) -> u32 {
        self.stock.available()
    }

    pub fn held_by(&self, user: &UserId) -> u32 {
        self.held.get(user).map_or(0, |h| *h)
    }

    pub fn ends_at(&self) -> u64 {
        match self.ended_early_at.load(Ordering::Acquire) {
            0 => self.terms.ends_at,
            t => t.min(self.terms.ends_at),
        }
    }

    pub fn ended_early(&self) -> bool {
        self.ended_early_at.load(Ordering::Acquire) != 0
    }

    pub fn status(&self, now: u64) -> SaleStatus {
        if now >= self.ends_at() {
            SaleStatus::Ended
        } else if now < self.terms.starts_at {
            SaleStatus::Scheduled
        } else {
            SaleStatus::Live
        }
    }

    /// Ends the sale at `at` unless it already ended; true if it did now.
    pub fn end_early(&self, at: u64) -> bool {
        at < self.ends_at()
            && self
                .ended_early_at
                .compare_exchange(0, at.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn view(&self, now: u64) -> SaleView {
        let t = &self.terms;
        SaleView {
            id: t.id,
            product_id: t.product_id,
            sku: t.sku.clone(),
            label: t.label.clone(),
            image: t.image.clone(),
            regular_price: t.regular_price,
            sale_price: t.sale_price,
            stock: t.stock,
            available: self.available(),
            per_user_limit: t.per_user_limit,
            starts_at: t.starts_at,
            ends_at: self.ends_at(),
            payment_window_secs: t.payment_window_ms / 1000,
            status: self.status(now),
        }
    }

    /// Decides a buy. On success the units, the buyer's allowance and the
    /// key are held until the returned `Hold` is committed or dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        self: &Arc<Self>,
        keys: &Arc<Keys>,
        user: &UserId,
        key: &IdemKey,
        fingerprint: BuyFingerprint,
        max_qty: u32,
        max_orders: u64,
        now: u64,
    ) -> Result<Reserve, CommerceError> {
        let qty = fingerprint.qty;
        if qty == 0 || qty > max_qty {
            return Err(refuse(
                ErrorCode::BadQuantity,
                format!("quantity must be 1-{max_qty}"),
            ));
        }
        // The key first: a retry of a buy that succeeded gets its order even
        // after the sale ended or sold out.
        match keys.entry((user.clone(), key.clone())) {
            Entry::Occupied(e) => {
                return match e.get() {
                    KeyState::Done(f, order) if *f == fingerprint => Ok(Reserve::Existing(*order)),
                    KeyState::InFlight(f) if *f == fingerprint => Err(refuse(
                        ErrorCode::BuyInProgress,
                        "a buy with this key is being committed; retry with the same key",
                    )),
                    _ => Err(refuse(
                        ErrorCode::IdempotencyConflict,
                        "this idempotency key was used for a different request",
                    )),
                }
            }
            Entry::Vacant(v) => {
                v.insert(KeyState::InFlight(fingerprint));
            }
        }
        let mut hold = Hold {
            sale: self.clone(),
            keys: keys.clone(),
            user: user.clone(),
            key: key.clone(),
            qty,
            allowance: false,
            units: false,
            committed: false,
        };
        match self.status(now) {
            SaleStatus::Scheduled => {
                return Err(refuse(
                    ErrorCode::SaleNotStarted,
                    "the sale has not started yet",
                ))
            }
            SaleStatus::Ended => return Err(refuse(ErrorCode::SaleEnded, "the sale has ended")),
            SaleStatus::Live => {}
        }
        if self.orders.load(Ordering::Acquire) >= max_orders {
            return Err(refuse(
                ErrorCode::LimitReached,
                "this sale has max_orders_per_sale orders",
            ));
        }
        let limit = self.terms.per_user_limit;
        // A buyer at the limit hears so even when the sale is sold out.
        if qty > limit || self.held_by(user) + qty > limit {
            return Err(over_limit(limit));
        }
        if self.stock.available() < qty {
            return Err(sold_out(self.stock.available()));
        }
        {
            let mut held = self.held.entry(user.clone()).or_insert(0);
            if *held + qty > limit {
                return Err(over_limit(limit));
            }
            *held += qty;
        }
        hold.allowance = true;
        self.stock
            .try_take(qty)
            .map_err(|e| sold_out(e.available))?;
        hold.units = true;
        Ok(Reserve::New(hold))
    }

    /// Gives back the units of an order that expired or was cancelled.
    pub fn release(&self, user: &UserId, qty: u32) {
        self.stock.put_back(qty);
        self.give_back_allowance(user, qty);
    }

    fn give_back_allowance(&self, user: &UserId, qty: u32) {
        if let Some(mut held) = self.held.get_mut(user) {
            assert!(*held >= qty, "released more units than the user held");
            *held -= qty;
        } else {
            panic!("released units of a user who holds none");
        }
        self.held.remove_if(user, |_, h| *h == 0);
    }

    /// Re-applies what the stored orders hold, when the sale is loaded:
    /// the live units of each buyer, and how many orders it ever had.
    pub fn restore(&self, held: &[(UserId, u32)], orders: u64) {
        for (user, units) in held {
            self.stock
                .try_take(*units)
                .expect("the store holds more live units than the sale's stock");
            *self.held.entry(user.clone()).or_insert(0) += units;
        }
        self.orders.fetch_add(orders, Ordering::AcqRel);
    }
}

fn over_limit(limit: u32) -> CommerceError {
    refuse(
        ErrorCode::PerUserLimit,
        format!("at most {limit} per buyer in this sale"),
    )
}

fn sold_out(left: u32) -> CommerceError {
    refuse(ErrorCode::SoldOut, format!("sold out ({left} left)"))
}

/// Units, allowance and key held for one buy until it is committed. Dropped
/// uncommitted (refused, failed to commit, or cancelled), it gives all back.
pub struct Hold {
    sale: Arc<Sale>,
    keys: Arc<Keys>,
    user: UserId,
    key: IdemKey,
    qty: u32,
    allowance: bool,
    units: bool,
    committed: bool,
}

impl Hold {
    pub fn qty(&self) -> u32 {
        self.qty
    }

    pub fn sale(&self) -> &Arc<Sale> {
        &self.sale
    }

    /// The order is durable: the key now names it.
    pub fn commit(mut self, order: OrderId) {
        let fingerprint = match self.keys.get(&(self.user.clone(), self.key.clone())) {
            Some(state) => match &*state {
                KeyState::InFlight(f) => f.clone(),
                KeyState::Done(..) => unreachable!("a key is committed once"),
            },
            None => unreachable!("an in-flight key stays until its hold ends"),
        };
        self.keys.insert(
            (self.user.clone(), self.key.clone()),
            KeyState::Done(fingerprint, order),
        );
        self.sale.orders.fetch_add(1, Ordering::AcqRel);
        self.committed = true;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if self.units {
            self.sale.stock.put_back(self.qty);
        }
        if self.allowance {
            self.sale.give_back_allowance(&self.user, self.qty);
        }
        self.keys.remove(&(self.user.clone(), self.key.clone()));
    }
}

#[cfg(test)]
mod tests {
    //! The sale state machine against a sequential model: random buys
    //! (with retries, key reuse, failed commits), payments, expiries and
    //! cancellations, driven the way `Commerce` drives them.

    use std::collections::HashMap;

    use flashcast_wire::ids::RoomId;

    use proptest::prelude::*;

    use super::*;
    use crate::commerce::order::OrderCell;
    use flashcast_wire::commerce::{OrderStatus, OrderView};
    use flashcast_wire::ids::ProductId;
    use flashcast_wire::money::{Currency, Money};

    const STOCK: u32 = 10;
    const LIMIT: u32 = 3;
    const MAX_QTY: u32 = 5;
    const ENDS_AT: u64 = 20_000;
    const WINDOW: u64 = 1_000;

    fn sale() -> Arc<Sale> {
        let usd = Currency::new("USD").unwrap();
        Arc::new(Sale::new(SaleTerms {
            id: SaleId(1),
            room: RoomId::new("r").unwrap(),
            product_id: ProductId(1),
            sku: Sku::new("A").unwrap(),
            label: "A".into(),
            image: None,
            regular_price: Money::new(200, usd),
            sale_price: Money::new(100, usd),
            stock: STOCK,
            per_user_limit: LIMIT,
            starts_at: 100,
            ends_at: ENDS_AT,
            payment_window_ms: WINDOW,
            created_at: 0,
        }))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Buy {
            user: u8,
            key: u8,
            qty: u32,
            commit_fails: bool,
        },
        Pay(usize),
        Cancel(usize),
        Expire,
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, 0u8..4, 0u32..=6, prop::bool::weighted(0.1))
                .prop_map(|(user, key, qty, commit_fails)| Op::Buy { user, key, qty, commit_fails }),
            2 => (0usize..40).prop_map(Op::Pay),
            1 => (0usize..40).prop_map(Op::Cancel),
            2 => Just(Op::Expire),
            2 => (1u64..900).prop_map(Op::Tick),
        ]
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct ModelOrder {
        user: u8,
        qty: u32,
        deadline: u64,
        status: OrderStatus,
    }

    #[derive(Default)]
    struct Model {
        left: u32,
        held: HashMap<u8, u32>,
        keys: HashMap<(u8, u8), (u32, usize)>,
        orders: Vec<ModelOrder>,
    }

    impl Model {
        fn buy(
            &mut self,
            user: u8,
            key: u8,
            qty: u32,
            fails: bool,
            now: u64,
        ) -> Result<usize, ErrorCode> {
            if qty == 0 || qty > MAX_QTY {
                return Err(ErrorCode::BadQuantity);
            }
            if let Some((q, order)) = self.keys.get(&(user, key)) {
                return if *q == qty {
                    Ok(*order)
                } else {
                    Err(ErrorCode::IdempotencyConflict)
                };
            }
            if now < 100 {
                return Err(ErrorCode::SaleNotStarted);
            }
            if now >= ENDS_AT {
                return Err(ErrorCode::SaleEnded);
            }
            let held = self.held.get(&user).copied().unwrap_or(0);
            if qty > LIMIT || held + qty > LIMIT {
                return Err(ErrorCode::PerUserLimit);
            }
            if self.left < qty {
                return Err(ErrorCode::SoldOut);
            }
            if fails {
                return Err(ErrorCode::Internal);
            }
            self.left -= qty;
            self.held.insert(user, held + qty);
            self.orders.push(ModelOrder {
                user,
                qty,
                deadline: now + WINDOW,
                status: OrderStatus::Reserved,
            });
            self.keys.insert((user, key), (qty, self.orders.len() - 1));
            Ok(self.orders.len() - 1)
        }

        fn release(&mut self, i: usize) {
            let o = self.orders[i];
            self.left += o.qty;
            *self.held.get_mut(&o.user).unwrap() -= o.qty;
        }
    }

    fn uid(u: u8) -> UserId {
        UserId::new(&format!("u{u}")).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn matches_a_sequential_model(ops in prop::collection::vec(op(), 1..60)) {
            let sale = sale();
            let keys = Arc::new(Keys::new());
            let mut model = Model { left: STOCK, ..Model::default() };
            let mut cells: Vec<Arc<OrderCell>> = Vec::new();
            let mut now = 50u64;
            for op in ops {
                match op {
                    Op::Buy { user, key, qty, commit_fails } => {
                        let f = BuyFingerprint { sku: sale.terms.sku.clone(), qty, coupon: None };
                        let key_id = IdemKey::new(&format!("k{key}")).unwrap();
                        let got = match sale.reserve(&keys, &uid(user), &key_id, f, MAX_QTY, u64::MAX, now) {
                            Err(e) => Err(e.code),
                            Ok(Reserve::Existing(id)) => Ok(id.0 as usize),
                            Ok(Reserve::New(_hold)) if commit_fails => Err(ErrorCode::Internal),
                            Ok(Reserve::New(hold)) => {
                                let id = cells.len();
                                let t = &sale.terms;
                                cells.push(Arc::new(OrderCell::new(OrderView {
                                    id: OrderId(id as u64), room: t.room.clone(), sale_id: t.id,
                                    product_id: t.product_id, sku: t.sku.clone(), label: t.label.clone(),
                                    user_id: uid(user), user_name: "x".into(), key: key_id, qty,
                                    unit_price: t.sale_price, discount_minor: 0,
                                    total: t.sale_price.times(qty).unwrap(), coupon_id: None,
                                    status: OrderStatus::Reserved, created_at: now,
                                    deadline: now + t.payment_window_ms, paid_at: None, closed_at: None,
                                })));
                                hold.commit(OrderId(id as u64));
                                Ok(id)
                            }
                        };
                        let want = model.buy(user, key, qty, commit_fails, now);
                        prop_assert_eq!(got, want);
                    }
                    Op::Pay(i) => {
                        let (Some(cell), Some(_)) = (cells.get(i), model.orders.get(i)) else { continue };
                        let change = cell.begin().expect("nothing else is changing it");
                        let ok = change.status() == OrderStatus::Reserved && now <= cell.facts().deadline;
                        if ok { change.finish(OrderStatus::Paid, now); }
                        let m = &mut model.orders[i];
                        let want = m.status == OrderStatus::Reserved && now <= m.deadline;
                        if want { m.status = OrderStatus::Paid; }
                        prop_assert_eq!(ok, want);
                    }
                    Op::Cancel(i) => {
                        let (Some(cell), Some(_)) = (cells.get(i), model.orders.get(i)) else { continue };
                        let change = cell.begin().unwrap();
                        if change.status().is_live() {
                            change.finish(OrderStatus::Cancelled, now);
                            sale.release(&cell.facts().user_id, cell.facts().qty);
                        }
                        if model.orders[i].status.is_live() {
                            model.orders[i].status = OrderStatus::Cancelled;
                            model.release(i);
                        }
                    }
                    Op::Expire => {
                        for cell in &cells {
                            let change = cell.begin().unwrap();
                            if change.status() == OrderStatus::Reserved && cell.facts().deadline < now {
                                change.finish(OrderStatus::Expired, now);
                                sale.release(&cell.facts().user_id, cell.facts().qty);
                            }
                        }
                        for i in 0..model.orders.len() {
                            let o = model.orders[i];
                            if o.status == OrderStatus::Reserved && o.deadline < now {
                                model.orders[i].status = OrderStatus::Expired;
                                model.release(i);
                            }
                        }
                    }
                    Op::Tick(ms) => now += ms,
                }
                // The invariants, after every step.
                prop_assert_eq!(sale.available(), model.left);
                let live: u32 = cells.iter().filter(|c| c.status().is_live()).map(|c| c.facts().qty).sum();
                prop_assert_eq!(STOCK - sale.available(), live, "taken units are exactly the live orders");
                for u in 0..4u8 {
                    let held = sale.held_by(&uid(u));
                    prop_assert_eq!(held, model.held.get(&u).copied().unwrap_or(0));
                    prop_assert!(held <= LIMIT);
                }
                for (cell, m) in cells.iter().zip(&model.orders) {
                    prop_assert_eq!(cell.status(), m.status);
                }
            }
        }
    }

    #[test]
    fn concurrent_buyers_never_oversell_or_exceed_their_limit() {
        let sale = sale();
        let keys = Arc::new(Keys::new());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (sale, keys) = (sale.clone(), keys.clone());
                std::thread::spawn(move || {
                    let mut got = 0;
                    for i in 0..50 {
                        let user = uid((i % 4) as u8);
                        let key = IdemKey::new(&format!("t{t}-{i}")).unwrap();
                        let f = BuyFingerprint {
                            sku: sale.terms.sku.clone(),
                            qty: 1,
                            coupon: None,
                        };
                        if let Ok(Reserve::New(hold)) =
                            sale.reserve(&keys, &user, &key, f, MAX_QTY, u64::MAX, 500)
                        {
                            hold.commit(OrderId(i));
                            got += 1;
                        }
                    }
                    got
                })
            })
            .collect();
        let sold: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // 4 buyers x limit 3 = 12 > stock 10: the stock binds.
        assert_eq!(sold, STOCK);
        assert_eq!(sale.available(), 0);
        let held: u32 = (0..4).map(|u| sale.held_by(&uid(u))).sum();
        assert_eq!(held, STOCK);
        assert!((0..4).all(|u| sale.held_by(&uid(u)) <= LIMIT));
    }
}
