//! A room behind its fanout seam, with no socket at all: an in-memory
//! `Fanout` records what each connection would receive, and can hold a
//! publish "in flight" to show fanout-paced batching: a room sends its next
//! batch as soon as the previous fanout finished, and events share a batch
//! only while the fanout is busy, not because a tick is due.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashcast::clock::Clock;
use flashcast::cluster::journal::{Journal, RoomJournal};
use flashcast::cluster::{ClusterError, ClusterResult};
use flashcast::commerce::Commerce;
use flashcast::limits::Limits;
use flashcast::metrics::Metrics;
use flashcast::room::{ConnId, JoinRequest, Registry, RoomContext, RoomHandle, RoomInfo};
use flashcast::store::Store;
use flashcast::transport::{Fanout, Frames, Published, TopicId};
use flashcast_wire::client::{Ban, Chat, RoomMsg, Unmute};
use flashcast_wire::codec::{decode_server, WireFrame};
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{
    CloseCode, Encoding, ErrorCode, EventBody, ReactionKind, Role, ServerMsg, UserRef,
};

/// What a connection would have received.
#[derive(Debug)]
// Test-only records; their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Seen {
    Msg(ServerMsg),
    Closed(CloseCode),
}

#[derive(Default)]
struct Memory {
    connected: Mutex<HashSet<ConnId>>,
    subs: Mutex<HashMap<TopicId, HashMap<ConnId, Encoding>>>,
    inbox: Mutex<HashMap<ConnId, Vec<Seen>>>,
    encodings: Mutex<HashMap<ConnId, Encoding>>,
    /// While set, publishes stay in flight until `release`.
    hold: Mutex<Option<Vec<Published>>>,
    publishes: Mutex<usize>,
}

fn decode(encoding: Encoding, frame: &WireFrame) -> ServerMsg {
    let bytes: &[u8] = match frame {
        WireFrame::Binary(b) => b,
        WireFrame::Text(t) => t,
    };
    decode_server(encoding, bytes).expect("a server message")
}

impl Memory {
    fn connect(&self, conn: ConnId, encoding: Encoding) {
        self.connected.lock().unwrap().insert(conn);
        self.encodings.lock().unwrap().insert(conn, encoding);
    }

    fn hold(&self) {
        *self.hold.lock().unwrap() = Some(Vec::new());
    }

    fn release(&self) {
        for p in self.hold.lock().unwrap().take().unwrap_or_default() {
            p.part_done();
        }
    }

    fn publishes(&self) -> usize {
        *self.publishes.lock().unwrap()
    }

    fn take(&self, conn: ConnId) -> Vec<Seen> {
        std::mem::take(self.inbox.lock().unwrap().entry(conn).or_default())
    }

    fn deliver(&self, conn: ConnId, seen: Seen) {
        self.inbox
            .lock()
            .unwrap()
            .entry(conn)
            .or_default()
            .push(seen);
    }
}

impl Fanout for Memory {
    fn subscribe(&self, topic: TopicId, conn: ConnId, encoding: Encoding) {
        let mut subs = self.subs.lock().unwrap();
        subs.entry(topic).or_default().insert(conn, encoding);
    }

    fn unsubscribe(&self, topic: TopicId, conn: ConnId) {
        if let Some(t) = self.subs.lock().unwrap().get_mut(&topic) {
            t.remove(&conn);
        }
    }

    fn publish(&self, topic: TopicId, frames: Frames) -> Published {
        *self.publishes.lock().unwrap() += 1;
        let subs = self.subs.lock().unwrap().get(&topic).cloned();
        for (conn, encoding) in subs.unwrap_or_default() {
            if let Some(frame) = &frames[encoding.index()] {
                self.deliver(conn, Seen::Msg(decode(encoding, frame)));
            }
        }
        let published = Published::new(1);
        match self.hold.lock().unwrap().as_mut() {
            Some(held) => held.push(published.clone()),
            None => published.part_done(),
        }
        published
    }

    fn send(&self, conn: ConnId, frame: WireFrame) -> Published {
        let encoding = self.encodings.lock().unwrap()[&conn];
        self.deliver(conn, Seen::Msg(decode(encoding, &frame)));
        Published::finished_now()
    }

    fn close(&self, conn: ConnId, code: CloseCode) {
        self.deliver(conn, Seen::Closed(code));
    }

    fn connected(&self, conn: ConnId) -> bool {
        self.connected.lock().unwrap().contains(&conn)
    }
}

struct Room {
    handle: RoomHandle,
    memory: Arc<Memory>,
    _dir: tempfile::TempDir,
}

async fn room(tick_ms: u64) -> Room {
    room_with(Limits {
        tick_ms,
        ..Limits::default()
    })
    .await
}

async fn room_with(limits: Limits) -> Room {
    room_journaled(limits, None).await
}

async fn room_journaled(limits: Limits, journal: Option<Arc<dyn Journal>>) -> Room {
    let dir = tempfile::tempdir().unwrap();
    let limits = Arc::new(limits);
    let metrics = Arc::new(Metrics::new());
    let store = Store::open_sqlite(dir.path(), Default::default()).unwrap();
    let commerce = Arc::new(
        Commerce::open(
            store.clone(),
            limits.clone(),
            metrics.clone(),
            b"s".to_vec(),
            Clock::system(),
        )
        .await
        .unwrap(),
    );
    let memory = Arc::new(Memory::default());
    let registry = Registry::new(Arc::new(RoomContext {
        clock: Clock::system(),
        limits,
        metrics,
        store,
        commerce,
        fanout: memory.clone(),
        journal,
    }));
    let info = RoomInfo {
        id: RoomId::new("mem").unwrap(),
        title: "in memory".into(),
        allow_guests: true,
        created_at: 0,
    };
    let handle = registry.open(info, Vec::new()).unwrap();
    Room {
        handle,
        memory,
        _dir: dir,
    }
}

fn user(id: &str, role: Role) -> UserRef {
    UserRef {
        id: UserId::new(id).unwrap(),
        name: Arc::from(id),
        role,
    }
}

impl Room {
    async fn join(&self, conn: ConnId, encoding: Encoding, who: &UserRef) {
        self.memory.connect(conn, encoding);
        let req = JoinRequest {
            conn,
            user: who.clone(),
            encoding,
            last_seq: None,
            epoch: None,
        };
        self.handle.join(req).await.unwrap();
    }

    fn chat(&self, conn: ConnId, who: &UserRef, text: &str) {
        let msg = RoomMsg::Chat(Chat { text: text.into() });
        self.handle.act(conn, who.clone(), None, msg).unwrap();
    }

    /// Waits until `n` publishes happened in all.
    async fn publishes(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.memory.publishes() < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} publishes, not {n}", self.memory.publishes()));
    }
}

/// The chat texts of every batch `seen` holds, one list per batch.
fn chat_batches(seen: &[Seen]) -> Vec<Vec<String>> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Msg(ServerMsg::Batch { events, .. }) => Some(
                events
                    .iter()
                    .filter_map(|e| match &e.body {
                        EventBody::Chat { text, .. } => Some(text.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .filter(|texts: &Vec<String>| !texts.is_empty())
        .collect()
}

#[tokio::test]
async fn a_room_talks_to_its_viewers_only_through_the_fanout() {
    let room = room(50).await;
    let (ann, bob) = (user("ann", Role::Viewer), user("bob", Role::Moderator));
    room.join(1, Encoding::Json, &ann).await;
    room.join(2, Encoding::MsgPack, &bob).await;
    room.chat(1, &ann, "hello");
    // A room-level refusal is a private reply to its sender only.
    let unmute = RoomMsg::Unmute(Unmute {
        user_id: ann.id.clone(),
    });
    room.handle.act(2, bob.clone(), Some(7), unmute).unwrap();
    room.handle
        .act(
            2,
            bob.clone(),
            None,
            RoomMsg::Ban(Ban {
                user_id: ann.id.clone(),
            }),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ann_saw = room.memory.take(1);
    assert!(
        matches!(ann_saw.first(), Some(Seen::Msg(ServerMsg::Joined { .. }))),
        "joined comes first: {ann_saw:?}"
    );
    assert_eq!(chat_batches(&ann_saw), [["hello"]]);
    // The ban is published before the banned viewer is closed.
    let banned_at = ann_saw
        .iter()
        .position(|s| match s {
            Seen::Msg(ServerMsg::Batch { events, .. }) => events
                .iter()
                .any(|e| matches!(e.body, EventBody::UserBanned { .. })),
            _ => false,
        })
        .expect("ann saw her ban");
    assert!(matches!(
        ann_saw.last(),
        Some(Seen::Closed(CloseCode::Forbidden))
    ));
    assert_eq!(banned_at, ann_saw.len() - 2);

    let bob_saw = room.memory.take(2);
    assert_eq!(chat_batches(&bob_saw), [["hello"]]);
    let error = bob_saw.iter().find_map(|s| match s {
        Seen::Msg(ServerMsg::Error {
            code, reference, ..
        }) => Some((*code, *reference)),
        _ => None,
    });
    assert_eq!(error, Some((ErrorCode::NotFound, Some(7))));
}

/// With a one-second tick: a batch leaves as soon as the fanout is free,
/// what arrives while it is busy shares the next batch, which leaves the
/// moment the busy fanout finishes (not at the tick).
#[tokio::test]
async fn batches_follow_the_fanout_not_the_tick() {
    let room = room(1_000).await;
    let ann = user("ann", Role::Viewer);
    room.join(1, Encoding::Json, &ann).await;
    let base = room.memory.publishes();
    room.memory.hold();

    room.chat(1, &ann, "first");
    room.publishes(base + 1).await;
    room.chat(1, &ann, "second");
    room.chat(1, &ann, "third");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        room.memory.publishes(),
        base + 1,
        "nothing more is handed out while the fanout is busy"
    );

    room.memory.release();
    let released = std::time::Instant::now();
    room.publishes(base + 2).await;
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "the waiting batch left when the fanout finished, not at the tick"
    );
    room.memory.release();

    // Idle again: a lone event leaves at once.
    let sent = std::time::Instant::now();
    room.chat(1, &ann, "fourth");
    room.publishes(base + 3).await;
    assert!(sent.elapsed() < Duration::from_millis(500));
    room.memory.release();

    assert_eq!(
        chat_batches(&room.memory.take(1)),
        [vec!["first"], vec!["second", "third"], vec!["fourth"]]
    );
}

/// A room larger than `room_frames_per_sec` spaces its batches by viewers
/// / that rate even when the fanout is free: here 2 viewers at 4 frames a
/// second, a gap of 500 ms. A quiet room's first event still leaves at
/// once; what follows within the gap waits for it and shares a batch.
#[tokio::test]
async fn a_large_room_spaces_its_batches() {
    let room = room_with(Limits {
        tick_ms: 1_000,
        room_frames_per_sec: Some(4),
        ..Limits::default()
    })
    .await;
    let (ann, bob) = (user("ann", Role::Viewer), user("bob", Role::Viewer));
    room.join(1, Encoding::Json, &ann).await;
    room.join(2, Encoding::Json, &bob).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the gap passes
    let base = room.memory.publishes();

    let sent = std::time::Instant::now();
    room.chat(1, &ann, "first");
    room.publishes(base + 1).await;
    let first_out = sent.elapsed();
    room.chat(1, &ann, "second");
    room.chat(2, &bob, "third");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        room.memory.publishes(),
        base + 1,
        "the fanout is free, but the gap has not passed"
    );
    room.publishes(base + 2).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "the second batch left {:?} after the first event",
        sent.elapsed()
    );
    assert!(
        first_out < Duration::from_millis(300),
        "a quiet room's first event leaves at once, not after {first_out:?}"
    );
    assert_eq!(
        chat_batches(&room.memory.take(1)),
        [vec!["first"], vec!["second", "third"]]
    );
}

/// Reactions carry no event: they are counted and go out with the next
/// batch, at the latest one tick after they arrived.
#[tokio::test]
async fn reactions_go_out_aggregated_within_a_tick() {
    let room = room(100).await;
    let ann = user("ann", Role::Viewer);
    room.join(1, Encoding::MsgPack, &ann).await;
    room.memory.take(1);
    for _ in 0..5 {
        room.handle.react(ReactionKind::Heart);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counts: Vec<u32> = room
        .memory
        .take(1)
        .iter()
        .filter_map(|s| match s {
            Seen::Msg(ServerMsg::Batch { reactions, .. }) => {
                reactions.get(&ReactionKind::Heart).copied()
            }
            _ => None,
        })
        .collect();
    assert_eq!(counts, [5], "one aggregated count");
}

/// A journal the test answers: each append is recorded and waits for
/// `answer`.
#[derive(Default)]
struct HeldJournal {
    appends: Mutex<Vec<(u64, bytes::Bytes)>>,
    waiting: Mutex<Vec<tokio::sync::oneshot::Sender<ClusterResult<()>>>>,
}

struct Held(Arc<HeldJournal>);
struct HeldRoom(Arc<HeldJournal>);

impl Journal for Held {
    fn room(&self, _room: &RoomId, _epoch: u64) -> Box<dyn RoomJournal> {
        Box::new(HeldRoom(self.0.clone()))
    }
}

impl RoomJournal for HeldRoom {
    fn append(
        &mut self,
        first_seq: u64,
        batch: bytes::Bytes,
    ) -> futures_util::future::BoxFuture<'static, ClusterResult<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.appends.lock().unwrap().push((first_seq, batch));
        self.0.waiting.lock().unwrap().push(tx);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(ClusterError::Unavailable("gone".into())))
        })
    }
}

impl HeldJournal {
    /// Waits until `n` appends were made in all.
    async fn appends(&self, n: usize) -> Vec<(u64, bytes::Bytes)> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let appends = self.appends.lock().unwrap().clone();
                if appends.len() >= n {
                    return appends;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} appends, not {n}", self.appends.lock().unwrap().len()))
    }

    fn answer(&self, result: ClusterResult<()>) {
        let tx = self.waiting.lock().unwrap().remove(0);
        tx.send(result).unwrap();
    }
}

fn chats_of(record: &[u8]) -> Vec<(u64, String)> {
    match decode_server(Encoding::MsgPack, record).unwrap() {
        ServerMsg::Batch { events, .. } => events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Chat { text, .. } => Some((e.seq, text.clone())),
                _ => None,
            })
            .collect(),
        other => panic!("not a batch: {other:?}"),
    }
}

/// Cluster mode's rule: a batch is published only once the journal has it.
/// Until then nothing else is sent and no join is admitted; a failed
/// append is retried with the same batch; a fenced one makes the room step
/// down, closing its viewers (1012) without publishing the batch.
#[tokio::test]
async fn a_batch_is_published_only_once_journaled() {
    let journal = Arc::new(HeldJournal::default());
    let room = room_journaled(
        Limits {
            tick_ms: 1_000,
            ..Limits::default()
        },
        Some(Arc::new(Held(journal.clone()))),
    )
    .await;
    let (ann, bob) = (user("ann", Role::Viewer), user("bob", Role::Viewer));
    room.join(1, Encoding::Json, &ann).await;
    let base = room.memory.publishes();
    room.memory.take(1);

    room.chat(1, &ann, "first");
    let appends = journal.appends(1).await;
    assert_eq!(appends[0].0, 1, "the batch's first seq");
    assert_eq!(chats_of(&appends[0].1), [(1, "first".to_string())]);
    // Bob asks to join while the batch waits for the journal.
    room.memory.connect(2, Encoding::MsgPack);
    let join = {
        let handle = room.handle.clone();
        let bob = bob.clone();
        tokio::spawn(async move {
            let req = JoinRequest {
                conn: 2,
                user: bob,
                encoding: Encoding::MsgPack,
                last_seq: None,
                epoch: None,
            };
            handle.join(req).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        room.memory.publishes(),
        base,
        "nothing published before the journal"
    );
    assert!(chat_batches(&room.memory.take(1)).is_empty());
    assert!(!join.is_finished(), "no join admitted before the journal");

    journal.answer(Ok(()));
    room.publishes(base + 1).await;
    assert_eq!(chat_batches(&room.memory.take(1)), [vec!["first"]]);
    join.await.unwrap().unwrap();
    match room.memory.take(2).first() {
        Some(Seen::Msg(ServerMsg::Joined { seq, .. })) => assert_eq!(*seq, 1),
        other => panic!("bob's first frame: {other:?}"),
    }

    // Unavailable: the same batch is appended again, then published.
    room.chat(1, &ann, "second");
    let first_try = journal.appends(2).await[1].clone();
    journal.answer(Err(ClusterError::Unavailable("nats down".into())));
    let retry = journal.appends(3).await[2].clone();
    assert_eq!(retry, first_try, "a retry appends the same batch");
    assert_eq!(room.memory.publishes(), base + 1);
    journal.answer(Ok(()));
    room.publishes(base + 2).await;
    for conn in [1, 2] {
        assert_eq!(chat_batches(&room.memory.take(conn)), [vec!["second"]]);
    }

    // Fenced: the room steps down; the batch is never published.
    room.chat(1, &ann, "third");
    journal.appends(4).await;
    journal.answer(Err(ClusterError::Fenced("another owner".into())));
    let closed = |conn| {
        room.memory
            .inbox
            .lock()
            .unwrap()
            .get(&conn)
            .is_some_and(|seen| {
                seen.iter()
                    .any(|s| matches!(s, Seen::Closed(CloseCode::ServiceRestart)))
            })
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while !(closed(1) && closed(2)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the viewers were closed");
    for conn in [1, 2] {
        let seen = room.memory.take(conn);
        assert!(chat_batches(&seen).is_empty(), "{seen:?}");
        assert!(
            seen.iter()
                .any(|s| matches!(s, Seen::Closed(CloseCode::ServiceRestart))),
            "conn {conn}: {seen:?}"
        );
    }
    assert_eq!(room.memory.publishes(), base + 2);
}

/// The JetStream journal against the real NATS at 127.0.0.1:4222: what the
/// viewers received is exactly what the room's subject holds, in order.
#[tokio::test]
async fn a_room_journals_its_batches_to_jetstream() {
    use flashcast::cluster::journal::JetStreamJournal;
    use flashcast::cluster::log::{LogConfig, RoomLog};
    use futures_util::StreamExt;
    let js = flashcast::cluster::connect("nats://127.0.0.1:4222", Duration::from_secs(5))
        .await
        .expect("this test needs NATS with JetStream at 127.0.0.1:4222");
    let name = format!("FLASHCAST_TEST_JOURNAL_{:x}", rand::random::<u64>());
    let log = Arc::new(
        RoomLog::open(
            &js,
            LogConfig {
                stream: name.clone(),
                prefix: name.to_lowercase(),
                max_batches_per_room: 1_000,
                max_age: Duration::from_secs(600),
                max_batch_bytes: 1 << 20,
            },
        )
        .await
        .unwrap(),
    );
    let room = room_journaled(
        Limits::default(),
        Some(Arc::new(JetStreamJournal::new(log.clone()))),
    )
    .await;
    let ann = user("ann", Role::Viewer);
    room.join(1, Encoding::MsgPack, &ann).await;
    for i in 0..5 {
        room.chat(1, &ann, &format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let want: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < 5 {
            seen.extend(chat_batches(&room.memory.take(1)).into_iter().flatten());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
    .await
    .expect("the viewer got the 5 messages");
    assert_eq!(seen, want);

    let mut reader = Box::pin(log.read(room.handle.id(), 1).await.unwrap());
    let mut logged: Vec<(u64, String)> = Vec::new();
    while logged.len() < 5 {
        let entry = tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .expect("the log holds every published batch")
            .unwrap()
            .unwrap();
        logged.extend(chats_of(&entry.payload));
    }
    let seqs: Vec<u64> = logged.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let texts: Vec<String> = logged.into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, want);
    js.delete_stream(&name).await.unwrap();
}
