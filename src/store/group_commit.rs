//! Group commit: one writer thread owns the SQLite connection and applies
//! many callers' writes in one transaction with one fsync, then answers each
//! caller. Throughput comes from batching, not from relaxing durability:
//! the database runs in WAL mode with `synchronous=FULL`, and a caller's
//! future resolves only after the COMMIT of its batch returned.
//!
//! Each write runs under its own SAVEPOINT, so one failing write (a
//! constraint, say) is rolled back alone and the rest of its batch commits.
//! The queue is bounded: callers wait for room (backpressure), nothing grows
//! without limit.
//!
//! A write may carry an after-commit hook ([`GroupCommit::write_then`]): it
//! runs on the writer thread right after its batch's COMMIT, before the
//! caller's future resolves. A flash sale answers its buyers from there, so
//! an acknowledged order leaves as soon as it is durable instead of waiting
//! for the buyer's task to be scheduled again behind thousands of others.

use std::path::Path;
use std::thread;

use rusqlite::{Connection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

/// One write: runs inside the batch's transaction.
pub type WriteOp = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send>;

/// Runs on the writer thread once its write is durably committed; dropped
/// unrun when the write fails. Keep it short: the next batch waits for it.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

struct Job {
    op: WriteOp,
    then: Option<AfterCommit>,
    done: oneshot::Sender<StoreResult<()>>,
}

/// Limits of the writer.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Writes waiting for the writer; submitters wait when it is full.
    pub queue: usize,
    /// Most writes in one transaction.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            queue: 8_192,
            max_batch: 1_024,
        }
    }
}

/// Handle to the writer thread. Cheap to clone; the thread stops when the
/// last handle is dropped, after finishing the writes already queued.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

/// What the writer has done, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    pub batches: u64,
    pub writes: u64,
}

impl GroupCommit {
    /// Opens (or creates) the database at `path` and starts the writer.
    /// `init` runs once on the connection (schema).
    pub fn open(
        path: &Path,
        config: GroupCommitConfig,
        init: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> StoreResult<(GroupCommit, thread::JoinHandle<CommitStats>)> {
        assert!(
            config.queue > 0 && config.max_batch > 0,
            "bounds must be positive"
        );
        let backend = |e: rusqlite::Error| StoreError::Backend(e.to_string());
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        // Other connections (the room store, readers) share the file.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        init(&conn).map_err(backend)?;
        let (tx, rx) = mpsc::channel(config.queue);
        let writer = thread::Builder::new()
            .name("flashcast-group-commit".into())
            .spawn(move || run(conn, rx, config.max_batch))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok((GroupCommit { jobs: tx }, writer))
    }

    /// Queues a write and resolves once it is durably committed (or failed).
    pub async fn write(&self, op: WriteOp) -> StoreResult<()> {
        self.submit(op, None).await
    }

    /// Like `write`, and runs `then` on the writer thread right after the
    /// COMMIT, before this future resolves; `then` is dropped unrun if the
    /// write fails.
    pub async fn write_then(&self, op: WriteOp, then: AfterCommit) -> StoreResult<()> {
        self.submit(op, Some(then)).await
    }

    async fn submit(&self, op: WriteOp, then: Option<AfterCommit>) -> StoreResult<()> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { op, then, done })
            .await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Backend("the writer stopped before committing".into()))?
    }
}

fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Job>, max_batch: usize) -> CommitStats {
    let mut stats = CommitStats::default();
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.batches += 1;
        stats.writes += batch.len() as u64;
        commit_batch(&mut conn, &mut batch);
    }
    stats
}

/// Applies a batch in one transaction, each write under a savepoint, and
/// answers every caller after COMMIT (or with the error that stopped it).
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Job>) {
    let fail_all = |batch: &mut Vec<Job>, e: &rusqlite::Error| {
        for job in batch.drain(..) {
            let _ = job.done.send(Err(StoreError::Backend(e.to_string())));
        }
    };
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, &e),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut dones = Vec::with_capacity(batch.len());
    let mut hooks = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let applied = (|| {
            tx.prepare_cached("SAVEPOINT w")?.execute([])?;
            match (job.op)(&tx) {
                Ok(()) => tx.prepare_cached("RELEASE w")?.execute([]).map(|_| ()),
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO w; RELEASE w")?;
                    Err(e)
                }
            }
        })();
        results.push(applied.map_err(|e| StoreError::Backend(e.to_string())));
        dones.push(job.done);
        hooks.push(job.then);
    }
    match tx.commit() {
        Ok(()) => {
            // Hooks first: they carry the answers that are waited for.
            for (then, result) in hooks.into_iter().zip(&results) {
                if let (Some(then), Ok(())) = (then, result) {
                    run_hook(then);
                }
            }
            for (done, result) in dones.into_iter().zip(results) {
                let _ = done.send(result);
            }
        }
        Err(e) => {
            for done in dones {
                let _ = done.send(Err(StoreError::Backend(e.to_string())));
            }
        }
    }
}

/// A panicking hook is a bug in its caller; it must not take the writer,
/// and with it every other caller's durability, down.
fn run_hook(then: AfterCommit) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(then)).is_err() {
        tracing::error!("an after-commit hook panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;
    use std::sync::Arc;

    fn schema(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    }

    fn insert(id: i64) -> WriteOp {
        Box::new(move |tx| {
            tx.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", params![id])
                .map(|_| ())
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_batched_and_every_acknowledged_one_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let (writer, thread) =
            GroupCommit::open(&path, GroupCommitConfig::default(), schema).unwrap();
        let writer = Arc::new(writer);
        let tasks: Vec<_> = (0..2_000)
            .map(|id| {
                let w = writer.clone();
                tokio::spawn(async move { w.write(insert(id)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(writer);
        let stats = tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert_eq!(stats.writes, 2_000);
        assert!(
            stats.batches < 2_000,
            "concurrent writes share commits: {stats:?}"
        );

        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2_000);
    }

    #[tokio::test]
    async fn a_failing_write_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let config = GroupCommitConfig {
            queue: 16,
            max_batch: 16,
        };
        let (writer, thread) = GroupCommit::open(&path, config, schema).unwrap();
        writer.write(insert(1)).await.unwrap();
        // One batch: a good write, a duplicate key that half-applies, a good write.
        let dup: WriteOp = Box::new(|tx| {
            tx.execute("INSERT INTO t (id, v) VALUES (50, 'partial')", [])?;
            tx.execute("INSERT INTO t (id, v) VALUES (1, 'dup')", [])
                .map(|_| ())
        });
        let (a, b, c) = tokio::join!(
            writer.write(insert(2)),
            writer.write(dup),
            writer.write(insert(3))
        );
        assert!(a.is_ok() && c.is_ok());
        assert!(b.is_err(), "the duplicate key is refused");
        drop(writer);
        thread.join().unwrap();
        let conn = Connection::open(&path).unwrap();
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, vec![1, 2, 3], "the failed write left nothing behind");
    }

    #[tokio::test]
    async fn after_commit_hooks_run_once_durable_before_the_caller_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let (writer, thread) =
            GroupCommit::open(&path, GroupCommitConfig::default(), schema).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(i64, i64)>::new()));
        // The hook reads through another connection: only a committed row shows.
        let probe = |id: i64| -> AfterCommit {
            let (seen, path) = (seen.clone(), path.clone());
            Box::new(move || {
                let c = Connection::open(&path).unwrap();
                let n: i64 = c
                    .query_row("SELECT count(*) FROM t WHERE id = ?1", [id], |r| r.get(0))
                    .unwrap();
                seen.lock().unwrap().push((id, n));
            })
        };
        writer.write_then(insert(7), probe(7)).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(7, 1)],
            "ran, after COMMIT, before resuming"
        );

        let refused = writer.write_then(insert(7), probe(-7)).await;
        assert!(refused.is_err(), "duplicate key");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a failed write's hook never runs"
        );

        let boom: AfterCommit = Box::new(|| panic!("hook bug"));
        writer.write_then(insert(8), boom).await.unwrap();
        writer.write_then(insert(9), probe(9)).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(7, 1), (9, 1)],
            "the writer survived a panicking hook"
        );
        drop(writer);
        thread.join().unwrap();
    }
}
