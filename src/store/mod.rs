//! Durable state behind one trait. The embedded default is SQLite in the data
//! directory; cluster mode will add PostgreSQL behind the same trait.
//!
//! Calls block (they touch the disk): async callers go through
//! `tokio::task::spawn_blocking`. Nothing on the chat hot path touches the
//! store; rooms, bans and secrets change rarely.

pub mod group_commit;
mod sqlite;

pub use sqlite::SqliteStore;

use flashcast_wire::ids::{RoomId, UserId};

/// A room as kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomRecord {
    pub id: RoomId,
    pub title: String,
    pub allow_guests: bool,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms when the show ended, if it has.
    pub closed_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces a room.
    fn put_room(&self, room: &RoomRecord) -> StoreResult<()>;
    fn rooms(&self) -> StoreResult<Vec<RoomRecord>>;
    fn close_room(&self, room: &RoomId, at_ms: u64) -> StoreResult<()>;
    fn add_ban(&self, room: &RoomId, user: &UserId) -> StoreResult<()>;
    fn remove_ban(&self, room: &RoomId, user: &UserId) -> StoreResult<()>;
    fn bans(&self, room: &RoomId) -> StoreResult<Vec<UserId>>;
    /// A named value (generated secrets), created by `init` on first use.
    fn get_or_init_meta(&self, key: &str, init: &dyn Fn() -> String) -> StoreResult<String>;
}
