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
//! Timeline: subscribers connect (ramped, from source addresses 127.0.0.x)
//! -> every connect attempt resolved (barrier across worker processes) ->
//! the publisher connects -> go -> publish for `duration` -> `drain` ->
//! stop, close, merge. The publisher keeps its schedule and, when the
//! server answers slower than the schedule, sends the next message as soon
//! as the previous one is answered; it stops at the end of `duration`
//! whatever it managed to send (`publish_rate` then falls short of `rate`).
//!
//! With `--workers K` the subscribers are spread over K child processes
//! (`nchan-worker`, hidden), each with its own source addresses and
//! open-file budget; the publisher always runs in the parent.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::client::source_ip;
use crate::stats::{new_histogram, HistData, LatencySummary, Window};

/// Histogram shards, so thousands of subscriber tasks rarely contend.
const SHARDS: usize = 16;

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
// Message bodies and sequence accounting
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

/// What [`SeqTrack::observe`] made of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    /// Arrived after this many missing messages.
    Gap(u64),
    /// At or below the last seq seen (a repeat, or out of order).
    Duplicate,
}

/// The publisher's sequence as one subscriber saw it. Seqs start at 1 and
/// the subscriber was connected before the first one was published, so
/// every seq 1..=published must arrive once, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTrack {
    pub last: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Times the stream jumped forward.
    pub gaps: u64,
    /// Messages skipped by those jumps.
    pub missed: u64,
    pub duplicates: u64,
}

impl SeqTrack {
    pub fn observe(&mut self, seq: u64) -> Verdict {
        self.received += 1;
        if seq == self.last + 1 {
            self.last = seq;
            Verdict::InOrder
        } else if seq <= self.last {
            self.duplicates += 1;
            Verdict::Duplicate
        } else {
            let missing = seq - self.last - 1;
            self.gaps += 1;
            self.missed += missing;
            self.last = seq;
            Verdict::Gap(missing)
        }
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Messages of `1..=published` never received: skipped by a gap, or
    /// after the last one received (the tail).
    pub fn missing(&self, published: u64) -> u64 {
        published.saturating_sub(self.unique())
    }
}

// ---------------------------------------------------------------------------
// Live counters and mergeable results
// ---------------------------------------------------------------------------

/// Live counters of one process.
struct Live {
    attempts: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    events: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    bad_bodies: AtomicU64,
    connect_failures: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    latency: [Mutex<Histogram<u64>>; SHARDS],
}

impl Live {
    fn new() -> Self {
        Self {
            attempts: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            events: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bad_bodies: AtomicU64::new(0),
            connect_failures: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
        }
    }

    fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            all.add(&*shard.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        all
    }

    fn progress(&self) -> Progress {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let latency = self.latency();
        Progress {
            attempts: get(&self.attempts),
            connected: get(&self.connected),
            failed: get(&self.failed),
            events: get(&self.events),
            gaps: get(&self.gaps),
            duplicates: get(&self.duplicates),
            p99_ms: (!latency.is_empty()).then(|| latency.value_at_quantile(0.99)),
        }
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().expect("lock").entry(key).or_default() += 1;
}

fn merge_map<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Cumulative counters for the progress line.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub attempts: u64,
    pub connected: u64,
    pub failed: u64,
    pub events: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub p99_ms: Option<u64>,
}

impl Progress {
    fn merge(&mut self, o: &Progress) {
        self.attempts += o.attempts;
        self.connected += o.connected;
        self.failed += o.failed;
        self.events += o.events;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.p99_ms = self.p99_ms.max(o.p99_ms);
    }
}

/// What the subscribers of one process saw; results of processes merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareResult {
    pub attempts: u64,
    pub connected: u64,
    pub failed: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub events: u64,
    pub gaps: u64,
    /// Messages skipped by gaps (not counting a missing tail).
    pub missed: u64,
    pub duplicates: u64,
    pub bad_bodies: u64,
    /// Closes before the stop, by close code ("eof", "error" without one).
    pub closes: BTreeMap<String, u64>,
    /// Distinct messages received -> connected subscribers that got that many.
    pub per_subscriber: BTreeMap<u64, u64>,
    pub latency_ms: HistData,
}

impl ShareResult {
    pub fn merge(&mut self, o: &ShareResult) {
        self.attempts += o.attempts;
        self.connected += o.connected;
        self.failed += o.failed;
        merge_map(&mut self.connect_failures, &o.connect_failures);
        self.events += o.events;
        self.gaps += o.gaps;
        self.missed += o.missed;
        self.duplicates += o.duplicates;
        self.bad_bodies += o.bad_bodies;
        merge_map(&mut self.closes, &o.closes);
        merge_map(&mut self.per_subscriber, &o.per_subscriber);
        let mut h = self.latency_ms.to_histogram();
        h.add(o.latency_ms.to_histogram()).expect("same bounds");
        self.latency_ms = HistData::from_histogram(&h);
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

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<TcpStream>;

/// One process's share of the subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharePlan {
    pub args: NchanArgs,
    pub channel: String,
    pub worker: u32,
    /// Global index of this share's first subscriber.
    pub offset: u32,
    pub subscribers: u32,
    /// Source addresses `source_ip(ip_offset..ip_offset + ip_count)`.
    pub ip_offset: u32,
    pub ip_count: u32,
}

/// Splits the subscribers evenly over `args.workers` processes, each with
/// its own source addresses.
pub fn plan(args: &NchanArgs, channel: &str) -> Vec<SharePlan> {
    let k = args.workers;
    let share = |total: u32, i: u32| total / k + u32::from(i < total % k);
    let ips = args.source_ip_count();
    let (mut off, mut ip_off) = (0, 0);
    (0..k)
        .map(|i| {
            let p = SharePlan {
                args: args.clone(),
                channel: channel.to_string(),
                worker: i,
                offset: off,
                subscribers: share(args.subscribers, i),
                ip_offset: ip_off,
                ip_count: share(ips, i).max(1),
            };
            off += p.subscribers;
            ip_off += p.ip_count;
            p
        })
        .collect()
}

struct SubCtx {
    url: String,
    addr: SocketAddr,
    live: Arc<Live>,
    join_timeout: Duration,
    join_retries: u32,
}

async fn resolve(host_port: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host_port} has no IPv4 address"))
}

/// Opens the subscriber WebSocket from `source`. The error is a short
/// reason, used as a counter key.
async fn connect_ws(ctx: &SubCtx, source: std::net::Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddrV4::new(source, 0).into())
        .map_err(|e| format!("bind {source}: {}", e.kind()))?;
    let stream = socket
        .connect(ctx.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    // Messages are small; a small read buffer keeps thousands of
    // subscribers cheap (tungstenite's default is 128 KiB each).
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(ctx.url.as_str(), stream, Some(config))
            .await
            .map_err(|e| match e {
                WsError::Http(resp) => format!("http {}", resp.status().as_u16()),
                other => format!("handshake: {other}"),
            })?;
    Ok(ws)
}

/// One subscriber: connect (with retries), report it on `ready`, then read
/// until `stop`. Returns its sequence record, `None` if it never connected.
async fn subscriber(
    index: u32,
    source: std::net::Ipv4Addr,
    ctx: Arc<SubCtx>,
    ready: mpsc::UnboundedSender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<SeqTrack> {
    let live = &ctx.live;
    live.attempts.fetch_add(1, Ordering::Relaxed);
    let mut attempt = 0;
    let mut ws = loop {
        let result = tokio::time::timeout(ctx.join_timeout, connect_ws(&ctx, source))
            .await
            .unwrap_or_else(|_| Err("connect timeout".into()));
        match result {
            Ok(ws) => break ws,
            Err(reason) if attempt >= ctx.join_retries => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                bump(&live.connect_failures, reason);
                let _ = ready.send(false);
                return None;
            }
            Err(_) => {
                attempt += 1;
                let jitter = (index % 500) as u64;
                tokio::time::sleep(Duration::from_millis(1_000 + jitter)).await;
            }
        }
    };
    live.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(true);

    let shard = index as usize % SHARDS;
    let mut track = SeqTrack::default();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let body = match msg {
                    Some(Ok(Message::Text(t))) => Bytes::from(t),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                        bump(&live.closes, code.to_string());
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => {
                        bump(&live.closes, "error".into());
                        break;
                    }
                    None => {
                        bump(&live.closes, "eof".into());
                        break;
                    }
                };
                let now = flashcast_wire::now_ms();
                let Some((seq, ts)) = parse_body(&body) else {
                    live.bad_bodies.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                live.events.fetch_add(1, Ordering::Relaxed);
                match track.observe(seq) {
                    Verdict::InOrder => {}
                    Verdict::Gap(_) => {
                        live.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Duplicate => {
                        live.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                live.latency[shard]
                    .lock()
                    .expect("histogram lock")
                    .saturating_record(now.saturating_sub(ts));
            }
            _ = stop.changed() => {
                close_politely(&mut ws).await;
                break;
            }
        }
    }
    Some(track)
}

/// Sends a 1000 close and waits briefly for the server's answer.
async fn close_politely(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "storm done".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Runs one share: ramp the connects, call `ready` once every attempt has
/// resolved, read until `stop` completes, close, and return the result.
async fn run_share<R, S>(
    plan: &SharePlan,
    live: Arc<Live>,
    ready: R,
    stop: S,
) -> anyhow::Result<ShareResult>
where
    R: FnOnce(u64),
    S: Future<Output = ()>,
{
    let args = &plan.args;
    let host_port = split_url(&args.url).map_err(anyhow::Error::msg)?;
    let ctx = Arc::new(SubCtx {
        url: format!("ws://{host_port}/sub/{}", plan.channel),
        addr: resolve(&host_port).await?,
        live: live.clone(),
        join_timeout: Duration::from_secs_f64(args.join_timeout),
        join_retries: args.join_retries,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let rate = args.join_rate * plan.subscribers as f64 / args.subscribers as f64;
    let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(plan.subscribers as usize);
    for i in 0..plan.subscribers {
        tokio::time::sleep_until(ramp_start + step.mul_f64(i as f64)).await;
        tasks.push(tokio::spawn(subscriber(
            plan.offset + i,
            source_ip(plan.ip_offset + i % plan.ip_count),
            ctx.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut connected = 0;
    for _ in 0..plan.subscribers {
        match ready_rx.recv().await {
            Some(true) => connected += 1,
            Some(false) => {}
            None => break,
        }
    }
    ready(connected);
    stop.await;
    let _ = stop_tx.send(true);

    let mut result = ShareResult::default();
    for task in tasks {
        if let Some(track) = task.await.context("subscriber task panicked")? {
            result.missed += track.missed;
            *result.per_subscriber.entry(track.unique()).or_default() += 1;
        }
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    result.attempts = get(&live.attempts);
    result.connected = get(&live.connected);
    result.failed = get(&live.failed);
    result.connect_failures = live.connect_failures.lock().expect("lock").clone();
    result.events = get(&live.events);
    result.gaps = get(&live.gaps);
    result.duplicates = get(&live.duplicates);
    result.bad_bodies = get(&live.bad_bodies);
    result.closes = live.closes.lock().expect("lock").clone();
    result.latency_ms = HistData::from_histogram(&live.latency());
    Ok(result)
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
}

/// Publishes `rate x duration` messages on schedule from `start`, stopping
/// at `start + duration` in any case. `published` follows it live.
async fn publish(
    args: &NchanArgs,
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
    result
}

// ---------------------------------------------------------------------------
// Orchestration: shares in this process or in children, the publisher, merge
// ---------------------------------------------------------------------------

/// One line of a child's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildLine {
    Progress(Progress),
    /// Every connect attempt resolved; reading until "stop" on stdin.
    Ready {
        connected: u64,
    },
    Result(Box<ShareResult>),
}

enum Event {
    Line(ChildLine),
    Exited,
}

enum StopHandle {
    Local(oneshot::Sender<()>),
    Child(tokio::process::ChildStdin),
}

struct Shares {
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    stops: Vec<Option<StopHandle>>,
    children: Vec<tokio::process::Child>,
    progress: Vec<Progress>,
    ready: Vec<bool>,
    results: Vec<Option<ShareResult>>,
    local: Option<tokio::task::JoinHandle<()>>,
    quiet: bool,
    line: ProgressLine,
    tick: tokio::time::Interval,
    published: Arc<AtomicU64>,
}

impl Shares {
    /// Starts every share: in this process when there is one, else one
    /// child process each.
    fn start(plans: &[SharePlan], exe: Option<PathBuf>, quiet: bool) -> anyhow::Result<Shares> {
        let (tx, rx) = mpsc::unbounded_channel();
        let k = plans.len();
        let mut stops = Vec::new();
        let mut children = Vec::new();
        let mut local = None;
        if k == 1 {
            let plan = plans[0].clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stops.push(Some(StopHandle::Local(stop_tx)));
            local = Some(tokio::spawn(async move {
                let live = Arc::new(Live::new());
                let printer = {
                    let (live, tx) = (live.clone(), tx.clone());
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(Duration::from_millis(200));
                        loop {
                            every.tick().await;
                            let _ = tx.send((0, Event::Line(ChildLine::Progress(live.progress()))));
                        }
                    })
                };
                let ready_tx = tx.clone();
                let result = run_share(
                    &plan,
                    live,
                    move |connected| {
                        let _ = ready_tx.send((0, Event::Line(ChildLine::Ready { connected })));
                    },
                    async move {
                        let _ = stop_rx.await;
                    },
                )
                .await;
                printer.abort();
                match result {
                    Ok(r) => {
                        let _ = tx.send((0, Event::Line(ChildLine::Result(Box::new(r)))));
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
                let _ = tx.send((0, Event::Exited));
            }));
        } else {
            let exe = exe.context("--workers > 1 needs the flashcast-storm binary to start")?;
            for (i, plan) in plans.iter().enumerate() {
                let mut child = tokio::process::Command::new(&exe)
                    .arg("nchan-worker")
                    .arg("--plan")
                    .arg(serde_json::to_string(plan)?)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting worker {}", exe.display()))?;
                stops.push(Some(StopHandle::Child(child.stdin.take().expect("piped"))));
                let stdout = child.stdout.take().expect("piped");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stdout).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        match serde_json::from_str::<ChildLine>(&line) {
                            Ok(l) => {
                                let _ = tx.send((i, Event::Line(l)));
                            }
                            Err(_) => eprintln!("worker {i}: {line}"),
                        }
                    }
                    let _ = tx.send((i, Event::Exited));
                });
                children.push(child);
            }
        }
        let total: u64 = plans.iter().map(|p| p.subscribers as u64).sum();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Shares {
            rx,
            stops,
            children,
            progress: vec![Progress::default(); k],
            ready: vec![false; k],
            results: vec![None; k],
            local,
            quiet,
            line: ProgressLine::new(total),
            tick,
            published: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn handle(&mut self, ev: Option<(usize, Event)>) -> anyhow::Result<()> {
        let Some((i, ev)) = ev else {
            bail!("every subscriber share went away")
        };
        match ev {
            Event::Line(ChildLine::Progress(p)) => self.progress[i] = p,
            Event::Line(ChildLine::Ready { .. }) => self.ready[i] = true,
            Event::Line(ChildLine::Result(r)) => self.results[i] = Some(*r),
            Event::Exited if self.results[i].is_none() => {
                if let Some(child) = self.children.get_mut(i) {
                    let status = child.wait().await?;
                    bail!("worker {i} ended without a result ({status})");
                }
                bail!("the subscribers ended without a result");
            }
            Event::Exited => {}
        }
        Ok(())
    }

    fn print(&mut self) {
        if self.quiet {
            return;
        }
        let mut sum = Progress::default();
        for p in &self.progress {
            sum.merge(p);
        }
        self.line
            .print(&sum, self.published.load(Ordering::Relaxed));
    }

    /// Follows the shares (events, progress lines) until `fut` completes.
    async fn pump_until<F: Future>(&mut self, fut: F) -> anyhow::Result<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                ev = self.rx.recv() => self.handle(ev).await?,
                _ = self.tick.tick() => self.print(),
            }
        }
    }

    /// Follows the shares until `done` holds.
    async fn pump_while_not(&mut self, done: impl Fn(&Shares) -> bool) -> anyhow::Result<()> {
        while !done(self) {
            tokio::select! {
                ev = self.rx.recv() => self.handle(ev).await?,
                _ = self.tick.tick() => self.print(),
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        for stop in &mut self.stops {
            match stop.take() {
                Some(StopHandle::Local(tx)) => {
                    let _ = tx.send(());
                }
                Some(StopHandle::Child(mut stdin)) => {
                    stdin
                        .write_all(b"stop\n")
                        .await
                        .context("stopping workers")?;
                    stdin.flush().await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<ShareResult> {
        self.pump_while_not(|s| s.results.iter().all(Option::is_some))
            .await?;
        for child in &mut self.children {
            let _ = child.wait().await;
        }
        if let Some(local) = self.local.take() {
            let _ = local.await;
        }
        let mut merged = ShareResult::default();
        for r in self.results.iter().flatten() {
            merged.merge(r);
        }
        Ok(merged)
    }
}

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

    fn print(&mut self, p: &Progress, published: u64) {
        let now = Instant::now();
        let dt = (now - self.last_at).as_secs_f64().max(0.001);
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        println!(
            "[{:>4.0}s] connected {}/{} (failed {}) | published {} ({:.0}/s) | events {} ({:.0}/s) | gaps {} dups {} | p99 {}",
            (now - self.started).as_secs_f64(),
            p.connected,
            self.subscribers,
            p.failed,
            published,
            per_sec(published, self.last_published),
            p.events,
            per_sec(p.events, self.last.events),
            p.gaps,
            p.duplicates,
            p.p99_ms.map_or("-".to_string(), |v| format!("{v} ms")),
        );
        self.last = *p;
        self.last_published = published;
        self.last_at = now;
    }
}

/// A short id for this run (and its default channel).
fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{:x}", now ^ ((std::process::id() as u64) << 40))
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
    let plans = plan(args, &channel);
    check_open_files(&plans);
    let host_port = split_url(&args.url).map_err(anyhow::Error::msg)?;
    let addr = resolve(&host_port).await?;

    let mut shares = Shares::start(&plans, worker_exe, args.quiet)?;
    shares
        .pump_while_not(|s| s.ready.iter().all(|r| *r))
        .await?;
    let sender = connect_publisher(addr).await?;
    // A moment for the last subscriptions to settle in the server.
    let settle = Instant::now() + Duration::from_millis(200);
    shares.pump_until(tokio::time::sleep_until(settle)).await?;

    let start = Instant::now() + Duration::from_millis(100);
    let mut window = Window {
        go_ms: flashcast_wire::now_ms() + 100,
        ..Window::default()
    };
    let published = shares.published.clone();
    let pub_result = shares
        .pump_until(publish(
            args,
            sender,
            addr,
            host_port.clone(),
            format!("/pub/{channel}"),
            start,
            published,
        ))
        .await?;
    window.send_end_ms = flashcast_wire::now_ms();
    let drain = Instant::now() + Duration::from_secs_f64(args.drain);
    shares.pump_until(tokio::time::sleep_until(drain)).await?;
    window.stop_ms = flashcast_wire::now_ms();
    shares.stop().await?;
    let result = shares.finish().await?;
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

/// Warns when a process would hold more subscribers than it may open files.
fn check_open_files(plans: &[SharePlan]) {
    let (soft, _) = raise_open_files_limit();
    let most = plans
        .iter()
        .map(|p| p.subscribers as u64)
        .max()
        .unwrap_or(0);
    if soft > 0 && most + 64 > soft {
        eprintln!(
            "warning: {most} subscribers in one process but only {soft} open files allowed; \
             use more --workers or raise `ulimit -n`"
        );
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit. Returns the
/// (soft, hard) limits now in force, (0, 0) if unknown.
pub fn raise_open_files_limit() -> (u64, u64) {
    #[cfg(unix)]
    {
        // SAFETY: getrlimit/setrlimit only read/write the struct passed.
        unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return (0, 0);
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
            let limits = (lim.rlim_cur as u64, lim.rlim_max as u64);
            limits
        }
    }
    #[cfg(not(unix))]
    {
        (0, 0)
    }
}

/// Entry point of a child process (`flashcast-storm nchan-worker --plan JSON`).
pub async fn worker_main(plan_json: &str) -> anyhow::Result<()> {
    let plan: SharePlan = serde_json::from_str(plan_json).context("bad worker plan")?;
    raise_open_files_limit();
    let live = Arc::new(Live::new());
    let printer = {
        let live = live.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                emit(&ChildLine::Progress(live.progress()));
            }
        })
    };
    let result = run_share(
        &plan,
        live,
        |connected| emit(&ChildLine::Ready { connected }),
        async {
            // "stop", or the parent went away (EOF): either way, stop.
            let mut line = String::new();
            let _ = BufReader::new(tokio::io::stdin())
                .read_line(&mut line)
                .await;
        },
    )
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
    /// Closes before the stop, by close code.
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
        r: ShareResult,
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
        let mut report = NchanReport {
            scenario: "nchan".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            run_id: run_id.into(),
            started_unix_ms: started_ms,
            args: args.clone(),
            channel: channel.into(),
            subscribers: args.subscribers as u64,
            subscribers_connected: r.connected,
            connect_failures: r.connect_failures.clone(),
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
            events_delivered: r.events,
            events_per_sec: per_sec(r.events),
            events_expected: published * r.connected,
            missing: r.missing(published),
            subscribers_complete: r.complete(published),
            gaps: r.gaps,
            duplicates: r.duplicates,
            bad_bodies: r.bad_bodies,
            closes: r.closes.clone(),
            latency_ms: LatencySummary::of(&r.latency_ms.to_histogram()),
            latency_histogram: r.latency_ms,
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

/// `flashcast-storm nchan-worker --plan JSON`.
pub async fn worker_exit(plan_json: &str) -> ExitCode {
    match worker_main(plan_json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nchan worker error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn seq_track_counts_gaps_duplicates_and_the_tail() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(1), Verdict::InOrder);
        assert_eq!(t.observe(2), Verdict::InOrder);
        assert_eq!(t.observe(2), Verdict::Duplicate);
        assert_eq!(t.observe(5), Verdict::Gap(2));
        assert_eq!(t.observe(1), Verdict::Duplicate);
        assert_eq!(t.observe(6), Verdict::InOrder);
        assert_eq!((t.gaps, t.missed, t.duplicates, t.received), (1, 2, 2, 6));
        assert_eq!(t.unique(), 4);
        // Published 8: 3 and 4 skipped, 7 and 8 never came.
        assert_eq!(t.missing(8), 4);
        assert_eq!(t.missing(6), 2);
        // A late first message is a gap from seq 1.
        let mut late = SeqTrack::default();
        assert_eq!(late.observe(3), Verdict::Gap(2));
        assert_eq!(late.missing(3), 2);
    }

    #[test]
    fn share_results_merge_and_count_missing() {
        let mut a = ShareResult {
            connected: 2,
            events: 19,
            ..Default::default()
        };
        a.per_subscriber.insert(10, 1);
        a.per_subscriber.insert(9, 1);
        let mut h = new_histogram();
        h.record(3).unwrap();
        a.latency_ms = HistData::from_histogram(&h);
        let mut b = a.clone();
        b.per_subscriber.insert(10, 2);
        a.merge(&b);
        assert_eq!(a.connected, 4);
        assert_eq!(a.events, 38);
        assert_eq!(a.per_subscriber[&10], 3);
        assert_eq!(a.per_subscriber[&9], 2);
        assert_eq!(a.missing(10), 2);
        assert_eq!(a.complete(10), 3);
        assert_eq!(a.latency_ms.to_histogram().len(), 2);
    }

    #[test]
    fn plans_split_subscribers_and_addresses() {
        let a = args(&["--subscribers", "2001", "--workers", "3"]);
        assert_eq!(a.source_ip_count(), 9);
        let plans = plan(&a, "c");
        assert_eq!(plans.iter().map(|p| p.subscribers).sum::<u32>(), 2001);
        for w in plans.windows(2) {
            assert_eq!(w[0].offset + w[0].subscribers, w[1].offset);
            assert_eq!(w[0].ip_offset + w[0].ip_count, w[1].ip_offset);
        }
        assert_eq!(plans.iter().map(|p| p.ip_count).sum::<u32>(), 9);
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
        let mut r = ShareResult {
            connected: 2,
            events: 19,
            ..Default::default()
        };
        r.per_subscriber.insert(10, 1);
        r.per_subscriber.insert(9, 1);
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
}
