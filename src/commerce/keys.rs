//! The idempotency keys of committed buys that memory keeps, oldest first.
//! A key answers a retry without touching the store; it leaves memory
//! after `idempotency_key_retention_secs`, or earlier when more than
//! `max_idempotency_keys` are kept (the oldest first). A retry with a key
//! that left is answered from the store (`ReadBackend::order_by_key`), so
//! eviction costs a read, never a second order.

use std::collections::BTreeMap;
use std::sync::Mutex;

use flashcast_wire::ids::{IdemKey, OrderId, RoomId, UserId};

/// A key as loaded with its shop: (created_at, order, buyer, key).
pub type KeyEntry = (u64, OrderId, UserId, IdemKey);

/// (created_at, order) -> (room, buyer, key): ordered by age.
type ByAge = BTreeMap<(u64, OrderId), (RoomId, UserId, IdemKey)>;

pub struct RecentKeys {
    keys: Mutex<ByAge>,
    max: usize,
    retention_ms: u64,
}

impl RecentKeys {
    pub fn new(max: usize, retention_ms: u64) -> Self {
        Self {
            keys: Mutex::default(),
            max,
            retention_ms,
        }
    }

    pub fn insert(
        &self,
        created_at: u64,
        order: OrderId,
        room: &RoomId,
        user: UserId,
        key: IdemKey,
    ) {
        self.lock()
            .insert((created_at, order), (room.clone(), user, key));
    }

    /// Takes out the keys that must leave memory at `now`: older than the
    /// retention, or beyond the most kept.
    pub fn evict(&self, now: u64) -> Vec<(OrderId, RoomId, UserId, IdemKey)> {
        let horizon = now.saturating_sub(self.retention_ms);
        let mut keys = self.lock();
        let mut out = Vec::new();
        loop {
            let over = keys.len() > self.max;
            let Some(entry) = keys.first_entry() else {
                break;
            };
            if entry.key().0 >= horizon && !over {
                break;
            }
            let ((_, order), (room, user, key)) = entry.remove_entry();
            out.push((order, room, user, key));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByAge> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(k: &RecentKeys, at: u64, id: u64) {
        k.insert(
            at,
            OrderId(id),
            &RoomId::new("r").unwrap(),
            UserId::new("u").unwrap(),
            IdemKey::new(&format!("k{id}")).unwrap(),
        );
    }

    #[test]
    fn keys_leave_after_the_retention_or_beyond_the_most_kept_oldest_first() {
        let k = RecentKeys::new(3, 1_000);
        for (at, id) in [(100, 1), (200, 2), (300, 3)] {
            add(&k, at, id);
        }
        assert!(k.evict(1_000).is_empty(), "all within retention and bound");
        add(&k, 400, 4);
        let out: Vec<u64> = k.evict(1_000).iter().map(|e| e.0 .0).collect();
        assert_eq!(out, vec![1], "over the bound: the oldest leaves");
        let out: Vec<u64> = k.evict(1_250).iter().map(|e| e.0 .0).collect();
        assert_eq!(out, vec![2], "older than the retention");
        assert_eq!(k.len(), 2);
    }
}
