//! The HTML report of a run: a PASS/FAIL banner, the summary table and
//! charts of the run second by second, in one self-contained page.
//!
//! The charts are drawn with `plotters` into inline SVG (text as `<text>`
//! elements, so no font is loaded); the page has no script and no external
//! resource, so it opens offline. Every string from the run is escaped.
//!
//! Long runs are downsampled to at most [`MAX_POINTS`] points per line:
//! each point then covers several seconds (rates are averaged, p99 and max
//! are the highest of the bucket). A second with no value (`None`) is a gap
//! in its line, never a zero.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use crate::timeline::{PhaseSpan, SecondSample};

/// What the page is made of.
pub struct HtmlInput<'a> {
    /// e.g. "flash-sale — 10,000 viewers".
    pub title: &'a str,
    /// e.g. scenario file, run id, start time, target URL.
    pub subtitle: &'a str,
    pub passed: bool,
    /// Failed pass criteria, one sentence each.
    pub failures: &'a [String],
    /// Rows of the summary table (label, value).
    pub summary: &'a [(String, String)],
    pub seconds: &'a [SecondSample],
    pub phases: &'a [PhaseSpan],
    /// (percentile 0-100, ms) for the percentile curve; may be empty.
    pub latency_percentiles: &'a [(f64, u64)],
}

/// Writes [`render`]'s page to `path`.
pub fn write(path: &Path, input: &HtmlInput) -> anyhow::Result<()> {
    std::fs::write(path, render(input))
        .with_context(|| format!("writing the HTML report {}", path.display()))
}

/// Most points drawn per line; longer runs are bucketed.
pub const MAX_POINTS: usize = 720;

/// Size of every chart, in SVG user units (the page scales it to its width).
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 330;

const FONT: &str = "sans-serif";
const TEXT: RGBColor = RGBColor(55, 65, 81);
const GRID: RGBColor = RGBColor(226, 229, 233);
const AXIS: RGBColor = RGBColor(140, 146, 156);

const BLUE: RGBColor = RGBColor(37, 99, 235);
const GREEN: RGBColor = RGBColor(22, 163, 74);
const RED: RGBColor = RGBColor(220, 38, 38);
const PURPLE: RGBColor = RGBColor(147, 51, 234);
const TEAL: RGBColor = RGBColor(13, 148, 136);
const ORANGE: RGBColor = RGBColor(234, 88, 12);
const DARK_RED: RGBColor = RGBColor(127, 29, 29);
const AMBER: RGBColor = RGBColor(245, 158, 11);
const INDIGO: RGBColor = RGBColor(79, 70, 229);

/// Fills of the phase bands, in turn.
const BANDS: [RGBColor; 4] = [
    RGBColor(59, 130, 246),
    RGBColor(245, 158, 11),
    RGBColor(16, 185, 129),
    RGBColor(236, 72, 153),
];

/// Renders the complete HTML document.
pub fn render(input: &HtmlInput) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let verdict = if input.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{verdict} — {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        esc(input.title)
    );
    let _ = write!(
        h,
        "<header>\n<h1>{}</h1>\n<p class=\"subtitle\">{}</p>\n</header>\n",
        esc(input.title),
        esc(input.subtitle)
    );
    banner(&mut h, input);
    summary(&mut h, input.summary);

    h.push_str("<section>\n<h2>The run, second by second</h2>\n");
    let tl = Timeline::new(input.seconds, input.phases);
    if input.seconds.is_empty() {
        h.push_str(
            "<p class=\"note\">No per-second samples were recorded in this run: \
             there is nothing to chart over time.</p>\n",
        );
    } else {
        phase_list(&mut h, input.phases);
        latency_chart(&mut h, &tl);
        events_chart(&mut h, &tl);
        viewers_chart(&mut h, &tl);
        purchases_chart(&mut h, &tl);
        server_chart(&mut h, &tl);
    }
    h.push_str("</section>\n");

    percentile_chart(&mut h, input.latency_percentiles);

    h.push_str("</main>\n</body>\n</html>\n");
    h
}

const CSS: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #1f2937;
  font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 10px; }
h3 { font-size: 16px; margin: 0 0 6px; }
.subtitle { color: #4b5563; margin: 0 0 18px; overflow-wrap: anywhere; }
.banner { border-radius: 8px; padding: 14px 18px; color: #fff; }
.banner.pass { background: #15803d; }
.banner.fail { background: #b91c1c; }
.banner .verdict { font-size: 24px; font-weight: 700; letter-spacing: .04em; margin-right: 10px; }
.banner ul { margin: 8px 0 0; padding-left: 22px; }
.banner li { margin: 2px 0; }
table.summary { border-collapse: collapse; background: #fff; border-radius: 8px;
  overflow: hidden; box-shadow: 0 1px 2px rgba(0,0,0,.08); min-width: 50%; }
table.summary th, table.summary td { padding: 6px 14px; border-bottom: 1px solid #e5e7eb;
  text-align: left; vertical-align: top; }
table.summary th { font-weight: 600; color: #374151; white-space: nowrap; }
table.summary td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
table.summary tr:last-child th, table.summary tr:last-child td { border-bottom: 0; }
figure { background: #fff; margin: 0 0 18px; padding: 14px 16px 10px; border-radius: 8px;
  box-shadow: 0 1px 2px rgba(0,0,0,.08); }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: #4b5563; font-size: 13.5px; margin-top: 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13.5px; margin: 4px 0 0 60px; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.legend i { display: inline-block; width: 22px; height: 4px; border-radius: 2px; }
.legend i.band { height: 12px; width: 16px; opacity: .35; border-radius: 2px; }
.note { background: #fff; border-radius: 8px; padding: 12px 16px; color: #4b5563;
  box-shadow: 0 1px 2px rgba(0,0,0,.08); margin: 0 0 18px; }
.phases { color: #4b5563; font-size: 13.5px; margin: 0 0 12px; }
";

fn banner(h: &mut String, input: &HtmlInput) {
    let (class, verdict, line) = match (input.passed, input.failures.len()) {
        (true, 0) => ("pass", "PASS", "every pass criterion was met.".to_string()),
        (true, n) => (
            "pass",
            "PASS",
            format!("passed, with {n} note{}:", plural(n)),
        ),
        (false, 0) => (
            "fail",
            "FAIL",
            "the run failed (no failed criterion was recorded).".to_string(),
        ),
        (false, 1) => ("fail", "FAIL", "1 pass criterion failed:".to_string()),
        (false, n) => ("fail", "FAIL", format!("{n} pass criteria failed:")),
    };
    let _ = write!(
        h,
        "<section class=\"banner {class}\">\n<span class=\"verdict\">{verdict}</span>{}\n",
        esc(&line)
    );
    if !input.failures.is_empty() {
        h.push_str("<ul>\n");
        for f in input.failures {
            let _ = writeln!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
}

fn summary(h: &mut String, rows: &[(String, String)]) {
    h.push_str("<section>\n<h2>Summary</h2>\n");
    if rows.is_empty() {
        h.push_str("<p class=\"note\">No summary figures.</p>\n");
    } else {
        h.push_str("<table class=\"summary\">\n");
        for (label, value) in rows {
            let _ = writeln!(
                h,
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                esc(label),
                esc(value)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn phase_list(h: &mut String, phases: &[PhaseSpan]) {
    let spans: Vec<&PhaseSpan> = phases.iter().filter(|p| phase_ok(p)).collect();
    if spans.is_empty() {
        return;
    }
    h.push_str("<div class=\"phases legend\" style=\"margin-left:0\">Shaded bands: ");
    let short_run = spans.iter().all(|p| p.end < 120.0);
    let at = |t: f64| {
        if short_run {
            format!("{} s", trim((t * 10.0).round() / 10.0))
        } else {
            clock(t)
        }
    };
    for (i, p) in spans.iter().enumerate() {
        let c = BANDS[i % BANDS.len()];
        let _ = write!(
            h,
            "<span><i class=\"band\" style=\"background:{}\"></i>{} ({}–{})</span>",
            hex(c),
            esc(&p.name),
            at(p.start),
            at(p.end)
        );
    }
    h.push_str("</div>\n");
}

// ---------------------------------------------------------------------------
// The timeline, bucketed.

/// The samples grouped into buckets of `width` seconds.
struct Timeline<'a> {
    /// Seconds per point.
    width: u32,
    /// The x axis covers `[0, span)` seconds.
    span: f64,
    /// (bucket index, samples in it), by index, non-empty buckets only.
    buckets: Vec<(u32, Vec<&'a SecondSample>)>,
    phases: &'a [PhaseSpan],
}

impl<'a> Timeline<'a> {
    fn new(seconds: &'a [SecondSample], phases: &'a [PhaseSpan]) -> Timeline<'a> {
        let mut sorted: Vec<&SecondSample> = seconds.iter().collect();
        sorted.sort_by_key(|s| s.t);
        let last = sorted.last().map(|s| s.t as f64 + 1.0).unwrap_or(0.0);
        let phase_end = phases
            .iter()
            .filter(|p| phase_ok(p))
            .map(|p| p.end)
            .fold(0.0, f64::max);
        let span = last.max(phase_end).max(1.0);
        let width = [1u32, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
            .into_iter()
            .find(|w| span / *w as f64 <= MAX_POINTS as f64)
            .unwrap_or(3600);
        let mut buckets: Vec<(u32, Vec<&SecondSample>)> = Vec::new();
        for s in sorted {
            let k = s.t / width;
            match buckets.last_mut() {
                Some((last_k, v)) if *last_k == k => v.push(s),
                _ => buckets.push((k, vec![s])),
            }
        }
        Timeline {
            width,
            span,
            buckets,
            phases,
        }
    }

    /// One point per bucket: `f` reduces the bucket's samples.
    fn series(&self, f: impl Fn(&[&SecondSample]) -> Option<f64>) -> Vec<(u32, Option<f64>)> {
        self.buckets
            .iter()
            .map(|(k, v)| (*k, f(v).filter(|x| x.is_finite())))
            .collect()
    }

    /// A counter as a per-second rate (mean over the bucket's seconds).
    fn rate(&self, f: impl Fn(&SecondSample) -> u64) -> Vec<(u32, Option<f64>)> {
        self.series(|v| Some(v.iter().map(|s| f(s) as f64).sum::<f64>() / v.len() as f64))
    }

    /// An optional gauge, averaged over the seconds that have it.
    fn mean_opt(&self, f: impl Fn(&SecondSample) -> Option<f64>) -> Vec<(u32, Option<f64>)> {
        self.series(|v| {
            let xs: Vec<f64> = v.iter().filter_map(|s| f(s)).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        })
    }

    /// An optional gauge, the highest of the bucket.
    fn max_opt(&self, f: impl Fn(&SecondSample) -> Option<f64>) -> Vec<(u32, Option<f64>)> {
        self.series(|v| v.iter().filter_map(|s| f(s)).reduce(f64::max))
    }

    /// "Each point covers N s" when bucketed.
    fn bucket_note(&self, how: &str) -> String {
        if self.width > 1 {
            format!(" Each point covers {} s ({how}).", self.width)
        } else {
            String::new()
        }
    }

    fn x_axis(&self) -> Axis {
        Axis::time(self.span)
    }

    fn x_of(&self, k: u32) -> f64 {
        (k as f64 + 0.5) * self.width as f64
    }

    /// Bucket points to chart points (x in seconds).
    fn points(&self, s: &[(u32, Option<f64>)]) -> Vec<Pt> {
        s.iter()
            .map(|(k, v)| Pt {
                k: *k,
                x: self.x_of(*k),
                y: *v,
            })
            .collect()
    }
}

fn phase_ok(p: &PhaseSpan) -> bool {
    p.start.is_finite() && p.end.is_finite() && p.end > p.start
}

// ---------------------------------------------------------------------------
// The charts.

fn latency_chart(h: &mut String, tl: &Timeline) {
    let p50 = tl.mean_opt(|s| s.p50_ms.map(|v| v as f64));
    let p99 = tl.max_opt(|s| s.p99_ms.map(|v| v as f64));
    let max = tl.max_opt(|s| s.max_ms.map(|v| v as f64));
    let title = "Delivery latency";
    if ![&p50, &p99, &max]
        .iter()
        .any(|s| s.iter().any(|(_, v)| v.is_some()))
    {
        note(
            h,
            title,
            "No event was delivered in this run: there is no latency to chart.",
        );
        return;
    }
    let all: Vec<f64> = [&p50, &p99, &max]
        .iter()
        .flat_map(|s| s.iter().filter_map(|(_, v)| *v))
        .collect();
    let mut y = Axis::ms(&all, "delivery latency (ms)");
    if y.log {
        y.desc = "delivery latency (ms, log scale)".into();
    }
    let scale = if y.log {
        "log scale; sub-millisecond values sit on the bottom line"
    } else {
        "linear scale"
    };
    let chart = Chart {
        x: tl.x_axis(),
        y,
        y2: None,
        phases: tl.phases,
        gap: 1,
        series: vec![
            Series::line("p50", TEAL, 2, tl.points(&p50)),
            Series::line("p99", ORANGE, 2, tl.points(&p99)),
            Series::line("max", DARK_RED, 1, tl.points(&max)),
        ],
    };
    let caption = format!(
        "Delivery latency (receive time − event timestamp) of the events delivered in each second: \
         median, 99th percentile and slowest, in ms ({scale}). Gaps are seconds with no delivery.{}",
        tl.bucket_note("mean p50; highest p99 and max")
    );
    figure(h, title, &chart, &caption);
}

fn events_chart(h: &mut String, tl: &Timeline) {
    let events = tl.rate(|s| s.events);
    let bytes = tl.rate(|s| s.bytes);
    let max_bytes = bytes.iter().filter_map(|(_, v)| *v).fold(0.0, f64::max);
    let (unit, div) = if max_bytes >= 1024.0 * 1024.0 {
        ("MiB/s", 1024.0 * 1024.0)
    } else if max_bytes >= 1024.0 {
        ("KiB/s", 1024.0)
    } else {
        ("bytes/s", 1.0)
    };
    let bytes: Vec<(u32, Option<f64>)> = bytes
        .into_iter()
        .map(|(k, v)| (k, v.map(|b| b / div)))
        .collect();
    let y = Axis::linear(&values(&events), false, "events delivered / s");
    let y2 = Axis::linear(&values(&bytes), false, &format!("received ({unit})"));
    let chart = Chart {
        x: tl.x_axis(),
        y,
        y2: Some(y2),
        phases: tl.phases,
        gap: 1,
        series: vec![
            Series::line(
                "events delivered / s (left axis)",
                BLUE,
                2,
                tl.points(&events),
            ),
            Series::line(
                &format!("received, {unit} (right axis)"),
                AMBER,
                1,
                tl.points(&bytes),
            )
            .secondary(),
        ],
    };
    let caption = format!(
        "Sequenced events delivered per second, all viewers together (one event to one viewer \
         counts once; left axis), and WebSocket payload received (right axis).{}",
        tl.bucket_note("mean per second")
    );
    figure(h, "Delivered events per second", &chart, &caption);
}

fn viewers_chart(h: &mut String, tl: &Timeline) {
    let viewers = tl.series(|v| v.last().map(|s| s.viewers as f64));
    let chart = Chart {
        x: tl.x_axis(),
        y: Axis::linear(&values(&viewers), true, "viewers connected"),
        y2: None,
        phases: tl.phases,
        gap: 1,
        series: vec![Series::line(
            "viewers connected and joined",
            INDIGO,
            2,
            tl.points(&viewers),
        )
        .area()],
    };
    let caption = format!(
        "Viewers connected and joined at the end of each second.{}",
        tl.bucket_note("the last second of each")
    );
    figure(h, "Viewers", &chart, &caption);
}

fn purchases_chart(h: &mut String, tl: &Timeline) {
    let title = "Purchases per second";
    let any =
        |f: fn(&SecondSample) -> u64| tl.buckets.iter().flat_map(|(_, v)| v).any(|s| f(s) > 0);
    type Field = (&'static str, RGBColor, fn(&SecondSample) -> u64);
    let fields: [Field; 4] = [
        ("buys sent", BLUE, |s| s.buys_sent),
        ("buys accepted", GREEN, |s| s.buys_accepted),
        ("buys refused", RED, |s| s.buys_refused),
        ("coupon claims answered", PURPLE, |s| s.claims_answered),
    ];
    let present: Vec<_> = fields.iter().filter(|(_, _, f)| any(*f)).collect();
    if present.is_empty() {
        note(h, title, "No purchases in this run.");
        return;
    }
    let mut series = Vec::new();
    let mut all = Vec::new();
    for (name, color, f) in present {
        let s = tl.rate(f);
        all.extend(values(&s));
        series.push(Series::line(name, *color, 2, tl.points(&s)));
    }
    let chart = Chart {
        x: tl.x_axis(),
        y: Axis::linear(&all, false, "requests or answers / s"),
        y2: None,
        phases: tl.phases,
        gap: 1,
        series,
    };
    let caption = format!(
        "Buy requests sent per second and the server's answers, accepted or refused, by the second \
         they arrived; coupon claims answered (claimed or refused). Lines that stayed at zero are \
         left out.{}",
        tl.bucket_note("mean per second")
    );
    figure(h, title, &chart, &caption);
}

fn server_chart(h: &mut String, tl: &Timeline) {
    let title = "Server CPU and memory";
    let cpu = tl.mean_opt(|s| s.server_cpu_pct);
    let rss = tl.max_opt(|s| s.server_rss_mib);
    let has = |s: &[(u32, Option<f64>)]| s.iter().any(|(_, v)| v.is_some());
    if !has(&cpu) && !has(&rss) {
        note(
            h,
            title,
            "The server was not sampled (no --server-pid): no CPU or memory to chart.",
        );
        return;
    }
    let mut cpu_max = values(&cpu);
    cpu_max.push(10.0);
    let chart = Chart {
        x: tl.x_axis(),
        y: Axis::linear(&cpu_max, false, "server CPU (% of one core)"),
        y2: Some(Axis::linear(&values(&rss), false, "server RSS (MiB)")),
        phases: tl.phases,
        gap: 1,
        series: vec![
            Series::line("CPU, % of one core (left axis)", TEAL, 2, tl.points(&cpu)),
            Series::line(
                "resident memory, MiB (right axis)",
                ORANGE,
                2,
                tl.points(&rss),
            )
            .secondary(),
        ],
    };
    let caption = format!(
        "The server process, sampled from /proc each second: CPU in percent of one core (100 = \
         one core busy; left axis) and resident memory in MiB (right axis).{}",
        tl.bucket_note("mean CPU; highest RSS")
    );
    figure(h, title, &chart, &caption);
}

fn percentile_chart(h: &mut String, pcts: &[(f64, u64)]) {
    let mut pts: Vec<(f64, u64)> = pcts
        .iter()
        .copied()
        .filter(|(p, _)| p.is_finite() && *p >= 0.0 && *p < 100.0)
        .collect();
    if pts.is_empty() {
        return;
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max = pcts
        .iter()
        .filter(|(p, _)| *p >= 100.0)
        .map(|(_, ms)| *ms)
        .max();
    let x = Axis::nines(pts[0].0, pts[pts.len() - 1].0);
    let ms: Vec<f64> = pts.iter().map(|(_, v)| *v as f64).collect();
    let mut y = Axis::ms(&ms, "delivery latency (ms)");
    if y.log {
        y.desc = "delivery latency (ms, log scale)".into();
    }
    let series = vec![Series::line(
        "delivery latency",
        BLUE,
        2,
        pts.iter()
            .enumerate()
            .map(|(i, (p, v))| Pt {
                k: i as u32,
                x: nines(*p),
                y: Some(*v as f64),
            })
            .collect(),
    )
    .dots()];
    let chart = Chart {
        x,
        y,
        y2: None,
        phases: &[],
        gap: u32::MAX,
        series,
    };
    let mut caption = String::from(
        "Delivery latency by percentile over the whole run, in ms. The x axis counts nines: each \
         step to the right is ten times rarer (90, 99, 99.9, …).",
    );
    if let Some(m) = max {
        let _ = write!(caption, " Slowest event: {} ms.", group(m as f64));
    }
    h.push_str("<section>\n<h2>Latency distribution</h2>\n");
    figure(h, "Latency percentiles", &chart, &caption);
    h.push_str("</section>\n");
}

fn values(s: &[(u32, Option<f64>)]) -> Vec<f64> {
    s.iter().filter_map(|(_, v)| *v).collect()
}

fn note(h: &mut String, title: &str, text: &str) {
    let _ = write!(
        h,
        "<figure class=\"empty\">\n<h3>{}</h3>\n<p class=\"note\" style=\"box-shadow:none;padding:0;margin:0\">{}</p>\n</figure>\n",
        esc(title),
        esc(text)
    );
}

fn figure(h: &mut String, title: &str, chart: &Chart, caption: &str) {
    let _ = write!(h, "<figure>\n<h3>{}</h3>\n", esc(title));
    match chart.svg() {
        Ok(svg) => {
            h.push_str(&svg);
            h.push_str("<div class=\"legend\">");
            for s in &chart.series {
                let _ = write!(
                    h,
                    "<span><i style=\"background:{}\"></i>{}</span>",
                    hex(s.color),
                    esc(&s.label)
                );
            }
            h.push_str("</div>\n");
        }
        Err(e) => {
            let _ = writeln!(
                h,
                "<p class=\"note\">This chart could not be drawn: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    let _ = write!(h, "<figcaption>{}</figcaption>\n</figure>\n", esc(caption));
}

/// Pixels per character of a phase name (15 px sans) and between names.
const NAME_CHAR_PX: i32 = 8;
const NAME_PAD_PX: i32 = 10;
/// Lanes of phase names at the top of a chart.
const NAME_LANES: usize = 4;

/// Places phase names (x of the band's start, name) in lanes: each goes to
/// the first lane whose last name ends before it starts. When every lane is
/// taken, it goes to the lane that frees first, cut to the room left before
/// the next name of that lane (at least 3 characters, else dropped) or the
/// chart's right edge. Returns (text, lane) per name, in order.
fn label_lanes(starts: &[(i32, &str)], right: i32) -> Vec<(String, usize)> {
    let width = |n: usize| n as i32 * NAME_CHAR_PX + NAME_PAD_PX;
    let mut lane_end = [i32::MIN; NAME_LANES];
    let mut out = Vec::with_capacity(starts.len());
    for (i, &(x0, name)) in starts.iter().enumerate() {
        let n = name.chars().count();
        let room_right = (right - x0).max(0);
        let free = lane_end.iter().position(|&e| e <= x0);
        let lane =
            free.unwrap_or_else(|| (0..NAME_LANES).min_by_key(|&l| lane_end[l]).expect("lanes"));
        let mut fits = ((room_right - NAME_PAD_PX) / NAME_CHAR_PX).max(0) as usize;
        if free.is_none() {
            // Shares the lane: up to where the next name starts.
            let next = starts.get(i + 1).map(|s| s.0).unwrap_or(right);
            fits = fits.min(((next - x0 - NAME_PAD_PX) / NAME_CHAR_PX).max(0) as usize);
        }
        let text = if n <= fits {
            name.to_string()
        } else if fits >= 3 {
            let mut s: String = name.chars().take(fits - 1).collect();
            s.push('…');
            s
        } else {
            String::new()
        };
        lane_end[lane] = x0 + width(text.chars().count());
        out.push((text, lane));
    }
    out
}

// ---------------------------------------------------------------------------
// Axes.

/// One axis: its range in plot units, its ticks and their labels. On a log
/// axis plot units are log10 of the value.
struct Axis {
    min: f64,
    max: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
    desc: String,
}

impl Axis {
    /// Seconds since the go signal, `[0, span]`.
    fn time(span: f64) -> Axis {
        let step = [
            1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            7200.0, 14400.0, 28800.0, 86400.0,
        ]
        .into_iter()
        .find(|s| span / s <= 10.0)
        .unwrap_or(86400.0);
        let clockish = span >= 120.0;
        let ticks = (0..)
            .map(|i| i as f64 * step)
            .take_while(|t| *t <= span + 1e-9)
            .map(|t| (t, if clockish { clock(t) } else { group(t) }))
            .collect();
        Axis {
            min: 0.0,
            max: span,
            log: false,
            ticks,
            desc: if clockish {
                "time since start (min:s)".into()
            } else {
                "time since start (s)".into()
            },
        }
    }

    /// `[0, nice max]`; `integer`: ticks on whole numbers.
    fn linear(vals: &[f64], integer: bool, desc: &str) -> Axis {
        let hi = vals
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let hi = if hi > 0.0 { hi } else { 1.0 };
        let mut step = nice_step(hi * 1.1 / 5.0);
        if integer {
            step = step.max(1.0).round();
        }
        let top = ((hi * 1.1) / step).ceil() * step;
        let n = (top / step).round() as usize;
        let ticks = (0..=n)
            .map(|i| {
                let v = i as f64 * step;
                (v, short(v))
            })
            .collect();
        Axis {
            min: 0.0,
            max: top,
            log: false,
            ticks,
            desc: desc.into(),
        }
    }

    /// Milliseconds: log when the values span more than ~50x, else linear.
    fn ms(vals: &[f64], desc: &str) -> Axis {
        let hi = vals.iter().copied().fold(0.0, f64::max);
        let lo = vals
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        if !(lo.is_finite() && hi / lo >= 50.0) {
            let mut a = Axis::linear(vals, false, desc);
            for t in &mut a.ticks {
                t.1 = group(t.0);
            }
            return a;
        }
        let min = lo.log10().floor();
        let max = hi.log10() + 0.1;
        let decades = max - min;
        let mults: &[f64] = if decades <= 3.5 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut ticks = Vec::new();
        let mut d = min as i32;
        while (d as f64) <= max.ceil() {
            for m in mults {
                let v = m * 10f64.powi(d);
                let p = v.log10();
                if p >= min - 1e-9 && p <= max + 1e-9 {
                    ticks.push((p, group(v)));
                }
            }
            d += 1;
        }
        Axis {
            min,
            max,
            log: true,
            ticks,
            desc: desc.into(),
        }
    }

    /// Percentiles on a nines scale, covering `[lo, hi]`.
    fn nines(lo: f64, hi: f64) -> Axis {
        let min = if lo >= 50.0 { nines(50.0) } else { 0.0 };
        let max = (nines(hi) - 1e-9).ceil().max(1.0).max(nines(hi));
        let mut marks = vec![0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9];
        if max - min <= 4.5 {
            marks.extend([99.95, 99.99, 99.995, 99.999]);
        } else {
            marks.extend([99.99, 99.999, 99.9999, 99.99999]);
        }
        let ticks = marks
            .into_iter()
            .map(|p| (nines(p), p))
            .filter(|(x, _)| *x >= min - 1e-9 && *x <= max + 1e-9)
            .map(|(x, p)| (x, format!("{p}")))
            .collect();
        Axis {
            min,
            max,
            log: false,
            ticks,
            desc: "percentile (nines scale)".into(),
        }
    }

    /// A value to plot units.
    fn pos(&self, v: f64) -> f64 {
        if self.log {
            v.max(10f64.powf(self.min)).log10().min(self.max)
        } else {
            v
        }
    }

    fn label(&self, p: f64) -> String {
        self.ticks
            .iter()
            .min_by(|a, b| (a.0 - p).abs().total_cmp(&(b.0 - p).abs()))
            .filter(|(x, _)| (x - p).abs() < 1e-6 * (self.max - self.min).abs().max(1.0))
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    fn coord(&self) -> Ticked {
        Ticked {
            lo: self.min,
            hi: if self.max > self.min {
                self.max
            } else {
                self.min + 1.0
            },
            keys: self.ticks.iter().map(|t| t.0).collect(),
        }
    }
}

/// A linear f64 coordinate whose grid lines and labels are exactly our
/// ticks (plotters' `WithKeyPoints<RangedCoordf64>` cannot take a label
/// formatter in 0.3.7).
struct Ticked {
    lo: f64,
    hi: f64,
    keys: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * frac).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.keys.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// -log10(1 - p/100): 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p.clamp(0.0, 99.99999) / 100.0).log10()
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|m| *m >= norm - 1e-9)
        .unwrap_or(10.0);
    m * mag
}

/// 1,500 -> "1.5k", 2,000,000 -> "2M", 0.25 -> "0.25".
fn short(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        return trim(v);
    };
    format!("{}{suffix}", trim(x))
}

/// Up to two decimals, no trailing zeros; thousands grouped.
fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        return group(v);
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// 12345 -> "12,345" (rounded to a whole number; below 1, two decimals).
fn group(v: f64) -> String {
    if v.abs() < 1.0 && v != 0.0 {
        let s = format!("{v:.2}");
        return s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as m:ss (h:mm:ss from an hour on).
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

// ---------------------------------------------------------------------------
// Drawing.

#[derive(Clone, Copy)]
struct Pt {
    /// Index (bucket), to find gaps where buckets are missing.
    k: u32,
    x: f64,
    y: Option<f64>,
}

struct Series {
    label: String,
    color: RGBColor,
    width: u32,
    secondary: bool,
    area: bool,
    dots: bool,
    points: Vec<Pt>,
}

impl Series {
    fn line(label: &str, color: RGBColor, width: u32, points: Vec<Pt>) -> Series {
        Series {
            label: label.into(),
            color,
            width,
            secondary: false,
            area: false,
            dots: false,
            points,
        }
    }
    fn secondary(mut self) -> Series {
        self.secondary = true;
        self
    }
    fn area(mut self) -> Series {
        self.area = true;
        self
    }
    fn dots(mut self) -> Series {
        self.dots = true;
        self
    }

    /// The runs of consecutive points with a value, in plot units.
    fn runs(&self, y: &Axis, gap: u32) -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut prev: Option<u32> = None;
        for p in &self.points {
            let Some(v) = p.y else {
                prev = None;
                continue;
            };
            let joined = prev.is_some_and(|k| p.k.saturating_sub(k) <= gap);
            if !joined {
                runs.push(Vec::new());
            }
            if let Some(r) = runs.last_mut() {
                r.push((p.x, y.pos(v)));
            }
            prev = Some(p.k);
        }
        runs
    }
}

struct Chart<'a> {
    x: Axis,
    y: Axis,
    /// The right-hand axis, for the series marked `secondary`.
    y2: Option<Axis>,
    phases: &'a [PhaseSpan],
    /// Largest step of the point index still drawn as one line.
    gap: u32,
    /// In the legend's order; drawn last first, so the first is on top.
    series: Vec<Series>,
}

type DrawResult<T> = Result<T, Box<dyn Error>>;

impl Chart<'_> {
    fn svg(&self) -> DrawResult<String> {
        let mut buf = String::new();
        self.draw(&mut buf)?;
        // The page sizes the chart; keep the aspect ratio from viewBox.
        let svg = buf.replacen(
            &format!("<svg width=\"{WIDTH}\" height=\"{HEIGHT}\""),
            &format!(
                "<svg role=\"img\" preserveAspectRatio=\"xMidYMid meet\" width=\"{WIDTH}\" height=\"{HEIGHT}\""
            ),
            1,
        );
        Ok(svg)
    }

    fn draw(&self, buf: &mut String) -> DrawResult<()> {
        let root = SVGBackend::with_string(buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (x, y) = (&self.x, &self.y);
        let y2 = self.y2.as_ref().unwrap_or(y);
        let mut chart = ChartBuilder::on(&root)
            .margin_top(12)
            .margin_left(8)
            .margin_bottom(6)
            .margin_right(if self.y2.is_some() { 8 } else { 30 })
            .x_label_area_size(46)
            .y_label_area_size(74)
            .right_y_label_area_size(if self.y2.is_some() { 74 } else { 0 })
            .build_cartesian_2d(x.coord(), y.coord())?
            .set_secondary_coord(x.coord(), y2.coord());

        // Phase bands under everything.
        let bands: Vec<(usize, &PhaseSpan)> = self
            .phases
            .iter()
            .filter(|p| phase_ok(p))
            .enumerate()
            .filter(|(_, p)| p.end > x.min && p.start < x.max)
            .collect();
        chart.draw_series(bands.iter().map(|(i, p)| {
            Rectangle::new(
                [(p.start.max(x.min), y.min), (p.end.min(x.max), y.max)],
                BANDS[i % BANDS.len()].mix(0.11).filled(),
            )
        }))?;

        let xf = |v: &f64| x.label(*v);
        let yf = |v: &f64| y.label(*v);
        let label_style = (FONT, 15).into_font().color(&TEXT);
        let desc_style = (FONT, 16).into_font().color(&TEXT);
        chart
            .configure_mesh()
            .x_desc(x.desc.as_str())
            .y_desc(y.desc.as_str())
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS)
            .label_style(label_style.clone())
            .axis_desc_style(desc_style.clone())
            .draw()?;
        if let Some(y2) = &self.y2 {
            let y2f = |v: &f64| y2.label(*v);
            chart
                .configure_secondary_axes()
                .y_desc(y2.desc.as_str())
                .y_label_formatter(&y2f)
                .axis_style(AXIS)
                .label_style(label_style)
                .axis_desc_style(desc_style)
                .draw()?;
        }

        for s in self.series.iter().rev() {
            let axis = if s.secondary { y2 } else { y };
            for run in s.runs(axis, self.gap) {
                let single = run.len() == 1;
                let style = s.color.stroke_width(s.width);
                if s.area && !single {
                    let area = AreaSeries::new(run.clone(), axis.min, s.color.mix(0.18))
                        .border_style(style);
                    if s.secondary {
                        chart.draw_secondary_series(area)?;
                    } else {
                        chart.draw_series(area)?;
                    }
                    continue;
                }
                // A lone point would draw nothing as a line: a dot.
                let dot = if s.dots || single { 3 } else { 0 };
                let line =
                    LineSeries::new(run, s.color.filled().stroke_width(s.width)).point_size(dot);
                if s.secondary {
                    chart.draw_secondary_series(line)?;
                } else {
                    chart.draw_series(line)?;
                }
            }
        }

        // Phase names on top, in lanes so that names of phases starting
        // close together do not overlap; a name is cut only when no lane
        // has room for it (the list above the charts has every name whole).
        let name_style = (FONT, 15).into_font().color(&TEXT);
        let starts: Vec<(i32, &str)> = bands
            .iter()
            .map(|(_, p)| {
                let x0 = chart.backend_coord(&(p.start.max(x.min), y.max)).0;
                (x0, p.name.as_str())
            })
            .collect();
        let right = chart.backend_coord(&(x.max, y.max)).0;
        for ((_, p), (name, lane)) in bands.iter().zip(label_lanes(&starts, right)) {
            if name.is_empty() {
                continue;
            }
            let at = (p.start.max(x.min), y.max);
            chart.draw_series(std::iter::once(
                EmptyElement::at(at)
                    + Text::new(name, (5, 4 + 17 * lane as i32), name_style.clone()),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A realistic run of `secs` seconds: ramp-up, chat, a flash sale,
    /// drain; one latency spike; seconds without delivery; a sampled server.
    fn run(secs: u32) -> (Vec<SecondSample>, Vec<PhaseSpan>) {
        let f = secs as f64;
        let phases = vec![
            PhaseSpan {
                name: "ramp #1".into(),
                start: 0.0,
                end: f * 0.15,
            },
            PhaseSpan {
                name: "chat #2".into(),
                start: f * 0.15,
                end: f * 0.55,
            },
            PhaseSpan {
                name: "flash-sale #3".into(),
                start: f * 0.55,
                end: f * 0.85,
            },
            PhaseSpan {
                name: "drain".into(),
                start: f * 0.85,
                end: f,
            },
        ];
        let mut seconds = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 1000) as f64 / 1000.0
        };
        for t in 0..secs {
            let x = t as f64 / f.max(1.0);
            let viewers = if x < 0.15 {
                (10_000.0 * x / 0.15) as u64
            } else if x < 0.85 {
                10_000
            } else {
                (10_000.0 * (1.0 - (x - 0.85) / 0.15)).max(0.0) as u64
            };
            let sale = (0.55..0.85).contains(&x);
            let quiet = (0.30..0.32).contains(&x);
            let events = if quiet {
                0
            } else {
                viewers * (20 + (rnd() * 10.0) as u64)
            };
            let p50 = 4.0 + rnd() * 3.0 + if sale { 6.0 } else { 0.0 };
            let spike = (0.62..0.63).contains(&x);
            let lat = |v: f64| (events > 0).then_some(v.round() as u64);
            let buys = if sale {
                (300.0 + rnd() * 200.0) as u64
            } else {
                0
            };
            seconds.push(SecondSample {
                t,
                viewers,
                events,
                bytes: events * 180,
                p50_ms: lat(p50),
                p99_ms: lat(p50 * 4.0 + if spike { 400.0 } else { 0.0 }),
                max_ms: lat(p50 * 9.0 + if spike { 1800.0 } else { rnd() * 60.0 }),
                chat_sent: 40,
                reactions_sent: 100,
                buys_sent: buys,
                buys_accepted: buys * 2 / 3,
                buys_refused: buys - buys * 2 / 3,
                claims_answered: if sale { 50 } else { 0 },
                server_cpu_pct: (t % 97 != 5).then_some(40.0 + 110.0 * x + rnd() * 20.0),
                server_rss_mib: Some(80.0 + 300.0 * x),
                ..SecondSample::default()
            });
        }
        (seconds, phases)
    }

    fn summary() -> Vec<(String, String)> {
        vec![
            ("viewers joined".into(), "10,000 of 10,000".into()),
            ("events delivered".into(), "61,234,567 (204,115/s)".into()),
            (
                "delivery latency".into(),
                "p50 5 ms · p99 31 ms · max 1,873 ms".into(),
            ),
            ("gaps & duplicates".into(), "0 & 0".into()),
        ]
    }

    const PCTS: &[(f64, u64)] = &[
        (50.0, 5),
        (75.0, 7),
        (90.0, 11),
        (95.0, 16),
        (99.0, 31),
        (99.9, 140),
        (99.99, 820),
        (100.0, 1873),
    ];

    fn svgs(doc: &str) -> usize {
        doc.matches("<svg").count()
    }

    #[test]
    fn full_run_has_every_chart() {
        let secs = std::env::var("STORM_HTML_EXAMPLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let (seconds, phases) = run(secs);
        let failures = vec!["p99 delivery latency 212 ms > 200 ms".to_string()];
        let doc = render(&HtmlInput {
            title: "flash-sale — 10,000 viewers",
            subtitle: "scenarios/flash.toml · run 7f3a · ws://127.0.0.1:8080",
            passed: false,
            failures: &failures,
            summary: &summary(),
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: PCTS,
        });
        assert!(doc.starts_with("<!DOCTYPE html>"));
        assert!(doc.trim_end().ends_with("</html>"));
        assert_eq!(
            svgs(&doc),
            6,
            "latency, events, viewers, buys, server, percentiles"
        );
        assert!(doc.contains(">FAIL<"));
        assert!(doc.contains("p99 delivery latency 212 ms &gt; 200 ms"));
        assert!(doc.contains("gaps &amp; duplicates"));
        assert!(doc.contains("flash-sale #3"), "phase names are drawn");
        assert!(doc.contains("time since start (min:s)"));
        assert!(doc.contains("Slowest event: 1,873 ms."));
        assert!(!doc.contains("No purchases in this run"));
        assert!(!doc.contains("not sampled"));
        // Offline: no script, no external resource.
        assert!(!doc.contains("<script"));
        assert!(!doc.contains("src="));
        assert!(!doc.contains("href="));
        assert!(!doc.contains("url("));
        assert!(!doc.contains("@import"));
        // Seconds 180..192 delivered nothing: the latency lines break there
        // (one polyline per run), they do not drop to zero.
        assert!(doc.matches("<polyline").count() > 6);
    }

    #[test]
    fn pass_banner_and_absent_sections() {
        let (mut seconds, phases) = run(120);
        for s in &mut seconds {
            s.buys_sent = 0;
            s.buys_accepted = 0;
            s.buys_refused = 0;
            s.claims_answered = 0;
            s.server_cpu_pct = None;
            s.server_rss_mib = None;
        }
        let doc = render(&HtmlInput {
            title: "chat",
            subtitle: "",
            passed: true,
            failures: &[],
            summary: &summary(),
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: &[],
        });
        assert!(doc.contains(">PASS<"));
        assert!(doc.contains("every pass criterion was met"));
        assert!(doc.contains("No purchases in this run."));
        assert!(doc.contains("The server was not sampled (no --server-pid)"));
        assert_eq!(svgs(&doc), 3, "latency, events, viewers");
    }

    #[test]
    fn strings_are_escaped() {
        let (seconds, mut phases) = run(30);
        phases[1].name = "<b>chat</b>".into();
        let failures = vec!["<img src=x onerror=alert(1)>".to_string()];
        let summary = vec![("a<b".to_string(), "\"quoted\" & 'single'".to_string())];
        let doc = render(&HtmlInput {
            title: "<script>alert('x')</script>",
            subtitle: "a & b",
            passed: false,
            failures: &failures,
            summary: &summary,
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: &[],
        });
        assert!(!doc.contains("<script"));
        assert!(doc.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(!doc.contains("<img"));
        assert!(!doc.contains("<b>chat"));
        assert!(doc.contains("&lt;b&gt;chat"));
        assert!(doc.contains("a&lt;b"));
        assert!(doc.contains("&quot;quoted&quot; &amp; &#39;single&#39;"));
        assert!(doc.contains("a &amp; b"));
    }

    #[test]
    fn empty_input_renders() {
        let doc = render(&HtmlInput {
            title: "",
            subtitle: "",
            passed: false,
            failures: &[],
            summary: &[],
            seconds: &[],
            phases: &[],
            latency_percentiles: &[],
        });
        assert!(doc.contains(">FAIL<"));
        assert!(doc.contains("No per-second samples"));
        assert_eq!(svgs(&doc), 0);
        // Phases but no samples; percentiles only.
        let (_, phases) = run(60);
        let doc = render(&HtmlInput {
            title: "x",
            subtitle: "",
            passed: true,
            failures: &[],
            summary: &[],
            seconds: &[],
            phases: &phases,
            latency_percentiles: PCTS,
        });
        assert_eq!(svgs(&doc), 1);
    }

    #[test]
    fn all_none_latency_and_one_second() {
        let (mut seconds, phases) = run(300);
        for s in &mut seconds {
            s.events = 0;
            s.bytes = 0;
            s.p50_ms = None;
            s.p99_ms = None;
            s.max_ms = None;
        }
        let input = |seconds: &[SecondSample], phases: &[PhaseSpan]| {
            render(&HtmlInput {
                title: "t",
                subtitle: "",
                passed: false,
                failures: &[],
                summary: &[],
                seconds,
                phases,
                latency_percentiles: &[(50.0, 0), (99.0, 0), (100.0, 0)],
            })
        };
        let doc = input(&seconds, &phases);
        assert!(doc.contains("no latency to chart"));
        // events, viewers, buys, server, percentiles (all zero: linear).
        assert_eq!(svgs(&doc), 5);

        let (one, phases) = run(1);
        let doc = input(&one, &phases);
        assert!(doc.contains("time since start (s)"));
        assert!(svgs(&doc) >= 3);
        // A single point is drawn as a dot, not as nothing.
        assert!(doc.contains("<circle"));
    }

    #[test]
    fn an_hour_is_downsampled() {
        let (seconds, phases) = run(3600);
        let doc = render(&HtmlInput {
            title: "soak",
            subtitle: "",
            passed: true,
            failures: &[],
            summary: &summary(),
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: PCTS,
        });
        assert_eq!(svgs(&doc), 6);
        assert!(doc.contains("Each point covers 5 s"));
        assert!(doc.len() < 1_500_000, "{} bytes", doc.len());
    }

    #[test]
    fn gaps_and_weird_values() {
        // Unsorted, missing seconds, NaN CPU, a phase past the data, an
        // inverted phase.
        let (mut seconds, mut phases) = run(50);
        seconds.retain(|s| s.t % 10 != 3);
        seconds.reverse();
        seconds[0].server_cpu_pct = Some(f64::NAN);
        phases.push(PhaseSpan {
            name: "late".into(),
            start: 40.0,
            end: 90.0,
        });
        phases.push(PhaseSpan {
            name: "backwards".into(),
            start: 9.0,
            end: 2.0,
        });
        let doc = render(&HtmlInput {
            title: "t",
            subtitle: "",
            passed: true,
            failures: &[],
            summary: &[],
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: &[(f64::NAN, 3), (-1.0, 2), (99.999, 9)],
        });
        assert_eq!(svgs(&doc), 6);
        assert!(!doc.contains("NaN"));
        assert!(!doc.contains("backwards"));
    }

    #[test]
    fn phase_names_starting_close_together_take_separate_lanes_whole() {
        // Three phases within a few pixels: three lanes, nothing cut.
        let starts = [(100, "join #1"), (104, "flash sale #2"), (108, "chat #3")];
        let placed = label_lanes(&starts, 900);
        assert_eq!(
            placed,
            vec![
                ("join #1".to_string(), 0),
                ("flash sale #2".to_string(), 1),
                ("chat #3".to_string(), 2)
            ]
        );
        // Far apart: all on the first lane.
        let starts = [(100, "join #1"), (400, "flash sale #2")];
        assert!(label_lanes(&starts, 900).iter().all(|(_, l)| *l == 0));
        // At the right edge, a long name is cut to the room left.
        let placed = label_lanes(&[(850, "flash sale #2")], 900);
        assert!(
            placed[0].0.ends_with('…') && placed[0].0.len() < 14,
            "{placed:?}"
        );
        // More names at one spot than lanes: the extra one is not drawn
        // over another (no room before the next), the lanes stay whole.
        let starts: Vec<(i32, &str)> = (0..6).map(|i| (100 + i, "reconnect #9")).collect();
        let placed = label_lanes(&starts, 900);
        assert!(placed[..NAME_LANES]
            .iter()
            .all(|(t, _)| t == "reconnect #9"));
        assert!(placed[NAME_LANES].0.is_empty(), "{placed:?}");
    }

    #[test]
    fn helpers() {
        assert_eq!(group(1234567.0), "1,234,567");
        assert_eq!(group(0.5), "0.5");
        assert_eq!(short(250_000.0), "250k");
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(3725.0), "1:02:05");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(2300.0), 2500.0);
    }

    #[test]
    fn writes_a_file() {
        let (seconds, phases) = run(90);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        let input = HtmlInput {
            title: "chat — 500 viewers",
            subtitle: "run 1",
            passed: true,
            failures: &[],
            summary: &summary(),
            seconds: &seconds,
            phases: &phases,
            latency_percentiles: PCTS,
        };
        write(&path, &input).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render(&input));
        assert!(write(&dir.path().join("no/such/dir.html"), &input).is_err());
    }

    /// `STORM_HTML_EXAMPLE=/tmp/storm-example.html cargo test -p
    /// flashcast-storm --lib html::tests::example` writes an example page
    /// to look at.
    #[test]
    fn example() {
        let Some(path) = std::env::var_os("STORM_HTML_EXAMPLE") else {
            return;
        };
        let secs = std::env::var("STORM_HTML_EXAMPLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let (seconds, phases) = run(secs);
        let failures = vec![
            "p99 delivery latency 212 ms > 200 ms (at 6:12, during flash-sale #3)".to_string(),
            "3 viewers saw a sequence gap".to_string(),
        ];
        write(
            Path::new(&path),
            &HtmlInput {
                title: "flash-sale — 10,000 viewers",
                subtitle: "scenarios/flash-sale.toml · run 7f3a9c · 2026-11-23 10:20:13 UTC · ws://127.0.0.1:8080",
                passed: false,
                failures: &failures,
                summary: &summary(),
                seconds: &seconds,
                phases: &phases,
                latency_percentiles: PCTS,
            },
        )
        .unwrap();
    }
}
