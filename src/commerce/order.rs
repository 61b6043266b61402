//! Orders: the immutable facts of a buy, plus a status that moves only
//! forward: `reserved` -> `paid` | `expired` | `cancelled`, `paid` ->
//! `cancelled`. A change is claimed in memory first (one at a time per order,
//! by a compare-and-swap on `busy`), committed durably, then applied; a
//! failed commit leaves the order as it was.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use flashcast_wire::commerce::{OrderStatus, OrderView};

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
        OrderStatus::ALL[self.status.load(Ordering::Acquire) as usize]
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
