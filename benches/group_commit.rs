//! Durable writes per second through the group-commit writer (many writes
//! per transaction and fsync) against the same writer with `max_batch = 1`
//! (one transaction and fsync per write). Same SQLite settings for both:
//! WAL, synchronous=FULL. `cargo bench --bench group_commit`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashcast::store::{sqlite, GroupCommit, GroupCommitConfig, Write};
use flashcast_wire::ids::{RoomId, UserId};

/// Concurrent buyers waiting on their own write's commit.
const WRITERS: usize = 256;

/// A small durable write (one row), like an order or a claim.
fn write(id: u64) -> Write {
    Write::Ban {
        room: RoomId::new("bench").unwrap(),
        user: UserId::new(&format!("user-{id}")).unwrap(),
    }
}

fn run(max_batch: usize, iters: u64, rt: &tokio::runtime::Runtime) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = sqlite::open(dir.path()).unwrap();
    let (writer, thread) = GroupCommit::start(
        Box::new(backend),
        GroupCommitConfig {
            queue: 8_192,
            max_batch,
        },
    )
    .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        let per = iters.div_ceil(WRITERS as u64);
        let tasks: Vec<_> = (0..WRITERS as u64)
            .map(|w| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        writer.write(write(w * per + i)).await.unwrap();
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
