//! Fanout cost of one tick: encoding the batch once and sharing the bytes
//! (what the room actor does) against encoding it once per subscriber (what
//! a naive server does), for both encodings; plus the history ring.
//!
//! `cargo bench --bench fanout`. Results and the machine: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flashcast::room::history::History;
use flashcast_wire::ids::UserId;
use flashcast_wire::{Encoding, Event, EventBody, ReactionKind, Role, ServerMsg, UserRef};

const SUBSCRIBERS: usize = 10_000;

fn tick_batch(events: usize) -> ServerMsg {
    let user = UserRef {
        id: UserId::new("viewer-42").unwrap(),
        name: Arc::from("Viewer 42"),
        role: Role::Viewer,
    };
    ServerMsg::Batch {
        events: (0..events as u64)
            .map(|seq| {
                Arc::new(Event {
                    seq,
                    ts: 1_795_000_000_000 + seq,
                    body: EventBody::Chat {
                        user: user.clone(),
                        text: "is the blue one still in stock? 😍".into(),
                        deleted: false,
                    },
                })
            })
            .collect(),
        viewers: Some(10_000),
        reactions: [(ReactionKind::Heart, 40), (ReactionKind::Fire, 9)].into(),
        tallies: vec![],
    }
}

fn fanout(c: &mut Criterion) {
    // 200 msgs/s at a 25 ms tick is 5 events per tick.
    let batch = tick_batch(5);
    let mut group = c.benchmark_group("fanout_one_tick_10k_subscribers");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.sample_size(20);
    for enc in Encoding::ALL {
        group.bench_function(format!("{enc:?}/encode_once_share"), |b| {
            b.iter(|| {
                let frame = enc.encode(&batch).unwrap();
                let queued: Vec<_> = (0..SUBSCRIBERS).map(|_| frame.clone()).collect();
                black_box(queued)
            })
        });
        group.bench_function(format!("{enc:?}/encode_per_subscriber"), |b| {
            b.iter(|| {
                let queued: Vec<_> = (0..SUBSCRIBERS)
                    .map(|_| enc.encode(&batch).unwrap())
                    .collect();
                black_box(queued)
            })
        });
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let batch = tick_batch(5);
    let mut group = c.benchmark_group("codec_encode_5_event_batch");
    for enc in Encoding::ALL {
        group.bench_function(format!("{enc:?}"), |b| {
            b.iter(|| black_box(enc.encode(&batch).unwrap()))
        });
    }
    group.finish();
}

fn history(c: &mut Criterion) {
    let event = |seq| {
        Arc::new(Event {
            seq,
            ts: 0,
            body: EventBody::SlowMode { seconds: 0 },
        })
    };
    c.bench_function("history_push_2000_ring", |b| {
        b.iter_batched(
            || History::new(2_000),
            |mut h| {
                for seq in 1..=10_000 {
                    h.push(event(seq));
                }
                black_box(h)
            },
            BatchSize::SmallInput,
        )
    });
    let mut h = History::new(2_000);
    for seq in 1..=10_000 {
        h.push(event(seq));
    }
    c.bench_function("history_resume_100_missed", |b| {
        b.iter(|| black_box(h.since(9_900, 10_000)))
    });
}

criterion_group!(benches, fanout, codec, history);
criterion_main!(benches);
