//! Counted limits on sessions: viewers of a room, viewers of the node, and
//! sessions per user (or per address for guests). A session holds a
//! `Slot` of each limit that applies to it; dropping the session gives the
//! slots back, so no code path can forget to.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flashcast_wire::ids::{RoomId, UserId};

/// A counter with a ceiling.
pub struct Counter {
    taken: AtomicUsize,
    max: usize,
}

/// One unit of a `Counter`, returned when dropped.
pub struct Slot(Arc<Counter>);

impl Counter {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, or None when `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who holds a session, for the per-holder limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A token's user, in the token's room.
    User { room: RoomId, user: UserId },
    /// A guest, known only by address.
    Guest(IpAddr),
}

/// Counters per key, each with the same ceiling; a key's entry is removed
/// when its last slot is dropped, so the map holds only current holders.
pub struct Keyed<K: Eq + Hash + Clone> {
    counts: Mutex<HashMap<K, usize>>,
    max: usize,
}

/// One session of a key, returned when dropped.
pub struct KeyedSlot<K: Eq + Hash + Clone> {
    owner: Arc<Keyed<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Keyed<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(HashMap::new()),
            max,
        })
    }

    pub fn take(self: &Arc<Self>, key: &K) -> Option<KeyedSlot<K>> {
        let mut counts = self.counts.lock().expect("quota lock");
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(KeyedSlot {
            owner: self.clone(),
            key: key.clone(),
        })
    }

    pub fn held(&self, key: &K) -> usize {
        self.counts
            .lock()
            .expect("quota lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys holding at least one slot.
    pub fn keys(&self) -> usize {
        self.counts.lock().expect("quota lock").len()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl<K: Eq + Hash + Clone> KeyedSlot<K> {
    /// Whose session this is.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("quota lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_refuses_at_its_max_and_frees_on_drop() {
        let c = Counter::new(2);
        let a = c.take().unwrap();
        let b = c.take().unwrap();
        assert!(c.take().is_none(), "the third is refused");
        assert_eq!(c.taken(), 2);
        drop(a);
        let _c = c.take().expect("a freed slot can be taken again");
        assert!(c.take().is_none());
        drop(b);
        assert_eq!(c.taken(), 1);
        assert!(Counter::new(0).take().is_none());
    }

    #[test]
    fn keyed_slots_count_per_holder_and_forget_empty_holders() {
        let q = Keyed::new(2);
        let ana = Holder::User {
            room: RoomId::new("r").unwrap(),
            user: UserId::new("ana").unwrap(),
        };
        let guest = Holder::Guest("127.0.0.1".parse().unwrap());
        let a1 = q.take(&ana).unwrap();
        let _a2 = q.take(&ana).unwrap();
        assert!(q.take(&ana).is_none(), "ana is at the limit");
        let g = q.take(&guest).expect("another holder is not affected");
        assert_eq!((q.held(&ana), q.held(&guest), q.keys()), (2, 1, 2));
        drop(a1);
        assert!(q.take(&ana).is_some());
        drop(g);
        assert_eq!(q.keys(), 1, "a holder with no session is forgotten");
        let none: Arc<Keyed<Holder>> = Keyed::new(0);
        assert!(none.take(&guest).is_none());
        assert_eq!(none.keys(), 0, "a refusal leaves no entry behind");
    }
}
