//! The embedded store: one SQLite file, `flashcast.db` in the data
//! directory (WAL, `synchronous=FULL`). [`SqliteWriter`] is the one
//! connection that writes (owned by the group commit); [`SqliteReader`]
//! reads on the blocking pool through its own connection. WAL lets the
//! reader see committed state while the writer writes.
//!
//! - `schema`: the tables;
//! - `apply`: one `Write` as SQL;
//! - `read`: the queries behind `ReadBackend`.

mod apply;
mod read;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;

use super::{StoreError, StoreResult, Write, WriteBackend};

pub use read::SqliteReader;

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn connect(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    Ok(conn)
}

/// Opens (creating if needed) `flashcast.db` in `dir`: the writer (which
/// creates the schema) and a reader.
pub fn open(dir: &Path) -> StoreResult<(SqliteWriter, SqliteReader)> {
    std::fs::create_dir_all(dir).map_err(backend)?;
    let path = dir.join("flashcast.db");
    let conn = connect(&path)?;
    conn.execute_batch(schema::SCHEMA).map_err(backend)?;
    let reader = connect(&path)?;
    Ok((
        SqliteWriter { conn },
        SqliteReader {
            conn: Arc::new(Mutex::new(reader)),
        },
    ))
}

/// The writing connection.
pub struct SqliteWriter {
    conn: Connection,
}

#[async_trait]
impl WriteBackend for SqliteWriter {
    async fn apply(&mut self, batch: &[Write]) -> StoreResult<Vec<StoreResult<()>>> {
        // Blocks (it fsyncs): the group commit runs this on its own thread.
        let tx = self.conn.transaction().map_err(backend)?;
        let mut results = Vec::with_capacity(batch.len());
        for write in batch {
            results.push(apply::in_savepoint(&tx, write));
        }
        tx.commit().map_err(backend)?;
        Ok(results)
    }
}

// Tested with the PostgreSQL store by one suite: `store::conformance`.
