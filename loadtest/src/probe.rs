//! Watching the server while it is stormed: CPU time and resident memory
//! once a second, from /proc for a local server process (`--server-pid`) or
//! else from the server's own `/metrics` (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`), and the server's counters from
//! `/metrics` before and after.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::admin::Admin;

/// The server's own CPU seconds and resident bytes on `/metrics`.
const CPU_METRIC: &str = "flashcast_process_cpu_seconds_total";
const RSS_METRIC: &str = "flashcast_process_resident_memory_bytes";

/// Counters read from `/metrics` (summed over labels).
const METRICS: [&str; 12] = [
    CPU_METRIC,
    RSS_METRIC,
    "flashcast_events_out_total",
    "flashcast_frames_out_total",
    "flashcast_bytes_out_total",
    // How the fanouts went out: rooms held back by a full worker queue,
    // sent through io_uring, sent as soon as an idle room's event arrived.
    "flashcast_fanout_queue_full_total",
    "flashcast_fanout_uring_submissions_total",
    "flashcast_batches_leading_total",
    "flashcast_queue_overflows_total",
    "flashcast_rejected_total",
    "flashcast_buys_total",
    "flashcast_coupon_claims_total",
];

/// CPU and memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcReading {
    pub at_ms: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    pub rss_mib: f64,
}

pub fn read_proc(pid: u32) -> Option<ProcReading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcReading {
        at_ms: flashcast_wire::now_ms(),
        cpu_secs: ticks / hz,
        rss_mib: rss_kib / 1024.0,
    })
}

/// Sums each wanted counter over its label sets.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !METRICS.contains(&name) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// A reading from the server's `/metrics`, when it has the process metrics.
fn from_metrics(m: &BTreeMap<String, f64>) -> Option<ProcReading> {
    Some(ProcReading {
        at_ms: flashcast_wire::now_ms(),
        cpu_secs: *m.get(CPU_METRIC)?,
        rss_mib: *m.get(RSS_METRIC)? / (1024.0 * 1024.0),
    })
}

/// The step of the CPU counter the readings came from.
fn cpu_resolution(pid: Option<u32>, first: ProcReading, last: ProcReading) -> f64 {
    if pid.is_some() {
        // SAFETY: sysconf has no preconditions.
        return 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    }
    if first.cpu_secs.fract() == 0.0 && last.cpu_secs.fract() == 0.0 {
        1.0
    } else {
        0.01
    }
}

impl ServerFigures {
    /// Whether the CPU used over the run is known to within 10%: a counter
    /// of whole seconds that moved by 3 s says little about 5 µs per event.
    pub fn cpu_trustworthy(&self) -> Result<f64, String> {
        let Some(cpu) = self.cpu_secs else {
            return Err("the server's CPU was not sampled".into());
        };
        let step = self.cpu_resolution_secs.unwrap_or(0.01);
        if cpu < step * 10.0 {
            return Err(format!(
                "the server's CPU from {} moved {cpu:.2} s in steps of {step} s, too coarse to judge (pass --server-pid for /proc, or run longer)",
                if self.source == "proc" { "/proc" } else { "/metrics" }
            ));
        }
        Ok(cpu)
    }
}

/// What was seen of the server during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerFigures {
    pub pid: Option<u32>,
    /// "proc" (a local PID), "metrics" (the server's /metrics) or "none".
    pub source: String,
    /// Server CPU from the go signal to the end of the run, seconds.
    pub cpu_secs: Option<f64>,
    /// The step of that CPU counter, seconds: 1/CLK_TCK from /proc, 1 when
    /// the server's `/metrics` counts whole seconds.
    #[serde(default)]
    pub cpu_resolution_secs: Option<f64>,
    /// Resident memory before the go signal and at its highest.
    pub rss_start_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    /// Once a second: (seconds since go, % of one core, RSS MiB).
    pub samples: Vec<(f64, f64, f64)>,
    /// Change of the server's own counters over the run (from /metrics).
    pub metrics_delta: BTreeMap<String, f64>,
}

/// Samples a server during a run.
pub struct ServerProbe {
    pid: Option<u32>,
    admin: Admin,
    state: Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    t0_ms: u64,
    first: Option<ProcReading>,
    prev: Option<ProcReading>,
    figures: ServerFigures,
    metrics_start: BTreeMap<String, f64>,
}

impl ServerProbe {
    pub fn new(pid: Option<u32>, admin: Admin) -> ServerProbe {
        ServerProbe {
            pid,
            admin,
            state: Mutex::default(),
        }
    }

    /// One reading: /proc with a PID, else the server's /metrics.
    async fn read(&self) -> (Option<ProcReading>, BTreeMap<String, f64>) {
        let metrics = self
            .admin
            .metrics_text()
            .await
            .map(|t| parse_metrics(&t))
            .unwrap_or_default();
        let reading = match self.pid {
            Some(pid) => read_proc(pid),
            None => from_metrics(&metrics),
        };
        (reading, metrics)
    }

    /// Takes the starting readings (call at the go signal).
    pub async fn start(&self, t0_ms: u64) {
        let (reading, metrics) = self.read().await;
        let mut s = self.state.lock().expect("lock");
        s.t0_ms = t0_ms;
        s.first = reading;
        s.prev = reading;
        s.metrics_start = metrics;
        s.figures.pid = self.pid;
        s.figures.source = match (self.pid, reading) {
            (Some(_), Some(_)) => "proc",
            (None, Some(_)) => "metrics",
            _ => "none",
        }
        .into();
        s.figures.rss_start_mib = reading.map(|r| r.rss_mib);
        s.figures.rss_peak_mib = reading.map(|r| r.rss_mib);
    }

    /// One reading (call about once a second).
    pub async fn sample(&self) {
        let Some(r) = self.read().await.0 else {
            return;
        };
        let mut s = self.state.lock().expect("lock");
        if let Some(prev) = s.prev {
            let dt = (r.at_ms.saturating_sub(prev.at_ms)) as f64 / 1_000.0;
            if dt >= 0.2 {
                let pct = (r.cpu_secs - prev.cpu_secs) / dt * 100.0;
                let t = (r.at_ms as f64 - s.t0_ms as f64) / 1_000.0;
                s.figures.samples.push((t, pct, r.rss_mib));
                s.prev = Some(r);
            }
        } else {
            s.prev = Some(r);
        }
        let peak = s.figures.rss_peak_mib.unwrap_or(0.0).max(r.rss_mib);
        s.figures.rss_peak_mib = Some(peak);
    }

    /// The last (% of one core, RSS MiB), for the progress line.
    pub fn last(&self) -> Option<(f64, f64)> {
        let s = self.state.lock().expect("lock");
        s.figures.samples.last().map(|&(_, c, r)| (c, r))
    }

    pub async fn finish(&self) -> ServerFigures {
        let (last, metrics) = self.read().await;
        let mut s = self.state.lock().expect("lock");
        if let (Some(first), Some(last)) = (s.first, last) {
            s.figures.cpu_secs = Some(last.cpu_secs - first.cpu_secs);
            s.figures.cpu_resolution_secs = Some(cpu_resolution(self.pid, first, last));
        }
        let start = std::mem::take(&mut s.metrics_start);
        s.figures.metrics_delta = metrics
            .iter()
            .filter(|(k, _)| k.as_str() != RSS_METRIC)
            .map(|(k, v)| (k.clone(), v - start.get(k).copied().unwrap_or(0.0)))
            .collect();
        s.figures.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let r = read_proc(std::process::id()).expect("own /proc entry");
        assert!(r.rss_mib > 0.5 && r.rss_mib < 4_096.0, "{r:?}");
        assert!(r.cpu_secs >= 0.0);
        assert!(read_proc(u32::MAX).is_none());
    }

    #[test]
    fn sums_counters_over_labels_and_skips_the_rest() {
        let text = "# HELP x\nflashcast_events_out_total 120\n\
                    flashcast_rejected_total{reason=\"rate_limited\"} 3\n\
                    flashcast_rejected_total{reason=\"sold_out\"} 4\n\
                    flashcast_tick_seconds_bucket{le=\"0.1\"} 9\n";
        let m = parse_metrics(text);
        assert_eq!(m["flashcast_events_out_total"], 120.0);
        assert_eq!(m["flashcast_rejected_total"], 7.0);
        assert_eq!(m.len(), 2);
        assert!(from_metrics(&m).is_none(), "no process metrics, no reading");
        let with = parse_metrics(
            "flashcast_process_cpu_seconds_total 12.5\nflashcast_process_resident_memory_bytes 104857600\n",
        );
        let r = from_metrics(&with).unwrap();
        assert_eq!((r.cpu_secs, r.rss_mib), (12.5, 100.0));
    }

    #[test]
    fn a_cpu_counter_of_whole_seconds_is_not_trusted_for_a_short_run() {
        let reading = |cpu_secs| ProcReading {
            at_ms: 0,
            cpu_secs,
            rss_mib: 1.0,
        };
        let figures = |source: &str, pid, a, b| ServerFigures {
            source: source.into(),
            cpu_secs: Some(b - a),
            cpu_resolution_secs: Some(cpu_resolution(pid, reading(a), reading(b))),
            ..ServerFigures::default()
        };
        // /metrics in whole seconds, 0 s moved: the 0.00 us/event false pass.
        let e = figures("metrics", None, 7.0, 7.0).cpu_trustworthy();
        assert!(e.unwrap_err().contains("too coarse"));
        assert!(figures("metrics", None, 7.0, 10.0)
            .cpu_trustworthy()
            .is_err());
        assert_eq!(
            figures("metrics", None, 7.0, 30.0).cpu_trustworthy(),
            Ok(23.0)
        );
        // Fractional seconds on /metrics, and /proc ticks, are fine.
        assert!(figures("metrics", None, 7.25, 7.75)
            .cpu_trustworthy()
            .is_ok());
        assert!(figures("proc", Some(1), 1.0, 1.5).cpu_trustworthy().is_ok());
        assert!(ServerFigures::default().cpu_trustworthy().is_err());
    }
}
