//! The room journal on JetStream (see `room::journal`): each batch is
//! appended to the room's subject, fenced by the subject's last sequence
//! this owner wrote or found there, de-duplicated by `<epoch>:<first seq>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::log::RoomLog;
use super::ClusterResult;
use crate::room::journal::{Journal, RoomJournal};
use flashcast_wire::ids::RoomId;

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
