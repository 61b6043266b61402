//! Running a scenario: the coordinator prepares the server (room, products,
//! sales), starts the worker processes (or runs the one worker in this
//! process), releases them together at the go signal, plays the host's part
//! (polls, coupon drops), samples the server, and merges what the workers
//! measured into one [`Verdict`](crate::verdict::Verdict).
//!
//! A worker owns a contiguous range of the viewers and its own source
//! addresses. It turns the scenario into one [`Script`] per viewer (the same
//! scripts whatever the number of workers: every choice depends only on the
//! viewer's global number and the scenario's seed), mints tokens if needed,
//! reports ready, and at the go signal runs every script as a task.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flashcast_wire::client::{Ask, Chat, React, Upvote, Vote};
use flashcast_wire::ids::{IdemKey, RoomId, Sku};
use flashcast_wire::recording::{read_trace, TraceAction, TraceLine};
use flashcast_wire::{now_ms, ReactionKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::client::Target;
use crate::probe::ServerProbe;
use crate::scenario::{participants, Auth, Phase, Scenario};
use crate::tally::{Live, Tally};
use crate::verdict::{SaleCheck, Verdict};
use crate::viewer::{self, Act, BuyTrigger, Script, Shared};
use crate::workers::{raise_open_files_limit, shares, Go, Job, Share, Workers, GO_LEAD_MS};

/// Most lines a replay file may have.
pub const MAX_TRACE_LINES: usize = 2_000_000;

/// What one worker process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub scenario: Scenario,
    pub run_id: String,
    pub room: String,
    pub admin_key: Option<String>,
    /// Its viewers (the scenario's, not the replayed connections) and
    /// source addresses.
    pub share: Share,
    /// Seconds of timeline to keep per-second figures for.
    pub seconds: u32,
    /// Keep what the viewers send (`--record`).
    pub record: bool,
}

/// How a run is carried out (command-line options rather than scenario).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub admin_key: Option<String>,
    /// A local server process to sample (CPU, memory) from /proc.
    pub server_pid: Option<u32>,
    /// Overrides the scenario's worker count.
    pub workers: Option<u32>,
    /// The `flashcast-storm` binary, for worker processes.
    pub worker_exe: Option<PathBuf>,
    /// Writes the actions the tool sent as a recording (JSON lines).
    pub record: Option<PathBuf>,
    /// Ends the run as soon as a criterion judged on the live counters
    /// fails (`--abort-on-fail`).
    pub abort_on_fail: bool,
    /// Serves the tool's own /metrics here during the run.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub quiet: bool,
}

/// A short id for this run: names its room, SKUs, users and keys.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{:x}", now ^ ((std::process::id() as u64) << 40))
}

/// The deterministic SKU of a flash-sale phase.
pub fn phase_sku(run_id: &str, phase: usize) -> Sku {
    Sku::new(&format!("STORM-{run_id}-{phase}")).expect("valid sku")
}

/// A number in [0, 1) from the seed, the viewer and the phase: the same
/// every run, spread like a uniform draw.
fn unit(seed: u64, viewer: u32, phase: usize) -> f64 {
    let mut x = seed ^ ((viewer as u64) << 20) ^ ((phase as u64) << 52);
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Even pacing of `rate x duration` sends over `senders` participants:
/// participant `j` sends every `senders / rate` s, offset by its share of
/// that period. Returns the offsets (from go) of participant `j`'s sends.
fn paced(at: f64, duration: f64, rate: f64, senders: u32, j: u32) -> Vec<Duration> {
    let s = senders as u64;
    let total = (rate * duration).round() as u64;
    let count = total / s + u64::from((j as u64) < total % s);
    let period = s as f64 / rate;
    let offset = period * j as f64 / s as f64;
    (0..count)
        .map(|k| secs(at + offset + period * k as f64))
        .collect()
}

/// A paced phase (chat, reactions) as one viewer takes part in it.
struct Pace {
    /// The viewer's place among the phase's senders, if it is one.
    sender: Option<u32>,
    at: f64,
    duration: f64,
    rate: f64,
    senders: u32,
}

impl Pace {
    fn new(i: u32, total: u32, at: f64, duration: f64, rate: f64, senders: u32) -> Pace {
        Pace {
            sender: participants(i, senders, total),
            at,
            duration,
            rate,
            senders,
        }
    }

    /// The viewer's timed actions: `act(k, j)` is its `k`-th, `j` its
    /// place among the senders. None when it is not a sender.
    fn acts(&self, act: impl Fn(usize, u32) -> Act) -> Vec<(Duration, Act)> {
        let Some(j) = self.sender else {
            return Vec::new();
        };
        paced(self.at, self.duration, self.rate, self.senders, j)
            .into_iter()
            .enumerate()
            .map(|(k, t)| (t, act(k, j)))
            .collect()
    }
}

/// The script of global viewer `i` (one of the scenario's own viewers).
pub fn script_for(s: &Scenario, run_id: &str, i: u32, source: std::net::Ipv4Addr) -> Script {
    let total = s.viewers.count;
    let seed = s.load.seed;
    let mut script = Script {
        id: i,
        token: None,
        source,
        join_at: Duration::ZERO,
        timed: Vec::new(),
        triggers: Default::default(),
    };
    let mut first_unjoined = 0u32;
    for (p, phase) in s.phases.iter().enumerate() {
        let u = unit(seed, i, p);
        match phase {
            Phase::Join {
                at,
                viewers,
                over,
                stages,
                stay,
            } => {
                if (first_unjoined..first_unjoined + viewers).contains(&i) {
                    let share = (i - first_unjoined) as f64 / *viewers as f64;
                    script.join_at = if stages.is_empty() {
                        secs(at + over * share)
                    } else {
                        secs(at + crate::scenario::ramp_time(stages, share))
                    };
                    if let Some(stay) = stay {
                        let leave = script.join_at + secs(*stay);
                        script.timed.push((leave, Act::Leave));
                    }
                }
                first_unjoined += viewers;
            }
            Phase::Chat {
                at,
                duration,
                rate,
                senders,
            } => {
                let pace = Pace::new(i, total, *at, *duration, *rate, *senders);
                script.timed.extend(pace.acts(|k, _| {
                    Act::Chat(format!(
                        "storm {run_id} viewer {i} message {k}{}",
                        crate::wire::SENT_AT
                    ))
                }));
            }
            Phase::Reactions {
                at,
                duration,
                rate,
                senders,
                kinds,
            } => {
                let pace = Pace::new(i, total, *at, *duration, *rate, *senders);
                script.timed.extend(pace.acts(|k, j| {
                    let kind: ReactionKind = kinds[(k + j as usize) % kinds.len()];
                    Act::React(kind)
                }));
            }
            Phase::Questions {
                at,
                duration,
                rate,
                senders,
            } => {
                let pace = Pace::new(i, total, *at, *duration, *rate, *senders);
                script.timed.extend(
                    pace.acts(|k, _| Act::Ask(format!("storm {run_id} viewer {i} question {k}?"))),
                );
            }
            Phase::Upvotes { at, voters, within } => {
                if participants(i, *voters, total).is_some() {
                    script.timed.push((secs(at + u * within), Act::UpvoteSeen));
                }
            }
            Phase::Poll {
                voters,
                over,
                options,
                ..
            } => {
                if participants(i, *voters, total).is_some() {
                    let option = (unit(seed ^ 1, i, p) * options.len() as f64) as u8;
                    script.triggers.votes.push_back((secs(u * over), option));
                }
            }
            Phase::FlashSale {
                buyers,
                within,
                qty,
                arrival,
                ..
            } => {
                if participants(i, *buyers, total).is_some() {
                    script.triggers.buys.push(BuyTrigger {
                        sku: phase_sku(run_id, p),
                        qty: *qty,
                        key: IdemKey::new(&format!("storm-{run_id}-{i}-{p}")).expect("valid key"),
                        delay: secs(arrival.fraction(u) * within),
                        fired: false,
                    });
                }
            }
            Phase::CouponDrop {
                claimers,
                within,
                arrival,
                ..
            } => {
                if participants(i, *claimers, total).is_some() {
                    script
                        .triggers
                        .claims
                        .push_back(secs(arrival.fraction(u) * within));
                }
            }
            Phase::Reconnect { at, fraction, over } => {
                let n = ((total as f64) * fraction).round() as u32;
                if participants(i, n, total).is_some() {
                    script.timed.push((secs(at + u * over), Act::Reconnect));
                }
            }
            Phase::Replay { .. } => {}
        }
    }
    script.timed.sort_by_key(|(t, _)| *t);
    script
}

/// One recorded connection of a replay phase.
#[derive(Debug, Clone)]
struct RecordedConn {
    role: flashcast_wire::Role,
    lines: Vec<TraceLine>,
}

impl RecordedConn {
    /// A host's or moderator's connection is not replayed: the scenario
    /// plays the host's part itself (polls, sales, coupon drops), and a
    /// viewer cannot do what a host did.
    fn is_staff(&self) -> bool {
        use flashcast_wire::Role;
        matches!(self.role, Role::Host | Role::Moderator)
    }

    /// Recorded actions a replayed copy of this connection cannot send:
    /// all of a staff connection's, and every `host` line.
    fn skipped(&self) -> u64 {
        self.lines
            .iter()
            .filter(|l| match &l.action {
                TraceAction::Join { .. } | TraceAction::Leave => false,
                TraceAction::Host { .. } => true,
                _ => self.is_staff(),
            })
            .count() as u64
    }
}

/// A replay phase's file, grouped by connection.
struct Replay {
    phase: usize,
    at: f64,
    speed: f64,
    scale: u32,
    conns: Vec<RecordedConn>,
    /// Seconds from the first to the last line, at 1x.
    length_secs: f64,
}

fn load_replays(s: &Scenario) -> anyhow::Result<Vec<Replay>> {
    let mut out = Vec::new();
    for (p, phase) in s.phases.iter().enumerate() {
        let Phase::Replay {
            at,
            file,
            speed,
            scale,
        } = phase
        else {
            continue;
        };
        let f = std::fs::File::open(file).with_context(|| {
            format!(
                "scenario {:?}, phase {} (replay): cannot open the recording {}",
                s.name,
                p + 1,
                std::path::absolute(file)
                    .unwrap_or_else(|_| file.clone())
                    .display()
            )
        })?;
        let (_, lines) = read_trace(std::io::BufReader::new(f), MAX_TRACE_LINES)
            .map_err(|e| anyhow::anyhow!("phase {} (replay): {}: {e}", p + 1, file.display()))?;
        let mut by_conn: BTreeMap<u32, RecordedConn> = BTreeMap::new();
        let mut length_ms = 0u64;
        for line in lines {
            length_ms = length_ms.max(line.t_ms);
            let c = by_conn.entry(line.conn).or_insert(RecordedConn {
                role: flashcast_wire::Role::Guest,
                lines: Vec::new(),
            });
            if let TraceAction::Join { role } = &line.action {
                c.role = *role;
            }
            c.lines.push(line);
        }
        out.push(Replay {
            phase: p,
            at: *at,
            speed: *speed,
            scale: *scale,
            conns: by_conn.into_values().collect(),
            length_secs: length_ms as f64 / 1_000.0,
        });
    }
    Ok(out)
}

/// Source addresses for all viewers, replayed ones included: the file's
/// `load.source_ips`, or one per 250 viewers.
pub fn source_ip_count(s: &Scenario, replayed: u64) -> u32 {
    if s.load.source_ips > 0 {
        return s.load.source_ips;
    }
    let total = s.viewers.count as u64 + replayed;
    (total.div_ceil(250) as u32)
        .max(s.load.workers)
        .min(254 * 256)
}

/// What a scenario's replay files add: each phase's length at 1x (0 for
/// other phases) and the viewers they bring (recorded connections x scale).
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub lengths: Vec<f64>,
    pub viewers: u64,
    /// Recorded actions not replayed (`host` lines and everything a host
    /// or moderator connection did), once per copy: `replay_skipped`.
    pub skipped: u64,
    /// Recorded connections not replayed because they were a host's or a
    /// moderator's.
    pub staff_conns: u64,
    /// Units replayed buyers ask of the scenario's first flash sale while
    /// it is on sale (each copy capped at `per_user_limit`): added to that
    /// sale's demand for `exact_sale`.
    pub sale_demand: u64,
    /// Per replay phase: (phase index, speed, chat messages and reactions
    /// of one copy that the server's default per-user limits would refuse
    /// at that speed).
    pub rate_limited: Vec<(usize, f64, u64, u64)>,
}

impl ReplaySummary {
    /// Reads the scenario's replay files (once).
    pub fn of(s: &Scenario) -> anyhow::Result<ReplaySummary> {
        Ok(Self::of_loaded(s, &load_replays(s)?))
    }

    fn of_loaded(s: &Scenario, replays: &[Replay]) -> ReplaySummary {
        let mut lengths = vec![0.0; s.phases.len()];
        for r in replays {
            lengths[r.phase] = r.length_secs;
        }
        let sale = s.phases.iter().find_map(|p| match p {
            Phase::FlashSale {
                at,
                per_user_limit,
                duration_secs,
                ..
            } => Some((*at, *at + *duration_secs as f64, *per_user_limit as u64)),
            _ => None,
        });
        let mut sum = ReplaySummary {
            lengths,
            ..ReplaySummary::default()
        };
        for r in replays {
            let mut limited = (0u64, 0u64);
            for c in &r.conns {
                let copies = r.scale as u64;
                sum.skipped += c.skipped() * copies;
                if c.is_staff() {
                    sum.staff_conns += 1;
                    continue;
                }
                sum.viewers += copies;
                let buys = c.role != flashcast_wire::Role::Guest && s.viewers.auth == Auth::Token;
                if let (Some((from, to, limit)), true) = (sale, buys) {
                    let units: u64 = c
                        .lines
                        .iter()
                        .filter_map(|l| match &l.action {
                            TraceAction::Buy { qty, .. } => {
                                let t = r.at + l.t_ms as f64 / 1_000.0 / r.speed;
                                (t >= from && t < to).then_some(*qty as u64)
                            }
                            _ => None,
                        })
                        .sum();
                    sum.sale_demand += units.min(limit) * copies;
                }
                let refused = |f: fn(&TraceAction) -> bool, (rate, burst): (f64, f64)| {
                    let times = c.lines.iter().filter(|l| f(&l.action));
                    refused_by_bucket(
                        times.map(|l| l.t_ms as f64 / 1_000.0 / r.speed),
                        rate,
                        burst,
                    )
                };
                limited.0 += refused(|a| matches!(a, TraceAction::Chat { .. }), CHAT_LIMIT);
                limited.1 += refused(|a| matches!(a, TraceAction::React { .. }), REACTION_LIMIT);
            }
            sum.rate_limited
                .push((r.phase, r.speed, limited.0, limited.1));
        }
        sum
    }
}

/// The server's default per-user limits (sustained per second, burst).
const CHAT_LIMIT: (f64, f64) = (2.0, 5.0);
const REACTION_LIMIT: (f64, f64) = (10.0, 30.0);

/// How many sends at `times` (seconds, in order) a token bucket of `rate`
/// per second holding at most `burst` refuses, as the server's limiter does.
fn refused_by_bucket(times: impl Iterator<Item = f64>, rate: f64, burst: f64) -> u64 {
    let (mut tokens, mut last, mut refused) = (burst, 0.0f64, 0u64);
    for t in times {
        tokens = (tokens + (t - last).max(0.0) * rate).min(burst);
        last = t;
        if tokens >= 1.0 {
            tokens -= 1.0;
        } else {
            refused += 1;
        }
    }
    refused
}

impl ReplaySummary {
    /// Refuses a replay that the server's default per-user rate limits
    /// would cut: at its speed, a recorded viewer sends faster than one
    /// user may.
    pub fn check_rates(&self) -> Result<(), String> {
        for &(p, speed, chat, reactions) in &self.rate_limited {
            for (n, what, (rate, burst), limit) in [
                (chat, "chat messages", CHAT_LIMIT, "chat_per_sec"),
                (reactions, "reactions", REACTION_LIMIT, "reactions_per_sec"),
            ] {
                if n > 0 {
                    return Err(format!(
                        "phase {} (replay): at speed {speed}, {n} recorded {what} would be refused by the server's default {limit} ({rate}/s per user, burst {burst}): lower speed",
                        p + 1
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The scripts of a replay's viewers that worker `w` of `k` runs. Recorded
/// connection `c`, copy `s` is replay viewer `c * scale + s`, numbered after
/// the scenario's viewers; worker `r % k` runs replay viewer `r`.
fn replay_scripts(
    s: &Scenario,
    run_id: &str,
    replay: &Replay,
    first_id: u32,
    w: u32,
    k: u32,
    ip: impl Fn(u32) -> std::net::Ipv4Addr,
) -> Vec<(Script, bool)> {
    let sale_sku = s
        .phases
        .iter()
        .position(|p| matches!(p, Phase::FlashSale { .. }))
        .map(|p| phase_sku(run_id, p));
    let mut out = Vec::new();
    let mut r = 0u32;
    for conn in replay.conns.iter().filter(|c| !c.is_staff()) {
        for _copy in 0..replay.scale {
            let id = first_id + r;
            r += 1;
            if (r - 1) % k != w {
                continue;
            }
            let at = |t_ms: u64| secs(replay.at + t_ms as f64 / 1_000.0 / replay.speed);
            let mut script = Script {
                id,
                token: None,
                source: ip(id),
                join_at: conn.lines.first().map(|l| at(l.t_ms)).unwrap_or_default(),
                timed: Vec::new(),
                triggers: Default::default(),
            };
            let mut n = 0;
            for line in &conn.lines {
                let act = match &line.action {
                    TraceAction::Join { .. } => continue,
                    TraceAction::Chat(Chat { text }) => Act::Chat(text.clone()),
                    TraceAction::React(React { kind }) => Act::React(*kind),
                    TraceAction::Vote(Vote { option, .. }) => Act::Vote(*option),
                    TraceAction::Ask(Ask { text }) => Act::Ask(text.clone()),
                    TraceAction::Upvote(Upvote { question_id }) => Act::Upvote(*question_id),
                    TraceAction::Buy { sku, qty, .. } => {
                        n += 1;
                        Act::Buy {
                            sku: sale_sku.clone().unwrap_or_else(|| sku.clone()),
                            qty: *qty,
                            key: IdemKey::new(&format!("storm-{run_id}-r{id}-{n}"))
                                .expect("valid key"),
                        }
                    }
                    TraceAction::ClaimCoupon(_) => Act::Claim,
                    TraceAction::Host { .. } => continue,
                    TraceAction::Leave => Act::Leave,
                };
                script.timed.push((at(line.t_ms), act));
            }
            // A recorded signed-in viewer needs a token to buy; a guest
            // stays a guest.
            let wants_token =
                conn.role != flashcast_wire::Role::Guest && s.viewers.auth == Auth::Token;
            out.push((script, wants_token));
        }
    }
    out
}

/// The plans of `k` workers: contiguous viewer ranges, disjoint addresses.
pub fn plans(
    s: &Scenario,
    run_id: &str,
    room: &str,
    admin_key: Option<String>,
    k: u32,
    seconds: u32,
    replayed: u64,
) -> Vec<WorkerPlan> {
    shares(s.viewers.count, source_ip_count(s, replayed), k)
        .into_iter()
        .map(|share| WorkerPlan {
            scenario: s.clone(),
            run_id: run_id.into(),
            room: room.into(),
            admin_key: admin_key.clone(),
            share,
            seconds,
            record: false,
        })
        .collect()
}

impl Job for WorkerPlan {
    type Output = Tally;
    const SUBCOMMAND: &'static str = "scenario-worker";

    fn live(&self) -> Live {
        let live = Live::new(self.seconds as usize);
        if self.record {
            live.recording()
        } else {
            live
        }
    }

    async fn run(self, live: Arc<Live>, go: Go) -> anyhow::Result<Tally> {
        run_worker(&self, live, go).await
    }
}

/// One worker: build scripts, mint tokens, report ready through `go`,
/// run to the end.
pub async fn run_worker(plan: &WorkerPlan, live: Arc<Live>, go: Go) -> anyhow::Result<Tally> {
    let s = &plan.scenario;
    let target = Target::resolve(&s.ws_url()).await?;
    let share = &plan.share;
    let ip = |id: u32| share.source_ip(id);
    let mut scripts: Vec<(Script, bool)> = (share.offset..share.offset + share.count)
        .map(|i| {
            (
                script_for(s, &plan.run_id, i, ip(i)),
                s.viewers.auth == Auth::Token,
            )
        })
        .collect();
    let replays = load_replays(s)?;
    let end = s.end(&ReplaySummary::of_loaded(s, &replays).lengths) + s.load.drain;
    let mut first_id = s.viewers.count;
    for replay in &replays {
        let n = replay.conns.iter().filter(|c| !c.is_staff()).count() as u32 * replay.scale;
        scripts.extend(replay_scripts(
            s,
            &plan.run_id,
            replay,
            first_id,
            share.worker,
            share.workers,
            ip,
        ));
        first_id += n;
    }
    let wants: Vec<String> = scripts
        .iter()
        .filter(|(_, t)| *t)
        .map(|(sc, _)| format!("storm-{}-{}", plan.run_id, sc.id))
        .collect();
    if !wants.is_empty() {
        let admin = Admin::new(&s.target.url, plan.admin_key.clone());
        let mut tokens = admin
            .mint_many(&plan.room, wants)
            .await
            .context("minting viewer tokens")?
            .into_iter();
        for (sc, _) in scripts.iter_mut().filter(|(_, t)| *t) {
            sc.token = tokens.next();
        }
    }

    let (t0_ms, mut stop) = go.ready_with_stop().await?;
    live.set_t0(t0_ms);
    let t0 = Instant::now() + Duration::from_millis(t0_ms.saturating_sub(now_ms()));
    let shared = Arc::new(Shared {
        target,
        room: RoomId::new(&plan.room).context("room id")?,
        live: live.clone(),
        t0,
        join_timeout: secs(s.load.join_timeout),
        join_retries: s.load.join_retries,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = scripts
        .into_iter()
        .map(|(sc, _)| tokio::spawn(viewer::run(shared.clone(), sc, stop_rx.clone())))
        .collect();
    let sampler = {
        let live = live.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                live.sample_viewers(now_ms());
            }
        })
    };
    tokio::select! {
        _ = tokio::time::sleep_until(t0 + secs(end)) => {}
        _ = stop.stopped() => {}
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.context("viewer task panicked")?;
    }
    sampler.abort();
    Ok(live.tally())
}

/// Runs a whole scenario and judges it.
pub async fn run(s: &Scenario, opts: &RunOptions) -> anyhow::Result<Verdict> {
    let run_id = new_run_id();
    let started_ms = now_ms();
    let key = opts
        .admin_key
        .clone()
        .or_else(|| s.target.admin_key.clone());
    let admin = Admin::new(&s.target.url, key.clone());
    let replays = ReplaySummary::of(s)?;
    replays.check_rates().map_err(anyhow::Error::msg)?;
    // The file first, then the server: a bad file is reported as such.
    reachable(&s.target.url).await?;
    let end = s.end(&replays.lengths);
    let seconds = (end + s.load.drain).ceil() as u32 + 2;

    let room = if s.target.create_room {
        let id = format!("{}-{run_id}", s.target.room);
        admin
            .create_room(&id, &format!("{} (storm {run_id})", s.name))
            .await
            .context("creating the storm's room")?;
        id
    } else {
        s.target.room.clone()
    };
    for (p, phase) in s.phases.iter().enumerate() {
        if let Phase::FlashSale { price_minor, .. } = phase {
            admin
                .create_product(&room, phase_sku(&run_id, p).as_str(), *price_minor)
                .await
                .context("creating the flash sale's product")?;
        }
    }
    let needs_host = s.phases.iter().any(|p| matches!(p, Phase::Poll { .. }));
    let host_token = if needs_host {
        Some(
            admin
                .mint(
                    &room,
                    &format!("storm-{run_id}-host"),
                    flashcast_wire::Role::Host,
                )
                .await
                .context("minting the host's token (polls are opened by a host)")?,
        )
    } else {
        None
    };

    let k = opts.workers.unwrap_or(s.load.workers).max(1);
    let mut plans = plans(s, &run_id, &room, key.clone(), k, seconds, replays.viewers);
    for p in &mut plans {
        p.record = opts.record.is_some();
    }
    let probe = ServerProbe::new(opts.server_pid, admin.clone());
    let live_metrics = std::sync::Arc::new(crate::live_metrics::LiveMetrics::default());
    let metrics_server = match opts.metrics_listen {
        Some(addr) => {
            let (bound, task) = crate::live_metrics::serve(addr, live_metrics.clone()).await?;
            eprintln!("flashcast-storm metrics on http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };

    let mut workers = Workers::start(&plans, opts.worker_exe.clone())?;
    workers.ready(async |_| {}).await?;

    // The timeline starts now (plus a lead); sales are scheduled on it.
    let t0_ms = now_ms() + GO_LEAD_MS;
    let mut sales = Vec::new();
    for (p, phase) in s.phases.iter().enumerate() {
        if let Phase::FlashSale {
            at,
            stock,
            per_user_limit,
            price_minor,
            duration_secs,
            buyers,
            qty,
            ..
        } = phase
        {
            let sku = phase_sku(&run_id, p);
            let spec = serde_json::json!({
                "sku": sku.as_str(),
                "sale_price_minor": price_minor,
                "stock": stock,
                "per_user_limit": per_user_limit,
                "starts_at": t0_ms + (at * 1_000.0) as u64,
                "duration_secs": duration_secs,
            });
            let id = admin
                .create_sale(&room, spec)
                .await
                .context("scheduling the flash sale")?;
            // Replayed buys go to the first sale (see replay_scripts).
            let replayed = if sales.is_empty() {
                replays.sale_demand
            } else {
                0
            };
            sales.push(SaleCheck::new(
                p,
                id,
                *stock,
                *buyers as u64 * *qty as u64 + replayed,
            ));
        }
    }
    workers.go(t0_ms);
    let t0 = Instant::now() + Duration::from_millis(t0_ms.saturating_sub(now_ms()));
    probe.start(t0_ms).await;
    let host = tokio::spawn(play_host(
        s.clone(),
        admin.clone(),
        room.clone(),
        host_token,
        t0,
    ));

    // Progress until every worker has reported its result.
    let mut line = crate::verdict::ProgressLine::new(t0_ms);
    let stopper = workers.stopper();
    let mut abort: Option<String> = None;
    let results = workers
        .finish(async |sum| {
            probe.sample().await;
            if !opts.quiet && now_ms() >= t0_ms {
                line.print(sum, probe.last());
            }
            let elapsed = (now_ms() as i64 - t0_ms as i64) / 1_000;
            live_metrics.update(sum, elapsed);
            if opts.abort_on_fail && abort.is_none() {
                if let Some(why) = crate::verdict::live_failure(&s.pass, sum, k) {
                    let t = now_ms().saturating_sub(t0_ms) as f64 / 1_000.0;
                    eprintln!("aborting at {t:.1} s: {why}");
                    abort = Some(format!("at {t:.1} s: {why}"));
                    stopper.stop();
                }
            }
        })
        .await?;
    probe.sample().await;
    if let Some(task) = metrics_server {
        task.abort();
    }
    let host_result = if abort.is_some() {
        host.abort();
        Ok(())
    } else {
        host.await.context("host task")?
    };
    let mut tally = Tally::default();
    for r in &results {
        tally.merge(r);
    }
    let server = probe.finish().await;

    for sale in &mut sales {
        sale.fetch(&admin, &room).await;
    }
    if let Some(path) = &opts.record {
        write_recording(path, &room, t0_ms, &mut tally.trace)?;
    }
    if s.target.create_room {
        let _ = admin.close_room(&room).await;
    }
    let mut verdict = Verdict::build(
        s,
        &run_id,
        &room,
        started_ms,
        t0_ms,
        k,
        &replays,
        tally,
        server,
        sales,
        host_result.err().map(|e| format!("{e:#}")),
    );
    if let Some(why) = abort {
        verdict.aborted(why);
    }
    Ok(verdict)
}

/// Fails when nothing accepts a TCP connection at the server's address, so
/// that a wrong URL or a stopped server is "the run could not be carried
/// out" (exit 2), not a timeline of failed joins (exit 1).
async fn reachable(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("the server at {url} is unreachable: {e}"),
        Err(_) => anyhow::bail!("the server at {url} is unreachable: no answer within 5 s"),
    }
}

/// Writes what the viewers sent as one recording, in time order.
fn write_recording(
    path: &std::path::Path,
    room: &str,
    t0_ms: u64,
    trace: &mut [TraceLine],
) -> anyhow::Result<()> {
    use flashcast_wire::recording::{TraceHeader, TraceWriter};
    trace.sort_by_key(|l| l.t_ms);
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = TraceWriter::new(std::io::BufWriter::new(file));
    w.write_header(&TraceHeader::new(room, t0_ms))?;
    for line in trace.iter() {
        w.write_line(line)?;
    }
    w.flush()?;
    Ok(())
}

/// The host's part of the timeline: polls over a host connection, coupon
/// drops over the admin API.
async fn play_host(
    s: Scenario,
    admin: Admin,
    room: String,
    host_token: Option<String>,
    t0: Instant,
) -> anyhow::Result<()> {
    let mut steps: Vec<(f64, usize)> = s
        .phases
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, Phase::Poll { .. } | Phase::CouponDrop { .. }))
        .map(|(i, p)| (p.at(), i))
        .collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, p) in steps {
        tokio::time::sleep_until(t0 + secs(at)).await;
        match &s.phases[p] {
            Phase::Poll { over, options, .. } => {
                // A connection per poll: an idle host socket between steps
                // would fall behind the room and be closed as slow.
                let mut host =
                    crate::host::Host::connect(&s.ws_url(), &room, host_token.as_deref()).await?;
                let duration = (over + 2.0).ceil() as u32;
                host.open_poll(&format!("Storm poll {}", p + 1), options, duration)
                    .await?;
                host.close().await;
            }
            Phase::CouponDrop {
                count, percent_off, ..
            } => {
                admin
                    .drop_coupons(&room, *count, *percent_off)
                    .await
                    .context("dropping coupons")?;
            }
            _ => unreachable!("only polls and coupon drops are host steps"),
        }
    }
    Ok(())
}

/// `flashcast-storm run`: exit 0 pass, 1 a criterion failed, 2 the run
/// could not be carried out.
pub async fn main(args: crate::cli::RunArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut s = match Scenario::load(&args.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(f) = args.scale {
        s = match s.scaled(f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {}: {e}", args.file.display());
                return ExitCode::from(2);
            }
        };
    }
    if let Some(w) = args.workers {
        s.load.workers = w;
    }
    if args.url.is_some() || args.workers.is_some() {
        s.target.url = args.url.clone().unwrap_or(s.target.url);
        if let Err(e) = s.validate() {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    raise_open_files_limit();
    let opts = RunOptions {
        admin_key: args.admin_key.clone(),
        server_pid: args.server_pid,
        workers: args.workers,
        worker_exe: std::env::current_exe().ok(),
        record: args.record.clone(),
        abort_on_fail: args.abort_on_fail,
        metrics_listen: args.metrics_listen,
        quiet: args.quiet,
    };
    let verdict = match run(&s, &opts).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "\nflashcast-storm run {} ({}{}), run {}",
        args.file.display(),
        s.name,
        args.scale
            .map(|f| format!(", scaled x{f}"))
            .unwrap_or_default(),
        verdict.run_id
    );
    print!("{}", verdict.table());
    for (path, what, result) in [
        (
            &args.out,
            "JSON report",
            args.out.as_ref().map(|p| verdict.write_json(p)),
        ),
        (
            &args.html,
            "HTML report",
            args.html.as_ref().map(|p| verdict.write_html(p)),
        ),
        (
            &args.csv,
            "per-second CSV",
            args.csv.as_ref().map(|p| verdict.write_csv(p)),
        ),
    ] {
        match (path, result) {
            (Some(p), Some(Ok(()))) => println!("  {what} written to {}", p.display()),
            (Some(_), Some(Err(e))) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
            _ => {}
        }
    }
    if let Some(p) = &args.record {
        println!("  recording written to {}", p.display());
    }
    if verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `flashcast-storm check`: validates a file and prints its timeline.
pub fn check_main(file: &std::path::Path, scale: Option<f64>) -> std::process::ExitCode {
    let s = match Scenario::load(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let s = match scale.map(|f| s.scaled(f)).unwrap_or(Ok(s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return std::process::ExitCode::from(2);
        }
    };
    let replays = match ReplaySummary::of(&s).and_then(|r| {
        r.check_rates().map_err(anyhow::Error::msg)?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let (lengths, replayed) = (&replays.lengths, replays.viewers);
    println!(
        "{}: {} viewers (auth = \"{}\") + {replayed} replayed, {} phases, {} worker(s), {} source addresses",
        s.name,
        s.viewers.count,
        match s.viewers.auth {
            Auth::Guest => "guest",
            Auth::Token => "token",
        },
        s.phases.len(),
        s.load.workers,
        source_ip_count(&s, replayed)
    );
    for (i, p) in s.phases.iter().enumerate() {
        println!(
            "  {:>2}. {:<12} {:>7.1} s -> {:>7.1} s",
            i + 1,
            p.kind(),
            p.at(),
            p.end(lengths[i])
        );
    }
    if replays.staff_conns > 0 || replays.skipped > 0 {
        println!(
            "  replay: {} host/moderator connection(s) not replayed, {} recorded action(s) skipped",
            replays.staff_conns, replays.skipped
        );
    }
    println!(
        "  ends at {:.1} s plus {:.1} s drain",
        s.end(lengths),
        s.load.drain
    );
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text, "t.toml").unwrap()
    }

    const S: &str = r#"
name = "t"
[viewers]
count = 1000
auth = "token"
[[phase]]
type = "join"
at = 0
viewers = 600
over = 6
[[phase]]
type = "join"
at = 10
viewers = 400
over = 4
[[phase]]
type = "chat"
at = 20
duration = 10
rate = 50
senders = 30
[[phase]]
type = "flash_sale"
at = 30
stock = 10
buyers = 250
within = 1
[[phase]]
type = "reconnect"
at = 40
fraction = 0.1
over = 2
"#;

    #[test]
    fn scripts_do_what_the_phases_say_in_total() {
        let s = scenario(S);
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let scripts: Vec<Script> = (0..1000).map(|i| script_for(&s, "r", i, ip)).collect();
        let chats = scripts
            .iter()
            .flat_map(|s| &s.timed)
            .filter(|(_, a)| matches!(a, Act::Chat(_)))
            .count();
        assert_eq!(chats, 500);
        let buyers = scripts
            .iter()
            .filter(|s| !s.triggers.buys.is_empty())
            .count();
        assert_eq!(buyers, 250);
        let reconnects = scripts
            .iter()
            .flat_map(|s| &s.timed)
            .filter(|(_, a)| matches!(a, Act::Reconnect))
            .count();
        assert_eq!(reconnects, 100);
        // Joins: the first 600 over [0, 6), the rest over [10, 14).
        assert_eq!(scripts[599].join_at, secs(6.0 * 599.0 / 600.0));
        assert_eq!(scripts[600].join_at, secs(10.0));
        assert!(scripts.iter().all(|s| s.join_at < secs(14.0)));
        // Every chat is inside the chat phase, every buy delay inside `within`.
        for s in &scripts {
            for (t, a) in &s.timed {
                if matches!(a, Act::Chat(_)) {
                    assert!(*t >= secs(20.0) && *t < secs(30.0), "{t:?}");
                }
            }
            for b in &s.triggers.buys {
                assert!(b.delay < secs(1.0));
            }
        }
    }

    #[test]
    fn scripts_do_not_depend_on_the_number_of_workers() {
        let s = scenario(S);
        for k in [1, 3, 7] {
            let p = plans(&s, "r", "demo", None, k, 60, 0);
            assert_eq!(p.iter().map(|p| p.share.count).sum::<u32>(), 1000);
            for w in p.windows(2) {
                let (a, b) = (w[0].share, w[1].share);
                assert_eq!(a.offset + a.count, b.offset);
                assert_eq!(a.ip_offset + a.ip_count, b.ip_offset);
            }
        }
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let a = script_for(&s, "r", 123, ip);
        let b = script_for(&s, "r", 123, ip);
        assert_eq!(format!("{:?}", a.timed), format!("{:?}", b.timed));
    }

    #[test]
    fn staged_joins_follow_the_ramp() {
        // The first wave of 600 ramps 0 -> 100/s over 6 s: half of the
        // area is reached at 6/sqrt(2) s, not at 3 s as evenly.
        let s = scenario(&S.replace(
            "viewers = 600\nover = 6",
            "viewers = 600\nover = 6\nstages = [[6, 100]]",
        ));
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let t = script_for(&s, "r", 300, ip).join_at.as_secs_f64();
        assert!((t - 6.0 / 2f64.sqrt()).abs() < 0.01, "{t}");
        assert!(script_for(&s, "r", 0, ip).join_at.is_zero());
        // Open model: with `stay`, each leaves that long after joining.
        let s = scenario(&S.replace(
            "viewers = 600\nover = 6",
            "viewers = 600\nover = 6\nstay = 2.5",
        ));
        let v = script_for(&s, "r", 300, ip);
        let leave = v.timed.iter().find(|(_, a)| matches!(a, Act::Leave));
        assert_eq!(leave.map(|(t, _)| *t), Some(v.join_at + secs(2.5)));
        assert!(!script_for(&s, "r", 700, ip)
            .timed
            .iter()
            .any(|(_, a)| matches!(a, Act::Leave)));
    }

    #[test]
    fn a_spike_sale_has_most_buyers_at_once() {
        let delays = |text: &str| -> Vec<f64> {
            let s = scenario(text);
            let ip = std::net::Ipv4Addr::LOCALHOST;
            (0..1000)
                .flat_map(|i| script_for(&s, "r", i, ip).triggers.buys)
                .map(|b| b.delay.as_secs_f64())
                .collect()
        };
        let early = |d: &[f64]| d.iter().filter(|&&t| t < 0.2).count();
        let uniform = delays(S);
        let spike = delays(&S.replace("within = 1\n", "within = 1\narrival = \"spike\"\n"));
        assert_eq!((uniform.len(), spike.len()), (250, 250));
        // Uniform: about a fifth in the first fifth; spike: about 63%.
        assert!((35..=65).contains(&early(&uniform)), "{}", early(&uniform));
        assert!((140..=175).contains(&early(&spike)), "{}", early(&spike));
        assert!(spike.iter().all(|&t| (0.0..1.0).contains(&t)));
    }

    #[test]
    fn questions_and_upvotes_phases_script_their_acts() {
        let s = scenario(&S.replace(
            "[[phase]]\ntype = \"reconnect\"",
            "[[phase]]\ntype = \"questions\"\nat = 5\nduration = 4\nrate = 10\nsenders = 20\n[[phase]]\ntype = \"upvotes\"\nat = 9\nvoters = 300\nwithin = 2\n[[phase]]\ntype = \"reconnect\"",
        ));
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let acts: Vec<(Duration, Act)> = (0..1000)
            .flat_map(|i| script_for(&s, "r", i, ip).timed)
            .collect();
        let asks: Vec<_> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Act::Ask(_)))
            .collect();
        assert_eq!(asks.len(), 40);
        assert!(asks.iter().all(|(t, _)| *t >= secs(5.0) && *t < secs(9.0)));
        let ups: Vec<_> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Act::UpvoteSeen))
            .collect();
        assert_eq!(ups.len(), 300);
        assert!(ups.iter().all(|(t, _)| *t >= secs(9.0) && *t < secs(11.0)));
        // More questions than a room keeps are refused.
        let e = Scenario::parse(
            &S.replace(
                "[[phase]]\ntype = \"reconnect\"",
                "[[phase]]\ntype = \"questions\"\nat = 5\nduration = 100\nrate = 20\nsenders = 20\n[[phase]]\ntype = \"reconnect\"",
            ),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than the 1000 a room keeps"), "{e}");
    }

    #[test]
    fn a_replay_faster_than_the_chat_limit_is_refused() {
        // Two chats a second are fine at 1x; five a second for 3 s is not.
        let steady = (0..10).map(|k| k as f64 * 0.5);
        assert_eq!(refused_by_bucket(steady, 2.0, 5.0), 0);
        let fast = (0..15).map(|k| k as f64 * 0.2);
        assert!(refused_by_bucket(fast, 2.0, 5.0) > 0);
        let sum = ReplaySummary {
            rate_limited: vec![(1, 4.0, 3, 0)],
            ..ReplaySummary::default()
        };
        let e = sum.check_rates().unwrap_err();
        assert!(
            e.contains("phase 2 (replay): at speed 4, 3 recorded chat messages"),
            "{e}"
        );
        assert!(ReplaySummary::default().check_rates().is_ok());
    }
}
