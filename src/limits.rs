//! Every bound of the system in one place, with its default, and the rate
//! limiters (governor) that enforce the per-user and per-address rates.
//! docs/configuration.md mirrors this file; exceeding any bound is a
//! documented error path, never unbounded memory.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use flashcast_wire::ids::UserId;

/// The smallest `max_recording_bytes`: room for the header and some lines.
pub const MIN_RECORDING_BYTES: u64 = 1_024;

/// Most fanout worker threads.
pub const MAX_FANOUT_THREADS: usize = 64;

/// Every bound in the system. Exceeding one is a documented error path.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Limits {
    /// Rooms that may exist at once on this node.
    #[arg(long, env = "FLASHCAST_MAX_ROOMS", default_value_t = 1_000)]
    pub max_rooms: usize,
    /// WebSocket connections at once on this node.
    #[arg(long, env = "FLASHCAST_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Viewers joined to one room at once.
    #[arg(long, env = "FLASHCAST_MAX_VIEWERS_PER_ROOM", default_value_t = 20_000)]
    pub max_viewers_per_room: usize,
    /// Events kept per room for resume (the history ring).
    #[arg(long, env = "FLASHCAST_HISTORY_LEN", default_value_t = 2_000)]
    pub history_len: usize,
    /// Most recent events sent in a fresh join's snapshot.
    #[arg(long, env = "FLASHCAST_SNAPSHOT_EVENTS", default_value_t = 50)]
    pub snapshot_events: usize,
    /// Open questions listed in a snapshot.
    #[arg(long, env = "FLASHCAST_SNAPSHOT_QUESTIONS", default_value_t = 20)]
    pub snapshot_questions: usize,
    /// Upper bound of batching. A room hands its next batch to the fanout
    /// as soon as the previous one is written and something is pending, so
    /// events share a batch only while the fanout is busy; aggregates
    /// (reactions, tallies, stock, deadlines) are collected at least this
    /// often.
    #[arg(long, env = "FLASHCAST_TICK_MS", default_value_t = 50)]
    pub tick_ms: u64,
    /// Frames per second one room may write (viewers x batches per second),
    /// trading latency for CPU: a room spaces its batches by at least
    /// viewers / this, so a large room's batches carry more events (10,000
    /// viewers at 100,000: at most 10 batches a second). Unset: no spacing,
    /// batches follow the fanout alone (the lowest latency). At least
    /// `max_viewers_per_room`: a full room still gets a batch a second.
    #[arg(long, env = "FLASHCAST_ROOM_FRAMES_PER_SEC")]
    pub room_frames_per_sec: Option<u64>,
    /// Fanout workers: persistent threads, each owning a shard of the
    /// connections and its own io_uring ring. Unset: one per CPU.
    #[arg(long, env = "FLASHCAST_FANOUT_THREADS")]
    pub fanout_threads: Option<usize>,
    /// Jobs (a room's batch, a reply, a join or leave) one fanout worker's
    /// queue holds. A room that finds it full waits for room (counted in
    /// `fanout_queue_full_total`); its own queue then fills and new actions
    /// get `room_busy`.
    #[arg(long, env = "FLASHCAST_FANOUT_QUEUE", default_value_t = 8_192)]
    pub fanout_queue: usize,
    /// Sends a fanout's frames with io_uring, one submission (one system
    /// call) per 256 viewers, where the kernel allows it (else it warns
    /// once and sends one by one): a third less CPU per frame than one
    /// `send` each (docs/benchmarks.md). `false`: one `send` per viewer.
    #[arg(long, env = "FLASHCAST_FANOUT_IO_URING", default_value_t = true, action = clap::ArgAction::Set)]
    pub fanout_io_uring: bool,
    /// Frames (ticks and private replies) that may wait behind a viewer's
    /// full socket before it is closed with 4008.
    #[arg(long, env = "FLASHCAST_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Commands queued per room before senders get `room_busy`.
    #[arg(long, env = "FLASHCAST_ROOM_QUEUE", default_value_t = 8_192)]
    pub room_queue: usize,
    /// Largest client frame, in bytes (closed with 1009 above it).
    #[arg(long, env = "FLASHCAST_MAX_FRAME_BYTES", default_value_t = 8_192)]
    pub max_frame_bytes: usize,
    /// Longest chat message, in characters (grapheme clusters).
    #[arg(long, env = "FLASHCAST_MAX_CHAT_CHARS", default_value_t = 500)]
    pub max_chat_chars: usize,
    /// Longest question, answer or announcement, in characters.
    #[arg(long, env = "FLASHCAST_MAX_TEXT_CHARS", default_value_t = 1_000)]
    pub max_text_chars: usize,
    /// Options in one poll.
    #[arg(long, env = "FLASHCAST_MAX_POLL_OPTIONS", default_value_t = 10)]
    pub max_poll_options: usize,
    /// Questions kept per room.
    #[arg(long, env = "FLASHCAST_MAX_QUESTIONS", default_value_t = 1_000)]
    pub max_questions: usize,
    /// Entries in a room's banned-word list.
    #[arg(long, env = "FLASHCAST_MAX_BANNED_WORDS", default_value_t = 500)]
    pub max_banned_words: usize,
    /// Muted plus banned users per room.
    #[arg(long, env = "FLASHCAST_MAX_MODERATED_USERS", default_value_t = 10_000)]
    pub max_moderated_users: usize,
    /// Distinct voters per poll (and upvoters per question).
    #[arg(long, env = "FLASHCAST_MAX_VOTERS", default_value_t = 200_000)]
    pub max_voters: usize,
    /// Chat messages per user per second (sustained).
    #[arg(long, env = "FLASHCAST_CHAT_PER_SEC", default_value_t = 2)]
    pub chat_per_sec: u32,
    /// Chat burst per user.
    #[arg(long, env = "FLASHCAST_CHAT_BURST", default_value_t = 5)]
    pub chat_burst: u32,
    /// Reactions per user per second (sustained).
    #[arg(long, env = "FLASHCAST_REACTIONS_PER_SEC", default_value_t = 10)]
    pub reactions_per_sec: u32,
    /// Reaction burst per user.
    #[arg(long, env = "FLASHCAST_REACTIONS_BURST", default_value_t = 30)]
    pub reactions_burst: u32,
    /// WebSocket joins per client IP per second (sustained).
    #[arg(long, env = "FLASHCAST_JOINS_PER_IP_PER_SEC", default_value_t = 50)]
    pub joins_per_ip_per_sec: u32,
    /// Join burst per client IP.
    #[arg(long, env = "FLASHCAST_JOINS_PER_IP_BURST", default_value_t = 500)]
    pub joins_per_ip_burst: u32,
    /// Rejected frames per connection per second before it is closed with 4029.
    #[arg(long, env = "FLASHCAST_REJECTS_PER_SEC", default_value_t = 10)]
    pub rejects_per_sec: u32,
    /// Burst of rejected frames per connection.
    #[arg(long, env = "FLASHCAST_REJECTS_BURST", default_value_t = 30)]
    pub rejects_burst: u32,
    /// Kernel send buffer per connection (SO_SNDBUF), in bytes. Bounds the
    /// memory a stalled viewer can pin and makes its backlog visible to the
    /// outbound queue; 0 leaves the kernel's autotuning on.
    #[arg(long, env = "FLASHCAST_SOCKET_SEND_BUFFER", default_value_t = 262_144)]
    pub socket_send_buffer: usize,
    /// WebSocket read and write buffer per connection, in bytes. Larger
    /// frames still pass (they are assembled separately, up to the frame
    /// limits); this is the memory every idle connection holds.
    #[arg(long, env = "FLASHCAST_WS_BUFFER_BYTES", default_value_t = 8_192)]
    pub ws_buffer_bytes: usize,
    /// Time a single frame write may take before the viewer is dropped.
    #[arg(long, env = "FLASHCAST_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Time from connect to `join` before the connection is closed with 4011.
    #[arg(long, env = "FLASHCAST_JOIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub join_timeout_ms: u64,
    /// Longest lifetime of a minted token, in seconds.
    #[arg(long, env = "FLASHCAST_MAX_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub max_token_ttl_secs: u64,
    /// Time given to connections to receive their close frame on shutdown
    /// (and to HTTP requests in flight when the listener closes).
    #[arg(long, env = "FLASHCAST_SHUTDOWN_GRACE_MS", default_value_t = 3_000)]
    pub shutdown_grace_ms: u64,
    /// Time the node keeps accepting after shutdown begins, answering
    /// `/readyz` and new `GET /ws` with 503, so that a load balancer sees it
    /// go not-ready before it stops listening. A second Ctrl-C or SIGTERM
    /// ends it early.
    #[arg(long, env = "FLASHCAST_SHUTDOWN_DRAIN_MS", default_value_t = 5_000)]
    pub shutdown_drain_ms: u64,
    /// Largest REST request body, in bytes.
    #[arg(long, env = "FLASHCAST_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    // Commerce.
    /// Products in one room's catalog.
    #[arg(long, env = "FLASHCAST_MAX_PRODUCTS_PER_ROOM", default_value_t = 500)]
    pub max_products_per_room: usize,
    /// Flash sales per room (over the whole show, ended ones included).
    #[arg(long, env = "FLASHCAST_MAX_SALES_PER_ROOM", default_value_t = 500)]
    pub max_sales_per_room: usize,
    /// Coupon drops per room (over the whole show).
    #[arg(long, env = "FLASHCAST_MAX_COUPONS_PER_ROOM", default_value_t = 500)]
    pub max_coupons_per_room: usize,
    /// Units one sale may start with.
    #[arg(long, env = "FLASHCAST_MAX_SALE_STOCK", default_value_t = 1_000_000)]
    pub max_sale_stock: u32,
    /// Coupons in one drop.
    #[arg(long, env = "FLASHCAST_MAX_COUPON_COUNT", default_value_t = 1_000_000)]
    pub max_coupon_count: u32,
    /// Units in one buy (and the largest per-user limit a sale may set).
    #[arg(long, env = "FLASHCAST_MAX_BUY_QTY", default_value_t = 100)]
    pub max_buy_qty: u32,
    /// Orders (and idempotency keys) one sale keeps; buys beyond get `limit_reached`.
    #[arg(
        long,
        env = "FLASHCAST_MAX_ORDERS_PER_SALE",
        default_value_t = 1_000_000
    )]
    pub max_orders_per_sale: usize,
    /// Longest sale, in seconds.
    #[arg(long, env = "FLASHCAST_MAX_SALE_SECS", default_value_t = 7 * 24 * 3600)]
    pub max_sale_secs: u64,
    /// Payment window of a sale that does not set one, in seconds.
    #[arg(long, env = "FLASHCAST_PAYMENT_WINDOW_SECS", default_value_t = 600)]
    pub payment_window_secs: u64,
    /// Longest payment window a sale may set, in seconds.
    #[arg(long, env = "FLASHCAST_MAX_PAYMENT_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub max_payment_window_secs: u64,
    /// How often unpaid reservations past their deadline are expired.
    #[arg(long, env = "FLASHCAST_EXPIRY_SWEEP_MS", default_value_t = 250)]
    pub expiry_sweep_ms: u64,
    /// Buys and coupon claims per user per second (sustained).
    #[arg(long, env = "FLASHCAST_BUYS_PER_SEC", default_value_t = 5)]
    pub buys_per_sec: u32,
    /// Burst of buys and coupon claims per user.
    #[arg(long, env = "FLASHCAST_BUYS_BURST", default_value_t = 10)]
    pub buys_burst: u32,
    /// Durable writes waiting for the group-commit writer; callers wait beyond.
    #[arg(long, env = "FLASHCAST_COMMIT_QUEUE", default_value_t = 8_192)]
    pub commit_queue: usize,
    /// Most writes committed in one transaction.
    #[arg(long, env = "FLASHCAST_COMMIT_BATCH", default_value_t = 1_024)]
    pub commit_batch: usize,
    /// Idempotency keys of committed buys kept in memory on this node; beyond,
    /// the oldest leave first (a retry with one is answered from the store).
    #[arg(
        long,
        env = "FLASHCAST_MAX_IDEMPOTENCY_KEYS",
        default_value_t = 500_000
    )]
    pub max_idempotency_keys: usize,
    /// How long a committed buy's idempotency key stays in memory, in
    /// seconds; after that a retry with it is answered from the store.
    #[arg(
        long,
        env = "FLASHCAST_IDEMPOTENCY_KEY_RETENTION_SECS",
        default_value_t = 24 * 3600
    )]
    pub idempotency_key_retention_secs: u64,
    /// Accepted clock difference of a payment webhook's signature timestamp, in seconds.
    #[arg(long, env = "FLASHCAST_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub webhook_tolerance_secs: u64,
    /// Most orders in one page of the orders API (and rows in one CSV export).
    #[arg(long, env = "FLASHCAST_MAX_ORDERS_PAGE", default_value_t = 10_000)]
    pub max_orders_page: usize,

    // Recording (docs/recording.md).
    /// Recorded client actions waiting for the recording's writer; beyond,
    /// lines are dropped (and counted), never waited for.
    #[arg(long, env = "FLASHCAST_RECORDING_QUEUE", default_value_t = 4_096)]
    pub recording_queue: usize,
    /// Largest recording file, in bytes; the recording stops when the next
    /// line would not fit.
    #[arg(
        long,
        env = "FLASHCAST_MAX_RECORDING_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub max_recording_bytes: u64,
    /// Longest recording, in seconds; it stops by itself after that.
    #[arg(long, env = "FLASHCAST_MAX_RECORDING_SECS", default_value_t = 4 * 3600)]
    pub max_recording_secs: u64,
    /// Rooms recording at once on this node (one writer thread each).
    #[arg(long, env = "FLASHCAST_MAX_RECORDINGS", default_value_t = 16)]
    pub max_recordings: usize,
}

impl Limits {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Least time between two batches of a room of `viewers` viewers (see
    /// `room_frames_per_sec`).
    pub fn batch_gap(&self, viewers: usize) -> Duration {
        match self.room_frames_per_sec {
            Some(rate) => Duration::from_micros(viewers as u64 * 1_000_000 / rate.max(1)),
            None => Duration::ZERO,
        }
    }

    /// Fanout worker threads: `fanout_threads`, or one per CPU.
    pub fn fanout_workers(&self) -> usize {
        self.fanout_threads
            .unwrap_or_else(cpus)
            .clamp(1, MAX_FANOUT_THREADS)
    }

    /// Refuses settings that would break an invariant (a zero-sized queue,
    /// a snapshot larger than the history...).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_rooms", self.max_rooms),
            ("max_connections", self.max_connections),
            ("max_viewers_per_room", self.max_viewers_per_room),
            ("history_len", self.history_len),
            ("outbound_queue", self.outbound_queue),
            ("room_queue", self.room_queue),
            ("max_frame_bytes", self.max_frame_bytes),
            ("ws_buffer_bytes", self.ws_buffer_bytes),
            ("max_chat_chars", self.max_chat_chars),
            ("max_text_chars", self.max_text_chars),
            ("max_poll_options", self.max_poll_options),
            ("tick_ms", self.tick_ms as usize),
            ("fanout_queue", self.fanout_queue),
            ("chat_per_sec", self.chat_per_sec as usize),
            ("chat_burst", self.chat_burst as usize),
            ("reactions_per_sec", self.reactions_per_sec as usize),
            ("reactions_burst", self.reactions_burst as usize),
            ("joins_per_ip_per_sec", self.joins_per_ip_per_sec as usize),
            ("joins_per_ip_burst", self.joins_per_ip_burst as usize),
            ("rejects_per_sec", self.rejects_per_sec as usize),
            ("rejects_burst", self.rejects_burst as usize),
            ("max_sale_stock", self.max_sale_stock as usize),
            ("max_coupon_count", self.max_coupon_count as usize),
            ("max_buy_qty", self.max_buy_qty as usize),
            ("max_orders_per_sale", self.max_orders_per_sale),
            ("max_sale_secs", self.max_sale_secs as usize),
            ("payment_window_secs", self.payment_window_secs as usize),
            ("expiry_sweep_ms", self.expiry_sweep_ms as usize),
            ("buys_per_sec", self.buys_per_sec as usize),
            ("buys_burst", self.buys_burst as usize),
            ("commit_queue", self.commit_queue),
            ("commit_batch", self.commit_batch),
            ("max_idempotency_keys", self.max_idempotency_keys),
            (
                "idempotency_key_retention_secs",
                self.idempotency_key_retention_secs as usize,
            ),
            ("max_orders_page", self.max_orders_page),
            ("recording_queue", self.recording_queue),
            ("max_recording_secs", self.max_recording_secs as usize),
            ("max_recordings", self.max_recordings),
        ];
        all_positive(&positive)?;
        if self.snapshot_events > self.history_len {
            return Err("snapshot_events must not exceed history_len".into());
        }
        if self.max_poll_options < 2 || self.max_poll_options > u8::MAX as usize {
            return Err("max_poll_options must be between 2 and 255".into());
        }
        if self.payment_window_secs > self.max_payment_window_secs {
            return Err("payment_window_secs must not exceed max_payment_window_secs".into());
        }
        at_least(
            "max_recording_bytes",
            self.max_recording_bytes,
            MIN_RECORDING_BYTES,
        )?;
        if self
            .fanout_threads
            .is_some_and(|n| n == 0 || n > MAX_FANOUT_THREADS)
        {
            return Err(format!(
                "fanout_threads must be between 1 and {MAX_FANOUT_THREADS}"
            ));
        }
        if self.tick_ms > 1_000 {
            return Err("tick_ms must be at most 1000".into());
        }
        if self
            .room_frames_per_sec
            .is_some_and(|rate| rate < self.max_viewers_per_room as u64)
        {
            return Err("room_frames_per_sec must be at least max_viewers_per_room".into());
        }
        Ok(())
    }
}

/// Refuses the first option set to 0, naming it: a queue, rate or size of
/// 0 would refuse everything. (Shared by every settings group's `validate`.)
pub(crate) fn all_positive(options: &[(&str, usize)]) -> Result<(), String> {
    match options.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(format!("{name} must be greater than 0")),
        None => Ok(()),
    }
}

/// Refuses an option below its floor, naming both.
pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    min: T,
) -> Result<(), String> {
    if value < min {
        return Err(format!("{name} must be at least {min}"));
    }
    Ok(())
}

impl Default for Limits {
    /// The built-in defaults, from the `#[arg]` attributes above (one place
    /// for each number) but without reading the command line or any
    /// `FLASHCAST_*` variable: the same values wherever it runs. The
    /// settings (`crate::config`) build the configured `Limits`.
    fn default() -> Self {
        let command = Limits::augment_args(clap::Command::new("limits"))
            .no_binary_name(true)
            .mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(std::iter::empty::<String>())
            .expect("every limit has a default");
        Limits::from_arg_matches(&matches).expect("every limit has a default")
    }
}

/// CPUs this process may use.
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec).expect("validated positive");
    let burst = NonZeroU32::new(burst).expect("validated positive");
    Quota::per_second(per_sec).allow_burst(burst)
}

/// The node's keyed rate limiters. Keys are forgotten by `retain_recent`,
/// which the server calls periodically, so memory stays bounded by the
/// users and addresses active in the last moments.
pub struct RateLimiters {
    pub chat: DefaultKeyedRateLimiter<UserId>,
    pub reactions: DefaultKeyedRateLimiter<UserId>,
    pub joins: DefaultKeyedRateLimiter<IpAddr>,
    /// Buys and coupon claims.
    pub buys: DefaultKeyedRateLimiter<UserId>,
    rejects: Quota,
}

impl RateLimiters {
    pub fn new(limits: &Limits) -> Self {
        Self {
            chat: RateLimiter::keyed(quota(limits.chat_per_sec, limits.chat_burst)),
            reactions: RateLimiter::keyed(quota(limits.reactions_per_sec, limits.reactions_burst)),
            joins: RateLimiter::keyed(quota(
                limits.joins_per_ip_per_sec,
                limits.joins_per_ip_burst,
            )),
            buys: RateLimiter::keyed(quota(limits.buys_per_sec, limits.buys_burst)),
            rejects: quota(limits.rejects_per_sec, limits.rejects_burst),
        }
    }

    /// A fresh per-connection budget of rejected frames.
    pub fn rejects(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(self.rejects)
    }

    pub fn retain_recent(&self) {
        self.chat.retain_recent();
        self.reactions.retain_recent();
        self.joins.retain_recent();
        self.buys.retain_recent();
        self.buys.shrink_to_fit();
        self.chat.shrink_to_fit();
        self.reactions.shrink_to_fit();
        self.joins.shrink_to_fit();
    }
}

/// Checks a keyed limiter; on refusal, how long until the next cell.
pub fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), Duration> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

#[cfg(test)]
mod tick_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn defaults_are_pure_and_the_settings_read_the_environment() {
        // Only the orders API reads this limit, so no other test running
        // meanwhile depends on it.
        std::env::set_var("FLASHCAST_MAX_ORDERS_PAGE", "7");
        let pure = Limits::default();
        let configured = crate::Settings::load_from(["flashcast"]).map(|s| s.limits);
        std::env::remove_var("FLASHCAST_MAX_ORDERS_PAGE");
        assert_eq!(pure.max_orders_page, 10_000, "a default reads no variable");
        assert_eq!(configured.unwrap().max_orders_page, 7);
        assert_eq!(pure.history_len, 2_000);
        assert!(pure.validate().is_ok());
    }

    #[test]
    fn fanout_workers_are_one_per_cpu_unless_set() {
        let mut l = Args::parse_from(["x", "--fanout-threads", "4"]).limits;
        assert_eq!(l.fanout_workers(), 4);
        l.fanout_threads = None;
        assert_eq!(l.fanout_workers(), cpus());
        for bad in [0, MAX_FANOUT_THREADS + 1] {
            l.fanout_threads = Some(bad);
            let err = l.validate().unwrap_err();
            assert!(err.contains("fanout_threads"), "{err}");
        }
        l.fanout_threads = None;
        l.fanout_queue = 0;
        assert!(l.validate().unwrap_err().contains("fanout_queue"));
    }

    /// Unset, no spacing; set, viewers / rate, and never less than one
    /// batch a second for a full room.
    #[test]
    fn batch_gap_follows_room_frames_per_sec() {
        let mut l = Args::parse_from(["x"]).limits;
        assert_eq!(l.batch_gap(10_000), Duration::ZERO);
        l = Args::parse_from(["x", "--room-frames-per-sec", "100000"]).limits;
        assert_eq!(l.batch_gap(10_000), Duration::from_millis(100));
        assert_eq!(l.batch_gap(100), Duration::from_millis(1));
        assert!(l.validate().is_ok());
        l.room_frames_per_sec = Some(l.max_viewers_per_room as u64 - 1);
        let err = l.validate().unwrap_err();
        assert!(err.contains("room_frames_per_sec"), "{err}");
    }
}
