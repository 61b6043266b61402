//! The broadcast core: persistent fanout workers, about one per core
//! (`fanout_threads`), each owning a shard of this node's connections (by
//! `ConnId`) and its own io_uring ring, each fed through a bounded
//! crossbeam queue of `fanout_queue` jobs.
//!
//! A room's publish becomes one job per shard; subscribe, unsubscribe, a
//! private reply and a close go to the connection's shard only. A worker
//! runs its jobs in order, so a connection's frames leave in the order the
//! room made them, whichever thread the room runs on.
//!
//! A full queue holds the publishing room back (backpressure): the room's
//! thread waits until the worker takes the job (tokio `block_in_place`
//! where the runtime allows it) and `fanout_queue_full_total` counts it.
//! Nothing is dropped, and the room's own queue then fills, so new actions
//! get `room_busy`. Workers never wait for a socket, so a full queue means
//! the fanout is short of CPU, never that a viewer is slow.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use dashmap::DashMap;

use super::outbox::{Outbox, Push};
use super::uring::{Sends, BATCH};
use super::{ConnId, Fanout, Frames, Published, TopicId};
use crate::metrics::Metrics;
use flashcast_wire::codec::WireFrame;
use flashcast_wire::{CloseCode, Encoding};

/// How the workers are set up.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Worker threads (shards).
    pub threads: usize,
    /// Jobs one worker's queue holds.
    pub queue: usize,
    /// Send through io_uring (`fanout_io_uring`).
    pub io_uring: bool,
}

/// This node's sockets and the workers that write to them.
pub struct Transport {
    /// Every open connection's outbox, registered by its socket.
    conns: DashMap<ConnId, Arc<Outbox>>,
    shards: Vec<Sender<Job>>,
    metrics: Arc<Metrics>,
}

enum Job {
    Subscribe {
        topic: TopicId,
        conn: ConnId,
        outbox: Arc<Outbox>,
        encoding: Encoding,
    },
    Unsubscribe {
        topic: TopicId,
        conn: ConnId,
    },
    Publish {
        topic: TopicId,
        frames: [Option<Bytes>; 2],
        done: Published,
    },
    Send {
        outbox: Arc<Outbox>,
        frame: Bytes,
        done: Published,
    },
    Close {
        outbox: Arc<Outbox>,
        code: CloseCode,
    },
    /// Holds the worker until the barrier is passed twice (for tests).
    #[cfg(test)]
    Hold(Arc<std::sync::Barrier>),
}

impl Transport {
    pub fn new(config: WorkerConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        assert!(config.threads > 0 && config.queue > 0, "validated limits");
        let mut shards = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            let (tx, rx) = bounded(config.queue);
            let worker = Worker {
                topics: HashMap::new(),
                sends: Sends::new(config.io_uring, metrics.fanout_uring_submissions.clone()),
            };
            std::thread::Builder::new()
                .name(format!("flashcast-fanout-{i}"))
                .spawn(move || worker.run(rx))
                .expect("the fanout workers start");
            shards.push(tx);
        }
        Arc::new(Self {
            conns: DashMap::new(),
            shards,
            metrics,
        })
    }

    /// Makes `outbox` reachable as `conn` until `deregister`.
    pub fn register(&self, conn: ConnId, outbox: Arc<Outbox>) {
        self.conns.insert(conn, outbox);
    }

    pub fn deregister(&self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    fn outbox(&self, conn: ConnId) -> Option<Arc<Outbox>> {
        self.conns.get(&conn).map(|o| o.clone())
    }

    fn shard(&self, conn: ConnId) -> usize {
        (conn % self.shards.len() as u64) as usize
    }

    /// Queues `job` on `shard`, waiting for room if the queue is full.
    fn enqueue(&self, shard: usize, job: Job) {
        let tx = &self.shards[shard];
        let job = match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Disconnected(_)) => {
                return tracing::error!(shard, "fanout worker is gone");
            }
            Err(TrySendError::Full(job)) => job,
        };
        self.metrics.fanout_queue_full.inc();
        let send = || tx.send(job).is_ok();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let sent = if multi_thread {
            tokio::task::block_in_place(send)
        } else {
            send()
        };
        if !sent {
            tracing::error!(shard, "fanout worker is gone");
        }
    }

    /// Jobs waiting in each worker's queue (for tests and metrics).
    pub fn queued(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.len()).collect()
    }

    #[cfg(test)]
    fn hold(&self, shard: usize) -> Arc<std::sync::Barrier> {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        self.enqueue(shard, Job::Hold(barrier.clone()));
        barrier
    }
}

impl Fanout for Transport {
    fn subscribe(&self, topic: TopicId, conn: ConnId, encoding: Encoding) {
        if let Some(outbox) = self.outbox(conn) {
            let job = Job::Subscribe {
                topic,
                conn,
                outbox,
                encoding,
            };
            self.enqueue(self.shard(conn), job);
        }
    }

    fn unsubscribe(&self, topic: TopicId, conn: ConnId) {
        self.enqueue(self.shard(conn), Job::Unsubscribe { topic, conn });
    }

    fn publish(&self, topic: TopicId, frames: Frames) -> Published {
        // Framed once for every viewer: server frames are not masked.
        let frames = frames.map(|f| f.as_ref().map(super::frame::data));
        let done = Published::new(self.shards.len());
        for shard in 0..self.shards.len() {
            let job = Job::Publish {
                topic,
                frames: frames.clone(),
                done: done.clone(),
            };
            self.enqueue(shard, job);
        }
        done
    }

    fn send(&self, conn: ConnId, frame: WireFrame) -> Published {
        let Some(outbox) = self.outbox(conn) else {
            return Published::finished_now();
        };
        let frame = super::frame::data(&frame);
        let done = Published::new(1);
        let job = Job::Send {
            outbox,
            frame,
            done: done.clone(),
        };
        self.enqueue(self.shard(conn), job);
        done
    }

    fn close(&self, conn: ConnId, code: CloseCode) {
        if let Some(outbox) = self.outbox(conn) {
            self.enqueue(self.shard(conn), Job::Close { outbox, code });
        }
    }

    fn connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }
}

/// One shard's subscribers of one topic: a vector to walk, an index to
/// leave in constant time.
#[derive(Default)]
struct Topic {
    members: Vec<Member>,
    index: HashMap<ConnId, usize>,
}

struct Member {
    conn: ConnId,
    outbox: Arc<Outbox>,
    encoding: Encoding,
}

impl Topic {
    /// Joins at a random place, not at the end: each batch then reaches a
    /// shard's viewers in an order unrelated to when they joined. In join
    /// order, viewers who came together (one load generator's block, one
    /// office behind one proxy) would get every batch in one burst, at the
    /// same end of every fanout.
    fn add(&mut self, member: Member) {
        if let Some(&i) = self.index.get(&member.conn) {
            self.members[i] = member;
            return;
        }
        let at = rand::random_range(0..=self.members.len());
        self.members.push(member);
        let last = self.members.len() - 1;
        self.members.swap(at, last);
        self.index.insert(self.members[at].conn, at);
        self.index.insert(self.members[last].conn, last);
    }

    fn remove(&mut self, conn: ConnId) {
        let Some(i) = self.index.remove(&conn) else {
            return;
        };
        self.members.swap_remove(i);
        if let Some(moved) = self.members.get(i) {
            self.index.insert(moved.conn, i);
        }
    }
}

struct Worker {
    topics: HashMap<TopicId, Topic>,
    sends: Sends,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        // Ends when the transport (every sender) is dropped.
        while let Ok(job) = jobs.recv() {
            // A bug in one job must not take the shard's connections down
            // with it; `Sends` keeps what the kernel may still hold.
            let done = match &job {
                Job::Publish { done, .. } | Job::Send { done, .. } => Some(done.clone()),
                _ => None,
            };
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.run_job(job))).is_err() {
                tracing::error!("a fanout job panicked; the worker carries on");
                if let Some(done) = done {
                    done.part_done();
                }
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        match job {
            Job::Subscribe {
                topic,
                conn,
                outbox,
                encoding,
            } => self.topics.entry(topic).or_default().add(Member {
                conn,
                outbox,
                encoding,
            }),
            Job::Unsubscribe { topic, conn } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.remove(conn);
                    if t.members.is_empty() {
                        self.topics.remove(&topic);
                    }
                }
            }
            Job::Publish {
                topic,
                frames,
                done,
            } => {
                self.publish(topic, &frames);
                done.part_done();
            }
            Job::Send {
                outbox,
                frame,
                done,
            } => {
                outbox.push(frame);
                done.part_done();
            }
            Job::Close { outbox, code } => outbox.close(code),
            #[cfg(test)]
            Job::Hold(barrier) => {
                barrier.wait();
                barrier.wait();
            }
        }
    }

    /// Writes a batch to this shard's subscribers of `topic`, `BATCH` at a
    /// time. Those that overflow or are closed leave at once (their own
    /// task closes them, 4008, and tells the room).
    fn publish(&mut self, topic: TopicId, frames: &[Option<Bytes>; 2]) {
        let Some(t) = self.topics.get_mut(&topic) else {
            return;
        };
        let mut dropped: Vec<ConnId> = Vec::new();
        if !self.sends.batches() {
            // One send per viewer, straight from the loop: no batch to build.
            for m in &t.members {
                let Some(frame) = &frames[m.encoding.index()] else {
                    continue;
                };
                if let Push::Overflow | Push::Closed = m.outbox.push(frame.clone()) {
                    dropped.push(m.conn);
                }
            }
            for conn in dropped {
                t.remove(conn);
            }
            return;
        }
        let mut conns: Vec<ConnId> = Vec::with_capacity(BATCH);
        let mut batch: Vec<(&Arc<Outbox>, &Bytes)> = Vec::with_capacity(BATCH);
        let mut pushes = Vec::with_capacity(BATCH);
        for m in &t.members {
            let Some(frame) = &frames[m.encoding.index()] else {
                continue;
            };
            conns.push(m.conn);
            batch.push((&m.outbox, frame));
            if batch.len() == BATCH {
                self.sends.push_batch(&batch, &mut pushes);
                collect_dropped(&conns, &pushes, &mut dropped);
                conns.clear();
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.sends.push_batch(&batch, &mut pushes);
            collect_dropped(&conns, &pushes, &mut dropped);
        }
        drop(batch);
        for conn in dropped {
            t.remove(conn);
        }
    }
}

fn collect_dropped(conns: &[ConnId], pushes: &[Push], dropped: &mut Vec<ConnId>) {
    for (conn, push) in conns.iter().zip(pushes) {
        if let Push::Overflow | Push::Closed = push {
            dropped.push(*conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::outbox::tests::pair;
    use tokio::io::AsyncReadExt;

    fn transport(threads: usize, queue: usize) -> Arc<Transport> {
        let config = WorkerConfig {
            threads,
            queue,
            io_uring: true,
        };
        Transport::new(config, Arc::new(Metrics::new()))
    }

    fn text(s: &str) -> WireFrame {
        WireFrame::Text(s.to_string().into())
    }

    /// Reads `n` WebSocket text frames with short payloads.
    async fn read_texts(client: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x81, "a final text frame");
            let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
            client.read_exact(&mut payload).await.unwrap();
            out.push(String::from_utf8(payload).unwrap());
        }
        out
    }

    /// Members join at random places and leave in constant time: the index
    /// always points at each member, and each is there exactly once.
    #[tokio::test]
    async fn a_topic_index_stays_true_through_joins_and_leaves() {
        let (server, _client) = pair(4096).await;
        let outbox = Arc::new(Outbox::new(server, 4));
        let mut t = Topic::default();
        let member = |conn| Member {
            conn,
            outbox: outbox.clone(),
            encoding: Encoding::Json,
        };
        for conn in 0..200 {
            t.add(member(conn));
        }
        t.add(member(7)); // again: replaced, not added
        for conn in (0..200).step_by(3) {
            t.remove(conn);
        }
        let want: Vec<ConnId> = (0..200).filter(|c| c % 3 != 0).collect();
        let mut have: Vec<ConnId> = t.members.iter().map(|m| m.conn).collect();
        assert_ne!(have, want, "200 joins in join order: not random places");
        have.sort_unstable();
        assert_eq!(have, want);
        assert_eq!(t.index.len(), want.len());
        for (i, m) in t.members.iter().enumerate() {
            assert_eq!(t.index[&m.conn], i);
        }
    }

    /// Two shards, connections on both: replies, publishes and the close
    /// reach each connection in call order; an unsubscribed one gets no
    /// more of the topic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_connection_gets_its_frames_in_call_order() {
        let t = transport(2, 64);
        let topic = super::super::new_topic();
        let mut clients = Vec::new();
        for conn in 1..=4u64 {
            let (server, client) = pair(65536).await;
            t.register(conn, Arc::new(Outbox::new(server, 64)));
            t.send(conn, text(&format!("joined-{conn}")));
            t.subscribe(topic, conn, Encoding::Json);
            clients.push(client);
        }
        let mut last = None;
        for i in 0..20 {
            if i == 10 {
                t.unsubscribe(topic, 4);
            }
            last = Some(t.publish(topic, [None, Some(text(&format!("b{i}")))]));
        }
        t.send(1, text("reply"));
        last.unwrap().finished().await;
        for (i, client) in clients.iter_mut().enumerate() {
            let conn = i as u64 + 1;
            let n = if conn == 4 { 11 } else { 21 };
            let got = read_texts(client, n).await;
            let mut want = vec![format!("joined-{conn}")];
            want.extend((0..n - 1).map(|i| format!("b{i}")));
            assert_eq!(got, want, "conn {conn}");
        }
        assert_eq!(read_texts(&mut clients[0], 1).await, ["reply"]);
    }

    /// A full worker queue holds the publisher back until the worker takes
    /// the job: nothing is dropped, the wait is counted, and order holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_the_publisher_wait_and_loses_nothing() {
        let t = transport(1, 2);
        let topic = super::super::new_topic();
        let (server, mut client) = pair(65536).await;
        t.register(1, Arc::new(Outbox::new(server, 64)));
        t.subscribe(topic, 1, Encoding::Json);
        let barrier = t.hold(0);
        barrier.wait(); // the worker is held, its queue empty
        t.publish(topic, [None, Some(text("a"))]);
        t.publish(topic, [None, Some(text("b"))]);
        assert_eq!(t.queued(), [2], "the queue is full");
        assert_eq!(t.metrics.fanout_queue_full.get(), 0);
        let publisher = {
            let t = t.clone();
            tokio::spawn(async move { t.publish(topic, [None, Some(text("c"))]) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!publisher.is_finished(), "the third publish waits for room");
        assert_eq!(t.metrics.fanout_queue_full.get(), 1);
        barrier.wait(); // release the worker
        let last = publisher.await.unwrap();
        last.finished().await;
        assert_eq!(read_texts(&mut client, 3).await, ["a", "b", "c"]);
    }
}
