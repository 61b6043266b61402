//! The `nchan` scenario: the peer side of the side-by-side benchmark
//! (`benches/peer/compare.sh`). N WebSocket subscribers listen on one
//! channel of nginx + nchan (`benches/peer/nchan.conf`); one HTTP publisher
//! POSTs R messages/s for D seconds over a single HTTP/1.1 keep-alive
//! connection.
//!
//! Every message body is `"<seq> <unix ms> <padding>"`: `seq` counts from 1
//! in publish order and the time is taken just before the request is
//! written, so a subscriber measures delivery latency (receive time - send
//! time, both unix ms, the same clock as the `chat` scenario) and checks
//! gaps and duplicates against the publisher's sequence.
//!
//! The subscribers run on the storm's own worker machinery
//! ([`crate::workers`]: shares of connections and source addresses, worker
//! processes, go signal) and count into its [`Live`] tally; only the
//! subscriber's protocol, the publisher and the report are this module's.
//!
//! Timeline: subscribers connect (ramped, from source addresses 127.0.0.x)
//! -> every connect attempt resolved in every worker (ready) -> the
//! publisher connects -> go -> publish for `duration` -> `drain` -> the
//! workers close their subscribers and report. The publisher keeps its
//! schedule and, when the server answers slower than the schedule, sends
//! the next message as soon as the previous one is answered; it stops at
//! the end of `duration` whatever it managed to send (`publish_rate` then
//! falls short of `rate`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{close_politely, connect, Target};
use crate::stats::{HistData, LatencySummary, SeqCheck, SeqVerdict, Window};
use crate::storm::new_run_id;
use crate::tally::{Live, Progress, Tally, Timing};
use crate::workers::{check_open_files, shares, Go, Job, Share, Workers, GO_LEAD_MS};

/// Options of the `nchan` scenario.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct NchanArgs {
    /// Base URL of nginx + nchan. Subscribers use ws://HOST:PORT/sub/CHANNEL,
    /// the publisher POSTs to http://HOST:PORT/pub/CHANNEL.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub url: String,
    /// Channel id ([A-Za-z0-9_-]). Default: a fresh one per run, so nothing
    /// an earlier run left in the channel's buffer is delivered.
    #[arg(long)]
    pub channel: Option<String>,
    /// WebSocket subscribers to connect.
    #[arg(long, default_value_t = 100)]
    pub subscribers: u32,
    /// Messages per second the publisher sends.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to keep reading after the last message was published.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Subscriber connects per second, all workers together (the ramp).
    #[arg(long, default_value_t = 500.0)]
    pub join_rate: f64,
    /// Source addresses 127.0.0.1.. to spread subscribers over. 0 = one
    /// address per 250 subscribers (as the `chat` scenario does).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u32,
    /// Seconds allowed for connect + WebSocket handshake, per attempt.
    #[arg(long, default_value_t = 10.0)]
    pub join_timeout: f64,
    /// Extra attempts for a connect that failed (after a short back-off).
    #[arg(long, default_value_t = 2)]
    pub join_retries: u32,
    /// Child processes sharing the subscribers (each with its own source
    /// addresses and open-file limit). 1 = run them in this process.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Pad every message body to this many bytes (a Flashcast chat event
    /// on the wire is of this order). The "seq ts" head is never cut.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress lines (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

impl NchanArgs {
    /// Checks the combination of options; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.subscribers == 0 {
            return Err("--subscribers must be at least 1".into());
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err("--rate must be a number >= 0".into());
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
        if self.workers == 0 || self.workers > self.subscribers {
            return Err(format!(
                "--workers must be between 1 and --subscribers ({})",
                self.subscribers
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
        if let Some(ch) = &self.channel {
            if !valid_channel(ch) {
                return Err(format!("--channel must be [A-Za-z0-9_-]+, got {ch:?}"));
            }
        }
        split_url(&self.url)?;
        Ok(())
    }

    /// Source addresses in use: explicit, or one per 250 subscribers.
    pub fn source_ip_count(&self) -> u32 {
        if self.source_ips > 0 {
            self.source_ips
        } else {
            self.subscribers.div_ceil(250).max(self.workers)
        }
    }

    /// Messages the schedule asks for: `rate x duration`.
    pub fn scheduled_messages(&self) -> u64 {
        (self.rate * self.duration).round() as u64
    }

    /// Milliseconds from the go signal until the subscribers stop: the
    /// publishing and the drain.
    pub fn run_ms(&self) -> u64 {
        ((self.duration + self.drain) * 1_000.0).round() as u64
    }

    /// Seconds of timeline the per-second figures cover.
    pub fn timeline_secs(&self) -> u32 {
        (self.duration + self.drain).ceil() as u32 + 2
    }
}

fn valid_channel(ch: &str) -> bool {
    !ch.is_empty()
        && ch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `http://host:port[/]` -> `host:port` (port 80 when absent).
pub fn split_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must be an http:// URL, got {url:?}"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "--url must be http://HOST:PORT without a path, got {url:?}"
        ));
    }
    Ok(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
}

// ---------------------------------------------------------------------------
// Message bodies
// ---------------------------------------------------------------------------

/// The body of message `seq`, sent at `ts_ms`, padded to `pad_to` bytes.
pub fn make_body(seq: u64, ts_ms: u64, pad_to: usize) -> Vec<u8> {
    let mut body = format!("{seq} {ts_ms}").into_bytes();
    if body.len() + 1 < pad_to {
        body.push(b' ');
        body.resize(pad_to, b'x');
    }
    body
}

/// `(seq, ts_ms)` of a body made by [`make_body`]; `None` when it is not one.
pub fn parse_body(body: &[u8]) -> Option<(u64, u64)> {
    let mut parts = body.split(|b| *b == b' ');
    let mut number = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(p).ok()?.parse().ok()
    };
    let seq = number()?;
    let ts = number()?;
    (seq > 0).then_some((seq, ts))
}

// ---------------------------------------------------------------------------
// Subscribers: one worker's share
// ---------------------------------------------------------------------------

/// One worker's share of the subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NchanPlan {
    pub args: NchanArgs,
    pub channel: String,
    pub share: Share,
}

/// Splits the subscribers evenly over `args.workers` workers, each with
/// its own source addresses.
pub fn plans(args: &NchanArgs, channel: &str) -> Vec<NchanPlan> {
    shares(args.subscribers, args.source_ip_count(), args.workers)
        .into_iter()
        .map(|share| NchanPlan {
            args: args.clone(),
            channel: channel.to_string(),
            share,
        })
        .collect()
}

/// What one worker's subscribers saw: the storm's tally, plus how many
/// distinct messages each connected subscriber got (the tally's counters
/// add up over subscribers; completeness is per subscriber).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NchanTally {
    pub tally: Tally,
    /// Distinct messages received -> connected subscribers that got that many.
    pub per_subscriber: BTreeMap<u64, u64>,
}

impl NchanTally {
    pub fn merge(&mut self, o: &NchanTally) {
        self.tally.merge(&o.tally);
        for (k, v) in &o.per_subscriber {
            *self.per_subscriber.entry(*k).or_default() += v;
        }
    }

    /// Messages of `1..=published` that connected subscribers never got.
    pub fn missing(&self, published: u64) -> u64 {
        self.per_subscriber
            .iter()
            .map(|(got, subs)| published.saturating_sub(*got) * subs)
            .sum()
    }

    /// Connected subscribers that got every published message.
    pub fn complete(&self, published: u64) -> u64 {
        self.per_subscriber
            .iter()
            .filter(|(got, _)| **got >= published)
            .map(|(_, subs)| subs)
            .sum()
    }
}

impl Job for NchanPlan {
    type Output = NchanTally;
    const SUBCOMMAND: &'static str = "nchan-worker";

    fn live(&self) -> Live {
        Live::new(self.args.timeline_secs() as usize)
    }

    /// Ramps the connects, reports ready once every attempt has resolved,
    /// reads until the end of the drain, closes.
    async fn run(self, live: Arc<Live>, go: Go) -> anyhow::Result<NchanTally> {
        let args = &self.args;
        let host_port = split_url(&args.url).map_err(anyhow::Error::msg)?;
        let target = Arc::new(
            Target::resolve(&format!("ws://{host_port}/sub/{}", self.channel))
                .await?
                .without_subprotocol(),
        );
        let share = self.share;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let rate = args.join_rate * share.count as f64 / args.subscribers as f64;
        let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let ramp_start = Instant::now();
        let mut tasks = Vec::with_capacity(share.count as usize);
        for i in 0..share.count {
            tokio::time::sleep_until(ramp_start + step.mul_f64(i as f64)).await;
            let sub = Subscriber {
                index: share.offset + i,
                source: share.source_ip(i),
                target: target.clone(),
                live: live.clone(),
                join_timeout: Duration::from_secs_f64(args.join_timeout),
                join_retries: args.join_retries,
            };
            tasks.push(tokio::spawn(sub.run(ready_tx.clone(), stop_rx.clone())));
        }
        drop(ready_tx);
        for _ in 0..share.count {
            if ready_rx.recv().await.is_none() {
                break;
            }
        }
        let t0_ms = go.ready().await?;
        live.set_t0(t0_ms);
        let stop_ms = t0_ms + args.run_ms();
        let now = flashcast_wire::now_ms();
        tokio::time::sleep(Duration::from_millis(stop_ms.saturating_sub(now))).await;
        let _ = stop_tx.send(true);

        let mut per_subscriber = BTreeMap::new();
        for task in tasks {
            if let Some(unique) = task.await.context("subscriber task panicked")? {
                *per_subscriber.entry(unique).or_default() += 1;
            }
        }
        Ok(NchanTally {
            tally: live.tally(),
            per_subscriber,
        })
    }
}

/// One subscriber of the channel.
struct Subscriber {
    /// Global number: its latency shard and its retry jitter.
    index: u32,
    source: std::net::Ipv4Addr,
    target: Arc<Target>,
    live: Arc<Live>,
    join_timeout: Duration,
    join_retries: u32,
}

impl Subscriber {
    /// Connects (with retries), says so on `ready` (connected or given up),
    /// then reads until `stop`. Returns the distinct messages it received,
    /// `None` if it never connected.
    async fn run(
        self,
        ready: mpsc::UnboundedSender<()>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<u64> {
        let live = &self.live;
        Live::add(&live.c.join_attempts, 1);
        let started = Instant::now();
        let mut attempt = 0;
        let mut ws = loop {
            let result =
                tokio::time::timeout(self.join_timeout, connect(&self.target, self.source))
                    .await
                    .unwrap_or_else(|_| Err("connect timeout".into()));
            match result {
                Ok(ws) => break ws,
                Err(reason) if attempt >= self.join_retries => {
                    live.join_failure(&reason);
                    let _ = ready.send(());
                    return None;
                }
                Err(_) => {
                    attempt += 1;
                    let jitter = (self.index % 500) as u64;
                    tokio::time::sleep(Duration::from_millis(1_000 + jitter)).await;
                }
            }
        };
        Live::add(&live.c.joined, 1);
        live.timing(Timing::Connect, started.elapsed().as_millis() as u64);
        let _ = ready.send(());

        let shard = self.index as usize;
        let mut seq = SeqCheck::default();
        let mut received = 0u64;
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let body = match msg {
                        Some(Ok(Message::Text(t))) => Bytes::from(t),
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Close(frame))) => {
                            live.close(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                            break;
                        }
                        Some(Ok(_)) => continue,
                        // Lost without a close frame.
                        Some(Err(_)) | None => {
                            live.close(1006);
                            break;
                        }
                    };
                    let now = flashcast_wire::now_ms();
                    let Some((n, ts)) = parse_body(&body) else {
                        Live::add(&live.c.decode_errors, 1);
                        continue;
                    };
                    received += 1;
                    let latency = match seq.observe(n) {
                        SeqVerdict::InOrder => Some(now.saturating_sub(ts)),
                        SeqVerdict::Gap(missing) => {
                            Live::add(&live.c.gaps, 1);
                            Live::add(&live.c.missed, missing);
                            Some(now.saturating_sub(ts))
                        }
                        SeqVerdict::Duplicate => {
                            Live::add(&live.c.duplicates, 1);
                            // Delivered all the same (an event), but no
                            // latency of its own.
                            Live::add(&live.c.events, 1);
                            None
                        }
                    };
                    live.delivered(shard, now, latency.as_slice(), body.len());
                }
                _ = stop.changed() => {
                    close_politely(&mut ws).await;
                    break;
                }
            }
        }
        Live::add(&live.c.disconnected, 1);
        Some(received - seq.duplicates)
    }
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 keep-alive connection to the server.
async fn connect_publisher(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("publisher: connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// POSTs one message; returns the status or a short error reason.
async fn post(sender: &mut Sender, host: &str, path: &str, body: Vec<u8>) -> Result<u16, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    Ok(status)
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
struct PublishResult {
    /// Messages the server accepted (2xx); their seqs are 1..=published
    /// unless an error broke the sequence.
    published: u64,
    errors: BTreeMap<String, u64>,
    /// POST round trips, microseconds.
    latency_us: Option<Histogram<u64>>,
    /// Worst delay of a message behind its scheduled time, ms.
    max_lag_ms: u64,
    /// Messages sent more than 5 ms behind schedule.
    late: u64,
    /// New connections after the server closed the previous one.
    reconnects: u64,
    /// When publishing ended (unix ms).
    end_ms: u64,
}

/// Publishes `rate x duration` messages on schedule from `start`, stopping
/// at `start + duration` in any case. `published` follows it live.
async fn publish(
    args: NchanArgs,
    mut sender: Sender,
    addr: SocketAddr,
    host: String,
    path: String,
    start: Instant,
    published: Arc<AtomicU64>,
) -> PublishResult {
    let mut result = PublishResult::default();
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let total = args.scheduled_messages();
    let end = start + Duration::from_secs_f64(args.duration);
    if total == 0 {
        tokio::time::sleep_until(end).await;
        result.end_ms = flashcast_wire::now_ms();
        return result;
    }
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut broken = false;
    for k in 0..total {
        let due = start + period.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let lag = now - due;
        result.max_lag_ms = result.max_lag_ms.max(lag.as_millis() as u64);
        if lag > Duration::from_millis(5) {
            result.late += 1;
        }
        // A keep-alive connection the server closed between two requests
        // (nginx's keepalive_requests, a timeout): this request was never
        // sent on it, so it goes out on a fresh connection.
        if broken || sender.ready().await.is_err() {
            match connect_publisher(addr).await {
                Ok(s) => {
                    sender = s;
                    broken = false;
                    result.reconnects += 1;
                }
                Err(e) => {
                    *result.errors.entry(format!("reconnect: {e}")).or_default() += 1;
                    continue;
                }
            }
        }
        let body = make_body(k + 1, flashcast_wire::now_ms(), args.body_bytes);
        let t0 = Instant::now();
        match post(&mut sender, &host, &path, body).await {
            Ok(status) if (200..300).contains(&status) => {
                latency.saturating_record(t0.elapsed().as_micros() as u64);
                result.published += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => *result.errors.entry(format!("http {status}")).or_default() += 1,
            Err(reason) => {
                *result.errors.entry(reason).or_default() += 1;
                broken = true;
            }
        }
    }
    // The sending window is the whole duration, as in the `chat` scenario.
    tokio::time::sleep_until(end).await;
    result.latency_us = Some(latency);
    result.end_ms = flashcast_wire::now_ms();
    result
}

// ---------------------------------------------------------------------------
// The run: workers, the publisher, the report
// ---------------------------------------------------------------------------

/// Prints one progress line per second with per-second rates.
struct ProgressLine {
    started: Instant,
    subscribers: u64,
    last: Progress,
    last_published: u64,
    last_at: Instant,
}

impl ProgressLine {
    fn new(subscribers: u64) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            subscribers,
            last: Progress::default(),
            last_published: 0,
            last_at: now,
        }
    }

    fn print(&mut self, progress: &Progress, published: u64) {
        let p = &progress.counts;
        let now = Instant::now();
        let dt = (now - self.last_at).as_secs_f64().max(0.001);
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        println!(
            "[{:>4.0}s] connected {}/{} (failed {}) | published {} ({:.0}/s) | events {} ({:.0}/s) | gaps {} dups {} | p99 {}",
            (now - self.started).as_secs_f64(),
            p.joined,
            self.subscribers,
            p.join_failed,
            published,
            per_sec(published, self.last_published),
            p.events,
            per_sec(p.events, self.last.counts.events),
            p.gaps,
            p.duplicates,
            progress.p99_ms.map_or("-".to_string(), |v| format!("{v} ms")),
        );
        self.last = *progress;
        self.last_published = published;
        self.last_at = now;
    }
}

/// Runs the whole `nchan` storm and builds the report. `worker_exe` is the
/// binary to start for `--workers` > 1.
pub async fn run_nchan(
    args: &NchanArgs,
    worker_exe: Option<PathBuf>,
) -> anyhow::Result<NchanReport> {
    args.validate().map_err(anyhow::Error::msg)?;
    let run_id = new_run_id();
    let started_ms = flashcast_wire::now_ms();
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("storm-{run_id}"));
    let plans = plans(args, &channel);
    check_open_files(&plans.iter().map(|p| p.share).collect::<Vec<_>>());
    let host_port = split_url(&args.url).map_err(anyhow::Error::msg)?;
    let addr = Target::resolve(&format!("ws://{host_port}/")).await?.addr;

    let published = Arc::new(AtomicU64::new(0));
    let mut line = ProgressLine::new(args.subscribers as u64);
    let quiet = args.quiet;
    let mut print = async |p: &Progress| {
        if !quiet {
            line.print(p, published.load(Ordering::Relaxed));
        }
    };
    let mut workers = Workers::start(&plans, worker_exe)?;
    workers.ready(&mut print).await?;
    let sender = connect_publisher(addr).await?;

    let go_ms = flashcast_wire::now_ms() + GO_LEAD_MS;
    let start = Instant::now() + Duration::from_millis(GO_LEAD_MS);
    workers.go(go_ms);
    let publisher = tokio::spawn(publish(
        args.clone(),
        sender,
        addr,
        host_port,
        format!("/pub/{channel}"),
        start,
        published.clone(),
    ));
    let results = workers.finish(&mut print).await?;
    let pub_result = publisher.await.context("publisher task")?;
    let window = Window {
        go_ms,
        send_end_ms: pub_result.end_ms,
        stop_ms: go_ms + args.run_ms(),
    };
    let mut result = NchanTally::default();
    for r in &results {
        result.merge(r);
    }
    Ok(NchanReport::build(
        args,
        &run_id,
        &channel,
        started_ms,
        window,
        pub_result.into(),
        result,
    ))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// The report of an `nchan` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NchanReport {
    pub scenario: String,
    pub tool_version: String,
    pub run_id: String,
    pub started_unix_ms: u64,
    pub args: NchanArgs,
    pub channel: String,

    pub subscribers: u64,
    pub subscribers_connected: u64,
    pub connect_failures: BTreeMap<String, u64>,

    /// Target messages/s.
    pub rate: f64,
    pub duration_secs: f64,
    /// Seconds from the go signal to the end of publishing.
    pub send_window_secs: f64,
    /// Go signal, end of publishing, end of the drain (unix ms).
    pub window: Window,
    /// `rate x duration`.
    pub messages_scheduled: u64,
    /// Messages the server accepted (2xx).
    pub messages_published: u64,
    pub publish_rate: f64,
    pub publish_errors: BTreeMap<String, u64>,
    /// POST round trips, microseconds.
    pub publish_latency_us: LatencySummary,
    /// Messages sent more than 5 ms behind schedule, and the worst delay.
    pub publish_late: u64,
    pub publish_max_lag_ms: u64,
    /// Publisher connections opened after the first one.
    pub publish_reconnects: u64,

    /// Messages received by all subscribers together (message x subscriber).
    pub events_delivered: u64,
    pub events_per_sec: f64,
    /// `messages_published x subscribers_connected`.
    pub events_expected: u64,
    /// Published messages a connected subscriber never received.
    pub missing: u64,
    /// Connected subscribers that received every published message.
    pub subscribers_complete: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub bad_bodies: u64,
    /// Closes before the stop, by close code (1006: the connection was
    /// lost without a close frame).
    pub closes: BTreeMap<String, u64>,

    /// Delivery latency: receive time - publisher's send time, unix ms.
    pub latency_ms: LatencySummary,
    pub latency_histogram: HistData,

    pub passed: bool,
    pub failures: Vec<String>,
}

impl NchanReport {
    pub fn build(
        args: &NchanArgs,
        run_id: &str,
        channel: &str,
        started_ms: u64,
        window: Window,
        p: PublishResultView,
        r: NchanTally,
    ) -> NchanReport {
        let send_window_secs = window.send_end_ms.saturating_sub(window.go_ms) as f64 / 1000.0;
        let per_sec = |n: u64| {
            if send_window_secs > 0.0 {
                (n as f64 / send_window_secs * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        let published = p.published;
        let c = &r.tally.counts;
        let mut report = NchanReport {
            scenario: "nchan".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            run_id: run_id.into(),
            started_unix_ms: started_ms,
            args: args.clone(),
            channel: channel.into(),
            subscribers: args.subscribers as u64,
            subscribers_connected: c.joined,
            connect_failures: r.tally.join_failures.clone(),
            rate: args.rate,
            duration_secs: args.duration,
            send_window_secs,
            window,
            messages_scheduled: args.scheduled_messages(),
            messages_published: published,
            publish_rate: per_sec(published),
            publish_errors: p.errors,
            publish_latency_us: p.latency_us,
            publish_late: p.late,
            publish_max_lag_ms: p.max_lag_ms,
            publish_reconnects: p.reconnects,
            events_delivered: c.events,
            events_per_sec: per_sec(c.events),
            events_expected: published * c.joined,
            missing: r.missing(published),
            subscribers_complete: r.complete(published),
            gaps: c.gaps,
            duplicates: c.duplicates,
            bad_bodies: c.decode_errors,
            latency_ms: LatencySummary::of(&r.tally.latency_ms.to_histogram()),
            closes: r.tally.closes,
            latency_histogram: r.tally.latency_ms,
            passed: false,
            failures: Vec::new(),
        };
        report.failures = report.check();
        report.passed = report.failures.is_empty();
        report
    }

    /// Pass criteria: everybody connected, every published message reached
    /// every subscriber exactly once, in order, and the publisher had no
    /// errors.
    pub fn check(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.subscribers_connected < self.subscribers {
            f.push(format!(
                "{} of {} subscribers failed to connect",
                self.subscribers - self.subscribers_connected,
                self.subscribers
            ));
        }
        let errors: u64 = self.publish_errors.values().sum();
        if errors > 0 {
            f.push(format!("{errors} publish requests failed"));
        }
        if self.missing > 0 {
            f.push(format!("{} message deliveries missing", self.missing));
        }
        if self.gaps > 0 {
            f.push(format!("{} sequence gaps", self.gaps));
        }
        if self.duplicates > 0 {
            f.push(format!("{} duplicate deliveries", self.duplicates));
        }
        if self.bad_bodies > 0 {
            f.push(format!("{} unparseable messages", self.bad_bodies));
        }
        let closes: u64 = self.closes.values().sum();
        if closes > 0 {
            f.push(format!("{closes} subscribers closed by the server"));
        }
        f
    }

    /// The human summary.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let l = &self.latency_ms;
        let pl = &self.publish_latency_us;
        let _ = writeln!(s, "  channel               {}", self.channel);
        let _ = writeln!(
            s,
            "  subscribers           {}/{} connected{}",
            self.subscribers_connected,
            self.subscribers,
            fmt_map(&self.connect_failures)
        );
        let _ = writeln!(
            s,
            "  published             {}/{} in {:.1}s ({:.1}/s, target {}/s){}",
            self.messages_published,
            self.messages_scheduled,
            self.send_window_secs,
            self.publish_rate,
            self.rate,
            fmt_map(&self.publish_errors)
        );
        let _ = writeln!(
            s,
            "  publish round trip    p50 {} us, p99 {} us, max {} us; {} late, worst lag {} ms; {} reconnects",
            pl.p50,
            pl.p99,
            pl.max,
            self.publish_late,
            self.publish_max_lag_ms,
            self.publish_reconnects
        );
        let _ = writeln!(
            s,
            "  events delivered      {} of {} expected ({:.1}/s)",
            self.events_delivered, self.events_expected, self.events_per_sec
        );
        let _ = writeln!(
            s,
            "  complete subscribers  {}/{}; missing {}, gaps {}, duplicates {}, bad {}{}",
            self.subscribers_complete,
            self.subscribers_connected,
            self.missing,
            self.gaps,
            self.duplicates,
            self.bad_bodies,
            if self.closes.is_empty() {
                String::new()
            } else {
                format!(", closes{}", fmt_map(&self.closes))
            }
        );
        let _ = writeln!(
            s,
            "  latency ms            p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.2}, n {})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        );
        let _ = writeln!(
            s,
            "  result                {}",
            if self.passed {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        );
        s
    }

    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(" ({})", parts.join(", "))
}

/// The publisher's figures as the report takes them.
#[derive(Debug, Clone, Default)]
pub struct PublishResultView {
    pub published: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: LatencySummary,
    pub late: u64,
    pub max_lag_ms: u64,
    pub reconnects: u64,
}

impl From<PublishResult> for PublishResultView {
    fn from(p: PublishResult) -> Self {
        Self {
            published: p.published,
            errors: p.errors,
            latency_us: p
                .latency_us
                .as_ref()
                .map(LatencySummary::of)
                .unwrap_or_default(),
            late: p.late,
            max_lag_ms: p.max_lag_ms,
            reconnects: p.reconnects,
        }
    }
}

/// `flashcast-storm nchan`: run, print, write the report. Exit codes as for
/// `chat`: 0 pass, 1 a pass criterion failed, 2 bad usage or no run.
pub async fn main(args: NchanArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let report = match run_nchan(&args, std::env::current_exe().ok()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("\nflashcast-storm nchan, run {}", report.run_id);
    print!("{}", report.table());
    if let Some(path) = &args.out {
        if let Err(e) = report.write_json(path) {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
        println!("  report written to {}", path.display());
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;
    use clap::Parser;

    fn args(extra: &[&str]) -> NchanArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: NchanArgs,
        }
        let mut v = vec!["nchan"];
        v.extend_from_slice(extra);
        Wrap::parse_from(v).a
    }

    #[test]
    fn bodies_round_trip_and_pad() {
        let b = make_body(42, 1_700_000_000_123, 100);
        assert_eq!(b.len(), 100);
        assert!(b.starts_with(b"42 1700000000123 x"));
        assert_eq!(parse_body(&b), Some((42, 1_700_000_000_123)));
        // Never cut the head, no padding when it does not fit.
        let short = make_body(123_456, 1_700_000_000_123, 4);
        assert_eq!(short, b"123456 1700000000123");
        assert_eq!(parse_body(&short), Some((123_456, 1_700_000_000_123)));
        assert_eq!(make_body(7, 9, 0), b"7 9");
    }

    #[test]
    fn foreign_bodies_are_rejected() {
        for bad in [
            &b""[..],
            b"hello",
            b"1",
            b"1 ",
            b" 1 2",
            b"0 5",
            b"-1 5",
            b"1 2x",
            b"1 99999999999999999999999",
        ] {
            assert_eq!(parse_body(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_body(b"3 4"), Some((3, 4)));
    }

    /// A tally of `connected` subscribers that got `per_subscriber`
    /// distinct messages each, `events` in all.
    fn tally(connected: u64, events: u64, per_subscriber: &[(u64, u64)]) -> NchanTally {
        let mut t = NchanTally::default();
        t.tally.counts.joined = connected;
        t.tally.counts.events = events;
        t.per_subscriber = per_subscriber.iter().copied().collect();
        t
    }

    #[test]
    fn tallies_merge_and_count_missing() {
        let mut a = tally(2, 19, &[(10, 1), (9, 1)]);
        let mut h = new_histogram();
        h.record(3).unwrap();
        a.tally.latency_ms = HistData::from_histogram(&h);
        let mut b = a.clone();
        b.per_subscriber.insert(10, 2);
        a.merge(&b);
        assert_eq!(a.tally.counts.joined, 4);
        assert_eq!(a.tally.counts.events, 38);
        assert_eq!(a.per_subscriber[&10], 3);
        assert_eq!(a.per_subscriber[&9], 2);
        assert_eq!(a.missing(10), 2);
        assert_eq!(a.complete(10), 3);
        assert_eq!(a.tally.latency_ms.to_histogram().len(), 2);
    }

    #[test]
    fn plans_split_subscribers_and_addresses() {
        let a = args(&["--subscribers", "2001", "--workers", "3"]);
        assert_eq!(a.source_ip_count(), 9);
        let plans = plans(&a, "c");
        assert_eq!(plans.iter().map(|p| p.share.count).sum::<u32>(), 2001);
        for w in plans.windows(2) {
            let (a, b) = (w[0].share, w[1].share);
            assert_eq!(a.offset + a.count, b.offset);
            assert_eq!(a.ip_offset + a.ip_count, b.ip_offset);
        }
        assert_eq!(plans.iter().map(|p| p.share.ip_count).sum::<u32>(), 9);
        // The plan reaches a worker process as JSON.
        let json = serde_json::to_string(&plans[1]).unwrap();
        let back: NchanPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back.share, plans[1].share);
    }

    #[test]
    fn validation_names_the_option() {
        assert!(args(&[]).validate().is_ok());
        let bad = |extra: &[&str], word: &str| {
            let e = args(extra).validate().unwrap_err();
            assert!(e.contains(word), "{e}");
        };
        bad(&["--subscribers", "0"], "--subscribers");
        bad(&["--url", "ws://x:1"], "--url");
        bad(&["--url", "http://x:1/pub"], "--url");
        bad(&["--channel", "a/b"], "--channel");
        bad(&["--workers", "200"], "--workers");
        assert_eq!(split_url("http://h:9/").unwrap(), "h:9");
        assert_eq!(split_url("http://h").unwrap(), "h:80");
    }

    #[test]
    fn report_fails_on_missing_messages() {
        let a = args(&["--subscribers", "2", "--rate", "10", "--duration", "1"]);
        let r = tally(2, 19, &[(10, 1), (9, 1)]);
        let window = Window {
            go_ms: 1_000,
            send_end_ms: 2_000,
            stop_ms: 3_000,
        };
        let p = PublishResultView {
            published: 10,
            ..Default::default()
        };
        let rep = NchanReport::build(&a, "x", "c", 0, window, p, r);
        assert_eq!(rep.events_per_sec, 19.0);
        assert_eq!(rep.events_expected, 20);
        assert_eq!(rep.missing, 1);
        assert!(!rep.passed);
        assert!(rep.failures.iter().any(|f| f.contains("missing")));
        let json: serde_json::Value = serde_json::to_value(&rep).unwrap();
        for key in [
            "subscribers",
            "rate",
            "duration_secs",
            "messages_published",
            "events_delivered",
            "events_per_sec",
            "gaps",
            "duplicates",
            "latency_ms",
            "window",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(json["window"].get("go_ms").is_some());
    }

    /// A stand-in for nchan's subscriber side: every WebSocket gets, once
    /// `send` fires, the bodies of seqs 1, 2, 4, 4 and one foreign body,
    /// and is then held open.
    async fn fake_channel(send: watch::Receiver<bool>) -> std::net::SocketAddr {
        use futures_util::SinkExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut send = send.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    send.wait_for(|go| *go).await.unwrap();
                    let now = flashcast_wire::now_ms();
                    for seq in [1, 2, 4, 4] {
                        let body = make_body(seq, now, 20);
                        ws.send(Message::Binary(body.into())).await.unwrap();
                    }
                    ws.send(Message::Text("hello".into())).await.unwrap();
                    // Held open (and answering the close) until the end.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        addr
    }

    /// The subscribers on the storm's worker machinery, in this process:
    /// connect, ready, go, read until the drain ends, and count.
    #[tokio::test]
    async fn subscribers_count_gaps_duplicates_and_foreign_bodies() {
        let (send_tx, send_rx) = watch::channel(false);
        let addr = fake_channel(send_rx).await;
        let a = args(&[
            "--url",
            &format!("http://{addr}"),
            "--subscribers",
            "3",
            "--duration",
            "0.2",
            "--drain",
            "0.3",
            "--join-rate",
            "1000",
        ]);
        let plans = plans(&a, "c");
        let mut workers = Workers::start(&plans, None).unwrap();
        workers.ready(async |_| {}).await.unwrap();
        workers.go(flashcast_wire::now_ms());
        send_tx.send(true).unwrap();
        let mut results = workers.finish(async |_| {}).await.unwrap();
        assert_eq!(results.len(), 1);
        let r = results.pop().unwrap();
        let c = r.tally.counts;
        assert_eq!((c.join_attempts, c.joined, c.join_failed), (3, 3, 0));
        assert_eq!(c.events, 12, "4 a subscriber, the repeat included");
        assert_eq!((c.gaps, c.missed, c.duplicates), (3, 3, 3));
        assert_eq!(c.decode_errors, 3);
        assert_eq!(r.per_subscriber, BTreeMap::from([(3, 3)]));
        assert_eq!(r.missing(4), 3, "seq 3, for each subscriber");
        assert_eq!(r.complete(4), 0);
        assert!(r.tally.closes.is_empty(), "{:?}", r.tally.closes);
        assert_eq!(r.tally.latency_ms.to_histogram().len(), 9);
    }

    /// A subscriber that cannot connect is a counted failure, and the run
    /// still becomes ready (every attempt resolved).
    #[tokio::test]
    async fn a_refused_subscriber_is_a_counted_failure() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let a = args(&[
            "--url",
            &format!("http://{addr}"),
            "--subscribers",
            "2",
            "--duration",
            "0",
            "--drain",
            "0",
            "--join-retries",
            "0",
        ]);
        let mut workers = Workers::start(&plans(&a, "c"), None).unwrap();
        workers.ready(async |_| {}).await.unwrap();
        workers.go(flashcast_wire::now_ms());
        let r = workers.finish(async |_| {}).await.unwrap().pop().unwrap();
        assert_eq!((r.tally.counts.joined, r.tally.counts.join_failed), (0, 2));
        assert_eq!(r.tally.join_failures.values().sum::<u64>(), 2);
        assert!(r.per_subscriber.is_empty());
    }
}
