//! Thresholds per phase and per kind (`[[threshold]]` in a scenario):
//! percentiles of delivery, buy or claim answer times, error rates and
//! server CPU per event, judged on the seconds of one phase (or the whole
//! run) from the per-second histograms and counters of the report.

use serde::{Deserialize, Serialize};

use crate::stats::HistData;
use crate::timeline::SecondSample;

/// What a threshold measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Delivery latency of events; errors are every unexpected error frame
    /// over every action sent.
    Delivery,
    /// Buy sent -> order or error received; errors are unexpected buy
    /// refusals (not `sold_out` or `per_user_limit`) over buys sent.
    Buy,
    /// Claim sent -> answer; errors are unexpected claim refusals (not
    /// `coupons_gone`) over claims sent.
    Claim,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Delivery => "delivery",
            Kind::Buy => "buy",
            Kind::Claim => "claim",
        }
    }
}

/// One `[[threshold]]`: bounds on one kind, in one phase or the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// The phase (1-based, as `check` numbers them) whose seconds are
    /// judged; absent = the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<usize>,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    /// Errors / requests sent, 0-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Server CPU in the window / events delivered in it, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_server_cpu_us_per_event: Option<f64>,
}

impl Threshold {
    /// The file's rules; `phases` is the number of phases.
    pub fn validate(&self, phases: usize) -> Result<(), String> {
        if let Some(p) = self.phase {
            if p == 0 || p > phases {
                return Err(format!("phase must be 1-{phases}, got {p}"));
            }
        }
        if self.max_p95_ms.is_none()
            && self.max_p99_ms.is_none()
            && self.max_ms.is_none()
            && self.max_error_rate.is_none()
            && self.max_server_cpu_us_per_event.is_none()
        {
            return Err(
                "no bound: give max_p95_ms, max_p99_ms, max_ms, max_error_rate or max_server_cpu_us_per_event"
                    .into(),
            );
        }
        if let Some(r) = self.max_error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("max_error_rate must be 0-1, got {r}"));
            }
        }
        if let Some(c) = self.max_server_cpu_us_per_event {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("max_server_cpu_us_per_event must be > 0, got {c}"));
            }
        }
        Ok(())
    }
}

/// A threshold as judged: its window, the values found and what failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// "delivery", "buy in phase 3 (flash_sale)", ...
    pub name: String,
    pub threshold: Threshold,
    /// Seconds since go judged: [from, to).
    pub from_s: u32,
    pub to_s: u32,
    /// Samples in the window (events, or answers).
    pub count: u64,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub server_cpu_us_per_event: Option<f64>,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// The per-second figures of a run a threshold is judged on.
pub struct Series<'a> {
    pub seconds: &'a [SecondSample],
    pub delivery: &'a [HistData],
    pub buy: &'a [HistData],
    pub claim: &'a [HistData],
    /// Step of the server's CPU counter (s): a window whose CPU is under
    /// ten steps is too coarse to judge.
    pub cpu_resolution_secs: Option<f64>,
}

/// Judges `t` on seconds `[from, to)` of `series`; `name` says what it is.
pub fn judge(t: &Threshold, name: String, from: u32, to: u32, series: &Series) -> ThresholdResult {
    let n = series.seconds.len() as u32;
    let (from, to) = (from.min(n), to.clamp(from.min(n), n));
    let range = from as usize..to as usize;
    let hists = match t.kind {
        Kind::Delivery => series.delivery,
        Kind::Buy => series.buy,
        Kind::Claim => series.claim,
    };
    let mut h = crate::stats::new_histogram();
    for d in hists.get(range.clone()).unwrap_or_default() {
        if !d.0.is_empty() {
            h.add(d.to_histogram()).expect("same bounds");
        }
    }
    let secs = &series.seconds[range];
    let sum = |f: fn(&SecondSample) -> u64| secs.iter().map(f).sum::<u64>();
    let (errors, sent) = match t.kind {
        Kind::Delivery => (sum(|s| s.errors), sum(|s| s.sent)),
        Kind::Buy => (sum(|s| s.buy_errors), sum(|s| s.buys_sent)),
        Kind::Claim => (sum(|s| s.claim_errors), sum(|s| s.claims_sent)),
    };
    let error_rate = match (errors, sent) {
        (0, _) => 0.0,
        (e, 0) => e as f64,
        (e, s) => e as f64 / s as f64,
    };
    let events = sum(|s| s.events);
    let cpu_secs: Option<f64> = secs
        .iter()
        .map(|s| s.server_cpu_pct.map(|p| p / 100.0))
        .sum();
    let some = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
    let mut r = ThresholdResult {
        name,
        threshold: t.clone(),
        from_s: from,
        to_s: to,
        count: h.len(),
        p95_ms: some(0.95),
        p99_ms: some(0.99),
        max_ms: (!h.is_empty()).then(|| h.max()),
        error_rate: Some((error_rate * 1e6).round() / 1e6),
        server_cpu_us_per_event: None,
        passed: true,
        failures: Vec::new(),
    };
    let what = t.kind.name();
    for (label, bound, got) in [
        ("p95", t.max_p95_ms, r.p95_ms),
        ("p99", t.max_p99_ms, r.p99_ms),
        ("max", t.max_ms, r.max_ms),
    ] {
        if let (Some(max), Some(got)) = (bound, got) {
            if got > max {
                r.failures
                    .push(format!("{}: {label} {what} {got} ms > {max} ms", r.name));
            }
        }
    }
    if let Some(max) = t.max_error_rate {
        if error_rate > max {
            r.failures.push(format!(
                "{}: {what} error rate {error_rate:.4} ({errors} of {sent}) > {max}",
                r.name
            ));
        }
    }
    if let Some(max) = t.max_server_cpu_us_per_event {
        let step = series.cpu_resolution_secs.unwrap_or(1.0);
        match cpu_secs {
            Some(cpu) if cpu >= step * 10.0 && events > 0 => {
                let us = (cpu * 1e6 / events as f64 * 100.0).round() / 100.0;
                r.server_cpu_us_per_event = Some(us);
                if us > max {
                    r.failures.push(format!(
                        "{}: server CPU {us:.2} us per delivered event > {max} us",
                        r.name
                    ));
                }
            }
            Some(cpu) if events > 0 => r.failures.push(format!(
                "{}: max_server_cpu_us_per_event: the server used {cpu:.2} s of CPU in the window, counted in steps of {step} s: too coarse to judge (pass --server-pid)",
                r.name
            )),
            Some(_) => r.failures.push(format!(
                "{}: max_server_cpu_us_per_event: no events were delivered in the window",
                r.name
            )),
            None => r.failures.push(format!(
                "{}: max_server_cpu_us_per_event: the server's CPU was not sampled in every second of the window",
                r.name
            )),
        }
    }
    r.passed = r.failures.is_empty();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> HistData {
        let mut h = crate::stats::new_histogram();
        for &v in values {
            h.saturating_record(v);
        }
        HistData::from_histogram(&h)
    }

    #[test]
    fn a_phase_is_judged_on_its_own_seconds() {
        // Second 0 is slow, seconds 1-2 fast: a threshold on [1, 3) passes
        // where one on the whole run fails.
        let delivery = vec![hist(&[900; 10]), hist(&[10; 100]), hist(&[20; 100])];
        let seconds: Vec<SecondSample> = (0..3)
            .map(|t| SecondSample {
                t,
                events: if t == 0 { 10 } else { 100 },
                sent: 100,
                errors: u64::from(t == 2),
                buys_sent: 10,
                buy_errors: 5 * u64::from(t == 0),
                server_cpu_pct: Some(50.0),
                ..SecondSample::default()
            })
            .collect();
        let series = Series {
            seconds: &seconds,
            delivery: &delivery,
            buy: &[],
            claim: &[],
            cpu_resolution_secs: Some(0.01),
        };
        let t = Threshold {
            phase: None,
            kind: Kind::Delivery,
            max_p95_ms: None,
            max_p99_ms: Some(100),
            max_ms: None,
            max_error_rate: Some(0.001),
            max_server_cpu_us_per_event: Some(10_000.0),
        };
        let whole = judge(&t, "delivery".into(), 0, 3, &series);
        assert!(!whole.passed);
        assert_eq!(whole.count, 210);
        assert!(
            whole.failures[0].contains("p99 delivery"),
            "{:?}",
            whole.failures
        );
        let late = judge(&t, "delivery in phase 2".into(), 1, 3, &series);
        assert_eq!(late.p99_ms, Some(20));
        // 1 error in 200 sends > 0.001.
        assert_eq!(late.error_rate, Some(0.005));
        assert_eq!(late.failures.len(), 1, "{:?}", late.failures);
        assert!(late.failures[0].contains("error rate"));
        // 1 s of CPU over 200 events = 5,000 us each.
        assert_eq!(late.server_cpu_us_per_event, Some(5_000.0));
        // Buys: errors 5 of 10 in second 0 only.
        let buy = Threshold {
            kind: Kind::Buy,
            max_p99_ms: None,
            max_server_cpu_us_per_event: None,
            max_error_rate: Some(0.1),
            ..t.clone()
        };
        assert!(!judge(&buy, "buy".into(), 0, 1, &series).passed);
        assert!(judge(&buy, "buy".into(), 1, 3, &series).passed);
        // A coarse CPU counter fails the CPU bound instead of passing it.
        let coarse = Series {
            cpu_resolution_secs: Some(1.0),
            ..series
        };
        let r = judge(&t, "delivery".into(), 1, 3, &coarse);
        assert!(
            r.failures.iter().any(|f| f.contains("too coarse")),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn a_threshold_needs_a_bound_and_a_real_phase() {
        let t = Threshold {
            phase: Some(4),
            kind: Kind::Buy,
            max_p95_ms: Some(1),
            max_p99_ms: None,
            max_ms: None,
            max_error_rate: None,
            max_server_cpu_us_per_event: None,
        };
        assert!(t.validate(4).is_ok());
        assert!(t.validate(3).unwrap_err().contains("phase must be 1-3"));
        let none = Threshold {
            max_p95_ms: None,
            ..t.clone()
        };
        assert!(none.validate(4).unwrap_err().contains("no bound"));
        let rate = Threshold {
            max_error_rate: Some(2.0),
            ..t
        };
        assert!(rate.validate(4).is_err());
    }
}
