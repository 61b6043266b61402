//! `flashcast-storm diff A.json B.json`: what changed between two JSON
//! reports of `run` (percentiles, CPU per event, RSS, errors), printed and
//! optionally written as HTML; a change for the worse beyond the tolerance
//! is a regression and the exit code is 1, so CI can gate on it.
//!
//! Reports are read as plain JSON, by path, so a report written by an
//! older version of the tool (without some figures) still compares: a
//! figure missing on either side is shown and not judged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

/// Options of `diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The baseline report (`run --out`).
    pub a: PathBuf,
    /// The report compared with it.
    pub b: PathBuf,
    /// Percent by which a figure may get worse before it is a regression.
    #[arg(long, default_value_t = 10.0)]
    pub tolerance: f64,
    /// Write the comparison as an HTML page here.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Better {
    Lower,
    Higher,
}

/// The figures compared: (JSON pointer, label, better).
const FIGURES: &[(&str, &str, Better)] = &[
    ("/latency_ms/p50", "delivery p50 ms", Better::Lower),
    ("/latency_ms/p90", "delivery p90 ms", Better::Lower),
    ("/latency_ms/p99", "delivery p99 ms", Better::Lower),
    ("/latency_ms/p999", "delivery p99.9 ms", Better::Lower),
    ("/latency_ms/max", "delivery max ms", Better::Lower),
    (
        "/chat_ms/p99",
        "chat sender-to-viewer p99 ms",
        Better::Lower,
    ),
    ("/join_ms/p99", "join p99 ms", Better::Lower),
    ("/buy_ms/p99", "buy answer p99 ms", Better::Lower),
    ("/claim_ms/p99", "claim answer p99 ms", Better::Lower),
    ("/reconnect_ms/p99", "reconnect p99 ms", Better::Lower),
    ("/events_per_sec", "events delivered per s", Better::Higher),
    (
        "/server_cpu_us_per_event",
        "server CPU us per event",
        Better::Lower,
    ),
    ("/server/rss_peak_mib", "server RSS peak MiB", Better::Lower),
    (
        "/counts/unexpected_errors",
        "unexpected errors",
        Better::Lower,
    ),
    ("/counts/gaps", "sequence gaps", Better::Lower),
    ("/counts/duplicates", "duplicates", Better::Lower),
    ("/counts/join_failed", "failed joins", Better::Lower),
    ("/counts/buys_unanswered", "buys unanswered", Better::Lower),
    (
        "/counts/reconnect_failed",
        "failed reconnects",
        Better::Lower,
    ),
];

/// One compared figure.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub figure: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// (b - a) / a in percent; None when a is 0 or a side is missing.
    pub change_pct: Option<f64>,
    /// Worse than `a` by more than the tolerance (from 0, any increase).
    pub regression: bool,
}

/// Compares two reports.
pub fn compare(a: &serde_json::Value, b: &serde_json::Value, tolerance_pct: f64) -> Vec<Change> {
    let mut out: Vec<Change> = FIGURES
        .iter()
        .map(|&(ptr, label, better)| {
            let get = |v: &serde_json::Value| v.pointer(ptr).and_then(|x| x.as_f64());
            let (x, y) = (get(a), get(b));
            let change_pct = match (x, y) {
                (Some(x), Some(y)) if x != 0.0 => Some(((y - x) / x * 1000.0).round() / 10.0),
                _ => None,
            };
            let slack = 1.0 + tolerance_pct / 100.0;
            let regression = match (x, y, better) {
                (Some(x), Some(y), Better::Lower) => y > x * slack,
                (Some(x), Some(y), Better::Higher) => y * slack < x,
                _ => false,
            };
            Change {
                figure: label.into(),
                a: x,
                b: y,
                change_pct,
                regression,
            }
        })
        .collect();
    let passed = |v: &serde_json::Value| v.get("passed").and_then(|p| p.as_bool());
    let (pa, pb) = (passed(a), passed(b));
    out.push(Change {
        figure: "passed".into(),
        a: pa.map(|p| f64::from(u8::from(p))),
        b: pb.map(|p| f64::from(u8::from(p))),
        change_pct: None,
        regression: pa == Some(true) && pb == Some(false),
    });
    out
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn status(c: &Change) -> &'static str {
    if c.regression {
        "REGRESSION"
    } else if c.a == c.b {
        "same"
    } else if c.a.is_none() || c.b.is_none() {
        "not compared"
    } else {
        "within tolerance"
    }
}

/// The comparison as a table.
pub fn table(changes: &[Change]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<26} {:>12} {:>12} {:>9}  ",
        "figure", "A", "B", "change"
    );
    for c in changes {
        let pct = c
            .change_pct
            .map(|p| format!("{p:+.1}%"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  {:<26} {:>12} {:>12} {:>9}  {}",
            c.figure,
            cell(c.a),
            cell(c.b),
            pct,
            status(c)
        );
    }
    out
}

/// The comparison as a self-contained HTML page.
pub fn html(a: &Path, b: &Path, tolerance_pct: f64, changes: &[Change]) -> String {
    use crate::html::esc;
    let regressions = changes.iter().filter(|c| c.regression).count();
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>flashcast-storm diff</title>\n<style>body{font-family:system-ui,sans-serif;margin:24px;color:#111827}table{border-collapse:collapse}td,th{padding:4px 12px;border-bottom:1px solid #e5e7eb;text-align:right}td:first-child,th:first-child{text-align:left}.bad{color:#b91c1c;font-weight:600}.banner{padding:8px 12px;border-radius:6px;display:inline-block;margin-bottom:16px}</style>\n</head><body>\n",
    );
    let _ = write!(
        h,
        "<h1>flashcast-storm diff</h1>\n<p>A: {}<br>B: {}<br>tolerance {}%</p>\n<div class=\"banner\" style=\"background:{}\">{}</div>\n<table>\n<tr><th>figure</th><th>A</th><th>B</th><th>change</th><th></th></tr>\n",
        esc(&a.display().to_string()),
        esc(&b.display().to_string()),
        tolerance_pct,
        if regressions > 0 { "#fee2e2" } else { "#dcfce7" },
        if regressions > 0 {
            format!("{regressions} regression(s)")
        } else {
            "no regression".into()
        }
    );
    for c in changes {
        let _ = writeln!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.regression { " class=\"bad\"" } else { "" },
            esc(&c.figure),
            cell(c.a),
            cell(c.b),
            c.change_pct
                .map(|p| format!("{p:+.1}%"))
                .unwrap_or_else(|| "-".into()),
            status(c)
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

fn read(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a JSON report", path.display()))?;
    if v.get("latency_ms").is_none() || v.get("counts").is_none() {
        anyhow::bail!(
            "{}: not a report of `flashcast-storm run --out`",
            path.display()
        );
    }
    Ok(v)
}

/// `flashcast-storm diff`: exit 0 no regression, 1 a regression, 2 a
/// report that cannot be read or a bad option.
pub fn main(args: DiffArgs) -> ExitCode {
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        eprintln!(
            "error: --tolerance must be a percentage >= 0, got {}",
            args.tolerance
        );
        return ExitCode::from(2);
    }
    let (a, b) = match (read(&args.a), read(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let changes = compare(&a, &b, args.tolerance);
    print!("{}", table(&changes));
    if let Some(path) = &args.html {
        if let Err(e) = std::fs::write(path, html(&args.a, &args.b, args.tolerance, &changes)) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("  HTML written to {}", path.display());
    }
    let regressions = changes.iter().filter(|c| c.regression).count();
    if regressions > 0 {
        println!("  {regressions} regression(s) beyond {}%", args.tolerance);
        ExitCode::from(1)
    } else {
        println!("  no regression beyond {}%", args.tolerance);
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p99: u64, cpu: f64, errors: u64, eps: f64, passed: bool) -> serde_json::Value {
        json!({
            "latency_ms": {"p50": 5, "p90": 9, "p99": p99, "p999": 40, "max": 90},
            "counts": {"unexpected_errors": errors, "gaps": 0},
            "server_cpu_us_per_event": cpu,
            "server": {"rss_peak_mib": 100.0},
            "events_per_sec": eps,
            "passed": passed,
        })
    }

    #[test]
    fn worse_beyond_the_tolerance_is_a_regression() {
        let a = report(20, 4.0, 0, 1000.0, true);
        let same = compare(&a, &a, 10.0);
        assert!(same.iter().all(|c| !c.regression));
        // p99 +10% is within 10%; +15% is not. CPU and errors too.
        let b = report(22, 4.0, 0, 1000.0, true);
        assert!(compare(&a, &b, 10.0).iter().all(|c| !c.regression));
        let b = report(23, 4.8, 1, 850.0, false);
        let c = compare(&a, &b, 10.0);
        let bad: Vec<&str> = c
            .iter()
            .filter(|c| c.regression)
            .map(|c| c.figure.as_str())
            .collect();
        assert_eq!(
            bad,
            vec![
                "delivery p99 ms",
                "events delivered per s",
                "server CPU us per event",
                "unexpected errors",
                "passed"
            ]
        );
        let p99 = c.iter().find(|c| c.figure == "delivery p99 ms").unwrap();
        assert_eq!(p99.change_pct, Some(15.0));
        // Better is never a regression; a missing figure is not judged.
        let better = report(10, 2.0, 0, 2000.0, true);
        assert!(compare(&a, &better, 0.0).iter().all(|c| !c.regression));
        let text = table(&c);
        assert!(text.contains("REGRESSION"), "{text}");
        let page = html(Path::new("a.json"), Path::new("b<.json"), 10.0, &c);
        assert!(page.contains("5 regression(s)") && page.contains("b&lt;.json"));
    }
}
