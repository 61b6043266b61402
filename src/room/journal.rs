//! Where a room's batches become durable before any viewer sees them.
//!
//! On one node there is no journal: a batch is handed to the fanout as soon
//! as it is built (the events' durability is the history ring's, by
//! design). In cluster mode the owner appends each batch that carries
//! events to the room's JetStream subject (`cluster::log`) and publishes it
//! only once JetStream acknowledged it, so a crashed owner's sequence
//! numbers can never have been seen under the same epoch without being in
//! the log. Until then the room sends nothing else and admits no join (a
//! join's snapshot ends at the last published batch).

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::cluster::ClusterResult;
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
