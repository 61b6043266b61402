//! The stock of one SKU: a single atomic counter of units left, taken with a
//! compare-and-swap loop. No lock on the purchase path, and no interleaving
//! can take more units than exist: a CAS only succeeds from a value that
//! still covers the request, and a failed CAS retries against the fresh
//! value. Proven by a loom model check (every interleaving of a few buyers)
//! and a property test against a sequential model, both below.

#[cfg(flashcast_loom)]
use loom::sync::atomic::{AtomicU32, Ordering};
#[cfg(not(flashcast_loom))]
use std::sync::atomic::{AtomicU32, Ordering};

/// Units of one SKU that can still be sold.
#[derive(Debug)]
pub struct Stock {
    available: AtomicU32,
    /// The stock the sale started with; `available` never exceeds it.
    initial: u32,
}

/// Not enough units left for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sold out: {available} left")]
pub struct SoldOut {
    pub available: u32,
}

impl Stock {
    /// Stock of `initial` units, of which `available` are left (fewer when
    /// rebuilt after a restart from the live orders).
    pub fn new(initial: u32, available: u32) -> Self {
        assert!(
            available <= initial,
            "available stock exceeds initial stock"
        );
        Self {
            available: AtomicU32::new(available),
            initial,
        }
    }

    pub fn initial(&self) -> u32 {
        self.initial
    }

    pub fn available(&self) -> u32 {
        self.available.load(Ordering::Acquire)
    }

    /// Takes `qty` units if that many are left; returns how many remain.
    pub fn try_take(&self, qty: u32) -> Result<u32, SoldOut> {
        assert!(qty > 0, "a purchase takes at least one unit");
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            if current < qty {
                return Err(SoldOut { available: current });
            }
            match self.available.compare_exchange_weak(
                current,
                current - qty,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(current - qty),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back the units of an expired or cancelled reservation; returns
    /// how many are now left.
    pub fn put_back(&self, qty: u32) -> u32 {
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            let next = current
                .checked_add(qty)
                .filter(|n| *n <= self.initial)
                .expect("returned more units than were ever taken");
            match self.available.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(all(test, not(flashcast_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn takes_until_sold_out_and_puts_back() {
        let s = Stock::new(5, 5);
        assert_eq!(s.try_take(2), Ok(3));
        assert_eq!(s.try_take(4), Err(SoldOut { available: 3 }));
        assert_eq!(s.try_take(3), Ok(0));
        assert_eq!(s.put_back(2), 2);
        assert_eq!(s.available(), 2);
    }

    #[test]
    #[should_panic(expected = "more units than were ever taken")]
    fn putting_back_more_than_taken_is_a_bug() {
        Stock::new(3, 2).put_back(2);
    }

    #[test]
    fn threads_never_oversell() {
        // Real threads hammering one counter; the sum taken is exactly the stock.
        let stock = Arc::new(Stock::new(1_000, 1_000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = stock.clone();
                std::thread::spawn(move || {
                    let mut got = 0u32;
                    while s.try_take(1).is_ok() {
                        got += 1;
                    }
                    got
                })
            })
            .collect();
        let total: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1_000);
        assert_eq!(stock.available(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take(u32),
        PutBack(u32),
    }

    proptest! {
        /// Against a sequential model: the counter answers exactly as a plain
        /// integer would, and never goes below zero or above the initial stock.
        #[test]
        fn matches_a_sequential_model(
            initial in 0u32..50,
            ops in proptest::collection::vec(
                prop_oneof![(1u32..6).prop_map(Op::Take), (1u32..6).prop_map(Op::PutBack)],
                0..100,
            ),
        ) {
            let stock = Stock::new(initial, initial);
            let mut model = initial;
            for op in ops {
                match op {
                    Op::Take(q) => {
                        let got = stock.try_take(q);
                        if model >= q {
                            model -= q;
                            prop_assert_eq!(got, Ok(model));
                        } else {
                            prop_assert_eq!(got, Err(SoldOut { available: model }));
                        }
                    }
                    Op::PutBack(q) => {
                        // Only what was taken can come back.
                        let q = q.min(initial - model);
                        if q > 0 {
                            model += q;
                            prop_assert_eq!(stock.put_back(q), model);
                        }
                    }
                }
                prop_assert!(stock.available() <= initial);
            }
        }
    }
}

/// Run with `RUSTFLAGS="--cfg flashcast_loom" cargo test --release --lib
/// commerce::stock` (scripts/test.sh does, in its own target directory).
#[cfg(all(test, flashcast_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    #[test]
    fn no_interleaving_oversells() {
        loom::model(|| {
            // 3 buyers want 2 units each; only 4 exist.
            let stock = Arc::new(Stock::new(4, 4));
            let buyers: Vec<_> = (0..3)
                .map(|_| {
                    let s = stock.clone();
                    loom::thread::spawn(move || s.try_take(2).is_ok())
                })
                .collect();
            let sold: u32 = buyers
                .into_iter()
                .map(|b| if b.join().unwrap() { 2 } else { 0 })
                .sum();
            assert_eq!(sold, 4, "exactly the stock is sold");
            assert_eq!(stock.available(), 0);
        });
    }

    #[test]
    fn concurrent_take_and_put_back_stay_in_bounds() {
        loom::model(|| {
            let stock = Arc::new(Stock::new(2, 1));
            let s1 = stock.clone();
            let taker = loom::thread::spawn(move || s1.try_take(2).is_ok());
            let s2 = stock.clone();
            let giver = loom::thread::spawn(move || s2.put_back(1));
            let took = taker.join().unwrap();
            giver.join().unwrap();
            let left = stock.available();
            assert!(left <= 2);
            assert_eq!(left, if took { 0 } else { 2 });
        });
    }

    /// The coupon claim counter is this same type (`Coupon::left`): a drop
    /// of 2 with 3 claimers, one of whose claims fails to commit and is
    /// given back, never hands out more than 2 and never loses one.
    #[test]
    fn coupon_claims_never_exceed_the_drop() {
        loom::model(|| {
            let left = Arc::new(Stock::new(2, 2));
            let claimers: Vec<_> = (0..3)
                .map(|i| {
                    let l = left.clone();
                    loom::thread::spawn(move || match l.try_take(1) {
                        Ok(_) if i == 0 => {
                            l.put_back(1); // the durable commit failed
                            0
                        }
                        Ok(_) => 1,
                        Err(_) => 0,
                    })
                })
                .collect();
            let kept: u32 = claimers.into_iter().map(|c| c.join().unwrap()).sum();
            assert!(kept <= 2, "never more claims than coupons");
            assert_eq!(left.available(), 2 - kept, "no coupon lost");
        });
    }
}
