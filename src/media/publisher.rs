//! A broadcast: the host's WHIP session. One per room at a time.
//!
//! Its life: the answer is sent, the host connects (the room goes `live`),
//! each track the host sends gets a reader task that hands every RTP packet
//! to the track's fan-out, and a supervisor watches for the end: DELETE,
//! the connection failing or closing, no RTP (or a disconnection) for
//! `media_publisher_timeout_ms`, the room closing, or shutdown. Ending it
//! ends every viewer of it and puts the room `offline`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::forward::{strip_extensions, Fanout};
use super::keyframe::{keyframe_gate, KeyframeGate, KeyframePacer, KeyframeReason};
use super::peer;
use super::quota::{Counter, Holder, KeyedSlot, Slot};
use super::sdp::{self, MediaKind, Offer, SdpCodec};
use super::session::{Link, Supervised};
use super::{EndReason, MediaError, MediaHub, SessionId, Viewer};
use crate::room::RoomHandle;
use flashcast_wire::ids::RoomId;
use flashcast_wire::{now_ms, StreamState};

/// One forwarded track of the broadcast.
pub struct Feed {
    pub kind: MediaKind,
    /// As negotiated with the publisher: its payload type, name, fmtp.
    pub codec: SdpCodec,
    pub fanout: Fanout<rtp::Packet>,
    /// Metric handles resolved once, not per packet.
    pub(crate) packets: IntCounter,
    pub(crate) bytes: IntCounter,
    pub(crate) drops: IntCounter,
}

pub struct Broadcast {
    pub id: SessionId,
    room: RoomHandle,
    pub(crate) link: Link,
    feeds: Vec<Feed>,
    keyframes: KeyframeGate,
    pacer: Mutex<Option<KeyframePacer>>,
    /// The publisher's video SSRC, the target of PLIs (0 until known).
    video_ssrc: AtomicU32,
    viewers: Mutex<HashMap<SessionId, Arc<Viewer>>>,
    room_viewers: Arc<Counter>,
    created: Instant,
    /// Unix ms when the publisher connected; 0 before.
    live_since: AtomicU64,
    /// Milliseconds after `created` of the last RTP packet.
    last_rtp: AtomicU64,
    _holder: KeyedSlot<Holder>,
}

/// Negotiates the host's offer; the broadcast is not registered yet.
pub(crate) async fn start(
    hub: &Arc<MediaHub>,
    id: SessionId,
    room: RoomHandle,
    offer_kinds: Offer,
    offer: &str,
    holder: KeyedSlot<Holder>,
) -> Result<(Arc<Broadcast>, String), MediaError> {
    let settings = &hub.settings;
    let (peer, events) = peer::build(&hub.plan, hub.runtime(), peer::publisher_engine()?).await?;
    let answer = match peer
        .answer(offer, hub.ms(settings.media_ice_gather_timeout_ms))
        .await
    {
        Ok(a) => a,
        Err(e) => {
            peer.close().await;
            return Err(e);
        }
    };
    let codecs: Vec<(MediaKind, SdpCodec)> = match sdp::answer_codecs(&answer) {
        Ok(c) => c
            .into_iter()
            .filter(|(kind, _)| offer_kinds.kinds.contains(kind))
            .collect(),
        Err(e) => {
            peer.close().await;
            return Err(MediaError::Internal(format!("unreadable answer: {e}")));
        }
    };
    if codecs.is_empty() {
        peer.close().await;
        return Err(MediaError::BadOffer(
            "none of the offered codecs can be forwarded: send H.264 (packetization-mode=1) or VP8 video, and/or Opus audio".into(),
        ));
    }
    let m = &hub.metrics;
    let feeds = codecs
        .into_iter()
        .map(|(kind, codec)| Feed {
            kind,
            codec,
            fanout: Fanout::new(settings.media_viewer_queue),
            packets: m.media_rtp_packets.with_label_values(&[kind.as_str()]),
            bytes: m.media_rtp_bytes.with_label_values(&[kind.as_str()]),
            drops: m.media_queue_drops.with_label_values(&[kind.as_str()]),
        })
        .collect();
    let (keyframes, pacer) = keyframe_gate(hub.ms(settings.media_keyframe_interval_ms));
    let broadcast = Arc::new(Broadcast {
        id,
        room,
        link: Link::new(peer, events),
        feeds,
        keyframes,
        pacer: Mutex::new(Some(pacer)),
        video_ssrc: AtomicU32::new(0),
        viewers: Mutex::new(HashMap::new()),
        room_viewers: Counter::new(settings.media_max_viewers_per_room),
        created: Instant::now(),
        live_since: AtomicU64::new(0),
        last_rtp: AtomicU64::new(0),
        _holder: holder,
    });
    Ok((broadcast, hub.plan.apply_nat(&answer)))
}

impl Broadcast {
    pub fn room_id(&self) -> &RoomId {
        self.room.id()
    }

    pub fn room(&self) -> &RoomHandle {
        &self.room
    }

    pub fn feeds(&self) -> &[Feed] {
        &self.feeds
    }

    pub fn feed(&self, kind: MediaKind) -> Option<&Feed> {
        self.feeds.iter().find(|f| f.kind == kind)
    }

    pub fn is_live(&self) -> bool {
        self.live_since.load(Ordering::Acquire) != 0
    }

    pub fn is_ended(&self) -> bool {
        self.link.ending.is_ended()
    }

    /// Changes to `true` when the broadcast has ended.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.link.ending.subscribe()
    }

    /// A place among the room's viewers, or `RoomFull`.
    pub(crate) fn viewer_slot(&self) -> Result<Slot, MediaError> {
        self.room_viewers
            .take()
            .ok_or(MediaError::RoomFull(self.room_viewers.max()))
    }

    /// Adds a viewer; false if the broadcast is ending (the viewer must
    /// then end itself).
    pub(crate) fn add_viewer(&self, viewer: Arc<Viewer>) -> bool {
        let mut viewers = self.viewers.lock().expect("viewers lock");
        if self.is_ended() {
            return false;
        }
        viewers.insert(viewer.id, viewer);
        true
    }

    pub(crate) fn remove_viewer(&self, id: &SessionId) {
        self.viewers.lock().expect("viewers lock").remove(id);
    }

    /// Asks the publisher for a keyframe, paced (see `keyframe`).
    pub(crate) fn request_keyframe(&self, hub: &MediaHub, reason: KeyframeReason) {
        if self.feed(MediaKind::Video).is_none() {
            return;
        }
        let outcome = self.keyframes.request();
        hub.metrics
            .media_keyframe_requests
            .with_label_values(&[reason.as_str(), outcome.as_str()])
            .inc();
    }

    fn since_start_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    /// Watches the broadcast until it ends, then ends it.
    pub(crate) async fn supervise(self: Arc<Self>, hub: Arc<MediaHub>) {
        let supervisor = Supervisor {
            connect_timeout: hub.ms(hub.settings.media_connect_timeout_ms),
            media_timeout: hub.ms(hub.settings.media_publisher_timeout_ms),
            broadcast: &self,
            hub: &hub,
        };
        if let Some(reason) = self.link.supervise(&supervisor).await {
            self.end(&hub, reason).await;
        }
    }

    fn go_live(&self) {
        let now = now_ms();
        self.last_rtp
            .store(self.since_start_ms(), Ordering::Release);
        self.live_since.store(now.max(1), Ordering::Release);
        self.room.shared.stream.set(StreamState::Live, now);
        tracing::info!(room = %self.room.id(), session = %self.id, "broadcast live");
    }

    /// Starts forwarding a track the publisher opened.
    async fn attach(self: Arc<Self>, hub: Arc<MediaHub>, track: Arc<dyn TrackRemote>) {
        let kind = match track.kind().await {
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => MediaKind::Audio,
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video => MediaKind::Video,
            _ => return,
        };
        tracing::debug!(room = %self.room.id(), session = %self.id, %kind, "publisher track open");
        if kind == MediaKind::Video {
            if let Some(pacer) = self.pacer.lock().expect("pacer lock").take() {
                tokio::spawn(self.clone().send_plis(hub, pacer, track.clone()));
            }
        }
        tokio::spawn(self.read(kind, track));
    }

    /// The reader of one publisher track: every packet to the fan-out. A
    /// track without a feed (nothing negotiated to forward) is still read,
    /// so its events never pile up in the connection.
    async fn read(self: Arc<Self>, kind: MediaKind, track: Arc<dyn TrackRemote>) {
        let feed = self.feed(kind);
        let on = |event| {
            match event {
                TrackRemoteEvent::OnRtpPacket(mut packet) => {
                    self.last_rtp
                        .store(self.since_start_ms(), Ordering::Release);
                    let Some(feed) = feed else {
                        return ControlFlow::Continue(());
                    };
                    // Only the negotiated codec is forwarded (viewers were
                    // offered nothing else).
                    if packet.header.payload_type != feed.codec.payload_type {
                        return ControlFlow::Continue(());
                    }
                    if kind == MediaKind::Video {
                        self.video_ssrc.store(packet.header.ssrc, Ordering::Relaxed);
                    }
                    strip_extensions(&mut packet);
                    let sent = feed.fanout.send(&packet);
                    if sent.dropped > 0 {
                        feed.drops.inc_by(sent.dropped as u64);
                    }
                }
                TrackRemoteEvent::OnEnded => return ControlFlow::Break(()),
                _ => {}
            }
            ControlFlow::Continue(())
        };
        self.link.ending.each(|| track.poll(), on).await;
    }

    /// Sends the paced PLIs to the publisher's video track.
    async fn send_plis(
        self: Arc<Self>,
        hub: Arc<MediaHub>,
        pacer: KeyframePacer,
        track: Arc<dyn TrackRemote>,
    ) {
        let me = self.clone();
        let run = pacer.run(move || {
            let (me, track, hub) = (me.clone(), track.clone(), hub.clone());
            async move {
                let mut media_ssrc = me.video_ssrc.load(Ordering::Relaxed);
                if media_ssrc == 0 {
                    media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
                }
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                match track.write_rtcp(vec![Box::new(pli)]).await {
                    Ok(()) => {
                        hub.metrics.media_plis.inc();
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "PLI not sent; publisher gone");
                        false
                    }
                }
            }
        });
        self.link.ending.run_until_ended(run).await;
    }

    /// Ends the broadcast (idempotent): the room goes offline, every viewer
    /// ends, the connection closes.
    pub(crate) async fn end(&self, hub: &MediaHub, reason: EndReason) {
        if !self.link.ending.begin() {
            return;
        }
        // Before the room's publisher slot is freed, so a new broadcast's
        // `live` can never be overwritten by this one's `offline`.
        if self.is_live() {
            self.room.shared.stream.set(StreamState::Offline, now_ms());
        }
        let viewers: Vec<Arc<Viewer>> = self
            .viewers
            .lock()
            .expect("viewers lock")
            .drain()
            .map(|(_, v)| v)
            .collect();
        futures_util::future::join_all(
            viewers
                .iter()
                .map(|v| v.end(hub, EndReason::BroadcastEnded)),
        )
        .await;
        hub.forget_broadcast(self);
        self.link.close(hub, "publisher", reason).await;
        tracing::info!(room = %self.room.id(), session = %self.id, reason = reason.as_str(), viewers = viewers.len(), "broadcast ended");
    }
}

/// The broadcast's side of [`Link::supervise`].
struct Supervisor<'a> {
    broadcast: &'a Arc<Broadcast>,
    hub: &'a Arc<MediaHub>,
    connect_timeout: Duration,
    /// No RTP, or a disconnection, for this long ends the broadcast.
    media_timeout: Duration,
}

impl Supervised for Supervisor<'_> {
    fn connected(&self) {
        if !self.broadcast.is_live() {
            self.broadcast.go_live();
        }
    }

    fn track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(self.broadcast.clone().attach(self.hub.clone(), track));
    }

    fn check(&self, disconnected_for: Option<Duration>) -> Option<EndReason> {
        let b = self.broadcast;
        if b.room.shared.is_closed() {
            return Some(EndReason::RoomClosed);
        }
        if !b.is_live() && b.created.elapsed() > self.connect_timeout {
            return Some(EndReason::ConnectTimeout);
        }
        if disconnected_for.is_some_and(|d| d.as_millis() > self.media_timeout.as_millis()) {
            return Some(EndReason::Disconnected);
        }
        let quiet = b
            .since_start_ms()
            .saturating_sub(b.last_rtp.load(Ordering::Acquire));
        if b.is_live() && u128::from(quiet) > self.media_timeout.as_millis() {
            return Some(EndReason::NoMedia);
        }
        None
    }
}
