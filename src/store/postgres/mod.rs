//! The PostgreSQL store (cluster mode, issue #17): the same two seams as
//! the embedded SQLite store, over `tokio-postgres`. [`PostgresWriter`] is
//! the one connection that writes (owned by the group commit, one
//! transaction per batch, a SAVEPOINT per write, `synchronous_commit = on`);
//! [`PostgresReader`] reads through a small pool of its own connections.
//!
//! Every socket of a store is driven by one small current-thread runtime on
//! a dedicated thread ([`PgIo`]): the clients only send requests to it, so
//! they work from the group-commit thread's runtime and from the server's
//! alike, and a connection outlives whichever runtime first used it.
//!
//! - `schema`: the tables (created if missing, under an advisory lock);
//! - `apply`: one `Write` as SQL, plus the oversell guard (`sales.sold`);
//! - `read`: the queries behind `ReadBackend`.

mod apply;
mod read;
mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::{StoreError, StoreResult, Write, WriteBackend};

pub use read::PostgresReader;

/// Connections of the reader's pool; a read waits for a free one.
pub const READ_POOL: usize = 4;
/// Longest wait for a new connection (TCP, start-up, session settings).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bound on one statement (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Client-side bound on one whole batch, COMMIT included: a dead peer that
/// never answers fails the batch instead of stalling the writer forever.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Client-side bound on one read (a pool slot wait included).
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Prepared statements kept per connection (the order queries build a few
/// shapes of SQL; anything past this is cleared, not grown).
const MAX_STATEMENTS: usize = 64;

/// The error and its causes on one line ("error connecting to server:
/// Connection refused"); the client's own message stops at the first.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// How the message of an error of a lost session starts.
const LOST: &str = "postgres connection lost";

pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        StoreError::Backend(format!("{LOST}: {}", describe(&e)))
    } else {
        StoreError::Backend(format!("postgres: {}", describe(&e)))
    }
}

fn timed_out(what: &str, after: Duration) -> StoreError {
    StoreError::Backend(format!(
        "postgres: {what} took longer than {after:?}; connection dropped"
    ))
}

/// The thread whose runtime drives every connection of one store; it stops
/// (closing them) when the writer and the reader are both dropped.
pub(crate) struct PgIo {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PgIo {
    fn start() -> StoreResult<Arc<PgIo>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("flashcast-pg-io".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Arc::new(PgIo {
            handle,
            _stop: stop,
        }))
    }

    /// A new session, its socket driven by this thread, with the settings
    /// every session of the store runs under.
    async fn connect(&self, config: &Config) -> StoreResult<Conn> {
        let config = config.clone();
        let connecting = self.handle.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgres connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| timed_out("connecting", CONNECT_TIMEOUT))?
            .map_err(|e| StoreError::Backend(format!("postgres connect task: {e}")))?
            .map_err(|e| StoreError::Backend(format!("postgres connect: {}", describe(&e))))?;
        // Explicit, not inherited from the server's defaults: an answered
        // write must be flushed to the WAL (and to a synchronous standby).
        let settings = format!(
            "SET synchronous_commit = on; SET statement_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}",
            STATEMENT_TIMEOUT.as_millis(),
            BATCH_TIMEOUT.as_millis() * 2,
        );
        tokio::time::timeout(CONNECT_TIMEOUT, client.batch_execute(&settings))
            .await
            .map_err(|_| timed_out("session settings", CONNECT_TIMEOUT))?
            .map_err(pg_error)?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }
}

/// One session and its prepared statements.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    async fn execute(&mut self, sql: &str, p: Params<'_>) -> Result<u64, tokio_postgres::Error> {
        let s = self.statement(sql).await?;
        self.client.execute(&s, p).await
    }

    async fn query(&mut self, sql: &str, p: Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error> {
        let s = self.statement(sql).await?;
        self.client.query(&s, p).await
    }

    async fn query_opt(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let s = self.statement(sql).await?;
        self.client.query_opt(&s, p).await
    }

    async fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }
}

fn parse_url(url: &str, role: &str) -> StoreResult<Config> {
    let mut config: Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("postgres url: {e}")))?;
    config
        .application_name(format!("flashcast-{role}"))
        .connect_timeout(CONNECT_TIMEOUT)
        // A peer that vanished (no FIN) is noticed by the kernel, not only
        // by our timeouts.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(10));
    Ok(config)
}

/// Connects to `url`, creates the schema if missing, and returns the writer
/// and a reader sharing one I/O thread.
pub async fn open(url: &str) -> StoreResult<(PostgresWriter, PostgresReader)> {
    let io = PgIo::start()?;
    let config = parse_url(url, "writer")?;
    let mut conn = io.connect(&config).await?;
    tokio::time::timeout(BATCH_TIMEOUT, schema::create(&mut conn))
        .await
        .map_err(|_| timed_out("creating the schema", BATCH_TIMEOUT))??;
    let reader = PostgresReader::new(io.clone(), parse_url(url, "reader")?);
    Ok((
        PostgresWriter {
            io,
            config,
            conn: Some(conn),
        },
        reader,
    ))
}

/// The writing connection; reconnects on the batch after one was lost.
pub struct PostgresWriter {
    io: Arc<PgIo>,
    config: Config,
    conn: Option<Conn>,
}

impl PostgresWriter {
    /// The open session, or a new one if there is none or it was closed.
    async fn session(&mut self) -> StoreResult<&mut Conn> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(self.io.connect(&self.config).await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Backend("postgres: no session".into()))
    }

    async fn try_apply(&mut self, batch: &[Write]) -> StoreResult<Vec<StoreResult<()>>> {
        let mut begun = self.session().await?.batch("BEGIN").await;
        if begun.as_ref().is_err_and(|e| e.is_closed()) {
            // Lost while idle and not noticed yet: nothing of the batch was
            // sent, so one retry on a new session is safe.
            self.conn = None;
            begun = self.session().await?.batch("BEGIN").await;
        }
        begun.map_err(pg_error)?;
        let conn = self.session().await?;
        let mut results = Vec::with_capacity(batch.len());
        for write in batch {
            results.push(apply::in_savepoint(conn, write).await.map_err(pg_error)?);
        }
        conn.batch("COMMIT").await.map_err(pg_error)?;
        Ok(results)
    }
}

#[async_trait]
impl WriteBackend for PostgresWriter {
    async fn apply(&mut self, batch: &[Write]) -> StoreResult<Vec<StoreResult<()>>> {
        // Answers only after COMMIT returned. On any batch-level failure the
        // session is dropped (the server rolls back what it holds) and the
        // next batch starts on a new one. A connection lost during COMMIT
        // leaves the outcome unknown to us; the batch is reported failed.
        match tokio::time::timeout(BATCH_TIMEOUT, self.try_apply(batch)).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(timed_out("a batch", BATCH_TIMEOUT))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_db;

#[cfg(test)]
mod tests;
