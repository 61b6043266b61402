//! One viewer: a WHEP session playing a room's broadcast.
//!
//! Per track it has its own `TrackLocalStaticRTP` (its own SSRC and
//! payload type, its own NACK responder inside its connection), a writer
//! task draining its bounded queue, and for video a reader of the RTCP its
//! player sends back: PLI and FIR become paced keyframe requests to the
//! publisher. Forwarding starts when the viewer connects, with a keyframe
//! request so its picture starts at once.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::rtp_transceiver::RtpSender;

use super::forward::{write_loop, ViewerStream};
use super::keyframe::KeyframeReason;
use super::peer::{self, Peer};
use super::quota::{Holder, KeyedSlot, Slot};
use super::sdp::{self, MediaKind, Offer};
use super::session::{Link, Supervised};
use super::{Broadcast, EndReason, MediaError, MediaHub, SessionId};
use flashcast_wire::ids::RoomId;

/// The limits a viewer counts against, given back when it is dropped.
pub struct ViewerSlots {
    pub holder: KeyedSlot<Holder>,
    pub node: Slot,
    pub room: Slot,
}

/// One of the viewer's tracks.
struct Output {
    kind: MediaKind,
    track: Arc<TrackLocalStaticRTP>,
    stream: ViewerStream,
}

pub struct Viewer {
    pub id: SessionId,
    broadcast: Arc<Broadcast>,
    pub(crate) link: Link,
    outputs: Vec<Output>,
    created: Instant,
    forwarding: AtomicBool,
    slots: ViewerSlots,
}

/// Negotiates a viewer's offer against the broadcast; not registered yet.
pub(crate) async fn start(
    hub: &Arc<MediaHub>,
    id: SessionId,
    broadcast: Arc<Broadcast>,
    offer_kinds: Offer,
    offer: &str,
    slots: ViewerSlots,
) -> Result<(Arc<Viewer>, String), MediaError> {
    let wanted: Vec<_> = broadcast
        .feeds()
        .iter()
        .filter(|f| offer_kinds.kinds.contains(&f.kind))
        .map(|f| (f.kind, f.codec.clone()))
        .collect();
    if wanted.is_empty() {
        return Err(MediaError::BadOffer(format!(
            "the offer receives none of what is broadcast ({})",
            describe(&broadcast)
        )));
    }
    let (peer, events) =
        peer::build(&hub.plan, hub.runtime(), peer::viewer_engine(&wanted)?).await?;
    match negotiate(hub, &broadcast, &peer, &wanted, offer).await {
        Ok((outputs, answer)) => {
            let viewer = Arc::new(Viewer {
                id,
                broadcast,
                link: Link::new(peer, events),
                outputs,
                created: Instant::now(),
                forwarding: AtomicBool::new(false),
                slots,
            });
            Ok((viewer, hub.plan.apply_nat(&answer)))
        }
        Err(e) => {
            peer.close().await;
            Err(e)
        }
    }
}

/// "video H264, audio opus": what a viewer must be able to play.
fn describe(broadcast: &Broadcast) -> String {
    broadcast
        .feeds()
        .iter()
        .map(|f| format!("{} {}", f.kind, f.codec.name))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn negotiate(
    hub: &MediaHub,
    broadcast: &Broadcast,
    peer: &Peer,
    wanted: &[(MediaKind, sdp::SdpCodec)],
    offer: &str,
) -> Result<(Vec<Output>, String), MediaError> {
    // Tracks first: the offer's recvonly sections take them.
    struct Added {
        kind: MediaKind,
        ssrc: u32,
        track: Arc<TrackLocalStaticRTP>,
        sender: Arc<dyn RtpSender>,
    }
    let mut added: Vec<Added> = Vec::new();
    for (kind, codec) in wanted {
        let ssrc: u32 = rand::random::<u32>().max(1);
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("flashcast-{}", broadcast.room_id()),
            format!("{kind}-{ssrc:08x}"),
            format!("{} {kind}", broadcast.room_id()),
            peer::codec_kind(*kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                active: true,
                codec: peer::rtp_codec(*kind, codec),
                ..Default::default()
            }],
        )));
        let sender = peer
            .pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| MediaError::Internal(format!("add track: {e}")))?;
        added.push(Added {
            kind: *kind,
            ssrc,
            track,
            sender,
        });
    }
    let answer = peer
        .answer(offer, hub.ms(hub.settings.media_ice_gather_timeout_ms))
        .await?;
    let accepted = sdp::answer_codecs(&answer)
        .map_err(|e| MediaError::Internal(format!("unreadable answer: {e}")))?;
    let mut outputs = Vec::new();
    for Added {
        kind,
        ssrc,
        track,
        sender,
    } in added
    {
        let negotiated = sender
            .get_parameters()
            .await
            .ok()
            .and_then(|p| p.rtp_parameters.codecs.first().map(|c| c.payload_type));
        let payload_type = match negotiated {
            Some(pt) if accepted.iter().any(|(k, _)| *k == kind) => pt,
            _ => {
                return Err(MediaError::BadOffer(format!(
                    "this client cannot play the broadcast's {kind} (the broadcast is {})",
                    describe(broadcast)
                )))
            }
        };
        outputs.push(Output {
            kind,
            track,
            stream: ViewerStream { ssrc, payload_type },
        });
    }
    Ok((outputs, answer))
}

impl Viewer {
    pub fn room_id(&self) -> &RoomId {
        self.broadcast.room_id()
    }

    /// Watches the viewer until it ends, then ends it.
    pub(crate) async fn supervise(self: Arc<Self>, hub: Arc<MediaHub>) {
        // Every track's RTCP is read, audio's too: what is not read fills
        // the connection's bounded queue for it (and is logged as lost).
        for output in &self.outputs {
            tokio::spawn(
                self.clone()
                    .read_rtcp(hub.clone(), output.kind, output.track.clone()),
            );
        }
        let supervisor = Supervisor {
            connect_timeout: hub.ms(hub.settings.media_connect_timeout_ms),
            viewer: &self,
            hub: &hub,
        };
        if let Some(reason) = self.link.supervise(&supervisor).await {
            self.end(&hub, reason).await;
        }
    }

    /// A ban applies to the video a viewer is already watching, found at
    /// the next check (`session::CHECK_EVERY`); a guest has no user id to ban.
    fn banned(&self) -> bool {
        match self.slots.holder.key() {
            Holder::User { user, .. } => self.broadcast.room().shared.is_banned(user),
            Holder::Guest(_) => false,
        }
    }

    /// Subscribes each track to its feed and asks for a keyframe, so the
    /// picture starts now rather than at the encoder's next keyframe.
    fn start_forwarding(&self, hub: &MediaHub) {
        for output in &self.outputs {
            let Some(feed) = self.broadcast.feed(output.kind) else {
                continue;
            };
            let queue = feed.fanout.subscribe(self.id);
            let (packets, bytes) = (feed.packets.clone(), feed.bytes.clone());
            tokio::spawn(write_loop(
                queue,
                output.track.clone() as Arc<dyn TrackLocal>,
                output.stream,
                move |n| {
                    packets.inc();
                    bytes.inc_by(n as u64);
                },
            ));
        }
        self.broadcast.request_keyframe(hub, KeyframeReason::Join);
    }

    /// Reads the player's RTCP for one track; for video, PLI and FIR become
    /// keyframe requests. (Receiver reports and NACKs are handled inside
    /// the connection: NACKs by its responder.)
    async fn read_rtcp(
        self: Arc<Self>,
        hub: Arc<MediaHub>,
        kind: MediaKind,
        track: Arc<TrackLocalStaticRTP>,
    ) {
        let on = |event| {
            if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                if kind != MediaKind::Video {
                    return ControlFlow::Continue(());
                }
                for p in &packets {
                    let any = p.as_any();
                    if any.is::<PictureLossIndication>() {
                        self.broadcast.request_keyframe(&hub, KeyframeReason::Pli);
                    } else if any.is::<FullIntraRequest>() {
                        self.broadcast.request_keyframe(&hub, KeyframeReason::Fir);
                    }
                }
            }
            ControlFlow::Continue(())
        };
        self.link.ending.each(|| track.poll(), on).await;
    }

    /// Ends the viewer (idempotent): it leaves the fan-outs (its writers
    /// stop) and its connection closes.
    pub(crate) async fn end(&self, hub: &MediaHub, reason: EndReason) {
        if !self.link.ending.begin() {
            return;
        }
        for output in &self.outputs {
            if let Some(feed) = self.broadcast.feed(output.kind) {
                feed.fanout.unsubscribe(&self.id);
            }
        }
        self.broadcast.remove_viewer(&self.id);
        hub.forget_viewer(self);
        self.link.close(hub, "viewer", reason).await;
        tracing::debug!(room = %self.room_id(), session = %self.id, reason = reason.as_str(), "viewer ended");
    }
}

/// The viewer's side of [`Link::supervise`].
struct Supervisor<'a> {
    viewer: &'a Arc<Viewer>,
    hub: &'a Arc<MediaHub>,
    /// Longest wait for the first connection, and for a reconnection.
    connect_timeout: Duration,
}

impl Supervised for Supervisor<'_> {
    fn connected(&self) {
        if !self.viewer.forwarding.swap(true, Ordering::AcqRel) {
            self.viewer.start_forwarding(self.hub);
        }
    }

    /// A viewer's connection receives no tracks.
    fn track(&self, _track: Arc<dyn TrackRemote>) {}

    fn check(&self, disconnected_for: Option<Duration>) -> Option<EndReason> {
        let v = self.viewer;
        if v.banned() {
            return Some(EndReason::Banned);
        }
        if !v.forwarding.load(Ordering::Acquire) && v.created.elapsed() > self.connect_timeout {
            return Some(EndReason::ConnectTimeout);
        }
        if disconnected_for.is_some_and(|d| d > self.connect_timeout) {
            return Some(EndReason::Disconnected);
        }
        None
    }
}
