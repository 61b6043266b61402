//! The lock-free stock counter against a Mutex-guarded one: the cost of one
//! purchase attempt, uncontended (1 thread) and contended (2 threads on one
//! SKU). `cargo bench --bench stock`. Results: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use flashcast::commerce::stock::Stock;

/// The baseline: the same rule under a lock.
struct MutexStock(Mutex<u32>);

impl MutexStock {
    fn try_take(&self, qty: u32) -> bool {
        let mut left = self.0.lock().unwrap();
        if *left >= qty {
            *left -= qty;
            true
        } else {
            false
        }
    }
}

/// Runs `iters` take attempts split over `threads` threads on one shared
/// counter (refilled so attempts keep succeeding), returning the wall time.
fn contended<S: Send + Sync + 'static>(
    threads: usize,
    iters: u64,
    make: impl Fn() -> S,
    take: fn(&S) -> bool,
) -> Duration {
    let stock = Arc::new(make());
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stock, start) = (stock.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..iters / threads as u64 {
                    black_box(take(&stock));
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed()
}

fn stock(c: &mut Criterion) {
    let mut group = c.benchmark_group("stock_take_one_unit");
    for threads in [1usize, 2] {
        group.bench_function(format!("cas/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                contended(
                    threads,
                    iters,
                    || Stock::new(u32::MAX, u32::MAX),
                    |s| s.try_take(1).is_ok(),
                )
            })
        });
        group.bench_function(format!("mutex/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                contended(
                    threads,
                    iters,
                    || MutexStock(Mutex::new(u32::MAX)),
                    |s| s.try_take(1),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stock);
criterion_main!(benches);
