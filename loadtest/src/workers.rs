//! Worker processes, shared by every storm (`run` and the `nchan` peer).
//!
//! A storm's connections are split over K workers ([`shares`]), each with
//! its own loopback source addresses (a source address has ~28k ephemeral
//! ports) and its own open-file budget. With one worker it runs in this
//! process; with more, each is a child process of the same binary (a hidden
//! subcommand, [`Job::SUBCOMMAND`]) that prints JSON lines on stdout
//! ([`WorkerLine`]: progress, ready, result) and reads `go <unix ms>` on
//! stdin (and `stop` later, to end the timeline early: `--abort-on-fail`).
//! The coordinator waits until every worker is ready, sends the go
//! signal ([`GO_LEAD_MS`] ahead, so every worker has it before the
//! timeline starts), and merges the results.

use std::future::Future;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::future::JoinAll;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::source_ip;
use crate::tally::{Live, Progress};

/// Time between the go decision and the go signal, so every worker has it
/// before the timeline starts.
pub const GO_LEAD_MS: u64 = 1_500;

/// How often a worker reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// One worker's part of the connections and of the source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub worker: u32,
    pub workers: u32,
    /// Global connections `offset..offset + count`.
    pub offset: u32,
    pub count: u32,
    /// Source addresses `source_ip(ip_offset..ip_offset + ip_count)`.
    pub ip_offset: u32,
    pub ip_count: u32,
}

impl Share {
    /// The source address of connection `n` (global or local: only its
    /// rest modulo `ip_count` counts).
    pub fn source_ip(&self, n: u32) -> Ipv4Addr {
        source_ip(self.ip_offset + n % self.ip_count)
    }
}

/// Splits `total` connections and `ips` source addresses evenly over `k`
/// workers (each gets at least one address).
pub fn shares(total: u32, ips: u32, k: u32) -> Vec<Share> {
    let k = k.max(1);
    let split = |n: u32, i: u32| n / k + u32::from(i < n % k);
    let ips = ips.max(k);
    let (mut offset, mut ip_offset) = (0, 0);
    (0..k)
        .map(|i| {
            let s = Share {
                worker: i,
                workers: k,
                offset,
                count: split(total, i),
                ip_offset,
                ip_count: split(ips, i).max(1),
            };
            offset += s.count;
            ip_offset += s.ip_count;
            s
        })
        .collect()
}

/// What one worker does: its plan (sent to a child process as JSON) and
/// how it runs.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// What the worker measured; the coordinator merges them.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The hidden subcommand of `flashcast-storm` that runs one worker.
    const SUBCOMMAND: &'static str;
    /// The worker's live counters.
    fn live(&self) -> Live;
    /// Prepares, reports ready through `go` (which answers with the go
    /// signal's unix ms) and runs to the end.
    fn run(
        self,
        live: Arc<Live>,
        go: Go,
    ) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;
}

/// A worker's line to its coordinator (a child process's stdout).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLine<O> {
    Progress(Box<Progress>),
    /// Prepared; waiting for `go <unix ms>`.
    Ready,
    Result(Box<O>),
}

/// How a worker reports ready and hears the go signal.
pub struct Go(GoVia);

enum GoVia {
    /// The one worker, in the coordinator's process.
    Local {
        ready: mpsc::UnboundedSender<usize>,
        go: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
    },
    /// A child process: stdout and stdin.
    Process,
}

/// Resolves when the coordinator asks the worker to end its timeline now.
pub struct Stop(StopVia);

enum StopVia {
    Local(watch::Receiver<bool>),
    Process(BufReader<tokio::io::Stdin>),
}

impl Stop {
    /// Waits for the stop signal; never resolves if none comes (a closed
    /// stdin means the coordinator is gone: that stops too).
    pub async fn stopped(&mut self) {
        match &mut self.0 {
            StopVia::Local(rx) => {
                if rx.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            StopVia::Process(stdin) => {
                let mut line = String::new();
                loop {
                    line.clear();
                    match stdin.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim() == "stop" => return,
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

impl Go {
    /// Reports ready and waits for the go signal: its unix ms.
    pub async fn ready(self) -> anyhow::Result<u64> {
        Ok(self.ready_with_stop().await?.0)
    }

    /// [`Go::ready`], and the stop signal that may come later.
    pub async fn ready_with_stop(self) -> anyhow::Result<(u64, Stop)> {
        match self.0 {
            GoVia::Local {
                ready,
                mut go,
                stop,
            } => {
                let _ = ready.send(0);
                go.changed().await.context("no go")?;
                let t0 = *go.borrow();
                Ok((t0, Stop(StopVia::Local(stop))))
            }
            GoVia::Process => {
                emit::<()>(&WorkerLine::Ready);
                let mut line = String::new();
                let mut stdin = BufReader::new(tokio::io::stdin());
                stdin.read_line(&mut line).await.context("reading go")?;
                let t0 = line
                    .trim()
                    .strip_prefix("go ")
                    .and_then(|t| t.parse().ok())
                    .context("the coordinator went away before go")?;
                Ok((t0, Stop(StopVia::Process(stdin))))
            }
        }
    }
}

/// Ends every worker's timeline early (their results still come).
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

/// Reports `live`'s progress every [`PROGRESS_EVERY`] through `send` until
/// the task is aborted (or `send` says stop).
fn report_progress(
    live: Arc<Live>,
    send: impl Fn(Progress) -> bool + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        loop {
            every.tick().await;
            if !send(live.progress()) {
                break;
            }
        }
    })
}

type Task<O> = JoinHandle<anyhow::Result<O>>;

/// The coordinator's side: every worker started, their progress, the go
/// signal, their results.
pub struct Workers<O> {
    count: usize,
    ready_rx: mpsc::UnboundedReceiver<usize>,
    go_tx: watch::Sender<u64>,
    stop_tx: Arc<watch::Sender<bool>>,
    progress_rx: mpsc::UnboundedReceiver<(usize, Progress)>,
    progress: Vec<Progress>,
    tasks: Pin<Box<JoinAll<Task<O>>>>,
    tick: tokio::time::Interval,
}

impl<O: Serialize + DeserializeOwned + Send + 'static> Workers<O> {
    /// Starts a worker per plan: in this process when there is one, else
    /// one child process of `exe` each.
    pub fn start<J: Job<Output = O>>(plans: &[J], exe: Option<PathBuf>) -> anyhow::Result<Self> {
        let count = plans.len();
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        let (go_tx, go_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(count);
        if count == 1 {
            let plan = plans[0].clone();
            let live = Arc::new(plan.live());
            let go = Go(GoVia::Local {
                ready: ready_tx,
                go: go_rx,
                stop: stop_rx,
            });
            tasks.push(tokio::spawn(async move {
                let printer =
                    report_progress(live.clone(), move |p| progress_tx.send((0, p)).is_ok());
                let result = plan.run(live, go).await;
                printer.abort();
                result
            }));
        } else {
            let exe = exe.context("several workers need the flashcast-storm binary")?;
            for (i, plan) in plans.iter().enumerate() {
                tasks.push(spawn_child(
                    &exe,
                    J::SUBCOMMAND,
                    i,
                    serde_json::to_string(plan)?,
                    ready_tx.clone(),
                    (go_rx.clone(), stop_rx.clone()),
                    progress_tx.clone(),
                )?);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Workers {
            count,
            ready_rx,
            go_tx,
            stop_tx: Arc::new(stop_tx),
            progress_rx,
            progress: vec![Progress::default(); count],
            tasks: Box::pin(futures_util::future::join_all(tasks)),
            tick,
        })
    }

    /// Every worker's progress added up.
    fn sum(&self) -> Progress {
        let mut sum = Progress::default();
        for p in &self.progress {
            sum.merge(p);
        }
        sum
    }

    /// Waits until every worker is ready; `tick` sees the progress once a
    /// second. A worker that ends before it is ready fails the run with its
    /// error.
    pub async fn ready(&mut self, mut tick: impl AsyncFnMut(&Progress)) -> anyhow::Result<()> {
        let mut ready = 0;
        while ready < self.count {
            tokio::select! {
                r = self.ready_rx.recv() => match r {
                    Some(_) => ready += 1,
                    None => break,
                },
                Some((i, p)) = self.progress_rx.recv() => self.progress[i] = p,
                _ = self.tick.tick() => tick(&self.sum()).await,
            }
        }
        if ready < self.count {
            for result in (&mut self.tasks).await {
                result.context("worker task")??;
            }
            bail!("a worker ended before it was ready");
        }
        Ok(())
    }

    /// A handle that ends every worker's timeline early.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop_tx.clone())
    }

    /// Releases every worker: the timeline starts at `t0_ms`.
    pub fn go(&self, t0_ms: u64) {
        let _ = self.go_tx.send(t0_ms);
    }

    /// Waits for every worker's result; `tick` sees the progress once a
    /// second.
    pub async fn finish(mut self, mut tick: impl AsyncFnMut(&Progress)) -> anyhow::Result<Vec<O>> {
        let results = loop {
            tokio::select! {
                r = &mut self.tasks => break r,
                Some((i, p)) = self.progress_rx.recv() => self.progress[i] = p,
                _ = self.tick.tick() => tick(&self.sum()).await,
            }
        };
        results
            .into_iter()
            .map(|r| r.context("worker task panicked")?)
            .collect()
    }
}

fn spawn_child<O: DeserializeOwned + Send + 'static>(
    exe: &PathBuf,
    subcommand: &str,
    i: usize,
    plan_json: String,
    ready_tx: mpsc::UnboundedSender<usize>,
    // The go signal and the later stop signal.
    (mut go_rx, mut stop_rx): (watch::Receiver<u64>, watch::Receiver<bool>),
    progress_tx: mpsc::UnboundedSender<(usize, Progress)>,
) -> anyhow::Result<Task<O>> {
    let mut child = tokio::process::Command::new(exe)
        .arg(subcommand)
        .arg("--plan")
        .arg(plan_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    Ok(tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut result = None;
        let mut go_sent = false;
        let mut stop_sent = false;
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Some(line) = line? else { break };
                    match serde_json::from_str::<WorkerLine<O>>(&line) {
                        Ok(WorkerLine::Progress(p)) => {
                            let _ = progress_tx.send((i, *p));
                        }
                        Ok(WorkerLine::Ready) => {
                            let _ = ready_tx.send(i);
                        }
                        Ok(WorkerLine::Result(t)) => result = Some(*t),
                        Err(_) => eprintln!("worker {i}: {line}"),
                    }
                }
                ok = go_rx.changed(), if !go_sent => {
                    ok.context("no go")?;
                    let t0 = *go_rx.borrow();
                    stdin.write_all(format!("go {t0}\n").as_bytes()).await?;
                    stdin.flush().await?;
                    go_sent = true;
                }
                ok = stop_rx.changed(), if go_sent && !stop_sent => {
                    let stop = ok.is_ok() && *stop_rx.borrow_and_update();
                    stop_sent = ok.is_err() || stop;
                    if stop {
                        // A worker that already ended has no stdin to read it.
                        let _ = stdin.write_all(b"stop\n").await;
                        let _ = stdin.flush().await;
                    }
                }
            }
        }
        let status = child.wait().await?;
        result.with_context(|| format!("worker {i} ended without a result ({status})"))
    }))
}

/// Entry point of a worker process (`flashcast-storm <J::SUBCOMMAND> --plan
/// JSON`): exit 0 with a result line, 2 on an error.
pub async fn worker_main<J: Job>(plan_json: &str) -> ExitCode {
    let code = match run_child::<J>(plan_json).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{} error: {e:#}", J::SUBCOMMAND);
            2
        }
    };
    // Exits here rather than by returning: the stop signal's read of stdin
    // may still be in flight on a blocking thread, which the runtime's
    // shutdown would wait for until the coordinator closes stdin. Every
    // line was written and flushed by `emit`.
    std::process::exit(code)
}

async fn run_child<J: Job>(plan_json: &str) -> anyhow::Result<()> {
    raise_open_files_limit();
    let plan: J = serde_json::from_str(plan_json).context("bad worker plan")?;
    let live = Arc::new(plan.live());
    let printer = report_progress(live.clone(), |p| {
        emit::<()>(&WorkerLine::Progress(Box::new(p)));
        true
    });
    let result = plan.run(live, Go(GoVia::Process)).await;
    printer.abort();
    emit(&WorkerLine::Result(Box::new(result?)));
    Ok(())
}

fn emit<O: Serialize>(line: &WorkerLine<O>) {
    let json = serde_json::to_string(line).expect("worker lines serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (ten
/// thousand connections need more descriptors than the usual soft limit).
/// Returns the soft limit now in force, 0 if unknown.
pub fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        // rlim_t is u64 on Linux, not everywhere.
        #[allow(clippy::unnecessary_cast)]
        let soft = lim.rlim_cur as u64;
        soft
    }
}

/// Warns when a worker would hold more connections than it may open files.
pub fn check_open_files(shares: &[Share]) {
    let soft = raise_open_files_limit();
    let most = shares.iter().map(|s| s.count as u64).max().unwrap_or(0);
    if soft > 0 && most + 64 > soft {
        eprintln!(
            "warning: {most} connections in one process but only {soft} open files allowed; \
             use more --workers or raise `ulimit -n`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_connections_and_addresses() {
        for (total, ips, k) in [(2001, 9, 3), (1000, 4, 1), (10, 1, 4), (7, 0, 7)] {
            let s = shares(total, ips, k);
            assert_eq!(s.len(), k as usize);
            assert_eq!(s.iter().map(|s| s.count).sum::<u32>(), total);
            assert_eq!(s.iter().map(|s| s.ip_count).sum::<u32>(), ips.max(k));
            for w in s.windows(2) {
                assert_eq!(w[0].offset + w[0].count, w[1].offset);
                assert_eq!(w[0].ip_offset + w[0].ip_count, w[1].ip_offset);
            }
            // No two workers share a source address.
            let last = s.last().unwrap();
            assert_eq!(last.source_ip(last.ip_count - 1), source_ip(ips.max(k) - 1));
        }
    }

    #[test]
    fn worker_lines_round_trip() {
        let line = serde_json::to_string(&WorkerLine::<u32>::Result(Box::new(7))).unwrap();
        assert_eq!(line, r#"{"result":7}"#);
        let back: WorkerLine<u32> = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, WorkerLine::Result(v) if *v == 7));
        let ready = serde_json::to_string(&WorkerLine::<u32>::Ready).unwrap();
        assert_eq!(ready, r#""ready""#);
    }
}
