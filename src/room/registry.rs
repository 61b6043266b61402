//! The rooms of this node, in a sharded concurrent map so that lookups from
//! thousands of connections never contend on one lock.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::actor::RoomActor;
use super::{Command, RoomContext, RoomHandle, RoomInfo, RoomShared};
use flashcast_wire::ids::{RoomId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a room with this id already exists")]
    Exists,
    #[error("this node already hosts max_rooms open rooms")]
    LimitReached,
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
        let actor = RoomActor::new(shared, self.ctx.clone(), rx);
        tokio::spawn(actor.run());
        self.ctx.metrics.rooms.inc();
        Ok(handle)
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

    /// Ends a room's show; returns false if there is no such open room.
    pub async fn end(&self, id: &RoomId) -> bool {
        let Some(room) = self.get(id) else {
            return false;
        };
        if room.shared.is_closed() {
            return false;
        }
        room.send(Command::End).await;
        true
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
