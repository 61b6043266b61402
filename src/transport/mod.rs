//! The sockets' write side, in one place: WebSocket framing on the raw
//! socket (`socket`), each connection's bounded outbox (`outbox`), io_uring
//! sends (`uring`), write timeouts, and the persistent fanout workers that
//! own the connections in shards (`workers`).
//!
//! A room sees none of it: it hands finished frames to a [`Fanout`] and
//! names connections by [`ConnId`]. `workers::Transport` is the fanout over
//! this node's sockets; tests use an in-memory one, and cluster mode's edge
//! nodes will drive the same seam for a room owned elsewhere.

pub mod outbox;
pub mod socket;
pub mod uring;
pub mod workers;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use flashcast_wire::codec::WireFrame;
use flashcast_wire::{CloseCode, Encoding};

pub use outbox::{Outbox, Push, Wake};
pub use socket::WsSocket;
pub use workers::Transport;

/// Identifies one WebSocket connection on this node.
pub type ConnId = u64;

/// A set of subscribers that receive the same frames: one room.
pub type TopicId = u64;

/// A fresh topic id, unique on this node.
pub fn new_topic() -> TopicId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One batch, encoded once per encoding (indexed by `Encoding::index`);
/// `None` where no subscriber uses that encoding.
pub type Frames = [Option<WireFrame>; 2];

/// Where a room's frames go. Every call is ordered per connection: what
/// is sent, published or closed for a connection reaches it in call order,
/// whatever thread writes it. None of the calls waits for a socket.
pub trait Fanout: Send + Sync {
    /// `conn` receives the frames published to `topic` from now on, after
    /// what was sent to it before (the `joined` answer).
    fn subscribe(&self, topic: TopicId, conn: ConnId, encoding: Encoding);
    /// `conn` receives no more of `topic`'s frames.
    fn unsubscribe(&self, topic: TopicId, conn: ConnId);
    /// Writes `frames` to every subscriber of `topic`, each the frame of
    /// its encoding. A subscriber that cannot keep up is closed as a slow
    /// consumer (4008) by the transport. The returned handle finishes once
    /// every subscriber's write is done (sent, or queued behind its full
    /// socket): the room's pace (fanout-paced batching).
    fn publish(&self, topic: TopicId, frames: Frames) -> Published;
    /// One private frame to one connection, in order with `topic` frames.
    /// The handle finishes once the frame is in the connection's outbox
    /// (a join is answered only then, so `joined` is its first frame).
    fn send(&self, conn: ConnId, frame: WireFrame) -> Published;
    /// Closes `conn` with `code` once what was sent to it before is out.
    fn close(&self, conn: ConnId, code: CloseCode);
    /// False once the connection is gone.
    fn connected(&self, conn: ConnId) -> bool;
}

/// A publish in progress; see [`Fanout::publish`].
#[derive(Clone)]
pub struct Published(Arc<PublishState>);

struct PublishState {
    /// Shards still writing.
    left: AtomicUsize,
    done: Notify,
}

impl Published {
    /// A handle that is already finished.
    pub fn finished_now() -> Self {
        Self::new(0)
    }

    /// A publish that `parts` writers finish, each calling `part_done`.
    pub fn new(parts: usize) -> Self {
        Self(Arc::new(PublishState {
            left: AtomicUsize::new(parts),
            done: Notify::new(),
        }))
    }

    /// One writer finished its part.
    pub fn part_done(&self) {
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // One waiter (the room); the permit is kept if it is not
            // waiting yet.
            self.0.done.notify_one();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.0.left.load(Ordering::Acquire) == 0
    }

    /// Resolves once every part is done. Cancel-safe.
    pub async fn finished(&self) {
        while !self.is_finished() {
            self.0.done.notified().await;
        }
    }
}
