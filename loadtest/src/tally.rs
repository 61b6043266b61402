//! What a scenario run counts: [`Live`] is updated by every connection task
//! of one process while it runs; [`Tally`] is its plain, mergeable result
//! (one per worker process, added up by the coordinator).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use flashcast_wire::now_ms;
use flashcast_wire::recording::{TraceAction, TraceLine};

use crate::stats::{new_histogram, HistData};
use crate::timeline::SecondSample;

/// Histogram shards for delivery latency, so thousands of connection tasks
/// rarely wait for each other.
const SHARDS: usize = 16;

macro_rules! counters {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        /// Counters as connection tasks update them.
        #[derive(Default)]
        pub struct LiveCounts { $(pub $name: AtomicU64,)* }

        /// Counters of a process or of the whole run.
        #[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
        pub struct Counts { $($(#[$meta])* pub $name: u64,)* }

        impl LiveCounts {
            pub fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Counts {
            pub fn merge(&mut self, o: &Counts) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counters! {
    /// Viewers that tried to join (retries not counted again).
    join_attempts,
    joined,
    join_failed,
    /// Connections closed or lost, for any reason (the viewer count is
    /// joined + resumed - disconnected).
    disconnected,
    /// Tick frames received.
    frames,
    /// Sequenced events received in tick batches, all viewers together
    /// (event x viewer). Events handed back in a resume's `joined` are not
    /// in it: they are `resume_events`.
    events,
    /// Missed events a resume's `joined` carried (checked for gaps, not
    /// timed: their latency would be the outage, not the delivery).
    resume_events,
    /// Reactions in the batches' per-tick counts, all viewers together
    /// (reaction x viewer).
    reactions_received,
    /// WebSocket payload bytes received.
    bytes,
    /// Times a viewer's sequence jumped forward, and events skipped so.
    gaps,
    missed,
    duplicates,
    decode_errors,
    chat_sent,
    reactions_sent,
    votes_sent,
    asks_sent,
    upvotes_sent,
    /// Upvotes of an `upvotes` phase not sent: the viewer had seen no
    /// question.
    upvotes_skipped,
    buys_sent,
    /// Buys answered with an order, and the units in those orders.
    buys_accepted,
    units_accepted,
    /// Buys answered with an error.
    buys_refused,
    /// Buys without an answer when their connection ended.
    buys_unanswered,
    claims_sent,
    claims_won,
    claims_refused,
    claims_unanswered,
    /// Reconnects started, answered with the missed events (`gap: false`),
    /// answered with `gap: true`, and failed.
    reconnects,
    resumed,
    resume_gaps,
    reconnect_failed,
    /// Recorded actions skipped by a replay (host actions, or a vote with
    /// no poll open).
    replay_skipped,
    /// Error frames that are not an expected refusal.
    unexpected_errors,
    /// Actions not recorded because the recording was full.
    trace_dropped,
}

impl Counts {
    /// Viewers connected now: every join and resume, less every connection
    /// that ended.
    pub fn connected(&self) -> u64 {
        (self.joined + self.resumed + self.resume_gaps).saturating_sub(self.disconnected)
    }
}

/// One second of one process.
#[derive(Default)]
struct LiveSecond {
    viewers: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    chat_sent: AtomicU64,
    reactions_sent: AtomicU64,
    buys_sent: AtomicU64,
    buys_accepted: AtomicU64,
    buys_refused: AtomicU64,
    claims_answered: AtomicU64,
    claims_sent: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
    buy_errors: AtomicU64,
    claim_errors: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
    /// Answer times of the buys and claims answered in this second.
    buy_ms: Mutex<Option<Histogram<u64>>>,
    claim_ms: Mutex<Option<Histogram<u64>>>,
}

/// Which per-second counter to add to.
#[derive(Debug, Clone, Copy)]
pub enum PerSecond {
    ChatSent,
    ReactionsSent,
    BuysSent,
    BuysAccepted,
    BuysRefused,
    ClaimsAnswered,
    ClaimsSent,
    /// Any action sent (chat, reaction, vote, question, upvote, buy, claim).
    Sent,
}

#[derive(Default)]
struct Maps {
    join_failures: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    buy_refusals: BTreeMap<String, u64>,
    claim_refusals: BTreeMap<String, u64>,
}

/// Live measurements of one process.
pub struct Live {
    pub c: LiveCounts,
    maps: Mutex<Maps>,
    latency: [Mutex<Histogram<u64>>; SHARDS],
    connect_ms: Mutex<Histogram<u64>>,
    join_ms: Mutex<Histogram<u64>>,
    buy_ms: Mutex<Histogram<u64>>,
    claim_ms: Mutex<Histogram<u64>>,
    reconnect_ms: Mutex<Histogram<u64>>,
    send_lag_ms: Mutex<Histogram<u64>>,
    chat_ms: Mutex<Histogram<u64>>,
    seconds: Vec<LiveSecond>,
    /// Unix ms of the go signal; 0 before it.
    t0_ms: AtomicU64,
    orders: Mutex<Vec<u64>>,
    /// What this process sent, when the run is recorded (`--record`).
    trace: Option<Mutex<Vec<TraceLine>>>,
}

/// Lines of a recording one process keeps; later actions are not recorded
/// (and counted in `trace_dropped`).
pub const MAX_TRACE_LINES: usize = 1_000_000;

/// One viewer in this many times chat from sender to viewer: every viewer
/// would double the histogram work of the busiest path in the tool.
pub const CHAT_SAMPLE: usize = 10;

/// A latency kind measured once per request.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    Connect,
    Join,
    Buy,
    Claim,
    Reconnect,
    /// How late a scheduled action was sent: the load generator's own lag.
    SendLag,
}

impl Live {
    /// `seconds`: length of the timeline (the run plus its drain).
    pub fn new(seconds: usize) -> Live {
        Live {
            c: LiveCounts::default(),
            maps: Mutex::default(),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
            connect_ms: Mutex::new(new_histogram()),
            join_ms: Mutex::new(new_histogram()),
            buy_ms: Mutex::new(new_histogram()),
            claim_ms: Mutex::new(new_histogram()),
            reconnect_ms: Mutex::new(new_histogram()),
            send_lag_ms: Mutex::new(new_histogram()),
            chat_ms: Mutex::new(new_histogram()),
            seconds: (0..seconds.max(1)).map(|_| LiveSecond::default()).collect(),
            t0_ms: AtomicU64::new(0),
            orders: Mutex::default(),
            trace: None,
        }
    }

    /// Keeps what the viewers send, for `--record`.
    pub fn recording(mut self) -> Live {
        self.trace = Some(Mutex::default());
        self
    }

    /// Records one action of viewer `conn` (when recording).
    pub fn record(&self, conn: u32, action: impl FnOnce() -> Option<TraceAction>) {
        let Some(trace) = &self.trace else { return };
        let Some(action) = action() else { return };
        let t_ms = flashcast_wire::now_ms().saturating_sub(self.t0_ms.load(Relaxed));
        let mut t = trace.lock().expect("lock");
        if t.len() < MAX_TRACE_LINES {
            t.push(TraceLine { t_ms, conn, action });
        } else {
            Self::add(&self.c.trace_dropped, 1);
        }
    }

    pub fn set_t0(&self, t0_ms: u64) {
        self.t0_ms.store(t0_ms, Relaxed);
    }

    fn second(&self, now_ms: u64) -> Option<&LiveSecond> {
        let t0 = self.t0_ms.load(Relaxed);
        if t0 == 0 || now_ms < t0 {
            return None;
        }
        let i = ((now_ms - t0) / 1_000) as usize;
        Some(&self.seconds[i.min(self.seconds.len() - 1)])
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn per_second(&self, now_ms: u64, which: PerSecond) {
        if let Some(s) = self.second(now_ms) {
            let c = match which {
                PerSecond::ChatSent => &s.chat_sent,
                PerSecond::ReactionsSent => &s.reactions_sent,
                PerSecond::BuysSent => &s.buys_sent,
                PerSecond::BuysAccepted => &s.buys_accepted,
                PerSecond::BuysRefused => &s.buys_refused,
                PerSecond::ClaimsAnswered => &s.claims_answered,
                PerSecond::ClaimsSent => &s.claims_sent,
                PerSecond::Sent => &s.sent,
            };
            c.fetch_add(1, Relaxed);
        }
    }

    /// One received tick frame: its events' latencies (ms) and its size.
    pub fn delivered(&self, shard: usize, now_ms: u64, latencies: &[u64], bytes: usize) {
        Self::add(&self.c.frames, 1);
        Self::add(&self.c.bytes, bytes as u64);
        Self::add(&self.c.events, latencies.len() as u64);
        if let Some(s) = self.second(now_ms) {
            s.events.fetch_add(latencies.len() as u64, Relaxed);
            s.bytes.fetch_add(bytes as u64, Relaxed);
            if !latencies.is_empty() {
                let mut h = s.latency.lock().expect("lock");
                let h = h.get_or_insert_with(new_histogram);
                for &v in latencies {
                    h.saturating_record(v);
                }
            }
        }
        if !latencies.is_empty() {
            let mut h = self.latency[shard % SHARDS].lock().expect("lock");
            for &v in latencies {
                h.saturating_record(v);
            }
        }
    }

    /// Chat messages timed from their sender's clock (`wire::SENT_AT`) to
    /// `now_ms`, on the sampled viewers ([`CHAT_SAMPLE`]).
    pub fn chat_received(&self, now_ms: u64, sent_at: &[u64]) {
        if sent_at.is_empty() {
            return;
        }
        let mut h = self.chat_ms.lock().expect("lock");
        for &sent in sent_at {
            h.saturating_record(now_ms.saturating_sub(sent));
        }
    }

    pub fn timing(&self, which: Timing, ms: u64) {
        let h = match which {
            Timing::Connect => &self.connect_ms,
            Timing::Join => &self.join_ms,
            Timing::Buy => &self.buy_ms,
            Timing::Claim => &self.claim_ms,
            Timing::Reconnect => &self.reconnect_ms,
            Timing::SendLag => &self.send_lag_ms,
        };
        h.lock().expect("lock").saturating_record(ms);
        let per_second = match which {
            Timing::Buy => self.second(now_ms()).map(|s| &s.buy_ms),
            Timing::Claim => self.second(now_ms()).map(|s| &s.claim_ms),
            _ => None,
        };
        if let Some(h) = per_second {
            h.lock()
                .expect("lock")
                .get_or_insert_with(new_histogram)
                .saturating_record(ms);
        }
    }

    pub fn join_failure(&self, reason: &str) {
        Self::add(&self.c.join_failed, 1);
        bump(&mut self.maps.lock().expect("lock").join_failures, reason);
    }

    pub fn close(&self, code: u16) {
        bump(
            &mut self.maps.lock().expect("lock").closes,
            &code.to_string(),
        );
    }

    pub fn unexpected_error(&self, what: &str) {
        Self::add(&self.c.unexpected_errors, 1);
        if let Some(s) = self.second(now_ms()) {
            s.errors.fetch_add(1, Relaxed);
            if what.starts_with("buy:") {
                s.buy_errors.fetch_add(1, Relaxed);
            } else if what.starts_with("claim_coupon:") {
                s.claim_errors.fetch_add(1, Relaxed);
            }
        }
        bump(&mut self.maps.lock().expect("lock").errors, what);
    }

    pub fn buy_refused(&self, code: &str) {
        bump(&mut self.maps.lock().expect("lock").buy_refusals, code);
    }

    pub fn claim_refused(&self, code: &str) {
        bump(&mut self.maps.lock().expect("lock").claim_refusals, code);
    }

    pub fn order(&self, id: u64) {
        self.orders.lock().expect("lock").push(id);
    }

    /// Viewers connected now, written into the current second.
    pub fn sample_viewers(&self, now_ms: u64) {
        let c = self.c.snapshot();
        let connected = c.connected();
        if let Some(s) = self.second(now_ms) {
            s.viewers.store(connected, Relaxed);
        }
    }

    /// Cumulative delivery latency so far.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            all.add(&*shard.lock().expect("lock")).expect("same bounds");
        }
        all
    }

    pub fn progress(&self) -> Progress {
        let l = self.latency();
        Progress {
            counts: self.c.snapshot(),
            p99_ms: (!l.is_empty()).then(|| l.value_at_quantile(0.99)),
        }
    }

    /// The plain result, seconds `0..len` of the timeline.
    pub fn tally(&self) -> Tally {
        let maps = self.maps.lock().expect("lock");
        let hist = |h: &Mutex<Histogram<u64>>| HistData::from_histogram(&h.lock().expect("lock"));
        let mut seconds = Vec::with_capacity(self.seconds.len());
        let mut second_latency = Vec::with_capacity(self.seconds.len());
        let mut second_buy_ms = Vec::with_capacity(self.seconds.len());
        let mut second_claim_ms = Vec::with_capacity(self.seconds.len());
        for (t, s) in self.seconds.iter().enumerate() {
            let g = |c: &AtomicU64| c.load(Relaxed);
            seconds.push(SecondSample {
                t: t as u32,
                viewers: g(&s.viewers),
                events: g(&s.events),
                bytes: g(&s.bytes),
                chat_sent: g(&s.chat_sent),
                reactions_sent: g(&s.reactions_sent),
                buys_sent: g(&s.buys_sent),
                buys_accepted: g(&s.buys_accepted),
                buys_refused: g(&s.buys_refused),
                claims_answered: g(&s.claims_answered),
                claims_sent: g(&s.claims_sent),
                sent: g(&s.sent),
                errors: g(&s.errors),
                buy_errors: g(&s.buy_errors),
                claim_errors: g(&s.claim_errors),
                ..SecondSample::default()
            });
            let h = |m: &Mutex<Option<Histogram<u64>>>| {
                m.lock()
                    .expect("lock")
                    .as_ref()
                    .map(HistData::from_histogram)
                    .unwrap_or_default()
            };
            second_buy_ms.push(h(&s.buy_ms));
            second_claim_ms.push(h(&s.claim_ms));
            second_latency.push(
                s.latency
                    .lock()
                    .expect("lock")
                    .as_ref()
                    .map(HistData::from_histogram)
                    .unwrap_or_default(),
            );
        }
        Tally {
            counts: self.c.snapshot(),
            join_failures: maps.join_failures.clone(),
            closes: maps.closes.clone(),
            errors: maps.errors.clone(),
            buy_refusals: maps.buy_refusals.clone(),
            claim_refusals: maps.claim_refusals.clone(),
            latency_ms: HistData::from_histogram(&self.latency()),
            connect_ms: hist(&self.connect_ms),
            join_ms: hist(&self.join_ms),
            buy_ms: hist(&self.buy_ms),
            claim_ms: hist(&self.claim_ms),
            reconnect_ms: hist(&self.reconnect_ms),
            send_lag_ms: hist(&self.send_lag_ms),
            chat_ms: hist(&self.chat_ms),
            seconds,
            second_latency,
            second_buy_ms,
            second_claim_ms,
            orders: self.orders.lock().expect("lock").clone(),
            trace: self
                .trace
                .as_ref()
                .map(|t| t.lock().expect("lock").clone())
                .unwrap_or_default(),
        }
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

/// A progress snapshot (cumulative).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub counts: Counts,
    pub p99_ms: Option<u64>,
}

impl Progress {
    /// Counters add up; the p99 of several processes is shown as the worst.
    pub fn merge(&mut self, o: &Progress) {
        self.counts.merge(&o.counts);
        self.p99_ms = self.p99_ms.max(o.p99_ms);
    }
}

/// Everything one process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub counts: Counts,
    pub join_failures: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub buy_refusals: BTreeMap<String, u64>,
    pub claim_refusals: BTreeMap<String, u64>,
    pub latency_ms: HistData,
    pub connect_ms: HistData,
    pub join_ms: HistData,
    pub buy_ms: HistData,
    pub claim_ms: HistData,
    pub reconnect_ms: HistData,
    /// Scheduled actions: how late they went out (the tool's own lag).
    #[serde(default)]
    pub send_lag_ms: HistData,
    /// Chat messages from the sender's clock to a sampled viewer's.
    #[serde(default)]
    pub chat_ms: HistData,
    pub seconds: Vec<SecondSample>,
    /// Delivery latency of each second, parallel to `seconds`.
    pub second_latency: Vec<HistData>,
    /// Buy and claim answer times of each second (by answer), parallel to
    /// `seconds`: the per-phase thresholds are judged from them.
    #[serde(default)]
    pub second_buy_ms: Vec<HistData>,
    #[serde(default)]
    pub second_claim_ms: Vec<HistData>,
    /// Ids of the orders the server acknowledged.
    pub orders: Vec<u64>,
    /// What was sent, when recording; not part of the JSON report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<TraceLine>,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.counts.merge(&o.counts);
        for (into, from) in [
            (&mut self.join_failures, &o.join_failures),
            (&mut self.closes, &o.closes),
            (&mut self.errors, &o.errors),
            (&mut self.buy_refusals, &o.buy_refusals),
            (&mut self.claim_refusals, &o.claim_refusals),
        ] {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        }
        for (into, from) in [
            (&mut self.latency_ms, &o.latency_ms),
            (&mut self.connect_ms, &o.connect_ms),
            (&mut self.join_ms, &o.join_ms),
            (&mut self.buy_ms, &o.buy_ms),
            (&mut self.claim_ms, &o.claim_ms),
            (&mut self.reconnect_ms, &o.reconnect_ms),
            (&mut self.send_lag_ms, &o.send_lag_ms),
            (&mut self.chat_ms, &o.chat_ms),
        ] {
            merge_hist(into, from);
        }
        if self.seconds.len() < o.seconds.len() {
            self.seconds
                .resize_with(o.seconds.len(), SecondSample::default);
            self.second_latency
                .resize_with(o.seconds.len(), HistData::default);
        }
        for (into, from) in [
            (&mut self.second_buy_ms, &o.second_buy_ms),
            (&mut self.second_claim_ms, &o.second_claim_ms),
        ] {
            if into.len() < from.len() {
                into.resize_with(from.len(), HistData::default);
            }
            for (i, h) in from.iter().enumerate() {
                merge_hist(&mut into[i], h);
            }
        }
        for (i, s) in o.seconds.iter().enumerate() {
            let m = &mut self.seconds[i];
            m.t = i as u32;
            m.viewers += s.viewers;
            m.events += s.events;
            m.bytes += s.bytes;
            m.chat_sent += s.chat_sent;
            m.reactions_sent += s.reactions_sent;
            m.buys_sent += s.buys_sent;
            m.buys_accepted += s.buys_accepted;
            m.buys_refused += s.buys_refused;
            m.claims_answered += s.claims_answered;
            m.claims_sent += s.claims_sent;
            m.sent += s.sent;
            m.errors += s.errors;
            m.buy_errors += s.buy_errors;
            m.claim_errors += s.claim_errors;
            if let Some(h) = o.second_latency.get(i) {
                merge_hist(&mut self.second_latency[i], h);
            }
        }
        self.orders.extend_from_slice(&o.orders);
        self.trace.extend_from_slice(&o.trace);
    }
}

fn merge_hist(into: &mut HistData, from: &HistData) {
    if from.0.is_empty() {
        return;
    }
    let mut h = into.to_histogram();
    h.add(from.to_histogram()).expect("same bounds");
    *into = HistData::from_histogram(&h);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_of_two_processes_add_up_second_by_second() {
        let a = Live::new(5);
        let b = Live::new(5);
        let t0 = 1_000_000;
        a.set_t0(t0);
        b.set_t0(t0);
        a.delivered(0, t0 + 500, &[10, 20], 100);
        a.delivered(1, t0 + 2_500, &[30], 50);
        b.delivered(0, t0 + 2_900, &[40, 50, 60], 70);
        b.delivered(0, t0 - 1, &[1], 1); // before go: counted, not per second
        Live::add(&b.c.buys_accepted, 2);
        b.order(7);
        let mut m = a.tally();
        m.merge(&b.tally());
        assert_eq!(m.counts.events, 7);
        assert_eq!(m.counts.frames, 4);
        assert_eq!(m.counts.buys_accepted, 2);
        assert_eq!(m.seconds[0].events, 2);
        assert_eq!(m.seconds[2].events, 4);
        assert_eq!(m.seconds[2].bytes, 120);
        assert_eq!(m.second_latency[2].to_histogram().max(), 60);
        assert_eq!(m.latency_ms.to_histogram().len(), 7);
        assert_eq!(m.orders, vec![7]);
    }
}
