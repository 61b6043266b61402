//! The judgement of a scenario run: every figure of the JSON report, the
//! pass criteria of the scenario file, the summary table, the progress line
//! and the HTML report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::admin::Admin;
use crate::probe::ServerFigures;
use crate::scenario::{Phase, Scenario};
use crate::stats::{HistData, LatencySummary};
use crate::tally::{Counts, Progress, Tally};
use crate::timeline::{PhaseSpan, SecondSample};

/// A p99 send lag above this means the tool could not keep its own
/// schedule (it shares the machine with the server).
const TOOL_LAG_WARN_MS: u64 = 100;

/// A flash sale checked against the server's durable orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaleCheck {
    /// Phase number (1-based, as in errors and the report).
    pub phase: usize,
    pub sale_id: u64,
    pub stock: u32,
    /// Units the buyers asked for in all.
    pub demand: u64,
    /// Live orders (reserved or paid) in the store for this sale.
    pub stored_orders: u64,
    pub stored_units: u64,
    /// Units the server says are left.
    pub available: Option<u64>,
    /// Orders whose ids the tool received as acknowledged but the store
    /// does not hold (a lost acknowledged order).
    pub acknowledged_missing: u64,
    /// The admin API could not be read.
    pub error: Option<String>,
    #[serde(skip)]
    order_ids: BTreeSet<u64>,
}

impl SaleCheck {
    pub fn new(phase_index: usize, sale_id: u64, stock: u32, demand: u64) -> SaleCheck {
        SaleCheck {
            phase: phase_index + 1,
            sale_id,
            stock,
            demand,
            stored_orders: 0,
            stored_units: 0,
            available: None,
            acknowledged_missing: 0,
            error: None,
            order_ids: BTreeSet::new(),
        }
    }

    /// Reads the sale and its orders from the admin API.
    pub async fn fetch(&mut self, admin: &Admin, room: &str) {
        match admin.sale_orders(self.sale_id).await {
            Ok(orders) => {
                for o in orders {
                    let live = matches!(o["status"].as_str(), Some("reserved" | "paid"));
                    if let Some(id) = o["id"].as_u64() {
                        self.order_ids.insert(id);
                    }
                    if live {
                        self.stored_orders += 1;
                        self.stored_units += o["qty"].as_u64().unwrap_or(0);
                    }
                }
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
        match admin.sale(room, self.sale_id).await {
            Ok(v) => self.available = v["available"].as_u64(),
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// The units a correct engine sells: all it has, or all that was asked.
    pub fn expected_units(&self) -> u64 {
        self.demand.min(self.stock as u64)
    }
}

/// The first pass criterion the live progress (all workers' counters
/// added up) already fails, for `--abort-on-fail`. Counters only grow, so
/// such a failure is final. The progress p99 is each worker's own, so it
/// is judged only with one worker (the worst of several is not the p99 of
/// all).
pub fn live_failure(p: &crate::scenario::Pass, sum: &Progress, workers: u32) -> Option<String> {
    let c = &sum.counts;
    for (what, got, max) in [
        ("sequence gaps", c.gaps, p.max_gaps),
        ("duplicate events", c.duplicates, p.max_duplicates),
        (
            "unexpected error frames",
            c.unexpected_errors,
            p.max_unexpected_errors,
        ),
        (
            "resumes answered with gap: true",
            c.resume_gaps,
            p.max_resume_gaps,
        ),
        ("failed reconnects", c.reconnect_failed, 0),
        ("undecodable frames", c.decode_errors, 0),
    ] {
        if got > max {
            return Some(format!("{got} {what}, at most {max} allowed"));
        }
    }
    if workers == 1 {
        if let (Some(max), Some(p99)) = (p.max_p99_ms, sum.p99_ms) {
            // The first events of a run are few; wait for a meaningful p99.
            if p99 > max && c.events >= 1_000 {
                return Some(format!("p99 delivery latency {p99} ms > {max} ms"));
            }
        }
    }
    None
}

/// Judges every `[[threshold]]` on its phase's seconds (or the run's).
fn judge_thresholds(
    s: &Scenario,
    lengths: &[f64],
    v: &Verdict,
    per_second: &[Vec<HistData>; 3],
) -> Vec<crate::threshold::ThresholdResult> {
    let series = crate::threshold::Series {
        seconds: &v.seconds,
        delivery: &per_second[0],
        buy: &per_second[1],
        claim: &per_second[2],
        cpu_resolution_secs: v.server.cpu_resolution_secs,
    };
    s.thresholds
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = serde_json::to_value(t.kind)
                .ok()
                .and_then(|k| k.as_str().map(String::from))
                .unwrap_or_default();
            let (name, from, to) = match t.phase {
                Some(p) => {
                    let phase = &s.phases[p - 1];
                    let end = phase.end(lengths.get(p - 1).copied().unwrap_or(0.0));
                    let from = phase.at().floor() as u32;
                    let to = (end.ceil() as u32).max(from + 1);
                    (
                        format!("threshold {} ({kind}, phase {p} {})", i + 1, phase.kind()),
                        from,
                        to,
                    )
                }
                None => (
                    format!("threshold {} ({kind}, whole run)", i + 1),
                    0,
                    u32::MAX,
                ),
            };
            crate::threshold::judge(t, name, from, to, &series)
        })
        .collect()
}

/// The report of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub scenario: String,
    pub description: String,
    pub tool_version: String,
    pub run_id: String,
    pub url: String,
    pub room: String,
    pub started_unix_ms: u64,
    pub go_unix_ms: u64,
    pub workers: u32,
    pub source_ips: u32,

    /// Viewers the scenario asked for (replayed viewers included).
    pub viewers_target: u64,
    pub counts: Counts,
    pub join_failures: BTreeMap<String, u64>,
    pub connect_ms: LatencySummary,
    pub join_ms: LatencySummary,
    pub reconnect_ms: LatencySummary,
    /// How late the tool sent its scheduled actions: when this is large
    /// the load generator, not the server, was the bottleneck.
    pub send_lag_ms: LatencySummary,

    /// Delivery latency: receive time minus the event's server `ts`.
    pub latency_ms: LatencySummary,
    /// Chat from the sender's clock to the viewer's, on one viewer in
    /// `CHAT_SAMPLE`: delivery plus the server's queueing before `ts`.
    #[serde(default)]
    pub chat_ms: LatencySummary,
    pub latency_histogram: HistData,
    /// Seconds in which events were delivered.
    pub delivery_secs: u64,
    pub events_per_sec: f64,
    pub bytes_per_sec: f64,

    pub buy_ms: LatencySummary,
    pub buy_refusals: BTreeMap<String, u64>,
    pub claim_ms: LatencySummary,
    pub claim_refusals: BTreeMap<String, u64>,
    pub sales: Vec<SaleCheck>,

    pub closes: BTreeMap<String, u64>,
    pub unexpected_errors: BTreeMap<String, u64>,

    pub server: ServerFigures,
    /// Server CPU per delivered event over the run (needs a server PID).
    pub server_cpu_us_per_event: Option<f64>,

    pub phases: Vec<PhaseSpan>,
    pub seconds: Vec<SecondSample>,
    /// Failures of the host's part (opening polls, dropping coupons).
    pub host_error: Option<String>,

    /// The `[[threshold]]`s applied, each with its window, the values
    /// found and its failures.
    #[serde(default)]
    pub thresholds: Vec<crate::threshold::ThresholdResult>,

    pub passed: bool,
    pub failures: Vec<String>,
}

impl Verdict {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        s: &Scenario,
        run_id: &str,
        room: &str,
        started_ms: u64,
        go_ms: u64,
        workers: u32,
        replays: &crate::storm::ReplaySummary,
        tally: Tally,
        server: ServerFigures,
        sales: Vec<SaleCheck>,
        host_error: Option<String>,
    ) -> Verdict {
        let latency = tally.latency_ms.to_histogram();
        let mut seconds = tally.seconds.clone();
        for (i, sec) in seconds.iter_mut().enumerate() {
            if let Some(h) = tally.second_latency.get(i).filter(|h| !h.0.is_empty()) {
                let h = h.to_histogram();
                sec.p50_ms = Some(h.value_at_quantile(0.5));
                sec.p99_ms = Some(h.value_at_quantile(0.99));
                sec.max_ms = Some(h.max());
            }
        }
        for &(t, cpu, rss) in &server.samples {
            if t >= 0.0 {
                if let Some(sec) = seconds.get_mut(t.floor() as usize) {
                    sec.server_cpu_pct = Some(cpu);
                    sec.server_rss_mib = Some(rss);
                }
            }
        }
        // Trailing seconds after the last delivery are the drain's idle tail.
        let delivery_secs = seconds.iter().filter(|s| s.events > 0).count() as u64;
        let per_sec = |n: u64| {
            if delivery_secs == 0 {
                0.0
            } else {
                (n as f64 / delivery_secs as f64 * 10.0).round() / 10.0
            }
        };
        let mut sales = sales;
        let acked: BTreeSet<u64> = tally.orders.iter().copied().collect();
        let all_stored: BTreeSet<u64> = sales
            .iter()
            .flat_map(|s| s.order_ids.iter().copied())
            .collect();
        let missing = acked.difference(&all_stored).count() as u64;
        if let Some(first) = sales.first_mut() {
            // Acknowledged ids are not split per sale; a missing one is
            // reported once, on the first sale.
            first.acknowledged_missing = missing;
        }
        let mut tally = tally;
        tally.counts.replay_skipped += replays.skipped;
        let per_second = [
            std::mem::take(&mut tally.second_latency),
            std::mem::take(&mut tally.second_buy_ms),
            std::mem::take(&mut tally.second_claim_ms),
        ];
        let events = tally.counts.events;
        let mut v = Verdict {
            scenario: s.name.clone(),
            description: s.description.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            run_id: run_id.into(),
            url: s.target.url.clone(),
            room: room.into(),
            started_unix_ms: started_ms,
            go_unix_ms: go_ms,
            workers,
            source_ips: crate::storm::source_ip_count(s, replays.viewers),
            viewers_target: s.viewers.count as u64 + replays.viewers,
            counts: tally.counts,
            join_failures: tally.join_failures,
            connect_ms: LatencySummary::of(&tally.connect_ms.to_histogram()),
            join_ms: LatencySummary::of(&tally.join_ms.to_histogram()),
            reconnect_ms: LatencySummary::of(&tally.reconnect_ms.to_histogram()),
            send_lag_ms: LatencySummary::of(&tally.send_lag_ms.to_histogram()),
            latency_ms: LatencySummary::of(&latency),
            chat_ms: LatencySummary::of(&tally.chat_ms.to_histogram()),
            latency_histogram: tally.latency_ms,
            delivery_secs,
            events_per_sec: per_sec(events),
            bytes_per_sec: per_sec(tally.counts.bytes),
            buy_ms: LatencySummary::of(&tally.buy_ms.to_histogram()),
            buy_refusals: tally.buy_refusals,
            claim_ms: LatencySummary::of(&tally.claim_ms.to_histogram()),
            claim_refusals: tally.claim_refusals,
            sales,
            closes: tally.closes,
            unexpected_errors: tally.errors,
            server_cpu_us_per_event: server
                .cpu_trustworthy()
                .ok()
                .filter(|_| events > 0)
                .map(|c| (c * 1e6 / events as f64 * 100.0).round() / 100.0),
            server,
            phases: phase_spans(s, &replays.lengths),
            thresholds: Vec::new(),
            seconds,
            host_error,
            passed: false,
            failures: Vec::new(),
        };
        v.thresholds = judge_thresholds(s, &replays.lengths, &v, &per_second);
        v.failures = v.check(s);
        for t in &v.thresholds {
            v.failures.extend(t.failures.iter().cloned());
        }
        v.passed = v.failures.is_empty();
        v
    }

    /// Whether the run was cut short by `--abort-on-fail`.
    pub fn aborted(&mut self, why: String) {
        self.failures.insert(0, format!("ABORTED: {why}"));
        self.passed = false;
    }

    /// The scenario's pass criteria; each failure is one sentence.
    fn check(&self, s: &Scenario) -> Vec<String> {
        let p = &s.pass;
        let c = &self.counts;
        let mut f = Vec::new();
        let joined_pct = c.joined as f64 * 100.0 / self.viewers_target.max(1) as f64;
        if joined_pct < p.min_joined_pct {
            f.push(format!(
                "{} of {} viewers joined ({joined_pct:.1}%, at least {}% required)",
                c.joined, self.viewers_target, p.min_joined_pct
            ));
        }
        if c.gaps > p.max_gaps {
            f.push(format!(
                "{} sequence gaps ({} events missed), at most {} allowed",
                c.gaps, c.missed, p.max_gaps
            ));
        }
        if c.duplicates > p.max_duplicates {
            f.push(format!("{} duplicate events", c.duplicates));
        }
        if c.decode_errors > 0 {
            f.push(format!("{} undecodable frames", c.decode_errors));
        }
        if c.unexpected_errors > p.max_unexpected_errors {
            f.push(format!(
                "{} unexpected error frames ({})",
                c.unexpected_errors,
                fmt_map(&self.unexpected_errors)
            ));
        }
        if c.resume_gaps > p.max_resume_gaps {
            f.push(format!("{} resumes answered with gap: true", c.resume_gaps));
        }
        if c.reconnect_failed > 0 {
            f.push(format!("{} reconnects failed", c.reconnect_failed));
        }
        if let Some(e) = &self.host_error {
            f.push(format!("the host's part failed: {e}"));
        }
        let l = &self.latency_ms;
        for (name, bound, got) in [
            ("p99 delivery latency", p.max_p99_ms, l.p99),
            ("p99.9 delivery latency", p.max_p999_ms, l.p999),
            ("max delivery latency", p.max_latency_ms, l.max),
            ("p99 join time", p.max_join_p99_ms, self.join_ms.p99),
            ("p99 buy answer time", p.max_buy_p99_ms, self.buy_ms.p99),
            (
                "p99 coupon claim answer time",
                p.max_claim_p99_ms,
                self.claim_ms.p99,
            ),
        ] {
            if let Some(max) = bound {
                if got > max {
                    f.push(format!("{name} {got} ms > {max} ms"));
                }
            }
        }
        if let Some(max) = p.max_server_rss_mib {
            match self.server.rss_peak_mib {
                Some(rss) if rss > max => {
                    f.push(format!("server RSS peaked at {rss:.0} MiB > {max} MiB"))
                }
                Some(_) => {}
                None => f.push("max_server_rss_mib: the server's memory was not sampled".into()),
            }
        }
        if let Some(max) = p.max_server_cpu_us_per_event {
            match self.server_cpu_us_per_event {
                Some(us) if us > max => f.push(format!(
                    "server CPU {us:.2} us per delivered event > {max} us"
                )),
                Some(_) => {}
                None => f.push(format!(
                    "max_server_cpu_us_per_event: {}",
                    match self.server.cpu_trustworthy() {
                        Err(why) => why,
                        Ok(_) => "no events were delivered".into(),
                    }
                )),
            }
        }
        let acked_units = c.units_accepted;
        let stock: u64 = self.sales.iter().map(|s| s.stock as u64).sum();
        for sale in &self.sales {
            if let Some(e) = &sale.error {
                f.push(format!(
                    "sale {}: could not read its orders: {e}",
                    sale.sale_id
                ));
            }
            if sale.stored_units > sale.stock as u64 {
                f.push(format!(
                    "OVERSOLD: sale {} holds {} units in orders for {} in stock",
                    sale.sale_id, sale.stored_units, sale.stock
                ));
            }
            if let Some(avail) = sale.available {
                if avail + sale.stored_units != sale.stock as u64 {
                    f.push(format!(
                        "sale {}: available {avail} + sold {} != stock {}",
                        sale.sale_id, sale.stored_units, sale.stock
                    ));
                }
            }
            if sale.acknowledged_missing > 0 {
                f.push(format!(
                    "{} acknowledged orders are not in the store",
                    sale.acknowledged_missing
                ));
            }
        }
        if !self.sales.is_empty() {
            if acked_units > stock {
                f.push(format!(
                    "OVERSOLD: buyers were acknowledged {acked_units} units of {stock} in stock"
                ));
            }
            let expected: u64 = self.sales.iter().map(SaleCheck::expected_units).sum();
            if p.exact_sale && acked_units != expected {
                f.push(format!(
                    "flash sale: {acked_units} units acknowledged, exactly {expected} expected (min of stock and demand)"
                ));
            }
            if c.buys_unanswered > 0 {
                f.push(format!("{} buys got no answer", c.buys_unanswered));
            }
        }
        f
    }

    /// The per-second series as CSV: one row per second since go, the
    /// columns of [`SecondSample`]; empty cells where nothing was measured.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "t,viewers,events,bytes,p50_ms,p99_ms,max_ms,chat_sent,reactions_sent,buys_sent,buys_accepted,buys_refused,claims_sent,claims_answered,sent,errors,buy_errors,claim_errors,server_cpu_pct,server_rss_mib\n",
        );
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let optf = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
        for s in &self.seconds {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                s.t,
                s.viewers,
                s.events,
                s.bytes,
                opt(s.p50_ms),
                opt(s.p99_ms),
                opt(s.max_ms),
                s.chat_sent,
                s.reactions_sent,
                s.buys_sent,
                s.buys_accepted,
                s.buys_refused,
                s.claims_sent,
                s.claims_answered,
                s.sent,
                s.errors,
                s.buy_errors,
                s.claim_errors,
                optf(s.server_cpu_pct),
                optf(s.server_rss_mib),
            );
        }
        out
    }

    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.csv()).with_context(|| format!("writing {}", path.display()))
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = 22;
        for (k, v) in self.summary_rows() {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        out
    }

    /// (label, value) rows of the summary, shared by the table and the HTML.
    pub fn summary_rows(&self) -> Vec<(String, String)> {
        let c = &self.counts;
        let l = &self.latency_ms;
        let lat = |l: &LatencySummary| {
            if l.count == 0 {
                "-".to_string()
            } else {
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {} ms  (n={})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.count
                )
            }
        };
        let mut rows: Vec<(String, String)> = vec![
            ("target".into(), format!("{} room {}", self.url, self.room)),
            (
                "viewers joined".into(),
                format!(
                    "{} / {} (failed {}: {})",
                    c.joined,
                    self.viewers_target,
                    c.join_failed,
                    fmt_map(&self.join_failures)
                ),
            ),
            ("connect time".into(), lat(&self.connect_ms)),
            ("join time".into(), lat(&self.join_ms)),
            (
                "sent".into(),
                format!(
                    "chat {}, reactions {}, votes {}, questions {}, upvotes {}{}",
                    c.chat_sent,
                    c.reactions_sent,
                    c.votes_sent,
                    c.asks_sent,
                    c.upvotes_sent,
                    if c.upvotes_skipped > 0 {
                        format!(" ({} upvotes skipped: no question seen)", c.upvotes_skipped)
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "events delivered".into(),
                format!(
                    "{} ({:.0}/s over {} s, {} frames, {:.1} MB/s){}",
                    c.events,
                    self.events_per_sec,
                    self.delivery_secs,
                    c.frames,
                    self.bytes_per_sec / 1e6,
                    if c.resume_events > 0 {
                        format!(
                            "; not counted: {} handed back to resuming viewers (checked, not timed)",
                            c.resume_events
                        )
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "reactions received".into(),
                format!(
                    "{} (the batches' per-tick counts, reaction x viewer)",
                    c.reactions_received
                ),
            ),
            ("delivery latency".into(), lat(l)),
            (
                "chat, sender to viewer".into(),
                format!(
                    "{}  (every {}th viewer)",
                    lat(&self.chat_ms),
                    crate::tally::CHAT_SAMPLE
                ),
            ),
            (
                "tool send lag".into(),
                if self.send_lag_ms.p99 > TOOL_LAG_WARN_MS {
                    format!(
                        "{}  WARNING: the load generator fell behind its schedule; latencies include its own lag",
                        lat(&self.send_lag_ms)
                    )
                } else {
                    lat(&self.send_lag_ms)
                },
            ),
            (
                "gaps / duplicates".into(),
                format!("{} ({} missed) / {}", c.gaps, c.missed, c.duplicates),
            ),
        ];
        if c.reconnects > 0 {
            rows.push((
                "reconnects".into(),
                format!(
                    "{} (resumed {}, with gap {}, failed {}); {}",
                    c.reconnects,
                    c.resumed,
                    c.resume_gaps,
                    c.reconnect_failed,
                    lat(&self.reconnect_ms)
                ),
            ));
        }
        if c.buys_sent > 0 {
            rows.push((
                "buys".into(),
                format!(
                    "{} sent: {} accepted ({} units), {} refused ({}), {} unanswered",
                    c.buys_sent,
                    c.buys_accepted,
                    c.units_accepted,
                    c.buys_refused,
                    fmt_map(&self.buy_refusals),
                    c.buys_unanswered
                ),
            ));
            rows.push(("buy answer time".into(), lat(&self.buy_ms)));
        }
        for sale in &self.sales {
            rows.push((
                format!("sale {} (phase {})", sale.sale_id, sale.phase),
                format!(
                    "stock {}, stored orders {} ({} units), available {}, expected sold {}",
                    sale.stock,
                    sale.stored_orders,
                    sale.stored_units,
                    sale.available.map_or("?".into(), |a| a.to_string()),
                    sale.expected_units()
                ),
            ));
        }
        if c.claims_sent > 0 {
            rows.push((
                "coupon claims".into(),
                format!(
                    "{} sent: {} won, {} refused ({}), {} unanswered; {}",
                    c.claims_sent,
                    c.claims_won,
                    c.claims_refused,
                    fmt_map(&self.claim_refusals),
                    c.claims_unanswered,
                    lat(&self.claim_ms)
                ),
            ));
        }
        if c.replay_skipped > 0 {
            rows.push(("replay skipped".into(), c.replay_skipped.to_string()));
        }
        for t in &self.thresholds {
            let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("-".into());
            rows.push((
                t.name
                    .split_once(' ')
                    .map(|(_, rest)| format!("threshold {rest}"))
                    .unwrap_or_else(|| t.name.clone()),
                format!(
                    "{}  p95 {}  p99 {}  max {} ms (n={}), error rate {}, cpu {} us/event, s {}-{}",
                    if t.passed { "pass" } else { "FAIL" },
                    ms(t.p95_ms),
                    ms(t.p99_ms),
                    ms(t.max_ms),
                    t.count,
                    t.error_rate
                        .map(|r| format!("{r:.4}"))
                        .unwrap_or("-".into()),
                    t.server_cpu_us_per_event
                        .map(|c| format!("{c:.2}"))
                        .unwrap_or("-".into()),
                    t.from_s,
                    t.to_s.min(self.seconds.len() as u32)
                ),
            ));
        }
        rows.push(("server closes".into(), fmt_map(&self.closes)));
        rows.push(("unexpected errors".into(), fmt_map(&self.unexpected_errors)));
        let srv = &self.server;
        rows.push((
            "server".into(),
            match srv.cpu_secs {
                Some(cpu) => format!(
                    "{}: CPU {cpu:.1} s, {} us per delivered event, RSS {:.0} -> peak {:.0} MiB",
                    match srv.pid {
                        Some(pid) => format!("pid {pid} (/proc)"),
                        None => "from its /metrics".to_string(),
                    },
                    self.server_cpu_us_per_event
                        .map_or("-".into(), |u| format!("{u:.2}")),
                    srv.rss_start_mib.unwrap_or(0.0),
                    srv.rss_peak_mib.unwrap_or(0.0)
                ),
                None => "not sampled (no --server-pid and no process metrics on /metrics)".into(),
            },
        ));
        if !srv.metrics_delta.is_empty() {
            rows.push((
                "server /metrics".into(),
                srv.metrics_delta
                    .iter()
                    .map(|(k, v)| format!("{}: +{v:.0}", k.trim_start_matches("flashcast_")))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        rows.push((
            "result".into(),
            if self.passed {
                "PASS".into()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            },
        ));
        rows
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_html(&self, path: &Path) -> anyhow::Result<()> {
        let h = self.latency_histogram.to_histogram();
        let percentiles: Vec<(f64, u64)> = if h.is_empty() {
            Vec::new()
        } else {
            [
                50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
            ]
            .iter()
            .map(|&p| (p, h.value_at_quantile(p / 100.0)))
            .collect()
        };
        let rows = self.summary_rows();
        let title = format!("{} — {} viewers", self.scenario, self.viewers_target);
        let subtitle = format!(
            "run {} · {} · room {} · go at unix ms {} · {} worker process(es)",
            self.run_id, self.url, self.room, self.go_unix_ms, self.workers
        );
        crate::html::write(
            path,
            &crate::html::HtmlInput {
                title: &title,
                subtitle: &subtitle,
                passed: self.passed,
                failures: &self.failures,
                summary: &rows,
                seconds: &self.seconds,
                phases: &self.phases,
                latency_percentiles: &percentiles,
            },
        )
    }
}

fn phase_spans(s: &Scenario, lengths: &[f64]) -> Vec<PhaseSpan> {
    s.phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let start = p.at();
            let end = p.end(lengths.get(i).copied().unwrap_or(0.0));
            let name = match p {
                Phase::Join { viewers, .. } => format!("join {viewers}"),
                Phase::Chat { rate, .. } => format!("chat {rate}/s"),
                Phase::Reactions { rate, .. } => format!("reactions {rate}/s"),
                Phase::Questions { rate, .. } => format!("questions {rate}/s"),
                Phase::Upvotes { voters, .. } => format!("upvotes {voters}"),
                Phase::Poll { .. } => "poll".into(),
                Phase::FlashSale { stock, .. } => format!("flash sale {stock}"),
                Phase::CouponDrop { count, .. } => format!("coupons {count}"),
                Phase::Reconnect { fraction, .. } => {
                    format!("reconnect {:.0}%", fraction * 100.0)
                }
                Phase::Replay { speed, scale, .. } => format!("replay {speed}x x{scale}"),
            };
            PhaseSpan { name, start, end }
        })
        .collect()
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One progress line per second, with per-second rates.
pub struct ProgressLine {
    t0_ms: u64,
    last: Progress,
    last_ms: u64,
}

impl ProgressLine {
    pub fn new(t0_ms: u64) -> ProgressLine {
        ProgressLine {
            t0_ms,
            last: Progress::default(),
            last_ms: t0_ms,
        }
    }

    pub fn print(&mut self, p: &Progress, server: Option<(f64, f64)>) {
        let now = flashcast_wire::now_ms();
        let dt = (now.saturating_sub(self.last_ms)) as f64 / 1_000.0;
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt.max(0.001);
        let c = &p.counts;
        let viewers = c.connected();
        println!(
            "[{:>5.1}s] viewers {} (failed {}) | events {:.0}/s | p99 {} | gaps {} dups {} | buys {} ok {} refused {} | claims {} | errors {}{}",
            now.saturating_sub(self.t0_ms) as f64 / 1_000.0,
            viewers,
            c.join_failed,
            rate(c.events, self.last.counts.events),
            p.p99_ms.map_or("-".into(), |v| format!("{v} ms")),
            c.gaps,
            c.duplicates,
            c.buys_sent,
            c.buys_accepted,
            c.buys_refused,
            c.claims_won,
            c.unexpected_errors,
            server.map_or(String::new(), |(cpu, rss)| format!(
                " | server {cpu:.0}% CPU {rss:.0} MiB"
            )),
        );
        self.last = *p;
        self.last_ms = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_failures_are_the_counters_already_past_their_bound() {
        let pass = crate::scenario::Pass::default();
        let mut sum = Progress::default();
        assert_eq!(live_failure(&pass, &sum, 1), None);
        sum.counts.unexpected_errors = 1;
        let why = live_failure(&pass, &sum, 3).unwrap();
        assert!(why.contains("1 unexpected error frames"), "{why}");
        // p99: only with one worker, and once there are enough events.
        let strict = crate::scenario::Pass {
            max_p99_ms: Some(10),
            ..crate::scenario::Pass::default()
        };
        let mut sum = Progress {
            p99_ms: Some(50),
            ..Progress::default()
        };
        sum.counts.events = 10;
        assert_eq!(live_failure(&strict, &sum, 1), None);
        sum.counts.events = 5_000;
        assert!(live_failure(&strict, &sum, 1).is_some());
        assert_eq!(live_failure(&strict, &sum, 2), None);
    }
}
