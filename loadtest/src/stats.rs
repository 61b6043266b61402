//! What a storm measures: live counters shared by every connection of one
//! process ([`Stats`]), and the mergeable result a process hands back at the
//! end ([`WorkerResult`]), including latency histograms (hdrhistogram) and
//! sequence-gap / duplicate accounting ([`SeqCheck`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest delivery latency recorded, in milliseconds (one hour); larger
/// values are clamped to it.
const MAX_LATENCY_MS: u64 = 3_600_000;
/// Histogram shards, so thousands of connection tasks rarely contend.
const SHARDS: usize = 16;

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

/// Live counters of one process, updated by every connection task and read
/// by the progress printer.
pub struct Stats {
    pub join_attempts: AtomicU64,
    pub joined: AtomicU64,
    pub join_failed: AtomicU64,
    pub chat_sent: AtomicU64,
    pub chat_rejected: AtomicU64,
    pub frames: AtomicU64,
    pub events: AtomicU64,
    pub gaps: AtomicU64,
    pub missed: AtomicU64,
    pub duplicates: AtomicU64,
    pub decode_errors: AtomicU64,
    join_failures: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: [Mutex<Histogram<u64>>; SHARDS],
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            join_attempts: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            join_failed: AtomicU64::new(0),
            chat_sent: AtomicU64::new(0),
            chat_rejected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            events: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            join_failures: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn join_failure(&self, reason: impl Into<String>) {
        self.join_failed.fetch_add(1, Ordering::Relaxed);
        bump(&self.join_failures, reason.into());
    }

    /// A close the server initiated (or an abrupt end, as 1006).
    pub fn close(&self, code: u16) {
        bump(&self.closes, code.to_string());
    }

    pub fn error(&self, code: &str) {
        bump(&self.errors, code.to_string());
    }

    /// Records delivery latencies (ms) of one frame's events; `shard` spreads
    /// connections over the histogram shards.
    pub fn record_latencies(&self, shard: usize, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut h = self.latency[shard % SHARDS].lock().expect("histogram lock");
        for &v in values {
            h.saturating_record(v.min(MAX_LATENCY_MS));
        }
    }

    /// All shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            let h = shard.lock().expect("histogram lock");
            all.add(&*h).expect("same bounds");
        }
        all
    }

    pub fn progress(&self) -> Progress {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let latency = self.latency();
        Progress {
            join_attempts: get(&self.join_attempts),
            joined: get(&self.joined),
            join_failed: get(&self.join_failed),
            chat_sent: get(&self.chat_sent),
            chat_rejected: get(&self.chat_rejected),
            events: get(&self.events),
            gaps: get(&self.gaps),
            duplicates: get(&self.duplicates),
            closes: self.closes.lock().expect("lock").values().sum(),
            errors: self.errors.lock().expect("lock").values().sum(),
            p99_ms: (!latency.is_empty()).then(|| latency.value_at_quantile(0.99)),
        }
    }

    /// The final result of this process. `per_viewer_chat` maps "tagged
    /// chat events received" to the number of viewers that received that many.
    pub fn result(&self, per_viewer_chat: BTreeMap<u64, u64>, window: Window) -> WorkerResult {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerResult {
            join_attempts: get(&self.join_attempts),
            joined: get(&self.joined),
            join_failed: get(&self.join_failed),
            join_failures: self.join_failures.lock().expect("lock").clone(),
            chat_sent: get(&self.chat_sent),
            chat_rejected: get(&self.chat_rejected),
            frames: get(&self.frames),
            events: get(&self.events),
            gaps: get(&self.gaps),
            missed: get(&self.missed),
            duplicates: get(&self.duplicates),
            decode_errors: get(&self.decode_errors),
            closes: self.closes.lock().expect("lock").clone(),
            errors: self.errors.lock().expect("lock").clone(),
            per_viewer_chat,
            latency_ms: HistData::from_histogram(&self.latency()),
            window,
        }
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().expect("lock").entry(key).or_default() += 1;
}

/// A one-second snapshot for progress lines (cumulative counters).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub join_attempts: u64,
    pub joined: u64,
    pub join_failed: u64,
    pub chat_sent: u64,
    pub chat_rejected: u64,
    pub events: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub closes: u64,
    pub errors: u64,
    /// Cumulative p99 delivery latency so far, if anything was delivered.
    pub p99_ms: Option<u64>,
}

impl Progress {
    /// Sums counters; the p99 of a sum of processes is approximated by
    /// the worst one.
    pub fn merge(&mut self, o: &Progress) {
        self.join_attempts += o.join_attempts;
        self.joined += o.joined;
        self.join_failed += o.join_failed;
        self.chat_sent += o.chat_sent;
        self.chat_rejected += o.chat_rejected;
        self.events += o.events;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.closes += o.closes;
        self.errors += o.errors;
        self.p99_ms = self.p99_ms.max(o.p99_ms);
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

/// Everything one load-generating process measured. Results of several
/// worker processes merge into one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub join_attempts: u64,
    pub joined: u64,
    pub join_failed: u64,
    pub join_failures: BTreeMap<String, u64>,
    pub chat_sent: u64,
    pub chat_rejected: u64,
    pub frames: u64,
    pub events: u64,
    pub gaps: u64,
    pub missed: u64,
    pub duplicates: u64,
    pub decode_errors: u64,
    pub closes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub per_viewer_chat: BTreeMap<u64, u64>,
    pub latency_ms: HistData,
    pub window: Window,
}

impl WorkerResult {
    pub fn merge(&mut self, o: &WorkerResult) {
        self.join_attempts += o.join_attempts;
        self.joined += o.joined;
        self.join_failed += o.join_failed;
        merge_map(&mut self.join_failures, &o.join_failures);
        self.chat_sent += o.chat_sent;
        self.chat_rejected += o.chat_rejected;
        self.frames += o.frames;
        self.events += o.events;
        self.gaps += o.gaps;
        self.missed += o.missed;
        self.duplicates += o.duplicates;
        self.decode_errors += o.decode_errors;
        merge_map(&mut self.closes, &o.closes);
        merge_map(&mut self.errors, &o.errors);
        merge_map(&mut self.per_viewer_chat, &o.per_viewer_chat);
        let mut h = self.latency_ms.to_histogram();
        h.add(o.latency_ms.to_histogram()).expect("same bounds");
        self.latency_ms = HistData::from_histogram(&h);
        self.window.merge(&o.window);
    }
}

fn merge_map<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
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
        let mut r1 = WorkerResult {
            latency_ms: data.clone(),
            gaps: 1,
            ..Default::default()
        };
        r1.per_viewer_chat.insert(60, 2);
        let mut r2 = r1.clone();
        r2.per_viewer_chat.insert(59, 1);
        r1.merge(&r2);
        assert_eq!(r1.gaps, 2);
        assert_eq!(r1.latency_ms.to_histogram().len(), 14);
        assert_eq!(r1.per_viewer_chat[&60], 4);
        assert_eq!(r1.per_viewer_chat[&59], 1);
    }
}
