//! The video benchmark (issue #5): one WHIP publisher and N WHEP viewers
//! in this process, each its own WebRTC peer connection (webrtc-rs), against
//! a Flashcast node.
//!
//! The publisher sends VP8 RTP at a fixed frame rate: by default a
//! synthetic payload of the right size and rate (the SFU forwards RTP
//! without decoding it, so for delivery and latency the content does not
//! matter), or the frames of an IVF (VP8) file with `--input`. It packetizes
//! itself (VP8 payload descriptor, at most [`MTU_PAYLOAD`] bytes a packet,
//! marker bit on a frame's last packet), so it knows each packet's sequence
//! number and records the instant it handed it to the stack. The SFU keeps
//! the publisher's sequence numbers and timestamps, so a viewer looks the
//! arrival's sequence number up: same process, same clock, no clock sync.
//!
//! Per viewer: time from the WHEP `POST` to the first RTP packet, packets
//! and bytes, loss from sequence gaps, and the RTP-arrival latency as a
//! histogram. The server's CPU (`--server-pid`, from /proc) and this tool's
//! own CPU are measured over the steady window, after every viewer is up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use flashcast_wire::Role;
use hdrhistogram::Histogram;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry,
};

use crate::admin::Admin;
use crate::probe::{read_proc, ServerProbe};

/// Largest RTP payload the publisher sends (the usual WebRTC budget).
pub const MTU_PAYLOAD: usize = 1_200;
const VP8_PT: u8 = 96;
const CLOCK: u32 = 90_000;

/// Options of `video`.
#[derive(Debug, Clone, Args)]
pub struct VideoArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Room to publish to and play from (created if it does not exist).
    #[arg(long, default_value = "demo")]
    pub room: String,
    /// WHEP viewers to start.
    #[arg(long, default_value_t = 10)]
    pub viewers: u32,
    /// Seconds over which the viewers are started.
    #[arg(long, default_value_t = 5.0)]
    pub ramp_secs: f64,
    /// Seconds of the steady window measured once every viewer is up.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// IVF (VP8) file to send, looped. Default: a synthetic VP8-labelled
    /// payload at --bitrate-kbps and --fps.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Bit rate of the synthetic stream, kbit/s.
    #[arg(long, default_value_t = 2_500)]
    pub bitrate_kbps: u32,
    /// Frame rate (the synthetic stream's, or the IVF file's playback rate).
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Admin key (mints the host and viewer tokens).
    #[arg(long, env = "FLASHCAST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Host token (instead of minting one).
    #[arg(long)]
    pub host_token: Option<String>,
    /// Play as guests (no viewer tokens; the room must allow guests and
    /// `media_max_guest_sessions_per_ip` must be large enough).
    #[arg(long)]
    pub guests: bool,
    /// PID of the local server: its CPU is read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds allowed for a viewer's first packet after its WHEP POST.
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One viewer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerReport {
    pub id: u32,
    /// The error, if the viewer never got going.
    pub error: Option<String>,
    /// From the WHEP POST to the first RTP packet.
    pub first_packet_ms: Option<f64>,
    pub packets: u64,
    pub bytes: u64,
    /// Sequence numbers between the first and last received that never came.
    pub lost: u64,
    pub loss_pct: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct VideoReport {
    pub url: String,
    pub room: String,
    pub viewers: u32,
    pub viewers_receiving: u32,
    pub input: String,
    /// What the publisher sent during the steady window.
    pub sent_mbps: f64,
    pub sent_packets_per_sec: f64,
    pub window_secs: f64,
    /// All viewers together, during the steady window.
    pub delivered_mbps: f64,
    pub delivered_packets_per_sec: f64,
    /// Over the whole run (sequence gaps / expected).
    pub loss_pct: f64,
    /// RTP-arrival latency, all viewers' packets together.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub first_packet_p50_ms: Option<f64>,
    pub first_packet_max_ms: Option<f64>,
    /// Server CPU over the window: % of one core, per viewer, and µs per
    /// packet delivered to a viewer.
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_pct_per_viewer: Option<f64>,
    pub server_cpu_us_per_packet: Option<f64>,
    pub server_rss_mib: Option<f64>,
    /// This tool (publisher + every viewer) over the window, % of one core.
    pub tool_cpu_pct: Option<f64>,
    pub per_viewer: Vec<ViewerReport>,
}

/// Send instants by sequence number (nanoseconds since `epoch`, 0 = none).
struct SendLog {
    epoch: Instant,
    at: Vec<AtomicU64>,
}

impl SendLog {
    fn new() -> SendLog {
        SendLog {
            epoch: Instant::now(),
            at: (0..=u16::MAX as usize).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn sent(&self, seq: u16, ns: u64) {
        self.at[seq as usize].store(ns, Ordering::Relaxed);
    }
    fn latency_us(&self, seq: u16, now_ns: u64) -> Option<u64> {
        let sent = self.at[seq as usize].load(Ordering::Relaxed);
        // A packet older than the table's wrap (over 3 minutes at 2.5 Mbit/s)
        // cannot be told apart: not counted.
        (sent > 0 && now_ns >= sent && now_ns - sent < 60_000_000_000)
            .then(|| (now_ns - sent) / 1_000)
    }
}

/// Counters shared by the viewers, for the steady window's throughput.
#[derive(Default)]
struct Totals {
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// A viewer's running figures.
struct ViewerState {
    first_packet: Option<Duration>,
    packets: u64,
    bytes: u64,
    /// Extended (wrap-counted) sequence of the first and highest packet.
    first_ext: Option<i64>,
    highest_ext: i64,
    hist: Histogram<u64>,
}

impl ViewerState {
    fn new() -> ViewerState {
        ViewerState {
            first_packet: None,
            packets: 0,
            bytes: 0,
            first_ext: None,
            highest_ext: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        }
    }

    /// Counts one packet; `seq` extended against the highest seen.
    fn packet(&mut self, seq: u16, len: usize, latency_us: Option<u64>) {
        match self.first_ext {
            None => {
                self.first_ext = Some(seq as i64);
                self.highest_ext = seq as i64;
            }
            Some(_) => {
                let delta = seq.wrapping_sub(self.highest_ext as u16) as i16 as i64;
                self.highest_ext = self.highest_ext.max(self.highest_ext + delta);
            }
        }
        self.packets += 1;
        self.bytes += len as u64;
        if let Some(us) = latency_us {
            self.hist.saturating_record(us.max(1));
        }
    }

    fn lost(&self) -> u64 {
        match self.first_ext {
            Some(first) => ((self.highest_ext - first + 1) as u64).saturating_sub(self.packets),
            None => 0,
        }
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: CLOCK,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
            .iter()
            .map(|(t, p)| RTCPFeedback {
                typ: t.to_string(),
                parameter: p.to_string(),
            })
            .collect(),
    }
}

struct Client {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
}

/// Turns a peer connection's events into channels: connection state,
/// whether ICE gathering is complete, remote tracks (at most 4 wait).
struct Events {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    tracks: mpsc::Sender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // A viewer expects one video track; more are ignored.
        let _ = self.tracks.try_send(track);
    }
}

async fn client() -> anyhow::Result<Client> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, gathered) = watch::channel(false);
    let (tracks_tx, tracks) = mpsc::channel(4);
    let events = Events {
        state: state_tx,
        gathered: gathered_tx,
        tracks: tracks_tx,
    };
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(events))
        .with_runtime(Arc::new(webrtc::runtime::TokioRuntime))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await?;
    Ok(Client {
        pc: Arc::new(pc),
        gathered,
        state,
        tracks,
    })
}

impl Client {
    /// Offers (non-trickle), POSTs the offer, applies the answer.
    async fn negotiate(
        &self,
        http: &reqwest::Client,
        url: &str,
        token: Option<&str>,
    ) -> anyhow::Result<()> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let mut gathered = self.gathered.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g)).await;
        let sdp = self
            .pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        let mut req = http
            .post(url)
            .header("content-type", "application/sdp")
            .body(sdp);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("POST {url}: {status}: {body}");
        }
        self.pc
            .set_remote_description(RTCSessionDescription::answer(body)?)
            .await?;
        Ok(())
    }

    async fn connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut state = self.state.clone();
        let r = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await;
        match r {
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
            Ok(Ok(s)) => bail!("connection {}", *s),
            _ => bail!("not connected within {timeout:?}"),
        }
    }
}

/// Frames to send: payload bytes each, looped.
enum Source {
    Synthetic { frame_bytes: usize },
    Ivf { frames: Vec<Bytes>, next: usize },
}

impl Source {
    fn next_frame(&mut self, n: u64) -> Bytes {
        match self {
            Source::Synthetic { frame_bytes } => {
                // A keyframe-sized frame once a second would be more
                // realistic; a steady size keeps the rate exact.
                let fill = (n % 251) as u8;
                Bytes::from(vec![fill; *frame_bytes])
            }
            Source::Ivf { frames, next } => {
                let f = frames[*next].clone();
                *next = (*next + 1) % frames.len();
                f
            }
        }
    }
}

/// The frames of an IVF file (32-byte header; per frame a 12-byte header:
/// size u32 LE, timestamp u64).
pub fn read_ivf(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if data.len() < 32 || &data[..4] != b"DKIF" {
        bail!("{}: not an IVF file", path.display());
    }
    if &data[8..12] != b"VP80" {
        bail!("{}: only VP8 IVF files are supported", path.display());
    }
    let header = u16::from_le_bytes([data[6], data[7]]) as usize;
    let mut at = header.max(32);
    let mut frames = Vec::new();
    while at + 12 <= data.len() {
        let size = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 12;
        if at + size > data.len() {
            break;
        }
        frames.push(Bytes::copy_from_slice(&data[at..at + size]));
        at += size;
    }
    if frames.is_empty() {
        bail!("{}: no frames", path.display());
    }
    Ok(frames)
}

/// Splits a VP8 frame into RTP payloads (RFC 7741 payload descriptor, one
/// byte: S bit on the first packet).
pub fn packetize_vp8(frame: &[u8], max: usize) -> Vec<Bytes> {
    let chunk = max - 1;
    frame
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, c)| {
            let mut p = Vec::with_capacity(c.len() + 1);
            p.push(if i == 0 { 0x10 } else { 0x00 });
            p.extend_from_slice(c);
            Bytes::from(p)
        })
        .collect()
}

struct Publisher {
    client: Client,
    track: Arc<TrackLocalStaticRTP>,
    /// The stack sends a packet's header as given: the SSRC must be the
    /// one the offer announced.
    ssrc: u32,
}

async fn publish(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Publisher> {
    let client = client().await?;
    let ssrc: u32 = rand_ssrc();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "storm".to_string(),
        "storm-video".to_string(),
        "storm video".to_string(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            active: true,
            codec: vp8(),
            ..Default::default()
        }],
    )));
    client
        .pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await?;
    client.negotiate(http, url, Some(token)).await?;
    client.connected(Duration::from_secs(10)).await?;
    Ok(Publisher {
        client,
        track,
        ssrc,
    })
}

fn rand_ssrc() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)).max(1)
}

/// Sends frames at `fps` until `stop`; counts what was sent.
async fn send_loop(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    mut source: Source,
    fps: u32,
    log: Arc<SendLog>,
    sent: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq: u16 = 1;
    let mut ts: u32 = 0;
    let step = CLOCK / fps;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let frame = source.next_frame(n);
        n += 1;
        let payloads = packetize_vp8(&frame, MTU_PAYLOAD);
        let last = payloads.len() - 1;
        for (i, payload) in payloads.into_iter().enumerate() {
            let len = payload.len() + 12;
            let pkt = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: VP8_PT,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload,
            };
            log.sent(seq, log.now_ns());
            if track.write_rtp(pkt).await.is_err() {
                return;
            }
            sent.packets.fetch_add(1, Ordering::Relaxed);
            sent.bytes.fetch_add(len as u64, Ordering::Relaxed);
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(step);
    }
}

/// One viewer: WHEP, then reads RTP until `stop`.
#[allow(clippy::too_many_arguments)]
async fn viewer(
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    log: Arc<SendLog>,
    totals: Arc<Totals>,
    state: Arc<Mutex<ViewerState>>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut c = client().await?;
    c.pc.add_transceiver_from_kind(
        RtpCodecKind::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        }),
    )
    .await?;
    c.negotiate(&http, &url, token.as_deref()).await?;
    let track = tokio::time::timeout(timeout, c.tracks.recv())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no track within {timeout:?} (connection {})",
                *c.state.borrow()
            )
        })?
        .context("connection ended")?;
    let mut first = true;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ev = match tokio::time::timeout(Duration::from_millis(500), track.poll()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(_) => continue,
        };
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                let now = log.now_ns();
                let len = p.payload.len() + 12;
                let lat = log.latency_us(p.header.sequence_number, now);
                let mut s = state.lock().expect("lock");
                if first {
                    s.first_packet = Some(started.elapsed());
                    first = false;
                }
                s.packet(p.header.sequence_number, len, lat);
                drop(s);
                totals.packets.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), c.pc.close()).await;
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// Runs the benchmark.
pub async fn run(args: &VideoArgs) -> anyhow::Result<VideoReport> {
    let base = args.url.trim_end_matches('/').to_string();
    let admin = Admin::new(&base, args.admin_key.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // The room: created if missing (an existing one answers an error).
    if args.admin_key.is_some() {
        let _ = admin.create_room(&args.room, "Video benchmark").await;
    }
    let host = match &args.host_token {
        Some(t) => t.clone(),
        None => admin
            .mint(&args.room, "storm-host", Role::Host)
            .await
            .context("minting the host token (pass --admin-key or --host-token)")?,
    };
    let viewer_tokens: Vec<Option<String>> = if args.guests {
        vec![None; args.viewers as usize]
    } else {
        admin
            .mint_many(
                &args.room,
                (0..args.viewers).map(|i| format!("storm-v{i}")).collect(),
            )
            .await?
            .into_iter()
            .map(Some)
            .collect()
    };

    let (source, input) = match &args.input {
        Some(p) => (
            Source::Ivf {
                frames: read_ivf(p)?,
                next: 0,
            },
            p.display().to_string(),
        ),
        None => {
            let frame_bytes =
                (args.bitrate_kbps as usize * 1_000 / 8 / args.fps.max(1) as usize).max(1);
            (
                Source::Synthetic { frame_bytes },
                format!(
                    "synthetic VP8-labelled RTP, {} kbit/s payload, {} fps",
                    args.bitrate_kbps, args.fps
                ),
            )
        }
    };

    let log = Arc::new(SendLog::new());
    let sent = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish(&http, &format!("{base}/whip/{}", args.room), &host).await?;
    let sender = tokio::spawn(send_loop(
        publisher.track.clone(),
        publisher.ssrc,
        source,
        args.fps.max(1),
        log.clone(),
        sent.clone(),
        stop.clone(),
    ));
    // Let the broadcast register before the first viewer asks for it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let totals = Arc::new(Totals::default());
    let timeout = Duration::from_secs_f64(args.connect_timeout);
    let mut handles = Vec::new();
    let mut states = Vec::new();
    let gap = if args.viewers > 1 {
        Duration::from_secs_f64(args.ramp_secs / args.viewers as f64)
    } else {
        Duration::ZERO
    };
    let whep = format!("{base}/whep/{}", args.room);
    for token in viewer_tokens {
        let state = Arc::new(Mutex::new(ViewerState::new()));
        states.push(state.clone());
        handles.push(tokio::spawn(viewer(
            http.clone(),
            whep.clone(),
            token,
            log.clone(),
            totals.clone(),
            state,
            stop.clone(),
            timeout,
        )));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    // Wait until every viewer has its first packet (or the timeout).
    let deadline = Instant::now() + timeout;
    loop {
        let up = states
            .iter()
            .filter(|s| s.lock().expect("lock").first_packet.is_some())
            .count();
        let failed = handles.iter().filter(|h| h.is_finished()).count();
        if up + failed >= states.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle, then the steady window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = args
        .server_pid
        .map(|pid| ServerProbe::new(Some(pid), admin.clone()));
    if let Some(p) = &probe {
        p.start(flashcast_wire::now_ms()).await;
    }
    let me = std::process::id();
    let tool0 = read_proc(me);
    let t0 = Instant::now();
    let (p0, b0) = (
        totals.packets.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
    let (sp0, sb0) = (
        sent.packets.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    let end = t0 + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        if let Some(p) = &probe {
            p.sample().await;
        }
        if !args.quiet {
            let secs = t0.elapsed().as_secs_f64();
            let mbps =
                (totals.bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0 / secs.max(0.001) / 1e6;
            let cpu = probe
                .as_ref()
                .and_then(|p| p.last())
                .map(|(c, _)| format!(", server {c:.0}% CPU"))
                .unwrap_or_default();
            eprintln!("[{secs:5.1}s] delivered {mbps:.1} Mbit/s{cpu}");
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let (p1, b1) = (
        totals.packets.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
    let (sp1, sb1) = (
        sent.packets.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    let tool1 = read_proc(me);
    let server = match &probe {
        Some(p) => Some(p.finish().await),
        None => None,
    };

    stop.store(true, Ordering::Relaxed);
    // Packets in flight arrive within the viewers' next poll.
    let mut errors: Vec<Option<String>> = Vec::new();
    for h in handles {
        let abort = h.abort_handle();
        errors.push(
            match tokio::time::timeout(Duration::from_secs(3), h).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(format!("{e:#}")),
                Ok(Err(e)) => Some(format!("task: {e}")),
                Err(_) => {
                    abort.abort();
                    None
                }
            },
        );
    }
    let _ = sender.await;
    let _ = tokio::time::timeout(Duration::from_secs(3), publisher.client.pc.close()).await;

    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut first = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("bounds");
    let mut per_viewer = Vec::new();
    let (mut lost, mut got) = (0u64, 0u64);
    for (i, s) in states.iter().enumerate() {
        let s = s.lock().expect("lock");
        all.add(&s.hist).expect("same bounds");
        let fp = s.first_packet.map(|d| d.as_secs_f64() * 1_000.0);
        if let Some(f) = fp {
            first.saturating_record((f as u64).max(1));
        }
        let l = s.lost();
        lost += l;
        got += s.packets;
        let has = !s.hist.is_empty();
        per_viewer.push(ViewerReport {
            id: i as u32,
            error: errors
                .get(i)
                .cloned()
                .flatten()
                .or_else(|| (s.packets == 0).then(|| "no packet received".to_string())),
            first_packet_ms: fp,
            packets: s.packets,
            bytes: s.bytes,
            lost: l,
            loss_pct: pct(l, l + s.packets),
            latency_p50_ms: has.then(|| ms(s.hist.value_at_quantile(0.5))),
            latency_p99_ms: has.then(|| ms(s.hist.value_at_quantile(0.99))),
            latency_max_ms: has.then(|| ms(s.hist.max())),
        });
    }
    let receiving = per_viewer.iter().filter(|v| v.packets > 0).count() as u32;
    let has = !all.is_empty();
    let server_cpu_pct = server
        .as_ref()
        .and_then(|s| s.cpu_secs)
        .map(|c| c / window * 100.0);
    let delivered_pps = (p1 - p0) as f64 / window;
    let tool_cpu_pct = match (tool0, tool1) {
        (Some(a), Some(b)) => Some((b.cpu_secs - a.cpu_secs) / window * 100.0),
        _ => None,
    };
    Ok(VideoReport {
        url: base,
        room: args.room.clone(),
        viewers: args.viewers,
        viewers_receiving: receiving,
        input,
        sent_mbps: (sb1 - sb0) as f64 * 8.0 / window / 1e6,
        sent_packets_per_sec: (sp1 - sp0) as f64 / window,
        window_secs: window,
        delivered_mbps: (b1 - b0) as f64 * 8.0 / window / 1e6,
        delivered_packets_per_sec: delivered_pps,
        loss_pct: pct(lost, lost + got),
        latency_p50_ms: has.then(|| ms(all.value_at_quantile(0.5))),
        latency_p99_ms: has.then(|| ms(all.value_at_quantile(0.99))),
        latency_max_ms: has.then(|| ms(all.max())),
        first_packet_p50_ms: (!first.is_empty()).then(|| first.value_at_quantile(0.5) as f64),
        first_packet_max_ms: (!first.is_empty()).then(|| first.max() as f64),
        server_cpu_pct,
        server_cpu_pct_per_viewer: server_cpu_pct.map(|c| c / args.viewers.max(1) as f64),
        server_cpu_us_per_packet: server
            .as_ref()
            .and_then(|s| s.cpu_secs)
            .filter(|_| delivered_pps > 0.0)
            .map(|c| c * 1e6 / (p1 - p0) as f64),
        server_rss_mib: server.as_ref().and_then(|s| s.rss_peak_mib),
        tool_cpu_pct,
        per_viewer,
    })
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

impl VideoReport {
    /// The header and one row of the summary table.
    pub fn table_header() -> &'static str {
        "| viewers | receiving | sent Mbit/s | delivered Mbit/s | loss % | latency p50 / p99 / max ms | first packet p50 / max ms | server CPU % | server % per viewer | server µs per packet | server RSS MiB | tool CPU % |\n\
         | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    }

    pub fn table_row(&self) -> String {
        format!(
            "| {} | {} | {:.2} | {:.1} | {:.2} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} |",
            self.viewers,
            self.viewers_receiving,
            self.sent_mbps,
            self.delivered_mbps,
            self.loss_pct,
            opt(self.latency_p50_ms, 1),
            opt(self.latency_p99_ms, 1),
            opt(self.latency_max_ms, 1),
            opt(self.first_packet_p50_ms, 0),
            opt(self.first_packet_max_ms, 0),
            opt(self.server_cpu_pct, 1),
            opt(self.server_cpu_pct_per_viewer, 2),
            opt(self.server_cpu_us_per_packet, 1),
            opt(self.server_rss_mib, 0),
            opt(self.tool_cpu_pct, 1),
        )
    }
}

/// The subcommand: runs, prints the table, writes the JSON. Exit 0 when
/// every viewer received packets, 1 otherwise, 2 when the run failed.
pub async fn main(args: VideoArgs) -> ExitCode {
    match run(&args).await {
        Ok(r) => {
            println!("input: {}", r.input);
            println!("{}", VideoReport::table_header());
            println!("{}", r.table_row());
            for v in r.per_viewer.iter().filter(|v| v.error.is_some()).take(5) {
                eprintln!("viewer {}: {}", v.id, v.error.as_deref().unwrap_or(""));
            }
            if let Some(out) = &args.out {
                let json = serde_json::to_string_pretty(&r).expect("serializable");
                if let Err(e) = std::fs::write(out, json) {
                    eprintln!("cannot write {}: {e}", out.display());
                    return ExitCode::from(2);
                }
            }
            if r.viewers_receiving == r.viewers {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("video: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packetizes_with_the_start_bit_on_the_first_packet_only() {
        let p = packetize_vp8(&[7u8; 2_500], 1_200);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0][0], 0x10);
        assert!(p[1..].iter().all(|b| b[0] == 0));
        assert_eq!(p.iter().map(|b| b.len() - 1).sum::<usize>(), 2_500);
        assert!(p.iter().all(|b| b.len() <= 1_200));
    }

    #[test]
    fn counts_gaps_across_the_sequence_wrap() {
        let mut s = ViewerState::new();
        for seq in [65_534u16, 65_535, 1, 2] {
            s.packet(seq, 100, Some(1_000));
        }
        // 0 never came.
        assert_eq!((s.packets, s.lost()), (4, 1));
        assert_eq!(s.hist.len(), 4);
    }

    #[test]
    fn looks_up_send_instants_by_sequence() {
        let log = SendLog::new();
        log.sent(9, 1_000_000);
        assert_eq!(log.latency_us(9, 3_000_000), Some(2_000));
        assert_eq!(log.latency_us(10, 3_000_000), None);
    }
}
