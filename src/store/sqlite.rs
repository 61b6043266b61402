//! The embedded store: one SQLite file (WAL, synchronous=FULL) under the data
//! directory.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{RoomRecord, Store, StoreError, StoreResult};
use flashcast_wire::ids::{RoomId, UserId};

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) `flashcast.db` in `dir`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let conn = Connection::open(dir.join("flashcast.db")).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rooms (
                 id TEXT PRIMARY KEY,
                 title TEXT NOT NULL,
                 allow_guests INTEGER NOT NULL,
                 created_at INTEGER NOT NULL,
                 closed_at INTEGER
             );
             CREATE TABLE IF NOT EXISTS bans (
                 room TEXT NOT NULL,
                 user_id TEXT NOT NULL,
                 PRIMARY KEY (room, user_id)
             );",
        )
        .map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(backend)
    }
}

fn parse_id<T>(
    s: String,
    parse: fn(&str) -> Result<T, flashcast_wire::ids::InvalidId>,
) -> rusqlite::Result<T> {
    parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Store for SqliteStore {
    fn put_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO rooms (id, title, allow_guests, created_at, closed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET title = excluded.title,
                     allow_guests = excluded.allow_guests, closed_at = excluded.closed_at",
                params![
                    room.id.as_str(),
                    room.title,
                    room.allow_guests,
                    room.created_at as i64,
                    room.closed_at.map(|t| t as i64)
                ],
            )
            .map(|_| ())
        })
    }

    fn rooms(&self) -> StoreResult<Vec<RoomRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, title, allow_guests, created_at, closed_at FROM rooms ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RoomRecord {
                    id: parse_id(r.get(0)?, RoomId::new)?,
                    title: r.get(1)?,
                    allow_guests: r.get(2)?,
                    created_at: r.get::<_, i64>(3)? as u64,
                    closed_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                })
            })?;
            rows.collect()
        })
    }

    fn close_room(&self, room: &RoomId, at_ms: u64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rooms SET closed_at = ?2 WHERE id = ?1 AND closed_at IS NULL",
                params![room.as_str(), at_ms as i64],
            )
            .map(|_| ())
        })
    }

    fn add_ban(&self, room: &RoomId, user: &UserId) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO bans (room, user_id) VALUES (?1, ?2)",
                params![room.as_str(), user.as_str()],
            )
            .map(|_| ())
        })
    }

    fn remove_ban(&self, room: &RoomId, user: &UserId) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM bans WHERE room = ?1 AND user_id = ?2",
                params![room.as_str(), user.as_str()],
            )
            .map(|_| ())
        })
    }

    fn bans(&self, room: &RoomId) -> StoreResult<Vec<UserId>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT user_id FROM bans WHERE room = ?1 ORDER BY user_id")?;
            let rows = stmt.query_map([room.as_str()], |r| parse_id(r.get(0)?, UserId::new))?;
            rows.collect()
        })
    }

    fn get_or_init_meta(&self, key: &str, init: &dyn Fn() -> String) -> StoreResult<String> {
        self.with(|c| {
            let found: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?;
            if let Some(v) = found {
                return Ok(v);
            }
            let v = init();
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, v],
            )?;
            Ok(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_bans_and_meta_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let room = RoomId::new("r").unwrap();
        let user = UserId::new("u").unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.put_room(&RoomRecord {
                id: room.clone(),
                title: "Show".into(),
                allow_guests: true,
                created_at: 5,
                closed_at: None,
            })
            .unwrap();
            s.add_ban(&room, &user).unwrap();
            assert_eq!(s.get_or_init_meta("k", &|| "v1".into()).unwrap(), "v1");
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.rooms().unwrap()[0].title, "Show");
        assert_eq!(s.bans(&room).unwrap(), vec![user.clone()]);
        assert_eq!(s.get_or_init_meta("k", &|| "v2".into()).unwrap(), "v1");
        s.close_room(&room, 9).unwrap();
        assert_eq!(s.rooms().unwrap()[0].closed_at, Some(9));
        s.remove_ban(&room, &user).unwrap();
        assert!(s.bans(&room).unwrap().is_empty());
    }
}
