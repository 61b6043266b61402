//! Durable writes per second through the group-commit writer (many writes
//! per transaction and fsync) against the same writer with `max_batch = 1`
//! (one transaction and fsync per write). Same SQLite settings for both:
//! WAL, synchronous=FULL. `cargo bench --bench group_commit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashcast::store::group_commit::{GroupCommit, GroupCommitConfig, WriteOp};

/// Concurrent buyers waiting on their own order's commit.
const WRITERS: usize = 256;

fn order_insert(id: u64) -> WriteOp {
    Box::new(move |tx| {
        tx.execute(
            "INSERT INTO orders (id, sku, user_id, qty, total_minor) VALUES (?1, 'sku-1', ?2, 1, 4900)",
            rusqlite::params![id as i64, format!("user-{id}")],
        )
        .map(|_| ())
    })
}

fn run(max_batch: usize, iters: u64, rt: &tokio::runtime::Runtime) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let (writer, thread) = GroupCommit::open(
        &dir.path().join("bench.db"),
        GroupCommitConfig { queue: 8_192, max_batch },
        |c| {
            c.execute_batch(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT, user_id TEXT, qty INTEGER, total_minor INTEGER)",
            )
        },
    )
    .unwrap();
    let writer = Arc::new(writer);
    let start = Instant::now();
    rt.block_on(async {
        let per = iters.div_ceil(WRITERS as u64);
        let tasks: Vec<_> = (0..WRITERS as u64)
            .map(|w| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        writer.write(order_insert(w * per + i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    drop(writer);
    thread.join().unwrap();
    elapsed
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("durable_order_writes_256_concurrent");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("group_commit", |b| {
        b.iter_custom(|iters| run(1_024, iters, &rt))
    });
    group.bench_function("one_commit_per_write", |b| {
        b.iter_custom(|iters| run(1, iters, &rt))
    });
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
