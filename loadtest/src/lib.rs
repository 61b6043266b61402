//! flashcast-storm: viewer storms against a Flashcast server over real
//! WebSockets, with sequence-contiguity and latency accounting.
//!
//! - [`client`]: one viewer connection (and its chat schedule);
//! - [`stats`]: live counters, latency histograms, gap/duplicate checks,
//!   and the mergeable per-process result;
//! - [`chat`]: the `chat` scenario, in this process or over worker processes;
//! - [`report`]: derived figures, pass criteria, summary table, JSON;
//! - [`cli`]: the command line.

pub mod chat;
pub mod cli;
pub mod client;
pub mod report;
pub mod stats;

pub use chat::{run_chat, RunOptions};
pub use cli::{ChatArgs, Cli, Command};
pub use report::Report;
