//! Coupon drops: the host drops N coupons, the first N viewers to claim one
//! get it (one per viewer), and a claimed coupon takes money off one order.
//!
//! The N is a `Stock` counter like a sale's units: a claim is one
//! compare-and-swap, so no interleaving hands out more than N (proven by
//! the loom model in `stock.rs`). A viewer's own claim is keyed by the
//! viewer, so claims never wait on each other.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::stock::Stock;
use super::CommerceError;
use flashcast_wire::commerce::{CouponScope, CouponView, Discount};
use flashcast_wire::ids::{CouponId, SaleId, Sku, UserId};
use flashcast_wire::money::Money;
use flashcast_wire::ErrorCode;

pub use crate::store::CouponTerms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Being committed.
    Pending,
    Unused,
    /// Taken by a live order (or by a buy being committed).
    InUse,
}

#[derive(Debug)]
pub struct Coupon {
    pub terms: CouponTerms,
    left: Stock,
    claims: DashMap<UserId, Claim>,
}

impl Coupon {
    pub fn new(terms: CouponTerms) -> Self {
        assert!(terms.count > 0);
        Self {
            left: Stock::new(terms.count, terms.count),
            claims: DashMap::new(),
            terms,
        }
    }

    pub fn id(&self) -> CouponId {
        self.terms.id
    }

    pub fn left(&self) -> u32 {
        self.left.available()
    }

    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.terms.expires_at
    }

    pub fn view(&self) -> CouponView {
        CouponView {
            id: self.terms.id,
            discount: self.terms.discount,
            scope: self.terms.scope.clone(),
            count: self.terms.count,
            left: self.left(),
            expires_at: self.terms.expires_at,
        }
    }

    /// First come, first served: one coupon per viewer while any are left.
    pub fn claim(self: &Arc<Self>, user: &UserId, now: u64) -> Result<ClaimHold, CommerceError> {
        if self.is_expired(now) {
            return Err(expired());
        }
        match self.claims.entry(user.clone()) {
            Entry::Occupied(_) => {
                return Err(CommerceError::new(
                    ErrorCode::CouponAlreadyClaimed,
                    "you already claimed this coupon",
                ))
            }
            Entry::Vacant(v) => {
                v.insert(Claim::Pending);
            }
        }
        let mut hold = ClaimHold {
            coupon: self.clone(),
            user: user.clone(),
            took: false,
            committed: false,
        };
        self.left.try_take(1).map_err(|_| {
            CommerceError::new(ErrorCode::CouponsGone, "every coupon has been claimed")
        })?;
        hold.took = true;
        Ok(hold)
    }

    /// Reserves this viewer's claimed coupon for an order on `sale`/`sku`.
    pub fn take_for_order(
        self: &Arc<Self>,
        user: &UserId,
        sale: SaleId,
        sku: &Sku,
        now: u64,
    ) -> Result<UseHold, CommerceError> {
        if self.is_expired(now) {
            return Err(expired());
        }
        let in_scope = match &self.terms.scope {
            CouponScope::Room => true,
            CouponScope::Sale { sale_id } => *sale_id == sale,
            CouponScope::Sku { sku: s } => s == sku,
        };
        if !in_scope {
            return Err(out_of_scope());
        }
        let mut claim = self.claims.get_mut(user).ok_or_else(|| {
            CommerceError::new(
                ErrorCode::CouponNotClaimed,
                "claim this coupon before using it",
            )
        })?;
        match *claim {
            Claim::Unused => *claim = Claim::InUse,
            Claim::InUse => {
                return Err(CommerceError::new(
                    ErrorCode::CouponUsed,
                    "your coupon is already used by a live order",
                ))
            }
            Claim::Pending => {
                return Err(CommerceError::new(
                    ErrorCode::CouponNotClaimed,
                    "your claim is still being committed",
                ))
            }
        }
        Ok(UseHold {
            coupon: self.clone(),
            user: user.clone(),
            committed: false,
        })
    }

    /// The order that used this viewer's coupon expired or was cancelled:
    /// the coupon can be used again.
    pub fn give_back(&self, user: &UserId) {
        if let Some(mut c) = self.claims.get_mut(user) {
            if *c == Claim::InUse {
                *c = Claim::Unused;
            }
        }
    }

    /// Minor units off `subtotal`; refuses a fixed amount in another currency.
    pub fn discount_on(&self, subtotal: Money) -> Result<u64, CommerceError> {
        Ok(match self.terms.discount {
            Discount::Percent { percent } => {
                u64::try_from(u128::from(subtotal.minor) * u128::from(percent) / 100)
                    .expect("a percentage of a u64 fits a u64")
            }
            Discount::Fixed { amount } => {
                if amount.currency != subtotal.currency {
                    return Err(out_of_scope());
                }
                amount.minor.min(subtotal.minor)
            }
        })
    }

    /// Re-applies a claim loaded from the store.
    pub fn restore(&self, user: &UserId, in_use: bool) {
        self.left
            .try_take(1)
            .expect("the store holds more claims than the drop");
        let c = if in_use { Claim::InUse } else { Claim::Unused };
        self.claims.insert(user.clone(), c);
    }

    pub fn has_claimed(&self, user: &UserId) -> bool {
        self.claims.contains_key(user)
    }
}

fn expired() -> CommerceError {
    CommerceError::new(ErrorCode::CouponExpired, "this coupon has expired")
}

fn out_of_scope() -> CommerceError {
    CommerceError::new(
        ErrorCode::CouponOutOfScope,
        "this coupon does not apply to this sale",
    )
}

/// A claim until it is durable; dropped uncommitted, it is given back.
pub struct ClaimHold {
    coupon: Arc<Coupon>,
    user: UserId,
    took: bool,
    committed: bool,
}

impl ClaimHold {
    pub fn commit(mut self) {
        self.coupon.claims.insert(self.user.clone(), Claim::Unused);
        self.committed = true;
    }
}

impl Drop for ClaimHold {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if self.took {
            self.coupon.left.put_back(1);
        }
        self.coupon.claims.remove(&self.user);
    }
}

/// A coupon held for an order until the order is durable.
pub struct UseHold {
    coupon: Arc<Coupon>,
    user: UserId,
    committed: bool,
}

impl UseHold {
    pub fn coupon(&self) -> &Arc<Coupon> {
        &self.coupon
    }

    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for UseHold {
    fn drop(&mut self) {
        if !self.committed {
            self.coupon.give_back(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcast_wire::ids::RoomId;
    use flashcast_wire::money::Currency;

    fn coupon(count: u32, discount: Discount, scope: CouponScope) -> Arc<Coupon> {
        Arc::new(Coupon::new(CouponTerms {
            id: CouponId(1),
            room: RoomId::new("r").unwrap(),
            count,
            discount,
            scope,
            expires_at: 1_000,
            created_at: 0,
        }))
    }

    fn u(n: u32) -> UserId {
        UserId::new(&format!("u{n}")).unwrap()
    }

    #[test]
    fn first_come_one_each_and_gone_after_n() {
        let c = coupon(2, Discount::Percent { percent: 10 }, CouponScope::Room);
        c.claim(&u(1), 0).unwrap().commit();
        let again = c.claim(&u(1), 0).err().unwrap();
        assert_eq!(again.code, ErrorCode::CouponAlreadyClaimed);
        c.claim(&u(2), 0).unwrap().commit();
        assert_eq!(
            c.claim(&u(3), 0).err().unwrap().code,
            ErrorCode::CouponsGone
        );
        assert_eq!(c.left(), 0);
        // A refused claim left no trace: after a failed commit, u4 can try again.
        let c = coupon(1, Discount::Percent { percent: 10 }, CouponScope::Room);
        drop(c.claim(&u(4), 0).unwrap());
        assert_eq!(c.left(), 1);
        c.claim(&u(4), 0).unwrap().commit();
        assert_eq!(
            c.claim(&u(5), 2_000).err().unwrap().code,
            ErrorCode::CouponExpired
        );
    }

    #[test]
    fn use_is_scoped_single_and_given_back() {
        let sku = Sku::new("A").unwrap();
        let c = coupon(
            5,
            Discount::Percent { percent: 10 },
            CouponScope::Sale { sale_id: SaleId(7) },
        );
        assert_eq!(
            c.take_for_order(&u(1), SaleId(7), &sku, 0)
                .err()
                .unwrap()
                .code,
            ErrorCode::CouponNotClaimed
        );
        c.claim(&u(1), 0).unwrap().commit();
        assert_eq!(
            c.take_for_order(&u(1), SaleId(8), &sku, 0)
                .err()
                .unwrap()
                .code,
            ErrorCode::CouponOutOfScope
        );
        let used = c.take_for_order(&u(1), SaleId(7), &sku, 0).unwrap();
        assert_eq!(
            c.take_for_order(&u(1), SaleId(7), &sku, 0)
                .err()
                .unwrap()
                .code,
            ErrorCode::CouponUsed
        );
        drop(used); // the order failed to commit
        c.take_for_order(&u(1), SaleId(7), &sku, 0)
            .unwrap()
            .commit();
        c.give_back(&u(1)); // the order expired
        assert!(c.take_for_order(&u(1), SaleId(7), &sku, 0).is_ok());
    }

    #[test]
    fn discounts_are_exact_and_never_negative() {
        let usd = Currency::new("USD").unwrap();
        let pct = coupon(1, Discount::Percent { percent: 15 }, CouponScope::Room);
        assert_eq!(pct.discount_on(Money::new(999, usd)).unwrap(), 149);
        let fixed = coupon(
            1,
            Discount::Fixed {
                amount: Money::new(500, usd),
            },
            CouponScope::Room,
        );
        assert_eq!(fixed.discount_on(Money::new(300, usd)).unwrap(), 300);
        let krw = Currency::new("KRW").unwrap();
        assert_eq!(
            fixed.discount_on(Money::new(300, krw)).unwrap_err().code,
            ErrorCode::CouponOutOfScope
        );
    }
}
