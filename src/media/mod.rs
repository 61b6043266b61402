//! Live video: a WebRTC SFU. The host publishes one broadcast per room over
//! WHIP (RFC 9725; OBS Studio or a browser); viewers play it over WHEP.
//! RTP is forwarded as it arrives, never decoded (docs/video.md).
//!
//! - `hub` (this file): the sessions of this node, their limits, metrics,
//!   and ending them; the HTTP side (`http::media`) calls `publish`, `play`
//!   and `end`;
//! - `publisher`: a broadcast: the host's connection, its tracks, drop
//!   detection, the room's `stream` state;
//! - `viewer`: one viewer's connection, its writers and its RTCP;
//! - `forward`: the fan-out with bounded per-viewer queues;
//! - `keyframe`: paced keyframe requests (PLI) to the publisher;
//! - `peer`: building a connection and the non-trickle offer/answer;
//! - `ice`: STUN/TURN, bind addresses, port range, 1:1 NAT;
//! - `sdp`: the little SDP reading the SFU needs;
//! - `quota`: counted limits; `settings`: the `media_*` options.

pub mod forward;
pub mod ice;
pub mod keyframe;
pub mod peer;
pub mod publisher;
pub mod quota;
pub mod sdp;
pub mod session;
pub mod settings;
pub mod viewer;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::room::RoomHandle;
use flashcast_wire::ids::RoomId;

pub use publisher::Broadcast;
pub use quota::Holder;
pub use settings::MediaSettings;
pub use viewer::Viewer;

/// Identifies a WHIP or WHEP session: 128 random bits, shown as 32 hex
/// digits, the last segment of the session's URL. Knowing it is what
/// allows ending the session, so it is never guessable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(());
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ())?;
        Ok(Self(bytes))
    }
}

/// The two kinds of session, by the protocol that opened them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// WHIP: the host's broadcast.
    Publisher,
    /// WHEP: one viewer.
    Viewer,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Publisher => "publisher",
            SessionKind::Viewer => "viewer",
        }
    }
}

/// Why a session ended (the `reason` label of
/// `flashcast_media_sessions_ended_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its client sent DELETE.
    Deleted,
    /// The connection failed or was closed by the peer.
    Dropped,
    /// The connection stayed disconnected too long.
    Disconnected,
    /// A publisher sent no RTP for `media_publisher_timeout_ms`.
    NoMedia,
    /// The peer never connected within `media_connect_timeout_ms`.
    ConnectTimeout,
    /// A viewer's broadcast ended.
    BroadcastEnded,
    /// The show ended (the room was closed).
    RoomClosed,
    /// The server is shutting down.
    Shutdown,
    /// The viewer was banned from the room.
    Banned,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Dropped => "dropped",
            EndReason::Disconnected => "disconnected",
            EndReason::NoMedia => "no_media",
            EndReason::ConnectTimeout => "connect_timeout",
            EndReason::BroadcastEnded => "broadcast_ended",
            EndReason::RoomClosed => "room_closed",
            EndReason::Shutdown => "shutting_down",
            EndReason::Banned => "banned",
        }
    }
}

/// Why a WHIP or WHEP request was refused. `http::media` maps each to its
/// HTTP status and error code (docs/video.md lists them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("this room already has a live broadcast; end it (DELETE its session URL) or wait until it drops (within media_publisher_timeout_ms of its last packet), then publish again")]
    BroadcastLive,
    #[error("nothing is being broadcast in this room yet; play when the room's `stream` event says live")]
    StreamOffline,
    #[error("this room has media_max_viewers_per_room ({0}) video viewers")]
    RoomFull(usize),
    #[error("this server has media_max_viewers_per_node ({0}) video viewers")]
    NodeFull(usize),
    #[error(
        "you already hold {0} video sessions (the limit); end one (DELETE its session URL) first"
    )]
    TooManySessions(usize),
    #[error("no free UDP port for media on this server; try again later")]
    NoPort,
    #[error("{0}")]
    BadOffer(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl MediaError {
    /// The `reason` label of `flashcast_media_sessions_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            MediaError::BroadcastLive => "broadcast_live",
            MediaError::StreamOffline => "stream_offline",
            MediaError::RoomFull(_) => "room_full",
            MediaError::NodeFull(_) => "node_full",
            MediaError::TooManySessions(_) => "too_many_sessions",
            MediaError::NoPort => "no_port",
            MediaError::BadOffer(_) => "bad_offer",
            MediaError::ShuttingDown => "shutting_down",
            MediaError::Internal(_) => "internal",
        }
    }
}

/// A session that was set up: its id and the SDP answer.
#[derive(Debug)]
pub struct Answer {
    pub session: SessionId,
    pub sdp: String,
}

/// The room's publisher slot: taken while a WHIP request negotiates, so
/// two hosts publishing at once cannot both win.
enum Publishing {
    Starting,
    On(Arc<Broadcast>),
}

/// A room's publisher slot while its WHIP request negotiates.
struct StartingSlot<'a> {
    hub: &'a MediaHub,
    room: RoomId,
    filled: bool,
}

impl<'a> StartingSlot<'a> {
    fn take(hub: &'a MediaHub, room: &RoomId) -> Result<Self, MediaError> {
        let mut rooms = hub.rooms.lock().expect("media rooms lock");
        if rooms.contains_key(room) {
            return Err(MediaError::BroadcastLive);
        }
        rooms.insert(room.clone(), Publishing::Starting);
        Ok(Self {
            hub,
            room: room.clone(),
            filled: false,
        })
    }

    /// The negotiation succeeded: the slot is the broadcast's now.
    fn fill(mut self, broadcast: Arc<Broadcast>) {
        self.hub
            .rooms
            .lock()
            .expect("media rooms lock")
            .insert(self.room.clone(), Publishing::On(broadcast));
        self.filled = true;
    }
}

impl Drop for StartingSlot<'_> {
    fn drop(&mut self) {
        if !self.filled {
            let mut rooms = self.hub.rooms.lock().expect("media rooms lock");
            if matches!(rooms.get(&self.room), Some(Publishing::Starting)) {
                rooms.remove(&self.room);
            }
        }
    }
}

enum Session {
    Publisher(Arc<Broadcast>),
    Viewer(Arc<Viewer>),
}

/// The video sessions of this node.
pub struct MediaHub {
    pub settings: MediaSettings,
    pub plan: ice::IcePlan,
    pub metrics: Arc<Metrics>,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
    rooms: Mutex<HashMap<RoomId, Publishing>>,
    sessions: Mutex<HashMap<SessionId, Session>>,
    node_viewers: Arc<quota::Counter>,
    holders: Arc<quota::Keyed<Holder>>,
    guests: Arc<quota::Keyed<Holder>>,
    closing: AtomicBool,
}

impl MediaHub {
    /// `listen`: the HTTP address, which media follows unless
    /// `media_ice_ips` says otherwise.
    pub fn new(settings: MediaSettings, listen: SocketAddr, metrics: Arc<Metrics>) -> Arc<Self> {
        let plan = ice::IcePlan::new(&settings, listen);
        Arc::new(Self {
            node_viewers: quota::Counter::new(settings.media_max_viewers_per_node),
            holders: quota::Keyed::new(settings.media_max_sessions_per_token),
            guests: quota::Keyed::new(settings.media_max_guest_sessions_per_ip),
            plan,
            settings,
            metrics,
            runtime: Arc::new(webrtc::runtime::TokioRuntime),
            rooms: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.media_enabled
    }

    /// The `Link` headers (`rel="ice-server"`) every answer carries.
    pub fn link_headers(&self) -> Vec<String> {
        self.plan.link_headers()
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn webrtc::runtime::Runtime> {
        &self.runtime
    }

    pub(crate) fn ms(&self, ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// An attempt to start a session, its refusal counted by reason.
    async fn refusing(
        &self,
        attempt: impl std::future::Future<Output = Result<Answer, MediaError>>,
    ) -> Result<Answer, MediaError> {
        attempt.await.inspect_err(|e| {
            self.metrics
                .media_refused
                .with_label_values(&[e.reason()])
                .inc();
        })
    }

    /// The checks before any work: the node is not shutting down, and the
    /// offer (`read` by WHIP's or WHEP's rule) asks for something to do.
    fn admit(
        &self,
        offer: &str,
        read: fn(&str) -> Result<sdp::Offer, sdp::SdpError>,
    ) -> Result<sdp::Offer, MediaError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(MediaError::ShuttingDown);
        }
        read(offer).map_err(|e| MediaError::BadOffer(e.0))
    }

    fn holder_slot(&self, holder: &Holder) -> Result<quota::KeyedSlot<Holder>, MediaError> {
        let quota = match holder {
            Holder::User { .. } => &self.holders,
            Holder::Guest(_) => &self.guests,
        };
        quota
            .take(holder)
            .ok_or(MediaError::TooManySessions(quota.max()))
    }

    /// WHIP: starts the room's broadcast from the host's offer.
    pub async fn publish(
        self: &Arc<Self>,
        room: RoomHandle,
        holder: Holder,
        offer: &str,
    ) -> Result<Answer, MediaError> {
        self.refusing(async {
            let kinds = self.admit(offer, sdp::publish_offer)?;
            let holder_slot = self.holder_slot(&holder)?;
            let id = SessionId::random();
            // The room's one publisher slot, held until this attempt succeeds
            // (it becomes the broadcast) or fails, or the request is dropped
            // half-way (the guard gives it back).
            let starting = StartingSlot::take(self, room.id())?;
            let (broadcast, sdp) =
                publisher::start(self, id, room.clone(), kinds, offer, holder_slot).await?;
            if self.closing.load(Ordering::Acquire) {
                drop(starting);
                broadcast.link.close_unregistered().await;
                return Err(MediaError::ShuttingDown);
            }
            starting.fill(broadcast.clone());
            self.sessions
                .lock()
                .expect("media sessions lock")
                .insert(id, Session::Publisher(broadcast.clone()));
            self.metrics.media_publishers.inc();
            tokio::spawn(broadcast.supervise(self.clone()));
            tracing::info!(room = %room.id(), session = %id, "broadcast starting");
            Ok(Answer { session: id, sdp })
        })
        .await
    }

    /// WHEP: adds a viewer of the room's live broadcast.
    pub async fn play(
        self: &Arc<Self>,
        room: RoomHandle,
        holder: Holder,
        offer: &str,
    ) -> Result<Answer, MediaError> {
        self.refusing(async {
            let kinds = self.admit(offer, sdp::play_offer)?;
            let broadcast = self
                .live_broadcast(room.id())
                .ok_or(MediaError::StreamOffline)?;
            let holder_slot = self.holder_slot(&holder)?;
            let node_slot = self
                .node_viewers
                .take()
                .ok_or(MediaError::NodeFull(self.node_viewers.max()))?;
            let room_slot = broadcast.viewer_slot()?;
            let slots = viewer::ViewerSlots {
                holder: holder_slot,
                node: node_slot,
                room: room_slot,
            };
            let id = SessionId::random();
            let (viewer, sdp) =
                viewer::start(self, id, broadcast.clone(), kinds, offer, slots).await?;
            if self.closing.load(Ordering::Acquire) {
                viewer.link.close_unregistered().await;
                return Err(MediaError::ShuttingDown);
            }
            self.sessions
                .lock()
                .expect("media sessions lock")
                .insert(id, Session::Viewer(viewer.clone()));
            self.metrics.media_viewers.inc();
            // The broadcast may have ended while this viewer negotiated.
            if !broadcast.add_viewer(viewer.clone()) {
                viewer.end(self, EndReason::BroadcastEnded).await;
                return Err(MediaError::StreamOffline);
            }
            tokio::spawn(viewer.clone().supervise(self.clone()));
            tracing::debug!(room = %room.id(), session = %id, "viewer starting");
            Ok(Answer { session: id, sdp })
        })
        .await
    }

    /// The room's broadcast if it is live (its publisher connected).
    fn live_broadcast(&self, room: &RoomId) -> Option<Arc<Broadcast>> {
        match self.rooms.lock().expect("media rooms lock").get(room) {
            Some(Publishing::On(b)) if b.is_live() && !b.is_ended() => Some(b.clone()),
            _ => None,
        }
    }

    /// DELETE: ends a session of `kind` in `room`; false if there is none.
    /// The ending runs on its own task: a client that hangs up half-way
    /// cannot leave a session half-ended.
    pub async fn end(self: &Arc<Self>, kind: SessionKind, room: &RoomId, id: SessionId) -> bool {
        let found = {
            let sessions = self.sessions.lock().expect("media sessions lock");
            match (sessions.get(&id), kind) {
                (Some(Session::Publisher(b)), SessionKind::Publisher) if b.room_id() == room => {
                    Some(Session::Publisher(b.clone()))
                }
                (Some(Session::Viewer(v)), SessionKind::Viewer) if v.room_id() == room => {
                    Some(Session::Viewer(v.clone()))
                }
                _ => None,
            }
        };
        let Some(found) = found else {
            return false;
        };
        let hub = self.clone();
        let ending = tokio::spawn(async move {
            match found {
                Session::Publisher(b) => b.end(&hub, EndReason::Deleted).await,
                Session::Viewer(v) => v.end(&hub, EndReason::Deleted).await,
            }
        });
        if let Err(e) = ending.await {
            tracing::error!(error = %e, "ending a media session");
        }
        true
    }

    /// Forgets an ended broadcast (called once, by `Broadcast::end`).
    pub(crate) fn forget_broadcast(&self, b: &Broadcast) {
        {
            let mut rooms = self.rooms.lock().expect("media rooms lock");
            if matches!(rooms.get(b.room_id()), Some(Publishing::On(x)) if x.id == b.id) {
                rooms.remove(b.room_id());
            }
        }
        self.sessions
            .lock()
            .expect("media sessions lock")
            .remove(&b.id);
        self.metrics.media_publishers.dec();
    }

    /// Forgets an ended viewer (called once, by `Viewer::end`).
    pub(crate) fn forget_viewer(&self, v: &Viewer) {
        self.sessions
            .lock()
            .expect("media sessions lock")
            .remove(&v.id);
        self.metrics.media_viewers.dec();
    }

    /// Ends every session (server shutdown); later requests get 503.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let broadcasts: Vec<Arc<Broadcast>> = self
            .rooms
            .lock()
            .expect("media rooms lock")
            .values()
            .filter_map(|p| match p {
                Publishing::On(b) => Some(b.clone()),
                Publishing::Starting => None,
            })
            .collect();
        for b in broadcasts {
            b.end(self, EndReason::Shutdown).await;
        }
        // Viewers end with their broadcast; any left over end here.
        let viewers: Vec<Arc<Viewer>> = self
            .sessions
            .lock()
            .expect("media sessions lock")
            .values()
            .filter_map(|s| match s {
                Session::Viewer(v) => Some(v.clone()),
                Session::Publisher(_) => None,
            })
            .collect();
        for v in viewers {
            v.end(self, EndReason::Shutdown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_has_one_publisher_slot_and_an_abandoned_publish_frees_it() {
        let settings = crate::Settings::load_from(["flashcast"]).unwrap().media;
        let hub = MediaHub::new(
            settings,
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
        );
        let room = RoomId::new("r").unwrap();
        let other = RoomId::new("s").unwrap();
        let slot = StartingSlot::take(&hub, &room).unwrap();
        assert!(matches!(
            StartingSlot::take(&hub, &room),
            Err(MediaError::BroadcastLive)
        ));
        let _elsewhere = StartingSlot::take(&hub, &other).expect("rooms are independent");
        // The request was dropped half-way (client gone, offer refused).
        drop(slot);
        assert!(StartingSlot::take(&hub, &room).is_ok());
    }

    #[test]
    fn session_ids_are_32_lowercase_hex_digits() {
        let id = SessionId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<SessionId>(), Ok(id));
        assert_ne!(SessionId::random(), id);
        for bad in [
            "",
            "abc",
            &text.to_uppercase(),
            &format!("{text}0"),
            &"g".repeat(32),
        ] {
            if bad != text {
                assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
            }
        }
    }
}
