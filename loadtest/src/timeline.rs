//! The run second by second: what the charts of the HTML report and the
//! `seconds` array of the JSON report are drawn from.
//!
//! Every process keeps one [`SecondSample`] per second since the go signal;
//! the coordinator adds the samples of its workers (counters add, latency
//! histograms merge) and the server's CPU and memory for the same second.

use serde::{Deserialize, Serialize};

/// One second of the run, all processes together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SecondSample {
    /// Seconds since the go signal (this sample covers [t, t+1)).
    pub t: u32,
    /// Viewers connected and joined at the end of the second.
    pub viewers: u64,
    /// Sequenced events delivered (event x viewer) in this second.
    pub events: u64,
    /// WebSocket payload bytes received in this second.
    pub bytes: u64,
    /// Delivery latency percentiles of the events delivered in this second
    /// (ms); `None` when nothing was delivered.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// Chat messages and reactions sent by the tool in this second.
    pub chat_sent: u64,
    pub reactions_sent: u64,
    /// Buy requests sent, and their answers received in this second.
    pub buys_sent: u64,
    pub buys_accepted: u64,
    pub buys_refused: u64,
    /// Coupon claims answered in this second (claimed or refused).
    pub claims_answered: u64,
    /// Coupon claims sent in this second.
    #[serde(default)]
    pub claims_sent: u64,
    /// Actions of any kind the tool sent in this second.
    #[serde(default)]
    pub sent: u64,
    /// Unexpected error frames received in this second: all of them, and
    /// those answering a buy or a claim.
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub buy_errors: u64,
    #[serde(default)]
    pub claim_errors: u64,
    /// Server CPU in this second, in percent of one core (from /proc), if
    /// a local server PID was given.
    pub server_cpu_pct: Option<f64>,
    /// Server resident memory at the end of the second (MiB).
    pub server_rss_mib: Option<f64>,
}

/// A phase of the scenario on the timeline, drawn as a shaded band.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSpan {
    /// The phase's kind and index, e.g. "chat #2".
    pub name: String,
    /// Seconds since the go signal.
    pub start: f64,
    pub end: f64,
}
