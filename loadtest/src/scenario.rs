//! Scenario files: a TOML description of a storm as phases on a timeline,
//! and the pass criteria the run is judged by.
//!
//! Times are seconds after the go signal (`at`), so phases may overlap (a
//! chat phase during a flash sale, say). Which viewers take part in a phase
//! is decided by [`participants`]: spread evenly over all viewers, so every
//! worker process gets its fair share. Every field is checked when the file
//! is loaded; the error names the file, the phase and what to change.

use std::path::{Path, PathBuf};

use flashcast_wire::ReactionKind;
use serde::{Deserialize, Serialize};

/// Longest timeline a scenario may describe (the per-second buffers of the
/// report are sized from it).
pub const MAX_SCENARIO_SECS: f64 = 3_600.0;
/// Most viewers one scenario may ask for.
pub const MAX_VIEWERS: u32 = 200_000;
/// Most phases in one file.
pub const MAX_PHASES: usize = 64;
/// Questions a room keeps by the server's default (`max_questions`): more
/// asks in one run would be refused.
pub const MAX_QUESTIONS: u64 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub target: Target,
    pub viewers: Viewers,
    #[serde(default)]
    pub load: Load,
    #[serde(default, rename = "phase")]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub pass: Pass,
    /// Bounds per phase and per kind (`[[threshold]]`).
    #[serde(default, rename = "threshold", skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<crate::threshold::Threshold>,
}

/// Where the server is and which room to storm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Base HTTP URL of the server; WebSockets go to `{url}/ws`, the admin
    /// API to `{url}/api/v1`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Room to join. With `create_room`, a fresh room `{room}-{run id}` is
    /// created for the run (needs the admin key) and closed afterwards.
    #[serde(default = "default_room")]
    pub room: String,
    #[serde(default)]
    pub create_room: bool,
    /// Admin key; usually given with `--admin-key` or FLASHCAST_ADMIN_KEY
    /// instead of being written into the file.
    #[serde(default)]
    pub admin_key: Option<String>,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            url: default_url(),
            room: default_room(),
            create_room: false,
            admin_key: None,
        }
    }
}

fn default_url() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_room() -> String {
    "demo".into()
}

/// How viewers identify themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// No token: watch and chat only (guests cannot buy).
    Guest,
    /// A viewer token per viewer, minted through the admin API.
    Token,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Viewers {
    /// Viewers in the run (each joins in one of the `join` phases).
    pub count: u32,
    #[serde(default = "default_auth")]
    pub auth: Auth,
}

fn default_auth() -> Auth {
    Auth::Guest
}

/// How the tool spreads itself; none of it changes what the server sees
/// except the source addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Worker processes sharing the viewers (each has its own open-file
    /// budget and source addresses). 1 runs everything in this process.
    #[serde(default = "one")]
    pub workers: u32,
    /// Source addresses 127.0.0.x to spread connections over; 0 = one per
    /// 250 viewers (the server lets 500 joins per address through at once).
    #[serde(default)]
    pub source_ips: u32,
    /// Seconds allowed for connect + handshake + `joined`, per attempt.
    #[serde(default = "ten")]
    pub join_timeout: f64,
    /// Extra attempts for a join that failed.
    #[serde(default = "two")]
    pub join_retries: u32,
    /// Seconds to keep reading after the last phase ends.
    #[serde(default = "three")]
    pub drain: f64,
    /// Seed of every random choice (offsets within a phase), so two runs
    /// of one file send the same things at the same offsets.
    #[serde(default = "seed")]
    pub seed: u64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            workers: 1,
            source_ips: 0,
            join_timeout: 10.0,
            join_retries: 2,
            drain: 3.0,
            seed: seed(),
        }
    }
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn ten() -> f64 {
    10.0
}
fn three() -> f64 {
    3.0
}
fn seed() -> u64 {
    0x5eed
}

/// How the participants of a triggered phase (flash sale, coupon drop)
/// spread their actions over its `within` seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly (a seeded uniform draw).
    #[default]
    Uniform,
    /// "The host says BUY NOW": most act at once, the rest trail off (a
    /// truncated exponential: about 63% in the first fifth of `within`,
    /// 86% in the first two fifths).
    Spike,
}

impl Arrival {
    /// The moment, as a fraction of `within`, of a participant whose
    /// seeded draw is `u` in [0, 1).
    pub fn fraction(self, u: f64) -> f64 {
        match self {
            Arrival::Uniform => u,
            Arrival::Spike => {
                // Inverse of the exponential CDF with rate 5, truncated to [0, 1).
                let k: f64 = 5.0;
                -(1.0 - u * (1.0 - (-k).exp())).ln() / k
            }
        }
    }
}

/// One step of the timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// `viewers` viewers (the next ones not yet assigned to a join phase)
    /// connect and join, evenly spread over `over` seconds.
    ///
    /// With `stages` (`[[secs, to_rate], ...]`, from rate 0), the joins
    /// follow that shape instead of an even spread: the rate ramps linearly
    /// to each stage's `to_rate` over its seconds (a stage with the same
    /// rate holds it), scaled so that exactly `viewers` join; `over` must
    /// be the stages' total.
    Join {
        at: f64,
        viewers: u32,
        over: f64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stages: Vec<(f64, f64)>,
        /// Open model: each of these viewers leaves `stay` seconds after
        /// its join moment, so viewers come and go at the phase's rate
        /// instead of staying to the end (a fixed population).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stay: Option<f64>,
    },
    /// `senders` viewers chat, `rate` messages per second in all, for
    /// `duration` seconds.
    Chat {
        at: f64,
        duration: f64,
        rate: f64,
        senders: u32,
    },
    /// `senders` viewers react, `rate` reactions per second in all.
    Reactions {
        at: f64,
        duration: f64,
        rate: f64,
        senders: u32,
        #[serde(default = "heart")]
        kinds: Vec<ReactionKind>,
    },
    /// A host opens a poll at `at`; `voters` viewers vote within `over`
    /// seconds of seeing it; it is closed `over` + 2 seconds later.
    Poll {
        at: f64,
        voters: u32,
        over: f64,
        #[serde(default = "poll_options")]
        options: Vec<String>,
    },
    /// A sale of `stock` units starts at `at`; `buyers` viewers hit buy
    /// within `within` seconds of seeing it start.
    FlashSale {
        at: f64,
        stock: u32,
        buyers: u32,
        within: f64,
        #[serde(default = "one")]
        per_user_limit: u32,
        #[serde(default = "one")]
        qty: u32,
        #[serde(default = "sale_price")]
        price_minor: u64,
        #[serde(default = "sale_secs")]
        duration_secs: u64,
        #[serde(default)]
        arrival: Arrival,
    },
    /// A host drops `count` coupons at `at`; `claimers` viewers claim within
    /// `within` seconds of seeing the drop.
    CouponDrop {
        at: f64,
        count: u32,
        claimers: u32,
        within: f64,
        #[serde(default = "ten_percent")]
        percent_off: u8,
        #[serde(default)]
        arrival: Arrival,
    },
    /// `senders` viewers ask questions, `rate` questions per second in all
    /// (questions share the server's per-user chat limit).
    Questions {
        at: f64,
        duration: f64,
        rate: f64,
        senders: u32,
    },
    /// `voters` viewers each upvote, at a moment within `within` seconds of
    /// `at`, the newest question they have seen (the most upvoted one of
    /// their snapshot if none was asked since they joined).
    Upvotes { at: f64, voters: u32, within: f64 },
    /// `fraction` of the joined viewers drop their connection at moments
    /// spread over `over` seconds and resume at once with their last seq.
    Reconnect { at: f64, fraction: f64, over: f64 },
    /// Replays a recording (JSON lines, see docs/recording.md): every
    /// recorded connection becomes `scale` extra viewers doing the same
    /// things, `speed` times faster.
    Replay {
        at: f64,
        file: PathBuf,
        #[serde(default = "one_f")]
        speed: f64,
        #[serde(default = "one")]
        scale: u32,
    },
}

fn heart() -> Vec<ReactionKind> {
    vec![ReactionKind::Heart]
}
fn poll_options() -> Vec<String> {
    vec!["Yes".into(), "No".into()]
}
fn sale_price() -> u64 {
    1_900
}
fn sale_secs() -> u64 {
    600
}
fn ten_percent() -> u8 {
    10
}
fn one_f() -> f64 {
    1.0
}

impl Phase {
    pub fn kind(&self) -> &'static str {
        match self {
            Phase::Join { .. } => "join",
            Phase::Chat { .. } => "chat",
            Phase::Reactions { .. } => "reactions",
            Phase::Questions { .. } => "questions",
            Phase::Upvotes { .. } => "upvotes",
            Phase::Poll { .. } => "poll",
            Phase::FlashSale { .. } => "flash_sale",
            Phase::CouponDrop { .. } => "coupon_drop",
            Phase::Reconnect { .. } => "reconnect",
            Phase::Replay { .. } => "replay",
        }
    }

    pub fn at(&self) -> f64 {
        match self {
            Phase::Join { at, .. }
            | Phase::Chat { at, .. }
            | Phase::Reactions { at, .. }
            | Phase::Questions { at, .. }
            | Phase::Upvotes { at, .. }
            | Phase::Poll { at, .. }
            | Phase::FlashSale { at, .. }
            | Phase::CouponDrop { at, .. }
            | Phase::Reconnect { at, .. }
            | Phase::Replay { at, .. } => *at,
        }
    }

    /// Seconds after the go signal when the phase's own activity is over
    /// (a replay's length is only known once its file is read).
    pub fn end(&self, replay_secs: f64) -> f64 {
        match self {
            Phase::Join { at, over, .. } => at + over,
            Phase::Chat { at, duration, .. }
            | Phase::Reactions { at, duration, .. }
            | Phase::Questions { at, duration, .. } => at + duration,
            Phase::Upvotes { at, within, .. } => at + within + 1.0,
            Phase::Poll { at, over, .. } => at + over + 2.0,
            Phase::FlashSale { at, within, .. } | Phase::CouponDrop { at, within, .. } => {
                at + within + 1.0
            }
            Phase::Reconnect { at, over, .. } => at + over + 1.0,
            Phase::Replay { at, speed, .. } => at + replay_secs / speed,
        }
    }
}

/// What a run must achieve. Absent bounds are not checked; the defaults
/// are the ones every storm should meet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pass {
    /// Percent of viewers that must join.
    #[serde(default = "hundred")]
    pub min_joined_pct: f64,
    #[serde(default)]
    pub max_gaps: u64,
    #[serde(default)]
    pub max_duplicates: u64,
    /// Error frames that are not an expected refusal (sold_out,
    /// per_user_limit and coupons_gone are expected in a storm).
    #[serde(default)]
    pub max_unexpected_errors: u64,
    /// Resumes the server answered with `gap: true`.
    #[serde(default)]
    pub max_resume_gaps: u64,
    pub max_p99_ms: Option<u64>,
    pub max_p999_ms: Option<u64>,
    pub max_latency_ms: Option<u64>,
    pub max_join_p99_ms: Option<u64>,
    pub max_buy_p99_ms: Option<u64>,
    pub max_claim_p99_ms: Option<u64>,
    /// Peak server RSS (needs `--server-pid`).
    pub max_server_rss_mib: Option<f64>,
    /// Server CPU per delivered event over the whole run (needs
    /// `--server-pid`).
    pub max_server_cpu_us_per_event: Option<f64>,
    /// A flash sale must sell exactly min(stock, demand): every unit a
    /// buyer could take was taken, and not one more.
    #[serde(default = "yes")]
    pub exact_sale: bool,
}

impl Default for Pass {
    fn default() -> Self {
        Pass {
            min_joined_pct: 100.0,
            max_gaps: 0,
            max_duplicates: 0,
            max_unexpected_errors: 0,
            max_resume_gaps: 0,
            max_p99_ms: None,
            max_p999_ms: None,
            max_latency_ms: None,
            max_join_p99_ms: None,
            max_buy_p99_ms: None,
            max_claim_p99_ms: None,
            max_server_rss_mib: None,
            max_server_cpu_us_per_event: None,
            exact_sale: true,
        }
    }
}

fn hundred() -> f64 {
    100.0
}
fn yes() -> bool {
    true
}

/// A scenario file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type; the message carries the
    /// line and column.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl Scenario {
    /// Reads, parses and checks a scenario file. Relative `file` paths of
    /// replay phases are resolved against the scenario's directory.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: file.clone(),
            source,
        })?;
        let mut s = Scenario::parse(&text, &file)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in &mut s.phases {
            if let Phase::Replay { file, .. } = p {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
        Ok(s)
    }

    /// Parses and checks scenario text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.into(),
            message: locate_phase_error(text)
                .unwrap_or_else(|| e.to_string().trim_end().to_string()),
        })?;
        s.validate().map_err(|message| ScenarioError::Invalid {
            file: file.into(),
            message,
        })?;
        Ok(s)
    }

    /// Every rule a file must follow; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let v = self.viewers.count;
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if v == 0 || v > MAX_VIEWERS {
            return Err(format!("viewers.count must be 1-{MAX_VIEWERS}, got {v}"));
        }
        let url_ok = self
            .target
            .url
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty());
        if !url_ok {
            return Err(format!(
                "target.url must be an http:// URL (the WebSocket is {{url}}/ws), got {:?}",
                self.target.url
            ));
        }
        if flashcast_wire::ids::RoomId::new(&self.target.room).is_err() {
            return Err(format!(
                "target.room {:?} is not a valid room id",
                self.target.room
            ));
        }
        let l = &self.load;
        if l.workers == 0 || l.workers > 64 || l.workers > v {
            return Err(format!(
                "load.workers must be 1-64 and at most viewers.count, got {}",
                l.workers
            ));
        }
        if l.source_ips != 0 && l.source_ips < l.workers {
            return Err("load.source_ips must be 0 (automatic) or at least load.workers".into());
        }
        if l.source_ips > 254 * 256 {
            return Err("load.source_ips: at most 65,024 loopback addresses".into());
        }
        secs("load.join_timeout", l.join_timeout, false)?;
        secs("load.drain", l.drain, true)?;
        if self.phases.is_empty() {
            return Err("a scenario needs at least one [[phase]]".into());
        }
        if self.phases.len() > MAX_PHASES {
            return Err(format!("at most {MAX_PHASES} phases"));
        }
        let mut joining = 0u64;
        let mut questions = 0u64;
        for (i, p) in self.phases.iter().enumerate() {
            if let Phase::Questions { duration, rate, .. } = p {
                questions += (rate * duration).round() as u64;
                if questions > MAX_QUESTIONS {
                    return Err(format!(
                        "phase {} (questions): the questions phases ask {questions} questions, more than the {MAX_QUESTIONS} a room keeps by the server's default max_questions",
                        i + 1
                    ));
                }
            }
            let here = |m: String| format!("phase {} ({}): {m}", i + 1, p.kind());
            secs("at", p.at(), true).map_err(here)?;
            self.check_phase(p).map_err(here)?;
            if let Phase::Join { viewers, .. } = p {
                joining += *viewers as u64;
            }
            if p.end(0.0) > MAX_SCENARIO_SECS {
                return Err(here(format!(
                    "ends after {MAX_SCENARIO_SECS} s, the longest timeline allowed"
                )));
            }
        }
        if joining != v as u64 {
            return Err(format!(
                "the join phases join {joining} viewers but viewers.count is {v}: every viewer joins in exactly one join phase"
            ));
        }
        let p = &self.pass;
        if !(0.0..=100.0).contains(&p.min_joined_pct) {
            return Err("pass.min_joined_pct must be 0-100".into());
        }
        if self.thresholds.len() > MAX_PHASES * 4 {
            return Err(format!("at most {} thresholds", MAX_PHASES * 4));
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            t.validate(self.phases.len())
                .map_err(|m| format!("threshold {}: {m}", i + 1))?;
        }
        Ok(())
    }

    fn check_phase(&self, p: &Phase) -> Result<(), String> {
        let v = self.viewers.count;
        let within_viewers = |name: &str, n: u32| {
            if n == 0 || n > v {
                Err(format!("{name} must be 1-{v} (viewers.count), got {n}"))
            } else {
                Ok(())
            }
        };
        let needs_token = |what: &str| {
            if self.viewers.auth == Auth::Guest {
                Err(format!(
                    "guests cannot {what}: set viewers.auth = \"token\" (tokens are minted with the admin key)"
                ))
            } else {
                Ok(())
            }
        };
        match p {
            Phase::Join {
                viewers,
                over,
                stages,
                stay,
                ..
            } => {
                within_viewers("viewers", *viewers)?;
                secs("over", *over, true)?;
                if let Some(stay) = stay {
                    secs("stay", *stay, false)?;
                }
                if stages.is_empty() {
                    return Ok(());
                }
                if stages.len() > 32 {
                    return Err("stages: at most 32".into());
                }
                let mut total = 0.0;
                for (k, &(d, r)) in stages.iter().enumerate() {
                    secs(&format!("stages[{k}] seconds"), d, false)?;
                    if !(r.is_finite() && r >= 0.0) {
                        return Err(format!("stages[{k}] rate must be >= 0, got {r}"));
                    }
                    total += d;
                }
                if (total - over).abs() > 1e-9 {
                    return Err(format!(
                        "the stages last {total} s but over is {over}: make over the stages' total"
                    ));
                }
                if ramp_area(stages) <= 0.0 {
                    return Err("stages: every rate is 0, nobody would join".into());
                }
                Ok(())
            }
            Phase::Chat {
                duration,
                rate,
                senders,
                ..
            } => {
                within_viewers("senders", *senders)?;
                secs("duration", *duration, false)?;
                rate_ok(*rate, *senders, 2.0, "chat_per_sec")
            }
            Phase::Reactions {
                duration,
                rate,
                senders,
                kinds,
                ..
            } => {
                within_viewers("senders", *senders)?;
                secs("duration", *duration, false)?;
                if kinds.is_empty() {
                    return Err("kinds must list at least one reaction".into());
                }
                rate_ok(*rate, *senders, 10.0, "reactions_per_sec")
            }
            Phase::Questions {
                duration,
                rate,
                senders,
                ..
            } => {
                within_viewers("senders", *senders)?;
                secs("duration", *duration, false)?;
                rate_ok(*rate, *senders, 2.0, "chat_per_sec (shared by questions)")
            }
            Phase::Upvotes { voters, within, .. } => {
                within_viewers("voters", *voters)?;
                secs("within", *within, true)
            }
            Phase::Poll {
                voters,
                over,
                options,
                ..
            } => {
                within_viewers("voters", *voters)?;
                secs("over", *over, true)?;
                if !(2..=10).contains(&options.len()) {
                    return Err("options: 2-10 choices".into());
                }
                Ok(())
            }
            Phase::FlashSale {
                stock,
                buyers,
                within,
                per_user_limit,
                qty,
                ..
            } => {
                needs_token("buy")?;
                within_viewers("buyers", *buyers)?;
                secs("within", *within, true)?;
                if *stock == 0 {
                    return Err("stock must be at least 1".into());
                }
                if *qty == 0 || *per_user_limit == 0 || qty > per_user_limit {
                    return Err("qty and per_user_limit must be >= 1, qty <= per_user_limit".into());
                }
                Ok(())
            }
            Phase::CouponDrop {
                count,
                claimers,
                within,
                percent_off,
                ..
            } => {
                needs_token("claim coupons")?;
                within_viewers("claimers", *claimers)?;
                secs("within", *within, true)?;
                if *count == 0 {
                    return Err("count must be at least 1".into());
                }
                if !(1..=100).contains(percent_off) {
                    return Err("percent_off must be 1-100".into());
                }
                Ok(())
            }
            Phase::Reconnect { fraction, over, .. } => {
                if !(fraction.is_finite() && *fraction > 0.0 && *fraction <= 1.0) {
                    return Err(format!("fraction must be in (0, 1], got {fraction}"));
                }
                secs("over", *over, true)
            }
            Phase::Replay { speed, scale, .. } => {
                if !(speed.is_finite() && *speed >= 0.01 && *speed <= 1_000.0) {
                    return Err(format!("speed must be 0.01-1000, got {speed}"));
                }
                if *scale == 0 || *scale > 10_000 {
                    return Err(format!("scale must be 1-10000, got {scale}"));
                }
                Ok(())
            }
        }
    }

    /// The same show with `factor` times the people: viewers, senders (their
    /// rates with them, so each sender keeps its pace), voters, buyers,
    /// claimers, stock, coupons and replay copies, each rounded and at least
    /// 1; times, fractions and the pass criteria stay. Joins are split so
    /// that they still add up to `viewers.count`. Checked like a file.
    pub fn scaled(&self, factor: f64) -> Result<Scenario, String> {
        if !(factor.is_finite() && factor > 0.0 && factor <= 100.0) {
            return Err(format!(
                "--scale must be more than 0 and at most 100, got {factor}"
            ));
        }
        let mut s = self.clone();
        let count = ((self.viewers.count as f64 * factor).round() as u32).max(1);
        let f = count as f64 / self.viewers.count as f64;
        let people = |n: u32| ((n as f64 * f).round() as u32).clamp(1, count);
        let things = |n: u32| ((n as f64 * factor).round() as u32).max(1);
        s.viewers.count = count;
        s.load.workers = s.load.workers.min(count);
        let (mut before, mut placed) = (0u64, 0u32);
        for (i, p) in s.phases.iter_mut().enumerate() {
            match p {
                Phase::Join { viewers, .. } => {
                    before += *viewers as u64;
                    let upto = (before as f64 * f).round() as u32;
                    *viewers = upto.min(count) - placed;
                    placed += *viewers;
                    if *viewers == 0 {
                        return Err(format!(
                            "--scale {factor}: phase {} (join) would join no viewer; scale less",
                            i + 1
                        ));
                    }
                }
                Phase::Chat { rate, senders, .. }
                | Phase::Reactions { rate, senders, .. }
                | Phase::Questions { rate, senders, .. } => {
                    let n = people(*senders);
                    *rate *= n as f64 / *senders as f64;
                    *senders = n;
                }
                Phase::Poll { voters, .. } | Phase::Upvotes { voters, .. } => {
                    *voters = people(*voters)
                }
                Phase::FlashSale { stock, buyers, .. } => {
                    *stock = things(*stock);
                    *buyers = people(*buyers);
                }
                Phase::CouponDrop {
                    count: coupons,
                    claimers,
                    ..
                } => {
                    *coupons = things(*coupons);
                    *claimers = people(*claimers);
                }
                Phase::Reconnect { .. } => {}
                Phase::Replay { scale, .. } => *scale = things(*scale),
            }
        }
        s.validate()?;
        Ok(s)
    }

    /// When the last phase is over (seconds after go), not counting the drain.
    pub fn end(&self, replay_secs: &[f64]) -> f64 {
        self.phases
            .iter()
            .enumerate()
            .map(|(i, p)| p.end(replay_secs.get(i).copied().unwrap_or(0.0)))
            .fold(0.0, f64::max)
    }

    pub fn ws_url(&self) -> String {
        format!(
            "{}/ws",
            self.target
                .url
                .trim_end_matches('/')
                .replace("http://", "ws://")
        )
    }
}

/// The error of the first `[[phase]]` that does not deserialize on its own,
/// at the line at fault. Phases are a tagged enum, which serde reads from a
/// buffer without positions, so the whole-file error points at the first
/// phase's header whatever phase is wrong; reading them one by one names the
/// phase, and the key is found again in the file by its name or its value.
fn locate_phase_error(text: &str) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let (_, phases) = root
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == "phase")?;
    let DeValue::Array(items) = phases.get_ref() else {
        return None;
    };
    let plain: toml::Table = toml::from_str(text).ok()?;
    let plain = plain.get("phase")?.as_array()?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    for (i, item) in items.iter().enumerate() {
        let DeValue::Table(table) = item.get_ref() else {
            continue;
        };
        let Some(owned) = plain.get(i) else {
            continue;
        };
        let Err(e) = owned.clone().try_into::<Phase>() else {
            continue;
        };
        let message = e.to_string().trim_end().to_string();
        let kind = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == "type")
            .and_then(|(_, v)| match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "no type".into());
        // The key at fault: named in the message (unknown field), or whose
        // value the message shows (wrong type); else the phase's first line.
        let at_fault = table.iter().find(|(k, v)| {
            let name = k.get_ref().as_ref();
            message.contains(&format!("unknown field `{name}`"))
                || (message.starts_with("invalid") && message.contains(&unexpected(v.get_ref())))
        });
        let line = match at_fault {
            Some((k, _)) => line_of(k.span().start),
            None => {
                let first = table.iter().map(|(k, _)| k.span().start).min();
                let start = first.unwrap_or(item.span().start);
                // The `[[phase]]` header above the phase's first key.
                text[..start]
                    .rfind("[[phase]]")
                    .map(line_of)
                    .unwrap_or_else(|| line_of(start))
            }
        };
        return Some(format!("line {line}: phase {} ({kind}): {message}", i + 1));
    }
    None
}

/// A TOML value as serde's "invalid type" message shows it.
fn unexpected(v: &toml::de::DeValue) -> String {
    use toml::de::DeValue;
    match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer `{}`", i.as_str()),
        DeValue::Float(f) => format!("floating point `{}`", f.as_str()),
        DeValue::Boolean(b) => format!("boolean `{b}`"),
        DeValue::Datetime(_) => "datetime".into(),
        DeValue::Array(_) => "sequence".into(),
        DeValue::Table(_) => "map".into(),
    }
}

/// Joins (in rate x seconds) under piecewise-linear `stages` from rate 0.
fn ramp_area(stages: &[(f64, f64)]) -> f64 {
    let mut from = 0.0;
    stages
        .iter()
        .map(|&(d, to)| {
            let a = (from + to) / 2.0 * d;
            from = to;
            a
        })
        .sum()
}

/// When (seconds into the phase) the joiner at `share` in [0, 1) of a
/// phase with `stages` joins: where the cumulative arrivals of the
/// piecewise-linear rate reach that share of them all.
pub fn ramp_time(stages: &[(f64, f64)], share: f64) -> f64 {
    let mut want = share * ramp_area(stages);
    let (mut from, mut t0) = (0.0f64, 0.0f64);
    for &(d, to) in stages {
        let area = (from + to) / 2.0 * d;
        if want <= area && area > 0.0 {
            // from*t + (to-from)/(2d)*t^2 = want
            let a = (to - from) / (2.0 * d);
            let t = if a.abs() < 1e-12 {
                want / from
            } else {
                (-from + (from * from + 4.0 * a * want).max(0.0).sqrt()) / (2.0 * a)
            };
            return t0 + t.clamp(0.0, d);
        }
        want -= area;
        from = to;
        t0 += d;
    }
    t0
}

fn secs(name: &str, v: f64, zero_ok: bool) -> Result<(), String> {
    let ok = v.is_finite() && (if zero_ok { v >= 0.0 } else { v > 0.0 }) && v <= MAX_SCENARIO_SECS;
    if ok {
        Ok(())
    } else {
        let low = if zero_ok { "0" } else { "more than 0" };
        Err(format!(
            "{name} must be {low} to {MAX_SCENARIO_SECS} seconds, got {v}"
        ))
    }
}

/// A rate the server's per-user limit lets through with this many senders.
fn rate_ok(rate: f64, senders: u32, per_user: f64, limit: &str) -> Result<(), String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("rate must be > 0, got {rate}"));
    }
    let each = rate / senders as f64;
    if each > per_user {
        return Err(format!(
            "{each:.2}/s per sender is above the server's default {limit} ({per_user}/s): use more senders"
        ));
    }
    Ok(())
}

/// Whether global viewer `i` of `total` is one of `n` participants, spread
/// evenly: participant `j` is viewer `floor(j * total / n)`. Returns `j`.
pub fn participants(i: u32, n: u32, total: u32) -> Option<u32> {
    if n == 0 || i >= total {
        return None;
    }
    let (i, n, total) = (i as u64, n.min(total) as u64, total as u64);
    // The smallest j with floor(j * total / n) >= i.
    let j = (i * n).div_ceil(total);
    (j < n && j * total / n == i).then_some(j as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "sale"
[viewers]
count = 100
auth = "token"
[[phase]]
type = "join"
at = 0
viewers = 100
over = 2
[[phase]]
type = "flash_sale"
at = 3
stock = 10
buyers = 100
within = 1
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let s = Scenario::parse(GOOD, "good.toml").unwrap();
        assert_eq!(s.target.url, "http://127.0.0.1:8080");
        assert_eq!(s.ws_url(), "ws://127.0.0.1:8080/ws");
        assert_eq!(s.load.workers, 1);
        assert!(s.pass.exact_sale);
        assert_eq!(s.end(&[]), 5.0);
    }

    fn err(text: &str) -> String {
        Scenario::parse(text, "bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_files_say_where_and_what() {
        let e = err("name = \"x\"\n[viewers]\ncount = \"many\"\n");
        assert!(e.starts_with("bad.toml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = err(&GOOD.replace("type = \"join\"", "type = \"dance\""));
        assert!(e.contains("dance") && e.contains("line"), "{e}");
        let e = err(&GOOD.replace("within = 1", "within = 1\nwhoops = 2"));
        assert!(e.contains("whoops"), "{e}");
        // Inside a later phase: the line at fault, not the first phase's.
        let e = err(&GOOD.replace("within = 1", "within = 1\nwhoops = 2"));
        assert!(
            e.contains("line 17: phase 2 (flash_sale): unknown field `whoops`"),
            "{e}"
        );
        let e = err(&GOOD.replace("stock = 10", "stock = \"ten\""));
        assert!(
            e.contains("line 14: phase 2 (flash_sale): invalid type"),
            "{e}"
        );
        let e = err(&GOOD.replace("buyers = 100\n", ""));
        assert!(
            e.contains("line 11: phase 2 (flash_sale): missing field `buyers`"),
            "{e}"
        );
        let e = err(&GOOD.replace("auth = \"token\"", "auth = \"guest\""));
        assert!(e.contains("phase 2 (flash_sale): guests cannot buy"), "{e}");
        let e = err(&GOOD.replace("viewers = 100", "viewers = 90"));
        assert!(
            e.contains("join 90 viewers but viewers.count is 100"),
            "{e}"
        );
        let e = err(&GOOD.replace("buyers = 100", "buyers = 101"));
        assert!(e.contains("buyers must be 1-100"), "{e}");
        let e = err(&GOOD.replace("at = 3", "at = -1"));
        assert!(e.contains("phase 2 (flash_sale): at must be 0"), "{e}");
        let e = err(&GOOD.replace("[[phase]]\ntype = \"flash_sale\"", "[[phase]]\ntype = \"chat\"\nat = 2\nduration = 5\nrate = 500\nsenders = 10\n[[phase]]\ntype = \"flash_sale\""));
        assert!(e.contains("50.00/s per sender"), "{e}");
        let e = err("name = \"x\"\n[viewers]\ncount = 5\n");
        assert!(e.contains("at least one [[phase]]"), "{e}");
        let e = err(&GOOD.replace(
            "name = \"sale\"",
            "name = \"sale\"\n[target]\nurl = \"ws://x\"",
        ));
        assert!(e.contains("target.url must be an http:// URL"), "{e}");
    }

    #[test]
    fn a_scaled_scenario_keeps_its_shape_and_adds_up() {
        let s = Scenario::parse(GOOD, "good.toml").unwrap();
        let small = s.scaled(0.1).unwrap();
        assert_eq!(small.viewers.count, 10);
        let Phase::Join { viewers, .. } = small.phases[0] else {
            panic!()
        };
        assert_eq!(viewers, 10);
        let Phase::FlashSale { stock, buyers, .. } = small.phases[1] else {
            panic!()
        };
        assert_eq!((stock, buyers), (1, 10));
        // Every shipped scenario scales down to 1% and stays valid; joins
        // still add up to the count, senders keep their pace.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for name in ["chat-10k", "flash-sale-10k", "reconnect-storm", "full-show"] {
            let s = Scenario::load(&dir.join(format!("{name}.toml"))).unwrap();
            let small = s.scaled(0.01).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                small.viewers.count,
                (s.viewers.count as f64 * 0.01).round() as u32
            );
            for (a, b) in s.phases.iter().zip(&small.phases) {
                if let (
                    Phase::Chat {
                        rate: r0,
                        senders: n0,
                        ..
                    },
                    Phase::Chat {
                        rate: r1,
                        senders: n1,
                        ..
                    },
                ) = (a, b)
                {
                    assert!((r0 / *n0 as f64 - r1 / *n1 as f64).abs() < 1e-9);
                }
            }
        }
        let e = s.scaled(0.0).unwrap_err();
        assert!(e.contains("--scale must be more than 0"), "{e}");
        // Two joins of 50 scaled to 1 viewer: the second joins nobody.
        let two = GOOD.replace(
            "viewers = 100\nover = 2",
            "viewers = 50\nover = 2\n[[phase]]\ntype = \"join\"\nat = 1\nviewers = 50\nover = 1",
        );
        let e = Scenario::parse(&two, "t")
            .unwrap()
            .scaled(0.01)
            .unwrap_err();
        assert!(e.contains("phase 2 (join) would join no viewer"), "{e}");
    }

    #[test]
    fn staged_joins_ramp_hold_and_drop() {
        // 0 -> 100/s over 10 s, hold 10 s, drop to 0 over 5 s: 500 + 1000
        // + 250 joins.
        let stages = [(10.0, 100.0), (10.0, 100.0), (5.0, 0.0)];
        let at = |k: f64| ramp_time(&stages, k / 1750.0);
        assert!((at(125.0) - 5.0).abs() < 1e-9, "{}", at(125.0));
        assert!((at(500.0) - 10.0).abs() < 1e-9);
        assert!((at(1000.0) - 15.0).abs() < 1e-9);
        assert!((at(1500.0) - 20.0).abs() < 1e-9);
        assert!(at(1749.0) < 25.0 && at(1749.0) > 22.0);
        let text = GOOD.replace(
            "viewers = 100\nover = 2",
            "viewers = 100\nover = 25\nstages = [[10, 100], [10, 100], [5, 0]]",
        );
        let s = Scenario::parse(&text, "t").unwrap();
        assert_eq!(s.end(&[]), 25.0);
        let e = err(&text.replace("over = 25", "over = 20"));
        assert!(e.contains("the stages last 25 s but over is 20"), "{e}");
        let e = err(&text.replace("[5, 0]]", "[5, -1]]"));
        assert!(e.contains("stages[2] rate must be >= 0"), "{e}");
    }

    #[test]
    fn the_example_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 4,
            "expected several example scenarios in {}",
            dir.display()
        );
    }

    #[test]
    fn participants_are_spread_and_counted_exactly() {
        for (n, total) in [
            (1, 1),
            (3, 10),
            (10, 10),
            (7, 1000),
            (999, 1000),
            (250, 10_000),
        ] {
            let picked: Vec<u32> = (0..total)
                .filter_map(|i| participants(i, n, total))
                .collect();
            assert_eq!(picked.len() as u32, n, "n={n} total={total}");
            assert!(picked.windows(2).all(|w| w[1] == w[0] + 1));
        }
        // Spread: 2 of 10 are viewers 0 and 5, not 0 and 1.
        let chosen: Vec<u32> = (0..10)
            .filter(|&i| participants(i, 2, 10).is_some())
            .collect();
        assert_eq!(chosen, vec![0, 5]);
    }
}
