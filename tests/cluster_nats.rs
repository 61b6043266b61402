//! Cluster mode's NATS building blocks against the real NATS JetStream at
//! 127.0.0.1:4222 (running on this machine kind and in CI). Each test uses
//! its own bucket and stream, so tests run in parallel and leave nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use flashcast::cluster::lease::Leases;
use flashcast::cluster::log::{Entry, LogConfig, RoomLog};
use flashcast::cluster::{connect, ClusterError, ClusterResult};
use flashcast_wire::ids::RoomId;

const NATS: &str = "nats://127.0.0.1:4222";

async fn js() -> async_nats::jetstream::Context {
    connect(NATS, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need NATS with JetStream at {NATS} (see docs/cluster.md): {e}")
        })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:x}", rand::random::<u64>())
}

/// The reader's next batch, within 5 s.
async fn next<S>(reader: &mut S) -> Entry
where
    S: futures_util::Stream<Item = ClusterResult<Entry>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("a batch within 5 s")
        .expect("the reader goes on")
        .unwrap()
}

fn room(id: &str) -> RoomId {
    RoomId::new(id).unwrap()
}

/// One holder at a time; the lease outlives its TTL only when renewed;
/// after it lapses another node takes it with a higher term, and the old
/// holder's renewal is refused.
#[tokio::test]
async fn a_room_has_one_owner_and_a_lapsed_owner_is_fenced() {
    let js = js().await;
    let bucket = unique("flashcast_test_leases");
    let ttl = Duration::from_secs(1);
    let a = Leases::open(&js, &bucket, "node-a", ttl).await.unwrap();
    let b = Leases::open(&js, &bucket, "node-b", ttl).await.unwrap();
    let show = room("show.1:x");

    let mut held = a.acquire(&show).await.unwrap();
    match b.acquire(&show).await {
        Err(ClusterError::Fenced(why)) => assert!(why.contains("node-a"), "{why}"),
        other => panic!("a second owner: {other:?}"),
    }
    // Renewed every half TTL, A keeps it past several TTLs.
    for _ in 0..5 {
        tokio::time::sleep(ttl / 2).await;
        a.renew(&mut held).await.unwrap();
    }
    assert_eq!(a.holder(&show).await.unwrap().unwrap().node, "node-a");
    assert!(b.acquire(&show).await.is_err());

    // A stalls: the lease lapses and B takes it, with a higher term.
    let started = Instant::now();
    let taken = loop {
        match b.acquire(&show).await {
            Ok(lease) => break lease,
            Err(ClusterError::Fenced(_)) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("B never took the lapsed lease: {e}"),
        }
    };
    assert!(started.elapsed() >= ttl / 2, "taken before the TTL ran out");
    assert!(taken.term > held.term, "{} <= {}", taken.term, held.term);
    match a.renew(&mut held).await {
        Err(ClusterError::Fenced(_)) => {}
        other => panic!("the stale owner renewed: {other:?}"),
    }
    // The stale owner's release leaves the new owner alone.
    a.release(held).await.unwrap();
    assert_eq!(b.holder(&show).await.unwrap().unwrap().node, "node-b");
    // A release frees the room at once.
    b.release(taken).await.unwrap();
    assert_eq!(b.holder(&show).await.unwrap(), None);
    let again = a.acquire(&show).await.unwrap();
    a.release(again).await.unwrap();
    js.delete_key_value(&bucket).await.unwrap();
}

/// Appends are fenced by the subject's last sequence and de-duplicated by
/// message id; a reader gets a room's batches in order, only that room's,
/// then the new ones as they come; a deleted room's log is empty.
#[tokio::test]
async fn a_rooms_log_is_fenced_deduplicated_and_read_in_order() {
    let js = js().await;
    let name = unique("FLASHCAST_TEST_ROOMS");
    let log = RoomLog::open(
        &js,
        LogConfig {
            stream: name.clone(),
            prefix: name.to_lowercase(),
            max_batches_per_room: 100,
            max_age: Duration::from_secs(600),
            max_batch_bytes: 64 * 1024,
        },
    )
    .await
    .unwrap();
    let (show, other) = (room("show"), room("other"));
    assert_eq!(log.last(&show).await.unwrap(), None);

    let s1 = log.append(&show, 7, 1, 0, Bytes::from("b1")).await.unwrap();
    let o1 = log
        .append(&other, 9, 1, 0, Bytes::from("o1"))
        .await
        .unwrap();
    // A stale owner that still thinks the subject is empty is refused.
    match log.append(&show, 8, 1, 0, Bytes::from("stale")).await {
        Err(ClusterError::Fenced(_)) => {}
        other => panic!("a stale append went through: {other:?}"),
    }
    let s2 = log
        .append(&show, 7, 5, s1, Bytes::from("b2"))
        .await
        .unwrap();
    assert!(s1 < o1 && o1 < s2);
    // A retry of the same batch (its ack was lost) is not stored twice.
    let retry = log
        .append(&show, 7, 5, s1, Bytes::from("b2"))
        .await
        .unwrap();
    assert_eq!(retry, s2);
    assert_eq!(
        log.last(&show)
            .await
            .unwrap()
            .map(|e| (e.sequence, e.payload)),
        Some((s2, Bytes::from("b2")))
    );

    let mut reader = Box::pin(log.read(&show, 1).await.unwrap());
    let first = next(&mut reader).await;
    let second = next(&mut reader).await;
    assert_eq!(
        [
            (first.sequence, first.payload),
            (second.sequence, second.payload)
        ],
        [(s1, Bytes::from("b1")), (s2, Bytes::from("b2"))]
    );
    let s3 = log
        .append(&show, 7, 9, s2, Bytes::from("b3"))
        .await
        .unwrap();
    let live = next(&mut reader).await;
    assert_eq!((live.sequence, live.payload), (s3, Bytes::from("b3")));

    // Reading from the middle starts there.
    let mut tail = Box::pin(log.read(&show, s2).await.unwrap());
    assert_eq!(next(&mut tail).await.sequence, s2);

    log.delete(&show).await.unwrap();
    assert_eq!(log.last(&show).await.unwrap(), None);
    assert!(
        log.last(&other).await.unwrap().is_some(),
        "other rooms stay"
    );
    js.delete_stream(&name).await.unwrap();
}

/// Nothing listening: `Unavailable`, within the timeout, naming the URL.
#[tokio::test]
async fn an_unreachable_nats_is_unavailable_not_a_hang() {
    let started = Instant::now();
    match connect("nats://127.0.0.1:1", Duration::from_secs(2)).await {
        Err(ClusterError::Unavailable(why)) => assert!(why.contains("127.0.0.1:1"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// The first node records its secrets' fingerprints; a node with the same
/// secrets starts, one with another admin key or webhook secret is refused,
/// naming them.
#[tokio::test]
async fn a_node_with_other_secrets_is_refused() {
    use flashcast::cluster::secrets::{check_shared, Secrets};
    let js = js().await;
    let bucket = unique("flashcast_test_cluster");
    let first = Secrets {
        admin_key: "admin-1",
        token_secret: "tokens-1",
        webhook_secret: "hooks-1",
    };
    check_shared(&js, &bucket, &first).await.unwrap();
    check_shared(&js, &bucket, &first).await.unwrap();
    let other = Secrets {
        admin_key: "admin-2",
        token_secret: "tokens-1",
        webhook_secret: "hooks-2",
    };
    match check_shared(&js, &bucket, &other).await {
        Err(ClusterError::Mismatch(why)) => {
            assert!(
                why.contains("admin key") && why.contains("webhook secret"),
                "{why}"
            );
            assert!(!why.contains("token secret"), "{why}");
            assert!(
                !why.contains("admin-1") && !why.contains("admin-2"),
                "{why}"
            );
        }
        other => panic!("a node with other secrets started: {other:?}"),
    }
    js.delete_key_value(&bucket).await.unwrap();
}

/// A held lease is renewed in the background past many TTLs; it is lost
/// (and says why) when another node takes the room, or when NATS stops
/// answering for two thirds of the TTL; a released one is free at once.
#[tokio::test]
async fn a_held_lease_is_renewed_and_its_loss_is_reported() {
    use std::sync::Arc;
    let js = js().await;
    let bucket = unique("flashcast_test_held");
    let ttl = Duration::from_secs(1);
    let a = Arc::new(Leases::open(&js, &bucket, "node-a", ttl).await.unwrap());
    let b = Leases::open(&js, &bucket, "node-b", ttl).await.unwrap();
    let (one, two) = (room("one"), room("two"));

    // Held past 3 TTLs; nobody else gets it; released, it is free at once.
    let held = a.hold(a.acquire(&one).await.unwrap());
    tokio::time::sleep(ttl * 3).await;
    assert!(held.is_held());
    assert!(b.acquire(&one).await.is_err(), "taken while held");
    held.release().await;
    let taken = b.acquire(&one).await.unwrap();

    // Another node takes the room (here by force: its key purged and
    // created anew): the next renewal is refused and the loss reported.
    let mut held = a.hold(a.acquire(&two).await.unwrap());
    let kv = js.get_key_value(&bucket).await.unwrap();
    kv.purge("two").await.unwrap();
    let stolen = b.acquire(&two).await.unwrap();
    let why = tokio::time::timeout(ttl * 2, held.lost())
        .await
        .expect("loss reported");
    assert!(why.contains("lost"), "{why}");
    assert!(!held.is_held());
    assert!(stolen.term > held.term());
    drop(held);
    b.release(stolen).await.unwrap();
    b.release(taken).await.unwrap();

    // NATS stops answering for this bucket (its stream is gone): the
    // holder gives up within the TTL, before another node could take over.
    let mut held = a.hold(a.acquire(&two).await.unwrap());
    js.delete_key_value(&bucket).await.unwrap();
    let started = Instant::now();
    let why = tokio::time::timeout(ttl * 3, held.lost())
        .await
        .expect("loss reported");
    assert!(why.contains("not renewed"), "{why}");
    assert!(
        started.elapsed() <= ttl + ttl / 2,
        "{:?}",
        started.elapsed()
    );
}
