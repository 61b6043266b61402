//! Command-line surface. Each scenario is a subcommand with its own args;
//! `worker` is the hidden entry point of child processes (`--workers`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// flashcast-storm: viewer-storm load tester for Flashcast.
#[derive(Debug, Parser)]
#[command(name = "flashcast-storm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a scenario file: phases on a timeline (joins, chat, reactions,
    /// polls, flash sales, coupon drops, reconnects, replays), judged by the
    /// file's pass criteria. Exit code 1 when a criterion fails.
    Run(RunArgs),
    /// Checks a scenario file and prints what it would do, without running it.
    Check {
        /// The scenario file (TOML).
        file: PathBuf,
        /// Check it scaled, as `run --scale` would run it.
        #[arg(long)]
        scale: Option<f64>,
    },
    /// Compares two JSON reports of `run` (percentiles, CPU per event, RSS,
    /// errors); exit code 1 when B is worse than A beyond the tolerance.
    Diff(crate::diff::DiffArgs),
    /// Internal: one worker process of `run`.
    #[command(hide = true)]
    ScenarioWorker {
        /// The plan, as JSON.
        #[arg(long)]
        plan: String,
    },
    /// The peer benchmark (benches/peer/): N WebSocket subscribers to one
    /// nginx + nchan channel, one HTTP publisher at a fixed rate; delivery
    /// latency, gaps and duplicates by the publisher's sequence.
    Nchan(crate::nchan::NchanArgs),
    /// The video benchmark: one WHIP publisher and N WHEP viewers (WebRTC,
    /// in this process); per viewer first packet, loss and RTP-arrival
    /// latency, and the server's CPU per viewer.
    Video(crate::video::VideoArgs),
    /// Internal: one child process of `nchan --workers`.
    #[command(hide = true)]
    NchanWorker {
        /// The plan, as JSON.
        #[arg(long)]
        plan: String,
    },
}

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The scenario file (TOML); examples in loadtest/scenarios/.
    pub file: PathBuf,
    /// Server base URL, overriding the file's `target.url`.
    #[arg(long)]
    pub url: Option<String>,
    /// Admin key (for tokens, rooms, sales, coupons, orders).
    #[arg(long, env = "FLASHCAST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// PID of a local server process: its CPU and memory are sampled from
    /// /proc every second.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker processes, overriding the file's `load.workers` (1-64).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Runs the scenario with this many times the people (0.01 = a
    /// hundredth: viewers, senders and their rates, voters, buyers, stock,
    /// coupons, replay copies); times and pass criteria stay.
    #[arg(long)]
    pub scale: Option<f64>,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the HTML report (charts) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the per-second series (the report's `seconds`) as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Serve the tool's own metrics (Prometheus text) on this address while
    /// the run goes on, e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write what the tool sent as a recording (JSON lines), replayable
    /// with a `replay` phase.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Ends the run as soon as a criterion that the live counters can
    /// judge fails (gaps, duplicates, unexpected errors, resume gaps, failed
    /// reconnects, undecodable frames; max_p99_ms with one worker); the
    /// report says ABORTED and the exit code is 1.
    #[arg(long)]
    pub abort_on_fail: bool,
    /// No progress lines (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}
