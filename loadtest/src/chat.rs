//! The `chat` scenario: plan the storm, run one share of it in this process
//! ([`run_worker`]), or spread it over child processes and merge their
//! results ([`run_chat`]).
//!
//! Timeline of every process: ramp joins -> all joined (barrier across
//! processes) -> senders send for `duration` -> `drain` -> close -> result.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cli::ChatArgs;
use crate::client::{source_ip, Phase, SendPlan, Target, Viewer, ViewerCtx};
use crate::report::Report;
use crate::stats::{Progress, Stats, Window, WorkerResult};

/// One process's share of the storm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub args: ChatArgs,
    pub run_id: String,
    pub worker: u32,
    /// Global index of this worker's first viewer.
    pub viewer_offset: u32,
    pub viewers: u32,
    /// Global index of this worker's first sender; its senders are its
    /// first `senders` viewers.
    pub sender_offset: u32,
    pub senders: u32,
    /// Source addresses `source_ip(ip_offset..ip_offset + ip_count)`.
    pub ip_offset: u32,
    pub ip_count: u32,
}

/// Splits the storm evenly over `args.workers` processes, each with its own
/// source addresses.
pub fn plan(args: &ChatArgs, run_id: &str) -> Vec<WorkerPlan> {
    let k = args.workers;
    let share = |total: u32, i: u32| total / k + u32::from(i < total % k);
    let ips = args.source_ip_count();
    let (mut v_off, mut s_off, mut ip_off) = (0, 0, 0);
    (0..k)
        .map(|i| {
            let p = WorkerPlan {
                args: args.clone(),
                run_id: run_id.to_string(),
                worker: i,
                viewer_offset: v_off,
                viewers: share(args.viewers, i),
                sender_offset: s_off,
                senders: share(args.senders, i),
                ip_offset: ip_off,
                ip_count: share(ips, i).max(1),
            };
            v_off += p.viewers;
            s_off += p.senders;
            ip_off += p.ip_count;
            p
        })
        .collect()
}

/// The schedule of global sender `j`: the `rate x duration` messages are
/// dealt round-robin, each sender sends every `senders / rate` seconds, and
/// senders are staggered evenly within that period.
pub fn send_plan(args: &ChatArgs, j: u32) -> SendPlan {
    let s = args.senders as u64;
    let total = (args.rate * args.duration).round() as u64;
    let count = total / s + u64::from((j as u64) < total % s);
    let period = if args.rate > 0.0 {
        Duration::from_secs_f64(s as f64 / args.rate)
    } else {
        Duration::ZERO
    };
    SendPlan {
        sender: j,
        count,
        period,
        offset: period.mul_f64(j as f64 / s as f64),
    }
}

/// A short id that tags this run's chat messages.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{:x}", now ^ ((std::process::id() as u64) << 40))
}

/// Runs one worker's share: ramp its joins, call `gate` once every join
/// attempt has resolved (it returns when all processes are ready), send,
/// drain, close. Live counters go to `stats` as it runs.
pub async fn run_worker<G, F>(
    plan: &WorkerPlan,
    stats: Arc<Stats>,
    gate: G,
) -> anyhow::Result<WorkerResult>
where
    G: FnOnce(u64) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let args = &plan.args;
    let target = Target::resolve(&args.url).await?;
    let ctx = Arc::new(ViewerCtx {
        target,
        room: args.room.clone(),
        tag: format!("storm:{}:", plan.run_id),
        stats: stats.clone(),
        join_timeout: Duration::from_secs_f64(args.join_timeout),
        join_retries: args.join_retries,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Joining);
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();

    // Ramp: this worker's share of the global join rate.
    let rate = args.join_rate * plan.viewers as f64 / args.viewers as f64;
    let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(plan.viewers as usize);
    for i in 0..plan.viewers {
        tokio::time::sleep_until(ramp_start + step.mul_f64(i as f64)).await;
        let send = (i < plan.senders).then(|| send_plan(args, plan.sender_offset + i));
        let viewer = Viewer {
            index: plan.viewer_offset + i,
            source: source_ip(plan.ip_offset + i % plan.ip_count),
            send,
        };
        tasks.push(tokio::spawn(viewer.run(
            ctx.clone(),
            phase_rx.clone(),
            joined_tx.clone(),
        )));
    }
    drop(joined_tx);
    let mut joined = 0;
    for _ in 0..plan.viewers {
        match joined_rx.recv().await {
            Some(true) => joined += 1,
            Some(false) => {}
            None => break,
        }
    }

    gate(joined).await?;

    // A short lead so every sender sees the phase before its first slot.
    let start = Instant::now() + Duration::from_millis(100);
    let mut window = Window {
        go_ms: flashcast::protocol::now_ms() + 100,
        ..Window::default()
    };
    let _ = phase_tx.send(Phase::Sending(start));
    tokio::time::sleep_until(start + Duration::from_secs_f64(args.duration)).await;
    let _ = phase_tx.send(Phase::Draining);
    window.send_end_ms = flashcast::protocol::now_ms();
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
    window.stop_ms = flashcast::protocol::now_ms();
    let _ = phase_tx.send(Phase::Stop);

    let mut per_viewer_chat = BTreeMap::new();
    for task in tasks {
        let outcome = task.await.context("viewer task panicked")?;
        if outcome.joined {
            *per_viewer_chat.entry(outcome.chat_received).or_default() += 1;
        }
    }
    Ok(stats.result(per_viewer_chat, window))
}

/// How a run is carried out.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The `flashcast-storm` binary to start for `--workers` > 1.
    pub worker_exe: Option<PathBuf>,
}

/// Runs the whole `chat` storm (in this process, or in `args.workers` child
/// processes) and builds the report. Progress lines go to stdout unless
/// `args.quiet`.
pub async fn run_chat(args: &ChatArgs, opts: &RunOptions) -> anyhow::Result<Report> {
    args.validate().map_err(anyhow::Error::msg)?;
    let run_id = new_run_id();
    let started_ms = flashcast::protocol::now_ms();
    let plans = plan(args, &run_id);
    if args.per_sender_rate() > 2.0 {
        eprintln!(
            "warning: {:.2} msg/s per sender exceeds the server's default chat limit (2/s); \
             expect rate_limited rejections",
            args.per_sender_rate()
        );
    }
    let result = if plans.len() == 1 {
        run_in_process(&plans[0], args.quiet).await?
    } else {
        let exe = opts
            .worker_exe
            .clone()
            .context("--workers > 1 needs the flashcast-storm binary to start")?;
        run_children(&exe, &plans, args.quiet).await?
    };
    Ok(Report::build(args, &run_id, started_ms, result))
}

async fn run_in_process(plan: &WorkerPlan, quiet: bool) -> anyhow::Result<WorkerResult> {
    let stats = Arc::new(Stats::new());
    let printer = (!quiet).then(|| {
        let stats = stats.clone();
        let viewers = plan.viewers as u64;
        tokio::spawn(async move {
            let mut line = ProgressLine::new(viewers);
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                line.print(&stats.progress());
            }
        })
    });
    let result = run_worker(plan, stats, |_| async { Ok(()) }).await;
    if let Some(p) = printer {
        p.abort();
    }
    result
}

/// One line of a child's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildLine {
    Progress(Progress),
    /// Every join attempt resolved; waiting for "go" on stdin.
    Ready {
        joined: u64,
    },
    Result(Box<WorkerResult>),
}

/// Entry point of a child process (`flashcast-storm worker --plan JSON`).
pub async fn worker_main(plan_json: &str) -> anyhow::Result<()> {
    let plan: WorkerPlan = serde_json::from_str(plan_json).context("bad worker plan")?;
    let stats = Arc::new(Stats::new());
    let printer = {
        let stats = stats.clone();
        tokio::spawn(async move {
            // Often, so the parent's once-a-second rates are not aliased.
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                emit(&ChildLine::Progress(stats.progress()));
            }
        })
    };
    let result = run_worker(&plan, stats, |joined| async move {
        emit(&ChildLine::Ready { joined });
        let mut line = String::new();
        BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await
            .context("reading go")?;
        if line.trim() != "go" {
            bail!("parent went away before go");
        }
        Ok(())
    })
    .await;
    printer.abort();
    emit(&ChildLine::Result(Box::new(result?)));
    Ok(())
}

fn emit(line: &ChildLine) {
    let json = serde_json::to_string(line).expect("child line serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
}

enum ChildEvent {
    Line(ChildLine),
    Exited,
}

/// Starts one child per plan, releases them together once all are joined,
/// prints merged progress, and merges their results.
async fn run_children(
    exe: &PathBuf,
    plans: &[WorkerPlan],
    quiet: bool,
) -> anyhow::Result<WorkerResult> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, ChildEvent)>();
    let mut stdins = Vec::new();
    let mut children = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .arg("--plan")
            .arg(serde_json::to_string(plan)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {}", exe.display()))?;
        stdins.push(child.stdin.take().expect("piped"));
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildLine>(&line) {
                    Ok(l) => {
                        let _ = tx.send((i, ChildEvent::Line(l)));
                    }
                    Err(_) => eprintln!("worker {i}: {line}"),
                }
            }
            let _ = tx.send((i, ChildEvent::Exited));
        });
        children.push(child);
    }
    drop(tx);

    let k = plans.len();
    let total_viewers: u64 = plans.iter().map(|p| p.viewers as u64).sum();
    let mut progress = vec![Progress::default(); k];
    let mut ready = vec![false; k];
    let mut results: Vec<Option<WorkerResult>> = vec![None; k];
    let mut line = ProgressLine::new(total_viewers);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    while results.iter().any(Option::is_none) {
        tokio::select! {
            ev = rx.recv() => {
                let Some((i, ev)) = ev else { bail!("all workers went away") };
                match ev {
                    ChildEvent::Line(ChildLine::Progress(p)) => progress[i] = p,
                    ChildEvent::Line(ChildLine::Ready { .. }) => {
                        ready[i] = true;
                        if ready.iter().all(|r| *r) {
                            for stdin in &mut stdins {
                                stdin.write_all(b"go\n").await.context("releasing workers")?;
                                stdin.flush().await?;
                            }
                        }
                    }
                    ChildEvent::Line(ChildLine::Result(r)) => results[i] = Some(*r),
                    ChildEvent::Exited if results[i].is_none() => {
                        let status = children[i].wait().await?;
                        bail!("worker {i} ended without a result ({status})");
                    }
                    ChildEvent::Exited => {}
                }
            }
            _ = every.tick(), if !quiet => {
                let mut sum = Progress::default();
                for p in &progress {
                    sum.merge(p);
                }
                line.print(&sum);
            }
        }
    }
    for child in &mut children {
        let _ = child.wait().await;
    }
    let mut merged = WorkerResult::default();
    for r in results.into_iter().flatten() {
        merged.merge(&r);
    }
    Ok(merged)
}

/// Prints one progress line per second with per-second rates.
struct ProgressLine {
    started: Instant,
    viewers: u64,
    last: Progress,
    last_at: Instant,
}

impl ProgressLine {
    fn new(viewers: u64) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            viewers,
            last: Progress::default(),
            last_at: now,
        }
    }

    fn print(&mut self, p: &Progress) {
        let now = Instant::now();
        let dt = (now - self.last_at).as_secs_f64().max(0.001);
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        println!(
            "[{:>4.0}s] joined {}/{} (failed {}) | sent {} ({:.0}/s) rejected {} | events {} ({:.0}/s) | gaps {} dups {} | closes {} errors {} | p99 {}",
            (now - self.started).as_secs_f64(),
            p.joined,
            self.viewers,
            p.join_failed,
            p.chat_sent,
            per_sec(p.chat_sent, self.last.chat_sent),
            p.chat_rejected,
            p.events,
            per_sec(p.events, self.last.events),
            p.gaps,
            p.duplicates,
            p.closes,
            p.errors,
            p.p99_ms.map_or("-".to_string(), |v| format!("{v} ms")),
        );
        self.last = *p;
        self.last_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ChatArgs {
        let mut v = vec!["flashcast-storm", "chat"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Chat(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn plans_cover_everything_once_with_distinct_addresses() {
        let a = args(&[
            "--viewers",
            "2001",
            "--senders",
            "101",
            "--workers",
            "4",
            "--rate",
            "100",
        ]);
        let plans = plan(&a, "x");
        assert_eq!(plans.iter().map(|p| p.viewers).sum::<u32>(), 2001);
        assert_eq!(plans.iter().map(|p| p.senders).sum::<u32>(), 101);
        for w in plans.windows(2) {
            assert_eq!(w[0].viewer_offset + w[0].viewers, w[1].viewer_offset);
            assert_eq!(w[0].ip_offset + w[0].ip_count, w[1].ip_offset);
        }
        assert!(plans
            .iter()
            .all(|p| p.senders <= p.viewers && p.ip_count >= 1));
    }

    #[test]
    fn send_plans_add_up_to_rate_times_duration() {
        let a = args(&[
            "--viewers",
            "200",
            "--senders",
            "7",
            "--rate",
            "20",
            "--duration",
            "3",
        ]);
        let total: u64 = (0..7).map(|j| send_plan(&a, j).count).sum();
        assert_eq!(total, 60);
        let p = send_plan(&a, 6);
        // The last message of every sender is due before the duration ends.
        let last = p.offset + p.period.mul_f64((p.count - 1) as f64);
        assert!(last < Duration::from_secs(3), "{last:?}");
    }
}
