//! Rooms. One actor task per room owns all of the room's state (sequence,
//! history, polls, Q&A, moderation, subscribers), so nothing in a room
//! needs a lock; connections talk to it through a bounded queue.
//!
//! - `registry`: the sharded map of rooms on this node.
//! - `actor`: the room task: applies actions, assigns sequence numbers, and
//!   whenever the previous fanout is done, encodes what is pending once per
//!   encoding and hands the frames to the fanout (`transport::Fanout`),
//!   which owns the sockets.
//! - `history`: the bounded ring used for resume and snapshots.
//!
//! A chat message arrives in `http::ws`, is checked there (role, rate, size),
//! then becomes a `Command::Act` here.

pub mod actor;
pub mod history;
pub mod market;
pub mod registry;
pub mod stream;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::engage::moderation::BanList;
use crate::engage::Rejection;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{Store, StoreResult};
use flashcast_wire::client::RoomMsg;
use flashcast_wire::ids::{RoomId, Seq, UserId};
use flashcast_wire::{CloseCode, Encoding, ErrorCode, ReactionKind, UserRef};

pub use crate::transport::ConnId;
pub use registry::{Registry, RegistryError};

/// What every room on a node shares.
pub struct RoomContext {
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Each room announces its shop's changes (sales, stock, coupons, pin).
    pub commerce: Arc<crate::commerce::Commerce>,
    /// Where rooms hand their frames (the node's fanout workers).
    pub fanout: Arc<dyn crate::transport::Fanout>,
    /// What "now" is for mutes, slow mode, polls and event timestamps.
    pub clock: crate::clock::Clock,
    /// Where batches become durable before they are published (cluster
    /// mode); `None` on one node.
    pub journal: Option<Arc<dyn crate::cluster::journal::Journal>>,
}

/// The fixed facts of a room.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub id: RoomId,
    pub title: String,
    pub allow_guests: bool,
    pub created_at: u64,
}

impl From<&crate::store::RoomRecord> for RoomInfo {
    fn from(record: &crate::store::RoomRecord) -> Self {
        Self {
            id: record.id.clone(),
            title: record.title.clone(),
            allow_guests: record.allow_guests,
            created_at: record.created_at,
        }
    }
}

/// State the room shares with connections without going through its queue:
/// reactions are counted here lock-free and collected by the actor per batch.
pub struct RoomShared {
    pub info: RoomInfo,
    reactions: [AtomicU32; ReactionKind::ALL.len()],
    viewers: AtomicU32,
    closed: AtomicBool,
    /// Changed by the room's task (`Moderation`), read by video.
    bans: Arc<BanList>,
    /// Set by the media module (WHIP); announced by the actor each tick.
    pub stream: stream::StreamSignal,
}

impl RoomShared {
    fn new(info: RoomInfo, bans: Vec<UserId>) -> Self {
        Self {
            info,
            reactions: Default::default(),
            viewers: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            bans: Arc::new(BanList::new(bans)),
            stream: stream::StreamSignal::default(),
        }
    }

    pub fn viewers(&self) -> u32 {
        self.viewers.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn is_banned(&self, user: &UserId) -> bool {
        self.bans.contains(user)
    }

    /// Counts one reaction; it goes out aggregated with the next tick.
    fn add_reaction(&self, kind: ReactionKind) {
        self.reactions[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes this tick's reaction counts, leaving zeros.
    fn take_reactions(&self) -> [u32; ReactionKind::ALL.len()] {
        std::array::from_fn(|i| self.reactions[i].swap(0, Ordering::Relaxed))
    }
}

/// A connection's request to join. The room sends the `joined` answer and
/// then every batch to `conn` through the fanout, in that order.
pub struct JoinRequest {
    pub conn: ConnId,
    pub user: UserRef,
    pub encoding: Encoding,
    pub last_seq: Option<Seq>,
    pub epoch: Option<u64>,
}

pub(crate) enum Command {
    Join(JoinRequest, oneshot::Sender<Result<(), CloseCode>>),
    Act {
        conn: ConnId,
        user: UserRef,
        reference: Option<u32>,
        msg: RoomMsg,
    },
    Leave(ConnId),
    /// Ends the show (admin close or host `end_show` arriving by REST);
    /// answered once the close is durable (true) or if the show was
    /// already ending (false).
    End(actor::EndReply),
    /// The store's answer to a durable room change (see `actor::durable`).
    Persisted {
        asker: actor::Asker,
        change: actor::Durable,
        result: StoreResult<()>,
    },
    /// The journal's answer for the batch being journaled (see `journal`).
    Journaled(crate::cluster::ClusterResult<()>),
    /// Retry the journal append that failed (NATS unavailable).
    JournalRetry,
    /// The node is shutting down: tell everyone to reconnect elsewhere.
    Shutdown,
}

/// A cheap, cloneable handle on a room.
#[derive(Clone)]
pub struct RoomHandle {
    pub shared: Arc<RoomShared>,
    commands: mpsc::Sender<Command>,
}

impl RoomHandle {
    pub fn id(&self) -> &RoomId {
        &self.shared.info.id
    }

    /// Counts one reaction; it goes out aggregated with the next batch.
    pub fn react(&self, kind: ReactionKind) {
        self.shared.add_reaction(kind);
    }

    /// Joins; once this returns `Ok` the `joined` message is on its way.
    pub async fn join(&self, req: JoinRequest) -> Result<(), CloseCode> {
        if self.shared.is_closed() {
            return Err(CloseCode::RoomClosed);
        }
        let (tx, rx) = oneshot::channel();
        match self.commands.try_send(Command::Join(req, tx)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(CloseCode::RoomFull),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(CloseCode::RoomClosed),
        }
        // No answer: the room task stopped. It was either ended (closed) or
        // stopped by a shutdown, after which the viewer should reconnect.
        rx.await.unwrap_or_else(|_| {
            Err(if self.shared.is_closed() {
                CloseCode::RoomClosed
            } else {
                CloseCode::ServiceRestart
            })
        })
    }

    /// Hands an action to the room without waiting; a full queue is an error
    /// for the sender, never a stall.
    pub fn act(
        &self,
        conn: ConnId,
        user: UserRef,
        reference: Option<u32>,
        msg: RoomMsg,
    ) -> Result<(), Rejection> {
        self.commands
            .try_send(Command::Act {
                conn,
                user,
                reference,
                msg,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Rejection::new(ErrorCode::RoomBusy, "room is busy, try again")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Rejection::new(ErrorCode::RoomClosed, "the show has ended")
                }
            })
    }

    /// Best effort: if the queue is full, the actor still notices the closed
    /// connection on its next housekeeping pass.
    pub fn leave(&self, conn: ConnId) {
        let _ = self.commands.try_send(Command::Leave(conn));
    }

    async fn send(&self, cmd: Command) {
        let _ = self.commands.send(cmd).await;
    }
}
