//! The rooms of this node, in a sharded concurrent map so that lookups from
//! thousands of connections never contend on one lock.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::actor::RoomActor;
use super::{Command, RoomContext, RoomHandle, RoomInfo, RoomShared};
use crate::store::{RoomRecord, StoreError, StoreResult, Write};
use flashcast_wire::ids::{RoomId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a room with this id already exists")]
    Exists,
    #[error("this node already hosts max_rooms open rooms")]
    LimitReached,
    /// The room (or its stored catalog) could not be written or read
    /// (logged where it happened); it was not opened.
    #[error("could not store the room")]
    NotStored,
}

pub struct Registry {
    rooms: DashMap<RoomId, RoomHandle>,
    ctx: Arc<RoomContext>,
}

impl Registry {
    pub fn new(ctx: Arc<RoomContext>) -> Self {
        Self {
            rooms: DashMap::new(),
            ctx,
        }
    }

    pub fn context(&self) -> &Arc<RoomContext> {
        &self.ctx
    }

    fn open_rooms(&self) -> usize {
        self.rooms.iter().filter(|r| !r.shared.is_closed()).count()
    }

    /// Starts a room task. `bans` are the room's stored bans.
    pub fn open(&self, info: RoomInfo, bans: Vec<UserId>) -> Result<RoomHandle, RegistryError> {
        if self.open_rooms() >= self.ctx.limits.max_rooms {
            return Err(RegistryError::LimitReached);
        }
        // Before taking the entry: iterating while holding a shard lock
        // would deadlock.
        self.forget_oldest_closed(self.ctx.limits.max_rooms);
        let entry = match self.rooms.entry(info.id.clone()) {
            dashmap::Entry::Occupied(_) => return Err(RegistryError::Exists),
            dashmap::Entry::Vacant(v) => v,
        };
        let (tx, rx) = mpsc::channel(self.ctx.limits.room_queue);
        let shared = Arc::new(RoomShared::new(info, bans));
        let handle = RoomHandle {
            shared: shared.clone(),
            commands: tx,
        };
        entry.insert(handle.clone());
        let actor = RoomActor::new(shared, self.ctx.clone(), rx, handle.commands.downgrade());
        tokio::spawn(actor.run());
        self.ctx.metrics.rooms.inc();
        Ok(handle)
    }

    /// Opens a new room and stores it, so it survives a restart; answers
    /// once it is stored. Used by the admin API and by the demo room's
    /// seeding at start-up.
    pub async fn create(&self, record: RoomRecord) -> Result<RoomHandle, RegistryError> {
        // A reused id finds its stored catalog (the show may have run before).
        if let Err(e) = self.ctx.commerce.load_shop(&record.id).await {
            tracing::error!(error = %e, room = %record.id, "could not load a room's shop");
            return Err(RegistryError::NotStored);
        }
        let room = self.open(RoomInfo::from(&record), Vec::new())?;
        if let Err(e) = self.ctx.store.write(Write::PutRoom(record)).await {
            tracing::error!(error = %e, room = %room.id(), "could not persist room");
            let _ = self.end(room.id()).await;
            return Err(RegistryError::NotStored);
        }
        Ok(room)
    }

    /// Keeps an ended room's id known, so joins get "room closed" rather
    /// than "not found", without running a task for it. At most `max_rooms`
    /// ended rooms are remembered; older ones are forgotten (joins then get
    /// "room not found").
    pub fn remember_closed(&self, info: RoomInfo) {
        self.forget_oldest_closed(self.ctx.limits.max_rooms.saturating_sub(1));
        let (tx, _) = mpsc::channel(1);
        let shared = Arc::new(RoomShared::new(info, Vec::new()));
        shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.rooms.insert(
            shared.info.id.clone(),
            RoomHandle {
                shared,
                commands: tx,
            },
        );
    }

    /// Drops the oldest ended rooms until at most `keep` remain.
    fn forget_oldest_closed(&self, keep: usize) {
        let mut closed: Vec<(u64, RoomId)> = self
            .rooms
            .iter()
            .filter(|r| r.shared.is_closed())
            .map(|r| (r.shared.info.created_at, r.key().clone()))
            .collect();
        if closed.len() <= keep {
            return;
        }
        closed.sort();
        for (_, id) in &closed[..closed.len() - keep] {
            self.rooms.remove_if(id, |_, r| r.shared.is_closed());
        }
    }

    pub fn get(&self, id: &RoomId) -> Option<RoomHandle> {
        self.rooms.get(id).map(|r| r.clone())
    }

    pub fn list(&self) -> Vec<RoomHandle> {
        let mut rooms: Vec<RoomHandle> = self.rooms.iter().map(|r| r.clone()).collect();
        rooms.sort_by(|a, b| a.id().cmp(b.id()));
        rooms
    }

    /// Ends a room's show and returns once the end is durable; false if
    /// there is no such open room (or its show is already ending).
    pub async fn end(&self, id: &RoomId) -> StoreResult<bool> {
        let Some(room) = self.get(id) else {
            return Ok(false);
        };
        if room.shared.is_closed() {
            return Ok(false);
        }
        let (tx, rx) = oneshot::channel();
        room.send(Command::End(tx)).await;
        rx.await.unwrap_or_else(|_| {
            // The room stopped first (a shutdown) or had already ended.
            if room.shared.is_closed() {
                Ok(false)
            } else {
                Err(StoreError::Backend(
                    "the room stopped before its end was stored".into(),
                ))
            }
        })
    }

    /// Tells every room to send 1012 to its viewers and stop.
    pub async fn shutdown(&self) {
        for room in self.list() {
            if !room.shared.is_closed() {
                room.send(Command::Shutdown).await;
            }
        }
    }
}
