//! The room's view of its shop: each tick the actor asks what changed since
//! the last tick and turns it into sequenced events. Stock and coupon counts
//! are read from their atomics, so a storm of buys costs at most one `stock`
//! event per sale per tick (the latest value), however many units moved.

use std::collections::HashMap;
use std::sync::Arc;

use crate::commerce::catalog::Product;
use crate::commerce::coupon::Coupon;
use crate::commerce::coupon::CouponView;
use crate::commerce::sale::{Sale, SaleStatus, SaleView};
use crate::commerce::shop::Shop;
use crate::ids::{CouponId, SaleId};
use crate::protocol::{EventBody, SaleEndReason};

struct Announced {
    status: SaleStatus,
    available: u32,
}

pub struct MarketWatch {
    shop: Arc<Shop>,
    /// Shop version last looked at; `u64::MAX` forces the first look.
    version: u64,
    pinned: Option<Arc<Product>>,
    sales: Vec<Arc<Sale>>,
    announced: HashMap<SaleId, Announced>,
    coupons: Vec<Arc<Coupon>>,
    coupons_left: HashMap<CouponId, u32>,
}

impl MarketWatch {
    /// Starts from what the shop holds now, without announcing it: a room
    /// (re)opening does not replay old sales as news. Joins get it in
    /// their snapshot.
    pub fn new(shop: Arc<Shop>) -> Self {
        let mut w = Self {
            version: shop.version(),
            pinned: shop.pinned(),
            sales: shop.sales(),
            coupons: shop.coupons(),
            announced: HashMap::new(),
            coupons_left: HashMap::new(),
            shop,
        };
        let now = crate::protocol::now_ms();
        for s in &w.sales {
            w.announced.insert(
                s.id(),
                Announced {
                    status: s.status(now),
                    available: s.available(),
                },
            );
        }
        for c in &w.coupons {
            w.coupons_left.insert(c.id(), c.left());
        }
        w
    }

    pub fn pinned(&self) -> Option<Product> {
        self.pinned.as_deref().cloned()
    }

    /// Scheduled and live sales, for a snapshot.
    pub fn open_sales(&self, now: u64) -> Vec<SaleView> {
        self.sales
            .iter()
            .filter(|s| s.status(now) != SaleStatus::Ended)
            .map(|s| s.view(now))
            .collect()
    }

    pub fn open_coupons(&self, now: u64) -> Vec<CouponView> {
        self.coupons
            .iter()
            .filter(|c| !c.is_expired(now))
            .map(|c| c.view())
            .collect()
    }

    /// The events that describe what changed since the last call.
    pub fn changes(&mut self, now: u64) -> Vec<EventBody> {
        let mut out = Vec::new();
        let version = self.shop.version();
        if version != self.version {
            self.version = version;
            let pinned = self.shop.pinned();
            let same = match (&pinned, &self.pinned) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                out.push(match &pinned {
                    Some(p) => EventBody::ProductPinned {
                        product: (**p).clone(),
                    },
                    None => EventBody::ProductUnpinned {},
                });
                self.pinned = pinned;
            }
            self.sales = self.shop.sales();
            self.coupons = self.shop.coupons();
            for c in &self.coupons {
                if let std::collections::hash_map::Entry::Vacant(e) =
                    self.coupons_left.entry(c.id())
                {
                    e.insert(c.left());
                    out.push(EventBody::CouponDropped { coupon: c.view() });
                }
            }
        }
        for sale in &self.sales {
            let status = sale.status(now);
            let available = sale.available();
            match self.announced.get_mut(&sale.id()) {
                None => {
                    self.announced
                        .insert(sale.id(), Announced { status, available });
                    let view = sale.view(now);
                    match status {
                        SaleStatus::Scheduled => out.push(EventBody::SaleScheduled { sale: view }),
                        SaleStatus::Live => out.push(EventBody::SaleStarted { sale: view }),
                        SaleStatus::Ended => {}
                    }
                }
                Some(seen) => {
                    if seen.status != status {
                        seen.status = status;
                        match status {
                            SaleStatus::Live => out.push(EventBody::SaleStarted {
                                sale: sale.view(now),
                            }),
                            SaleStatus::Ended => out.push(EventBody::SaleEnded {
                                sale_id: sale.id(),
                                sold: sale.terms.stock - available,
                                reason: if sale.ended_early() {
                                    SaleEndReason::Host
                                } else {
                                    SaleEndReason::Time
                                },
                            }),
                            SaleStatus::Scheduled => {}
                        }
                    }
                    if status != SaleStatus::Ended && seen.available != available {
                        seen.available = available;
                        out.push(EventBody::Stock {
                            sale_id: sale.id(),
                            available,
                        });
                    }
                }
            }
        }
        for c in &self.coupons {
            let left = c.left();
            if let Some(seen) = self.coupons_left.get_mut(&c.id()) {
                if *seen != left && !c.is_expired(now) {
                    *seen = left;
                    out.push(EventBody::CouponsLeft {
                        coupon_id: c.id(),
                        left,
                    });
                }
            }
        }
        out
    }
}
