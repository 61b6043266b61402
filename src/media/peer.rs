//! One WebRTC peer connection of this node (a publisher's or a viewer's):
//! built on this node's ICE plan, its events turned into channels, and the
//! non-trickle offer/answer exchange that WHIP and WHEP use.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use super::ice::{IcePlan, PortLease};
use super::sdp::{MediaKind, SdpCodec};
use super::MediaError;

/// Remote tracks waiting for the session to pick them up; a publisher
/// sends at most one audio and one video track.
const TRACK_QUEUE: usize = 4;

/// Times a busy port of the configured range is skipped for the next one.
const BIND_ATTEMPTS: usize = 8;

/// A built connection.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    /// The port this connection's sockets are bound to, held until the
    /// connection is dropped.
    _port: PortLease,
}

/// What a connection reports, for its session's supervisor.
pub struct PeerEvents {
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// The publisher's tracks as they open (nothing comes for a viewer).
    pub tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
}

/// Forwards the connection's events into channels. The driver awaits these
/// methods on its own loop, so they only ever `send_replace`/`try_send`.
pub struct Events {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    tracks: mpsc::Sender<Arc<dyn TrackRemote>>,
}

impl Events {
    /// The handler, whether ICE gathering is complete, and the rest of the
    /// connection's events; at most `track_queue` remote tracks wait.
    pub fn channels(track_queue: usize) -> (Events, watch::Receiver<bool>, PeerEvents) {
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, gathered) = watch::channel(false);
        let (tracks_tx, tracks) = mpsc::channel(track_queue);
        let events = Events {
            state: state_tx,
            gathered: gathered_tx,
            tracks: tracks_tx,
        };
        (events, gathered, PeerEvents { state, tracks })
    }
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
        if self.tracks.try_send(track).is_err() {
            tracing::warn!("more remote tracks than a session takes; ignored");
        }
    }
}

/// The codecs a publisher may send. Browsers offer VP8 first and H.264
/// too; OBS Studio offers H.264 and Opus. No RTX and no FEC: a lost packet
/// is re-sent on its own stream after a NACK, which is what the viewers'
/// connections can forward as is.
pub fn publisher_engine() -> Result<MediaEngine, MediaError> {
    let mut engine = MediaEngine::default();
    let opus = RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    };
    register(&mut engine, MediaKind::Audio, 111, opus)?;
    let video = |mime: &str, fmtp: &str| RTCRtpCodec {
        mime_type: mime.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: video_feedback(),
    };
    register(&mut engine, MediaKind::Video, 96, video("video/VP8", ""))?;
    // H.264 profiles are matched on profile_idc and constraint flags (the
    // level may differ): constrained baseline, baseline, main, high.
    for (pt, profile) in [
        (102, "42001f"),
        (125, "42e01f"),
        (108, "4d001f"),
        (123, "64001f"),
    ] {
        let fmtp =
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}");
        register(
            &mut engine,
            MediaKind::Video,
            pt,
            video("video/H264", &fmtp),
        )?;
    }
    Ok(engine)
}

/// A viewer's codecs: exactly what the broadcast carries, so the answer
/// can only settle on what is forwarded.
pub fn viewer_engine(codecs: &[(MediaKind, SdpCodec)]) -> Result<MediaEngine, MediaError> {
    let mut engine = MediaEngine::default();
    for (kind, codec) in codecs {
        register(
            &mut engine,
            *kind,
            codec.payload_type,
            rtp_codec(*kind, codec),
        )?;
    }
    Ok(engine)
}

/// The stack's description of a codec read from an SDP answer.
pub fn rtp_codec(kind: MediaKind, codec: &SdpCodec) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: codec.mime_type(kind),
        clock_rate: codec.clock_rate,
        channels: codec.channels,
        sdp_fmtp_line: codec.fmtp.clone(),
        rtcp_feedback: match kind {
            MediaKind::Video => video_feedback(),
            MediaKind::Audio => vec![],
        },
    }
}

fn video_feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .iter()
        .map(|(typ, parameter)| RTCPFeedback {
            typ: typ.to_string(),
            parameter: parameter.to_string(),
        })
        .collect()
}

pub fn codec_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

fn register(
    engine: &mut MediaEngine,
    kind: MediaKind,
    payload_type: u8,
    rtp_codec: RTCRtpCodec,
) -> Result<(), MediaError> {
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec,
                payload_type,
            },
            codec_kind(kind),
        )
        .map_err(|e| MediaError::Internal(format!("codec registration: {e}")))
}

/// Builds a connection bound to this node's media addresses.
pub async fn build(
    plan: &IcePlan,
    runtime: &Arc<dyn webrtc::runtime::Runtime>,
    mut engine: MediaEngine,
) -> Result<(Peer, PeerEvents), MediaError> {
    let ice_servers: Vec<RTCIceServer> = plan
        .own_servers()
        .into_iter()
        .map(|s| RTCIceServer {
            urls: vec![s.url.clone()],
            ..Default::default()
        })
        .collect();
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| MediaError::Internal(format!("interceptors: {e}")))?;
    let (events, gathered, peer_events) = Events::channels(TRACK_QUEUE);
    let handler: Arc<dyn PeerConnectionEventHandler> = Arc::new(events);

    let mut busy = Vec::new();
    let mut engine = Some(engine);
    let mut registry = Some(registry);
    loop {
        let lease = plan.ports.acquire(&busy).ok_or(MediaError::NoPort)?;
        let addrs: Vec<SocketAddr> = plan
            .bind_ips
            .iter()
            .map(|ip: &IpAddr| SocketAddr::new(*ip, lease.port()))
            .collect();
        // A port of the range taken by another program: try the next one.
        if lease.port() != 0 && addrs.iter().any(|a| std::net::UdpSocket::bind(a).is_err()) {
            busy.push(lease.port());
            if busy.len() >= BIND_ATTEMPTS {
                return Err(MediaError::NoPort);
            }
            continue;
        }
        let settings = SettingEngineBuilder::new()
            // Servers do not announce mDNS names, and do not query them:
            // a browser's `.local` candidate is learned as peer-reflexive
            // when its checks arrive.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let built = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers.clone())
                    .build(),
            )
            .with_media_engine(engine.take().expect("one build"))
            .with_interceptor_registry(registry.take().expect("one build"))
            .with_setting_engine(settings)
            .with_handler(handler.clone())
            .with_runtime(runtime.clone())
            .with_udp_addrs(addrs)
            .build()
            .await;
        return match built {
            Ok(pc) => Ok((
                Peer {
                    pc: Arc::new(pc),
                    gathered,
                    _port: lease,
                },
                peer_events,
            )),
            Err(e) => Err(MediaError::Internal(format!("peer connection: {e}"))),
        };
    }
}

impl Peer {
    /// Applies the client's offer, answers it, and waits (at most
    /// `gather_timeout`) for this side's candidates, so the answer carries
    /// them all. Call after adding any local tracks.
    pub async fn answer(
        &self,
        offer: &str,
        gather_timeout: Duration,
    ) -> Result<String, MediaError> {
        let offer = RTCSessionDescription::offer(offer.to_string())
            .map_err(|e| MediaError::BadOffer(format!("the offer is not valid SDP: {e}")))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| MediaError::BadOffer(format!("the offer cannot be applied: {e}")))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|e| MediaError::BadOffer(format!("no answer to this offer: {e}")))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|e| MediaError::Internal(format!("local description: {e}")))?;
        let mut gathered = self.gathered.clone();
        let complete = tokio::time::timeout(gather_timeout, gathered.wait_for(|done| *done))
            .await
            .is_ok();
        if !complete {
            tracing::warn!(
                timeout_ms = gather_timeout.as_millis() as u64,
                "ICE gathering did not complete in time; answering with the candidates so far"
            );
        }
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| MediaError::Internal("no local description".into()))
    }

    /// Closes the connection (idempotent); bounded so a stuck driver cannot
    /// hold up the caller.
    pub async fn close(&self) {
        match tokio::time::timeout(Duration::from_secs(5), self.pc.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing a peer connection"),
            Err(_) => tracing::warn!("closing a peer connection took over 5 s"),
        }
    }
}
