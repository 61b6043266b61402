//! The room journal: where a room's batches become durable before any
//! viewer sees them.
//!
//! On one node there is none: a batch is handed to the fanout as soon as
//! it is built (the events' durability is the history ring's, by design).
//! In cluster mode the owner appends each batch that carries events to the
//! room's JetStream subject (`log`) and publishes it only once JetStream
//! acknowledged it, so a crashed owner's sequence numbers can never have
//! been seen under the same epoch without being in the log. Until then the
//! room sends nothing else and admits no join (a join's snapshot ends at
//! the last published batch). The traits live here, not in `room`, so that
//! dependencies point one way: `room` -> `cluster`.
//!
//! [`JetStreamJournal`] appends to the room's subject, fenced by the
//! subject's last sequence this owner wrote or found there, de-duplicated
//! by `<epoch>:<first seq>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::log::RoomLog;
use super::ClusterResult;
use flashcast_wire::ids::RoomId;

/// Opens a journal per room.
pub trait Journal: Send + Sync {
    /// The journal of `room` in this run (`epoch`) of it.
    fn room(&self, room: &RoomId, epoch: u64) -> Box<dyn RoomJournal>;
}

/// One room's journal, owned by its actor: one append at a time, in order.
pub trait RoomJournal: Send {
    /// Appends the batch whose first event is `first_seq` (MessagePack of
    /// `ServerMsg::Batch`); resolves once it is durable. Calling it again
    /// with the same batch after an `Unavailable` is a retry: the batch is
    /// stored once. `Fenced`: another owner took the room; this one must
    /// stop.
    fn append(&mut self, first_seq: u64, batch: Bytes) -> BoxFuture<'static, ClusterResult<()>>;
}

/// Journals every room of this node to one [`RoomLog`].
pub struct JetStreamJournal {
    log: Arc<RoomLog>,
}

impl JetStreamJournal {
    pub fn new(log: Arc<RoomLog>) -> Self {
        Self { log }
    }
}

/// Not read from the log yet.
const UNKNOWN: u64 = u64::MAX;

struct RoomAppender {
    log: Arc<RoomLog>,
    room: RoomId,
    epoch: u64,
    /// The subject's last stream sequence: what the next append names.
    last: Arc<AtomicU64>,
}

impl Journal for JetStreamJournal {
    fn room(&self, room: &RoomId, epoch: u64) -> Box<dyn RoomJournal> {
        Box::new(RoomAppender {
            log: self.log.clone(),
            room: room.clone(),
            epoch,
            last: Arc::new(AtomicU64::new(UNKNOWN)),
        })
    }
}

impl RoomJournal for RoomAppender {
    fn append(&mut self, first_seq: u64, batch: Bytes) -> BoxFuture<'static, ClusterResult<()>> {
        let (log, room, epoch, last) = (
            self.log.clone(),
            self.room.clone(),
            self.epoch,
            self.last.clone(),
        );
        Box::pin(async move {
            let mut known = last.load(Ordering::Acquire);
            if known == UNKNOWN {
                // The room's first batch on this node continues the log as
                // it stands (the lease made this node the only writer).
                known = log.last(&room).await?.map_or(0, |e| e.sequence);
            }
            let sequence = log.append(&room, epoch, first_seq, known, batch).await?;
            last.store(sequence, Ordering::Release);
            Ok(())
        })
    }
}
