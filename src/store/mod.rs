//! All durable state, behind one handle: [`Store`]. Every change is a
//! [`Write`] (data, not code) applied by ONE writer, the group commit
//! (`group_commit`), which batches concurrent writes into one transaction
//! and answers each caller only after the COMMIT is durable. Reads go
//! through a separate [`ReadBackend`] and see committed state only.
//!
//! - `write`: the `Write` enum, every kind of durable change;
//! - `records`: what is stored and read back (rooms, sale and coupon terms,
//!   a shop as loaded, order filters);
//! - `backend`: the `WriteBackend` / `ReadBackend` traits a storage engine
//!   implements (async, batch in one transaction, reads apart from writes);
//! - `group_commit`: the single writer thread and its bounded queue;
//! - `sqlite`: the embedded default, one file (WAL, synchronous=FULL) in
//!   the data directory;
//! - `postgres`: the same two traits over PostgreSQL (`tokio-postgres`,
//!   `synchronous_commit = on`), for cluster mode; it adds a database-level
//!   oversell guard (`sales.sold`, see `postgres::apply`). Not wired into
//!   start-up yet.
//!
//! Nothing on the chat hot path touches the store. What is answered after
//! its commit: rooms, bans, room closes, catalog and sale changes, orders,
//! coupon claims, payments.

pub mod backend;
#[cfg(test)]
mod conformance;
pub mod group_commit;
pub mod postgres;
mod records;
pub mod sqlite;
mod write;

use std::path::Path;
use std::sync::Arc;

pub use backend::{ReadBackend, WriteBackend};
pub use group_commit::{AfterCommit, CommitStats, GroupCommit, GroupCommitConfig};
pub use records::{
    CouponRecord, CouponTerms, OrderFilter, RoomRecord, SaleRecord, SaleTerms, ShopRecord,
};
pub use write::Write;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    /// A conditional write did not find the state it expected (see
    /// [`Write`]); nothing of it was applied.
    #[error("conflict: {0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// A write of an owner whose term is not the room's (any more), see
    /// [`Write::Fenced`]. `recorded`: the room's term, if claimed.
    pub(crate) fn fenced(
        room: &flashcast_wire::ids::RoomId,
        term: u64,
        recorded: Option<i64>,
    ) -> StoreError {
        StoreError::Conflict(match recorded {
            Some(current) => {
                format!("room {room} is fenced: term {term} is not its term {current}")
            }
            None => format!("room {room} is fenced: no owner has claimed it"),
        })
    }
}

/// The node's store: one writer (group commit) and the readers. Cheap to
/// clone; the writer stops when the last clone is dropped, after the writes
/// already queued.
#[derive(Clone)]
pub struct Store {
    writer: GroupCommit,
    reader: Arc<dyn ReadBackend>,
}

impl Store {
    /// Opens (creating if needed) the embedded store, `flashcast.db` in `dir`.
    pub fn open_sqlite(dir: &Path, config: GroupCommitConfig) -> StoreResult<Store> {
        let (writer, reader) = sqlite::open(dir)?;
        Ok(Store::new(Box::new(writer), Arc::new(reader), config)?.0)
    }

    /// Connects to the PostgreSQL database at `url` (creating the schema if
    /// missing, safe against concurrent creators).
    pub async fn open_postgres(url: &str, config: GroupCommitConfig) -> StoreResult<Store> {
        let (writer, reader) = postgres::open(url).await?;
        Ok(Store::new(Box::new(writer), Arc::new(reader), config)?.0)
    }

    /// Starts the writer on `writer`; also returns the writer thread, which
    /// ends (with its stats) once every clone of the store is dropped.
    pub fn new(
        writer: Box<dyn WriteBackend>,
        reader: Arc<dyn ReadBackend>,
        config: GroupCommitConfig,
    ) -> StoreResult<(Store, std::thread::JoinHandle<CommitStats>)> {
        let (writer, thread) = GroupCommit::start(writer, config)?;
        Ok((Store { writer, reader }, thread))
    }

    /// Resolves once `write` is durably committed (or failed).
    pub async fn write(&self, write: Write) -> StoreResult<()> {
        self.writer.write(write).await
    }

    /// Like `write`, and runs `then` on the writer thread right after the
    /// COMMIT, before this future resolves (see [`GroupCommit::write_then`]).
    pub async fn write_then(&self, write: Write, then: AfterCommit) -> StoreResult<()> {
        self.writer.write_then(write, then).await
    }

    pub fn read(&self) -> &dyn ReadBackend {
        &*self.reader
    }

    /// A named value (generated secrets), set to `init()` on first use.
    pub async fn get_or_init_meta(
        &self,
        key: &str,
        init: &dyn Fn() -> String,
    ) -> StoreResult<String> {
        if let Some(v) = self.reader.meta(key).await? {
            return Ok(v);
        }
        self.write(Write::InitMeta {
            key: key.into(),
            value: init(),
        })
        .await?;
        self.reader
            .meta(key)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("meta {key} vanished")))
    }
}
