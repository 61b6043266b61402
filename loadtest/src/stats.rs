//! Measuring tools shared by the scenario engine and the nchan peer:
//! latency histograms (hdrhistogram) that survive JSON and merge across
//! processes, their percentiles, and sequence-gap / duplicate accounting
//! ([`SeqCheck`]).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest delivery latency recorded, in milliseconds (one hour); larger
/// values are clamped to it.
const MAX_LATENCY_MS: u64 = 3_600_000;

/// A latency histogram in milliseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MS, 3).expect("valid histogram bounds")
}

/// Sequence-number bookkeeping of one connection: after `joined.seq`, every
/// event must carry exactly the previous seq + 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqCheck {
    last: u64,
    /// Times the stream jumped forward.
    pub gaps: u64,
    /// Events skipped by those jumps.
    pub missed: u64,
    /// Events at or below the last seq seen (repeats or reordering).
    pub duplicates: u64,
}

/// What [`SeqCheck::observe`] made of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    InOrder,
    /// Arrived after this many missing events.
    Gap(u64),
    Duplicate,
}

impl SeqCheck {
    /// Starts after `seq` (the `joined.seq` of the connection).
    pub fn starting_at(seq: u64) -> Self {
        Self {
            last: seq,
            ..Self::default()
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn observe(&mut self, seq: u64) -> SeqVerdict {
        if seq == self.last + 1 {
            self.last = seq;
            SeqVerdict::InOrder
        } else if seq <= self.last {
            self.duplicates += 1;
            SeqVerdict::Duplicate
        } else {
            let missing = seq - self.last - 1;
            self.gaps += 1;
            self.missed += missing;
            self.last = seq;
            SeqVerdict::Gap(missing)
        }
    }
}

/// When senders actually sent (unix ms), to compute the achieved rate.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Window {
    /// The go signal.
    pub go_ms: u64,
    /// Senders stopped (before the drain).
    pub send_end_ms: u64,
    /// Connections told to stop (after the drain).
    pub stop_ms: u64,
}

impl Window {
    pub fn merge(&mut self, o: &Window) {
        self.go_ms = match (self.go_ms, o.go_ms) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.send_end_ms = self.send_end_ms.max(o.send_end_ms);
        self.stop_ms = self.stop_ms.max(o.stop_ms);
    }
}

/// A histogram as (value, count) pairs of its recorded buckets: lossless for
/// a histogram of the same bounds, and plain JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(value, count) in &self.0 {
            h.saturating_record_n(value.min(MAX_LATENCY_MS), count);
        }
        h
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 100.0).round() / 100.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_and_duplicates() {
        let mut s = SeqCheck::starting_at(10);
        assert_eq!(s.observe(11), SeqVerdict::InOrder);
        assert_eq!(s.observe(11), SeqVerdict::Duplicate);
        assert_eq!(s.observe(9), SeqVerdict::Duplicate);
        assert_eq!(s.observe(15), SeqVerdict::Gap(3));
        assert_eq!(s.observe(16), SeqVerdict::InOrder);
        assert_eq!((s.gaps, s.missed, s.duplicates, s.last()), (1, 3, 2, 16));
    }

    #[test]
    fn histograms_survive_the_round_trip_and_merge() {
        let mut a = new_histogram();
        for v in [0, 1, 5, 17, 250, 1234, 99_999] {
            a.record(v).unwrap();
        }
        let data = HistData::from_histogram(&a);
        let json = serde_json::to_string(&data).unwrap();
        let back: HistData = serde_json::from_str(&json).unwrap();
        let b = back.to_histogram();
        assert_eq!(b.len(), a.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q));
        }
    }
}
