//! The report of a run: derived figures, pass/fail criteria, the summary
//! table and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::ChatArgs;
use crate::stats::{HistData, LatencySummary, Window, WorkerResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub tool_version: String,
    pub run_id: String,
    pub started_unix_ms: u64,
    pub args: ChatArgs,

    pub viewers_target: u64,
    pub viewers_joined: u64,
    pub join_failures: BTreeMap<String, u64>,

    pub senders: u32,
    pub chat_sent: u64,
    pub chat_rejected: u64,
    /// Sent and not rejected: what every viewer should receive.
    pub chat_accepted: u64,
    /// Seconds from the go signal to the end of sending.
    pub send_window_secs: f64,
    /// Go signal, end of sending, end of the drain (unix ms).
    pub window: Window,
    pub chat_sent_per_sec: f64,

    /// Sequenced events received by all viewers together (event x viewer).
    pub events_received: u64,
    pub events_per_sec: f64,
    /// This run's chat events received, all viewers together.
    pub chat_events_received: u64,
    pub frames_received: u64,
    /// Viewers that received exactly `chat_accepted` of this run's messages.
    pub viewers_complete: u64,
    /// "chat events received" -> viewers that received that many.
    pub per_viewer_chat: BTreeMap<u64, u64>,

    pub gaps: u64,
    pub missed_events: u64,
    pub duplicates: u64,
    pub decode_errors: u64,
    /// Closes the server initiated, by close code (1006: dropped without one).
    pub closes: BTreeMap<String, u64>,
    /// Error frames received, by error code.
    pub errors: BTreeMap<String, u64>,

    /// Delivery latency: receive time - event `ts`, both unix ms.
    pub latency_ms: LatencySummary,
    pub latency_histogram: HistData,

    pub passed: bool,
    pub failures: Vec<String>,
}

impl Report {
    pub fn build(args: &ChatArgs, run_id: &str, started_ms: u64, r: WorkerResult) -> Report {
        let latency = r.latency_ms.to_histogram();
        let window = r.window;
        let send_window_secs = if window.send_end_ms > window.go_ms {
            (window.send_end_ms - window.go_ms) as f64 / 1000.0
        } else {
            0.0
        };
        let per_sec = |n: u64| {
            if send_window_secs > 0.0 {
                (n as f64 / send_window_secs * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        let chat_accepted = r.chat_sent.saturating_sub(r.chat_rejected);
        let chat_events_received = r.chat_events_received_total();
        let viewers_complete = r.per_viewer_chat.get(&chat_accepted).copied().unwrap_or(0);
        let mut report = Report {
            scenario: "chat".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            run_id: run_id.into(),
            started_unix_ms: started_ms,
            args: args.clone(),
            viewers_target: args.viewers as u64,
            viewers_joined: r.joined,
            join_failures: r.join_failures,
            senders: args.senders,
            chat_sent: r.chat_sent,
            chat_rejected: r.chat_rejected,
            chat_accepted,
            send_window_secs,
            window,
            chat_sent_per_sec: per_sec(r.chat_sent),
            events_received: r.events,
            events_per_sec: per_sec(r.events),
            chat_events_received,
            frames_received: r.frames,
            viewers_complete,
            per_viewer_chat: r.per_viewer_chat,
            gaps: r.gaps,
            missed_events: r.missed,
            duplicates: r.duplicates,
            decode_errors: r.decode_errors,
            closes: r.closes,
            errors: r.errors,
            latency_ms: LatencySummary::of(&latency),
            latency_histogram: r.latency_ms,
            passed: false,
            failures: Vec::new(),
        };
        report.failures = report.check(args);
        report.passed = report.failures.is_empty();
        report
    }

    /// The pass criteria; each failure is one readable sentence.
    fn check(&self, args: &ChatArgs) -> Vec<String> {
        let mut f = Vec::new();
        if self.viewers_joined < self.viewers_target {
            f.push(format!(
                "only {} of {} viewers joined",
                self.viewers_joined, self.viewers_target
            ));
        }
        if self.gaps > 0 {
            f.push(format!(
                "{} sequence gaps ({} events missed)",
                self.gaps, self.missed_events
            ));
        }
        if self.duplicates > 0 {
            f.push(format!("{} duplicate events", self.duplicates));
        }
        if self.decode_errors > 0 {
            f.push(format!("{} undecodable frames", self.decode_errors));
        }
        if self.chat_rejected > 0 {
            f.push(format!(
                "the server rejected {} chat messages (errors: {:?})",
                self.chat_rejected, self.errors
            ));
        }
        let incomplete = self.viewers_joined.saturating_sub(self.viewers_complete);
        if incomplete > 0 {
            f.push(format!(
                "{incomplete} viewers did not receive all {} chat events",
                self.chat_accepted
            ));
        }
        if self.chat_accepted > 0 && self.latency_ms.count == 0 {
            f.push("no event was delivered".into());
        }
        if let Some(max) = args.max_p99_ms {
            if self.latency_ms.p99 > max {
                f.push(format!(
                    "p99 latency {} ms > --max-p99-ms {max}",
                    self.latency_ms.p99
                ));
            }
        }
        if let Some(max) = args.max_latency_ms {
            if self.latency_ms.max > max {
                f.push(format!(
                    "max latency {} ms > --max-latency-ms {max}",
                    self.latency_ms.max
                ));
            }
        }
        f
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let rows: Vec<(&str, String)> = vec![
            ("room", format!("{} at {}", self.args.room, self.args.url)),
            (
                "viewers joined",
                format!("{} / {}", self.viewers_joined, self.viewers_target),
            ),
            ("join failures", fmt_map(&self.join_failures)),
            (
                "chat sent",
                format!(
                    "{} by {} senders in {:.1} s ({:.1} msg/s)",
                    self.chat_sent, self.senders, self.send_window_secs, self.chat_sent_per_sec
                ),
            ),
            ("chat rejected", self.chat_rejected.to_string()),
            (
                "events delivered",
                format!(
                    "{} ({:.0} events/s, {} frames)",
                    self.events_received, self.events_per_sec, self.frames_received
                ),
            ),
            (
                "complete viewers",
                format!(
                    "{} / {} received all {} chat events",
                    self.viewers_complete, self.viewers_joined, self.chat_accepted
                ),
            ),
            (
                "gaps / duplicates",
                format!(
                    "{} ({} missed) / {}",
                    self.gaps, self.missed_events, self.duplicates
                ),
            ),
            ("server closes", fmt_map(&self.closes)),
            ("error frames", fmt_map(&self.errors)),
            (
                "latency ms",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, n={})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                ),
            ),
            (
                "result",
                if self.passed {
                    "PASS".to_string()
                } else {
                    format!("FAIL: {}", self.failures.join("; "))
                },
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
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

impl WorkerResult {
    fn chat_events_received_total(&self) -> u64 {
        self.per_viewer_chat.iter().map(|(n, v)| n * v).sum()
    }
}
