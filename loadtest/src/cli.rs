//! Command-line surface. Each scenario is a subcommand with its own args;
//! `worker` is the hidden entry point of child processes (`--workers`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

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
    },
    /// Internal: one worker process of `run`.
    #[command(hide = true)]
    ScenarioWorker {
        /// The plan, as JSON.
        #[arg(long)]
        plan: String,
    },
    /// N viewers join a room; S of them chat at a total rate for a while.
    /// Every viewer checks sequence contiguity and delivery latency.
    Chat(ChatArgs),
    /// The peer benchmark (benches/peer/): N WebSocket subscribers to one
    /// nginx + nchan channel, one HTTP publisher at a fixed rate; delivery
    /// latency, gaps and duplicates by the publisher's sequence.
    Nchan(crate::nchan::NchanArgs),
    /// Internal: one child process of `nchan --workers`.
    #[command(hide = true)]
    NchanWorker {
        /// The plan, as JSON.
        #[arg(long)]
        plan: String,
    },
    /// Internal: one child process of `--workers`. Reads its plan as JSON,
    /// speaks JSON lines on stdout.
    #[command(hide = true)]
    Worker {
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
    /// Worker processes, overriding the file's `load.workers`.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the HTML report (charts) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write what the tool sent as a recording (JSON lines), replayable
    /// with a `replay` phase.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// No progress lines (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Options of the `chat` scenario.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ChatArgs {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Room to join (as guests; the room must allow guests).
    #[arg(long, default_value = "demo")]
    pub room: String,
    /// Viewers to connect.
    #[arg(long, default_value_t = 100)]
    pub viewers: u32,
    /// How many of the viewers also send chat.
    #[arg(long, default_value_t = 10)]
    pub senders: u32,
    /// Total chat messages per second, spread evenly over the senders. The
    /// server allows 2/s per user by default, so keep rate/senders <= 2.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of chat sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to keep reading after the last message was sent.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Joins per second, all workers together (the ramp).
    #[arg(long, default_value_t = 500.0)]
    pub join_rate: f64,
    /// Source addresses 127.0.0.1.. to spread connections over (the server
    /// limits joins per IP). 0 = one address per 250 viewers.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u32,
    /// Seconds allowed for connect + handshake + `joined`, per attempt.
    #[arg(long, default_value_t = 10.0)]
    pub join_timeout: f64,
    /// Extra attempts for a join that failed (after a short back-off).
    #[arg(long, default_value_t = 2)]
    pub join_retries: u32,
    /// Child processes sharing the viewers (each with its own source
    /// addresses and file-descriptor budget). 1 = run in this process.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fail when the p99 delivery latency exceeds this (ms).
    #[arg(long)]
    pub max_p99_ms: Option<u64>,
    /// Fail when the maximum delivery latency exceeds this (ms).
    #[arg(long)]
    pub max_latency_ms: Option<u64>,
    /// No progress lines (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

impl ChatArgs {
    /// Checks the combination of options; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.viewers == 0 {
            return Err("--viewers must be at least 1".into());
        }
        if self.senders > self.viewers {
            return Err(format!(
                "--senders ({}) cannot exceed --viewers ({}): senders are viewers that also chat",
                self.senders, self.viewers
            ));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err("--rate must be a number >= 0".into());
        }
        if self.rate > 0.0 && self.senders == 0 {
            return Err("--rate > 0 needs at least one sender (--senders)".into());
        }
        for (name, v) in [
            ("--duration", self.duration),
            ("--drain", self.drain),
            ("--join-timeout", self.join_timeout),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a number of seconds >= 0"));
            }
        }
        if !(self.join_rate.is_finite() && self.join_rate > 0.0) {
            return Err("--join-rate must be > 0".into());
        }
        if self.workers == 0 || self.workers > self.viewers {
            return Err(format!(
                "--workers must be between 1 and --viewers ({})",
                self.viewers
            ));
        }
        if self.source_ips > 254 * 256 * 256 {
            return Err("--source-ips: too many loopback addresses".into());
        }
        if self.source_ips != 0 && self.source_ips < self.workers {
            return Err(
                "--source-ips must be at least --workers (each worker needs its own)".into(),
            );
        }
        match self.url.strip_prefix("ws://") {
            Some(rest) if !rest.is_empty() => {}
            _ => return Err(format!("--url must be a ws:// URL, got {:?}", self.url)),
        }
        Ok(())
    }

    /// Source addresses in use: explicit, or one per 250 viewers (well under
    /// the server's default join burst of 500 per address).
    pub fn source_ip_count(&self) -> u32 {
        if self.source_ips > 0 {
            self.source_ips
        } else {
            self.viewers.div_ceil(250).max(self.workers)
        }
    }

    /// Messages each sender sends per second.
    pub fn per_sender_rate(&self) -> f64 {
        if self.senders == 0 {
            0.0
        } else {
            self.rate / self.senders as f64
        }
    }
}
