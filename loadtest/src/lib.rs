//! flashcast-storm: viewer storms against a Flashcast server over real
//! WebSockets, with sequence-contiguity and latency accounting.
//!
//! - [`client`]: a WebSocket from a chosen loopback source address;
//! - [`stats`]: latency histograms and sequence gap/duplicate checks;
//! - [`nchan`]: the peer benchmark against nginx + nchan (`benches/peer/`);
//! - [`scenario`]: scenario files (phases on a timeline, pass criteria);
//! - [`storm`]: runs a scenario: coordinator, the workers' scripts, the host's part;
//! - [`workers`]: worker processes shared by `run` and `nchan` (shares of the
//!   connections and source addresses, the go signal, merged results);
//! - [`viewer`]: one simulated viewer running its script;
//! - [`wire`]: the lean reader of tick frames;
//! - [`tally`]: what a scenario run counts, per process and merged;
//! - [`probe`]: the server's CPU and memory (/proc) and counters (/metrics);
//! - [`diff`]: what changed between two reports (`diff A.json B.json`);
//! - [`live_metrics`]: the tool's own /metrics while it runs;
//! - [`admin`]: the admin API (room, tokens, sales, coupons, orders);
//! - [`host`]: the host's WebSocket (polls);
//! - [`threshold`]: thresholds per phase and per kind, judged per second;
//! - [`verdict`]: the report of a scenario run, its pass criteria, table and HTML;
//! - [`html`]: the HTML report with charts;
//! - [`video`]: the WebRTC benchmark: a WHIP publisher and WHEP viewers;
//! - [`timeline`]: the per-second samples the charts are drawn from;
//! - [`cli`]: the command line.

pub mod admin;
pub mod cli;
pub mod client;
pub mod diff;
pub mod host;
pub mod html;
pub mod live_metrics;
pub mod nchan;
pub mod probe;
pub mod scenario;
pub mod stats;
pub mod storm;
pub mod tally;
pub mod threshold;
pub mod timeline;
pub mod verdict;
pub mod video;
pub mod viewer;
pub mod wire;
pub mod workers;

pub use cli::{Cli, Command};
