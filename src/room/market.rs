//! The room's view of its shop: each tick the actor asks what changed since
//! the last tick and turns it into sequenced events. Stock and coupon counts
//! are read from their atomics, so a storm of buys costs at most one `stock`
//! event per sale per tick (the latest value), however many units moved.

use std::collections::HashMap;
use std::sync::Arc;

use crate::commerce::coupon::Coupon;
use crate::commerce::sale::Sale;
use crate::commerce::shop::Shop;
use flashcast_wire::commerce::CouponView;
use flashcast_wire::commerce::Product;
use flashcast_wire::commerce::{SaleStatus, SaleView};
use flashcast_wire::ids::{CouponId, SaleId};
use flashcast_wire::{EventBody, SaleEndReason};

/// Least time between two `stock` (or `coupons_left`) events of one sale
/// (drop): during a flash sale the count changes every tick, and sending
/// each change to every viewer would make the fanout, not the buyers, the
/// work of the sale. Zero (sold out, all claimed) is sent at once.
pub const COUNT_INTERVAL_MS: u64 = 250;

struct Announced {
    status: SaleStatus,
    available: u32,
    /// When the last `stock` event went out (unix ms).
    sent_at: u64,
}

/// Whether a changed count is due: zero at once, others at most every
/// `COUNT_INTERVAL_MS`.
fn count_due(value: u32, sent_at: u64, now: u64) -> bool {
    value == 0 || now.saturating_sub(sent_at) >= COUNT_INTERVAL_MS
}

pub struct MarketWatch {
    shop: Arc<Shop>,
    /// Shop version last looked at; `u64::MAX` forces the first look.
    version: u64,
    pinned: Option<Arc<Product>>,
    sales: Vec<Arc<Sale>>,
    announced: HashMap<SaleId, Announced>,
    coupons: Vec<Arc<Coupon>>,
    /// Coupons left as last announced, and when.
    coupons_left: HashMap<CouponId, (u32, u64)>,
}

impl MarketWatch {
    /// Starts from what the shop holds now, without announcing it: a room
    /// (re)opening does not replay old sales as news. Joins get it in
    /// their snapshot.
    pub fn new(shop: Arc<Shop>, now: u64) -> Self {
        let mut w = Self {
            version: shop.version(),
            pinned: shop.pinned(),
            sales: shop.sales(),
            coupons: shop.coupons(),
            announced: HashMap::new(),
            coupons_left: HashMap::new(),
            shop,
        };
        for s in &w.sales {
            w.announced.insert(
                s.id(),
                Announced {
                    status: s.status(now),
                    available: s.available(),
                    sent_at: 0,
                },
            );
        }
        for c in &w.coupons {
            w.coupons_left.insert(c.id(), (c.left(), 0));
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
                    e.insert((c.left(), now));
                    out.push(EventBody::CouponDropped { coupon: c.view() });
                }
            }
        }
        for sale in &self.sales {
            let status = sale.status(now);
            let available = sale.available();
            match self.announced.get_mut(&sale.id()) {
                None => {
                    self.announced.insert(
                        sale.id(),
                        Announced {
                            status,
                            available,
                            sent_at: now,
                        },
                    );
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
                    if status != SaleStatus::Ended
                        && seen.available != available
                        && count_due(available, seen.sent_at, now)
                    {
                        seen.available = available;
                        seen.sent_at = now;
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
            if let Some((seen, sent_at)) = self.coupons_left.get_mut(&c.id()) {
                if *seen != left && !c.is_expired(now) && count_due(left, *sent_at, now) {
                    *seen = left;
                    *sent_at = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_out_at_most_every_interval_but_zero_at_once() {
        let sent = 10_000;
        assert!(!count_due(5, sent, sent + 1));
        assert!(!count_due(5, sent, sent + COUNT_INTERVAL_MS - 1));
        assert!(count_due(5, sent, sent + COUNT_INTERVAL_MS));
        assert!(count_due(0, sent, sent + 1), "sold out is news at once");
        assert!(count_due(7, 0, sent), "the first change of a sale is due");
    }
}
