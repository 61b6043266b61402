//! flashcast-storm: viewer storms against a Flashcast server over real
//! WebSockets, with sequence-contiguity and latency accounting.
//!
//! - [`client`]: one viewer connection (and its chat schedule);
//! - [`stats`]: live counters, latency histograms, gap/duplicate checks,
//!   and the mergeable per-process result;
//! - [`chat`]: the `chat` scenario, in this process or over worker processes;
//! - [`nchan`]: the peer benchmark against nginx + nchan (`benches/peer/`);
//! - [`report`]: derived figures, pass criteria, summary table, JSON;
//! - [`scenario`]: scenario files (phases on a timeline, pass criteria);
//! - [`storm`]: runs a scenario: coordinator, worker processes, the host's part;
//! - [`viewer`]: one simulated viewer running its script;
//! - [`wire`]: the lean reader of tick frames;
//! - [`tally`]: what a scenario run counts, per process and merged;
//! - [`probe`]: the server's CPU and memory (/proc) and counters (/metrics);
//! - [`admin`]: the admin API (room, tokens, sales, coupons, orders);
//! - [`host`]: the host's WebSocket (polls);
//! - [`verdict`]: the report of a scenario run, its pass criteria, table and HTML;
//! - [`html`]: the HTML report with charts;
//! - [`timeline`]: the per-second samples the charts are drawn from;
//! - [`cli`]: the command line.

pub mod admin;
pub mod chat;
pub mod cli;
pub mod client;
pub mod host;
pub mod html;
pub mod nchan;
pub mod probe;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod storm;
pub mod tally;
pub mod timeline;
pub mod verdict;
pub mod viewer;
pub mod wire;

pub use chat::{run_chat, RunOptions};
pub use cli::{ChatArgs, Cli, Command};
pub use report::Report;
