//! Group commit: the store's one writer. A thread owns the [`WriteBackend`]
//! and applies many callers' [`Write`]s in one transaction with one fsync,
//! then answers each caller. Throughput comes from batching, not from
//! relaxing durability: a caller's future resolves only after the COMMIT of
//! its batch returned (SQLite: WAL, `synchronous=FULL`; PostgreSQL:
//! `synchronous_commit = on`).
//!
//! Each write succeeds or fails alone (its own SAVEPOINT), so one
//! failing write (a constraint, a conditional write that found another
//! state) is rolled back alone and the rest of its batch commits. The queue
//! is bounded: callers wait for room (backpressure), nothing grows without
//! limit.
//!
//! A write may carry an after-commit hook ([`GroupCommit::write_then`]): it
//! runs on the writer thread right after its batch's COMMIT, before the
//! caller's future resolves. A flash sale answers its buyers from there, so
//! an acknowledged order leaves as soon as it is durable instead of waiting
//! for the buyer's task to be scheduled again behind thousands of others.

use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult, Write, WriteBackend};

/// Runs on the writer thread once its write is durably committed; dropped
/// unrun when the write fails. Keep it short: the next batch waits for it.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

struct Job {
    write: Write,
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
    /// Starts the writer thread on `backend`.
    pub fn start(
        backend: Box<dyn WriteBackend>,
        config: GroupCommitConfig,
    ) -> StoreResult<(GroupCommit, thread::JoinHandle<CommitStats>)> {
        assert!(
            config.queue > 0 && config.max_batch > 0,
            "bounds must be positive"
        );
        let (tx, rx) = mpsc::channel(config.queue);
        // The thread drives the backend's futures itself: SQLite blocks in
        // them (which must not happen on a runtime worker); a network
        // backend awaits its client from here.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let writer = thread::Builder::new()
            .name("flashcast-group-commit".into())
            .spawn(move || runtime.block_on(run(backend, rx, config.max_batch)))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok((GroupCommit { jobs: tx }, writer))
    }

    /// Queues a write and resolves once it is durably committed (or failed).
    pub async fn write(&self, write: Write) -> StoreResult<()> {
        self.submit(write, None).await
    }

    /// Like `write`, and runs `then` on the writer thread right after the
    /// COMMIT, before this future resolves; `then` is dropped unrun if the
    /// write fails.
    pub async fn write_then(&self, write: Write, then: AfterCommit) -> StoreResult<()> {
        self.submit(write, Some(then)).await
    }

    async fn submit(&self, write: Write, then: Option<AfterCommit>) -> StoreResult<()> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { write, then, done })
            .await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Backend("the writer stopped before committing".into()))?
    }
}

async fn run(
    mut backend: Box<dyn WriteBackend>,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
) -> CommitStats {
    let mut stats = CommitStats::default();
    let mut writes: Vec<Write> = Vec::with_capacity(max_batch);
    let mut waiting: Vec<Waiting> = Vec::with_capacity(max_batch);
    while let Some(first) = jobs.recv().await {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            writes.push(job.write);
            waiting.push((job.then, job.done));
            if writes.len() < max_batch {
                next = jobs.try_recv().ok();
            }
        }
        stats.batches += 1;
        stats.writes += writes.len() as u64;
        let outcome = backend.apply(&writes).await;
        writes.clear();
        answer(outcome, &mut waiting);
    }
    stats
}

/// A queued write's hook and caller.
type Waiting = (Option<AfterCommit>, oneshot::Sender<StoreResult<()>>);

/// Answers every caller of a batch after its COMMIT (or with the error that
/// stopped it); hooks first, they carry the answers that are waited for.
fn answer(outcome: StoreResult<Vec<StoreResult<()>>>, waiting: &mut Vec<Waiting>) {
    match outcome {
        Ok(results) => {
            assert_eq!(results.len(), waiting.len(), "one result per write");
            let mut dones = Vec::with_capacity(waiting.len());
            for ((then, done), result) in waiting.drain(..).zip(&results) {
                if let (Some(then), Ok(())) = (then, result) {
                    run_hook(then);
                }
                dones.push(done);
            }
            for (done, result) in dones.into_iter().zip(results) {
                let _ = done.send(result);
            }
        }
        Err(e) => {
            for (_, done) in waiting.drain(..) {
                let _ = done.send(Err(e.clone()));
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
    use crate::store::sqlite;
    use flashcast_wire::ids::{CouponId, RoomId, UserId};
    use rusqlite::Connection;
    use std::sync::Arc;

    // Batching, rollback of one write and the conditional writes are tested
    // against every backend in `store::conformance`.

    fn ban(i: usize) -> Write {
        Write::Ban {
            room: RoomId::new("r").unwrap(),
            user: UserId::new(&format!("u{i}")).unwrap(),
        }
    }

    fn claim(user: &str) -> Write {
        Write::ClaimCoupon {
            coupon: CouponId(1),
            user: UserId::new(user).unwrap(),
            at: 1,
        }
    }

    fn count(path: &std::path::Path, sql: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    fn start(
        dir: &std::path::Path,
        config: GroupCommitConfig,
    ) -> (GroupCommit, thread::JoinHandle<CommitStats>) {
        let (w, _) = sqlite::open(dir).unwrap();
        GroupCommit::start(Box::new(w), config).unwrap()
    }

    #[tokio::test]
    async fn after_commit_hooks_run_once_durable_before_the_caller_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flashcast.db");
        let (writer, thread) = start(dir.path(), GroupCommitConfig::default());
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, i64)>::new()));
        // The hook reads through another connection: only a committed row shows.
        let probe = |user: &str| -> AfterCommit {
            let (seen, path, user) = (seen.clone(), path.clone(), user.to_string());
            Box::new(move || {
                let n = count(
                    &path,
                    &format!("SELECT count(*) FROM coupon_claims WHERE user_id = '{user}'"),
                );
                seen.lock().unwrap().push((user, n));
            })
        };
        writer.write_then(claim("x"), probe("x")).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("x".into(), 1)],
            "ran, after COMMIT, before resuming"
        );
        let refused = writer.write_then(claim("x"), probe("never")).await;
        assert!(refused.is_err(), "duplicate claim");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a failed write's hook never runs"
        );

        let boom: AfterCommit = Box::new(|| panic!("hook bug"));
        writer.write_then(claim("y"), boom).await.unwrap();
        writer.write_then(claim("z"), probe("z")).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("x".into(), 1), ("z".into(), 1)],
            "the writer survived a panicking hook"
        );
        drop(writer);
        thread.join().unwrap();
    }

    /// A backend that fails whole batches: nobody is told "done".
    struct Broken;

    #[async_trait::async_trait]
    impl WriteBackend for Broken {
        async fn apply(&mut self, _: &[Write]) -> StoreResult<Vec<StoreResult<()>>> {
            Err(StoreError::Backend("disk full".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_write_of_its_batch_and_runs_no_hook() {
        let (writer, thread) =
            GroupCommit::start(Box::new(Broken), GroupCommitConfig::default()).unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let hook: AfterCommit =
            Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        assert!(writer.write_then(ban(1), hook).await.is_err());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        drop(writer);
        thread.join().unwrap();
    }
}
