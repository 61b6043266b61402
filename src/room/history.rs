//! The bounded history ring of one room: the last `capacity` sequenced
//! events, contiguous by sequence number, for resume and snapshots.

use std::collections::VecDeque;
use std::sync::Arc;

use flashcast_wire::ids::Seq;
use flashcast_wire::Event;

#[derive(Debug)]
pub struct History {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "history capacity must be positive");
        Self {
            events: VecDeque::with_capacity(capacity.min(4_096)),
            capacity,
        }
    }

    /// Appends the next event; its seq must follow the last one.
    pub fn push(&mut self, event: Arc<Event>) {
        if let Some(last) = self.events.back() {
            assert_eq!(event.seq, last.seq + 1, "history must stay contiguous");
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn first_seq(&self) -> Option<Seq> {
        self.events.front().map(|e| e.seq)
    }

    /// Events with `after < seq <= upto`, or `None` when some of them have
    /// already left the ring (the caller must then send a gap).
    pub fn since(&self, after: Seq, upto: Seq) -> Option<Vec<Arc<Event>>> {
        if after >= upto {
            return Some(Vec::new());
        }
        let first = self.first_seq()?;
        if after + 1 < first {
            return None;
        }
        let start = (after + 1 - first) as usize;
        let end = (upto + 1 - first) as usize;
        Some(
            self.events
                .range(start..end.min(self.events.len()))
                .cloned()
                .collect(),
        )
    }

    /// The last `n` events with `seq <= upto`.
    pub fn tail(&self, n: usize, upto: Seq) -> Vec<Arc<Event>> {
        let Some(first) = self.first_seq() else {
            return Vec::new();
        };
        if upto < first {
            return Vec::new();
        }
        let end = ((upto + 1 - first) as usize).min(self.events.len());
        let start = end.saturating_sub(n);
        self.events.range(start..end).cloned().collect()
    }

    /// The stored event with this seq, for redaction.
    pub fn get_mut(&mut self, seq: Seq) -> Option<&mut Arc<Event>> {
        let first = self.first_seq()?;
        if seq < first {
            return None;
        }
        self.events.get_mut((seq - first) as usize)
    }

    /// True if `seq` is older than anything kept.
    pub fn is_before_window(&self, seq: Seq) -> bool {
        self.first_seq().is_some_and(|f| seq < f)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcast_wire::EventBody;

    fn ev(seq: Seq) -> Arc<Event> {
        Arc::new(Event {
            seq,
            ts: 0,
            body: EventBody::SlowMode { seconds: 0 },
        })
    }

    fn seqs(v: &[Arc<Event>]) -> Vec<Seq> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn since_returns_exactly_the_missing_events_or_none() {
        let mut h = History::new(5);
        for s in 1..=8 {
            h.push(ev(s));
        }
        assert_eq!(h.len(), 5);
        assert_eq!(seqs(&h.since(5, 8).unwrap()), vec![6, 7, 8]);
        assert_eq!(seqs(&h.since(3, 8).unwrap()), vec![4, 5, 6, 7, 8]);
        assert!(h.since(2, 8).is_none(), "seq 3 left the ring");
        assert_eq!(
            seqs(&h.since(5, 7).unwrap()),
            vec![6, 7],
            "unflushed events are not replayed"
        );
        assert!(h.since(8, 8).unwrap().is_empty());
        assert_eq!(seqs(&h.tail(2, 7)), vec![6, 7]);
        assert_eq!(seqs(&h.tail(50, 8)), vec![4, 5, 6, 7, 8]);
        assert!(h.is_before_window(3) && !h.is_before_window(4));
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_refused() {
        let mut h = History::new(5);
        h.push(ev(1));
        h.push(ev(3));
    }
}
