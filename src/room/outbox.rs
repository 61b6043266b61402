//! A connection's outgoing byte stream, written from two places: the room's
//! fanout (the tick's frame, shared by every viewer) and the connection's own
//! task (replies, close). Both push whole WebSocket frames here.
//!
//! The fast path is one non-blocking send on the socket from the pushing
//! task, with no task wake-up, channel or per-viewer copy in between. A
//! tick's fanout hands its sends to the kernel 256 at a time as io_uring
//! submissions (`push_batch`, `fanout_io_uring`): 10,000 viewers, 40 system
//! calls, and no outbox locked while the kernel sends. Only when the
//! kernel's send buffer is full does a frame wait here, and then the
//! connection's task is woken to write the backlog as the socket drains.
//! The backlog is bounded in frames; past it the connection is a slow
//! consumer (4008) and resumes.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use flashcast_wire::CloseCode;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Handed to the kernel whole.
    Sent,
    /// Waiting behind a full socket; the connection's task writes it.
    Queued,
    /// The backlog was full: the connection is closed as a slow consumer.
    Overflow,
    /// The connection is closing or its socket failed.
    Closed,
}

/// Why the connection's task was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Frames are waiting for the socket to drain.
    Backlog,
    /// Close the connection with this code (after what was pushed before).
    Close(CloseCode),
}

#[derive(Debug)]
struct State {
    backlog: VecDeque<Bytes>,
    /// Bytes of the backlog's first frame already written.
    written: usize,
    /// Set once: slow consumer, room closing the connection, or a dead socket.
    close: Option<CloseCode>,
    /// The socket failed; nothing more can be written.
    broken: bool,
    /// A fanout's io_uring send of a frame is with the kernel. That frame
    /// comes before the whole backlog: until it lands (`land`), pushes
    /// queue and `drain` waits, so nothing overtakes it.
    in_flight: bool,
}

/// See the module docs. Shared (`Arc`) by the room and the connection task.
pub struct Outbox {
    socket: Arc<TcpStream>,
    /// `socket`'s descriptor, read once: through tokio it is a walk to a
    /// cold cache line per viewer per fanout (1.7% of the server's samples
    /// in a 2,000-viewer, 10 msgs/s profile).
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    state: Mutex<State>,
    wake: Notify,
    max_backlog: usize,
}

impl Outbox {
    /// `max_backlog`: frames that may wait behind a full socket.
    pub fn new(socket: Arc<TcpStream>, max_backlog: usize) -> Self {
        assert!(max_backlog > 0, "a backlog of zero frames closes everyone");
        Self {
            #[cfg(target_os = "linux")]
            fd: std::os::fd::AsRawFd::as_raw_fd(&*socket),
            socket,
            state: Mutex::new(State {
                backlog: VecDeque::new(),
                written: 0,
                close: None,
                broken: false,
                in_flight: false,
            }),
            wake: Notify::new(),
            max_backlog,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent state: every
        // field is updated after the system call that justifies it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one whole WebSocket frame, or queues it behind the ones still
    /// waiting. Never blocks and never reorders.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut st = self.lock();
        if st.broken || st.close.is_some() {
            return Push::Closed;
        }
        self.push_locked(&mut st, frame, false)
    }

    /// Like `push`, for the connection's last words (the error that explains
    /// a close, the close frame): never refused for backlog.
    pub fn push_final(&self, frame: Bytes) -> Push {
        let mut st = self.lock();
        if st.broken {
            return Push::Closed;
        }
        self.push_locked(&mut st, frame, true)
    }

    fn push_locked(&self, st: &mut State, frame: Bytes, is_final: bool) -> Push {
        debug_assert!(!frame.is_empty(), "frames have a header");
        if st.backlog.is_empty() && !st.in_flight {
            let sent = self.socket.try_write(&frame);
            return self.after_send(st, frame, sent);
        }
        if !is_final && st.backlog.len() >= self.max_backlog {
            // Keep only a partly written frame: the stream must stay whole
            // for the error and close frames that follow.
            let keep = usize::from(st.written > 0);
            st.backlog.truncate(keep);
            st.close = Some(CloseCode::SlowConsumer);
            self.wake.notify_one();
            return Push::Overflow;
        }
        st.backlog.push_back(frame);
        Push::Queued
    }

    /// Records what one send of `frame` on an empty backlog did.
    fn after_send(&self, st: &mut State, frame: Bytes, sent: io::Result<usize>) -> Push {
        debug_assert!(
            st.backlog.is_empty(),
            "only the first frame is sent directly"
        );
        match sent {
            Ok(n) if n == frame.len() => return Push::Sent,
            Ok(n) => {
                st.written = n;
                st.backlog.push_back(frame);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.written = 0;
                st.backlog.push_back(frame);
            }
            Err(_) => {
                st.broken = true;
                self.wake.notify_one();
                return Push::Closed;
            }
        }
        self.wake.notify_one();
        Push::Queued
    }

    #[cfg(target_os = "linux")]
    /// Marks `frame`'s send as handed to io_uring, if it may go now: the
    /// lock is not held while the kernel has it. `Err`: what `push` did
    /// instead (queued behind a backlog, overflow, closed).
    fn take_off(&self, frame: &Bytes) -> Result<(), Push> {
        let mut st = self.lock();
        if st.broken || st.close.is_some() {
            return Err(Push::Closed);
        }
        if !st.backlog.is_empty() || st.in_flight {
            return Err(self.push_locked(&mut st, frame.clone(), false));
        }
        st.in_flight = true;
        Ok(())
    }

    #[cfg(target_os = "linux")]
    /// Records what the in-flight send of `frame` did. What was pushed
    /// meanwhile waits behind it; the connection's task is woken to write
    /// whatever remains.
    fn land(&self, frame: &Bytes, sent: io::Result<usize>) -> Push {
        let mut st = self.lock();
        assert!(st.in_flight, "land follows take_off");
        st.in_flight = false;
        debug_assert_eq!(st.written, 0, "nothing is written past an in-flight frame");
        let push = match sent {
            Ok(n) if n == frame.len() => Push::Sent,
            Ok(n) => {
                st.written = n;
                st.backlog.push_front(frame.clone());
                Push::Queued
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.backlog.push_front(frame.clone());
                Push::Queued
            }
            Err(_) => {
                st.broken = true;
                Push::Closed
            }
        };
        if st.broken || !st.backlog.is_empty() {
            self.wake.notify_one();
        }
        push
    }

    /// Asks the connection's task to close with `code` once what was pushed
    /// so far is written. The first reason wins.
    pub fn close(&self, code: CloseCode) {
        let mut st = self.lock();
        if st.close.is_none() {
            st.close = Some(code);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Waits until the connection's task has something to do. Cancel-safe.
    pub async fn woken(&self) -> Wake {
        loop {
            {
                let st = self.lock();
                if st.broken {
                    return Wake::Close(CloseCode::Normal);
                }
                if let Some(code) = st.close {
                    return Wake::Close(code);
                }
                if !st.backlog.is_empty() {
                    return Wake::Backlog;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Writes the backlog as the socket drains. Returns when it is empty;
    /// an error means the socket is dead.
    pub async fn drain(&self) -> io::Result<()> {
        loop {
            let landing = {
                let mut st = self.lock();
                if st.broken {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                // The backlog goes after a frame in flight; `land` wakes us
                // (Notify keeps the permit if it lands first).
                let landing = st.in_flight && !st.backlog.is_empty();
                if !landing {
                    loop {
                        let Some(front) = st.backlog.front().cloned() else {
                            return Ok(());
                        };
                        match self.socket.try_write(&front[st.written..]) {
                            Ok(n) => {
                                st.written += n;
                                if st.written == front.len() {
                                    st.backlog.pop_front();
                                    st.written = 0;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                st.broken = true;
                                return Err(e);
                            }
                        }
                    }
                }
                landing
            };
            if landing {
                self.wake.notified().await;
            } else {
                self.socket.writable().await?;
            }
        }
    }

    /// Frames waiting behind the socket (for tests and metrics).
    pub fn backlog(&self) -> usize {
        self.lock().backlog.len()
    }
}

/// Outboxes one `push_batch` call takes: one io_uring submission (one
/// system call) sends to this many viewers.
pub const BATCH: usize = 256;

/// Pushes a frame to each of up to `BATCH` outboxes, with the same outcome
/// per outbox as `push`. With `uring`, the sends of all outboxes whose
/// backlog is empty go to the kernel as one io_uring submission instead of
/// one `send` each: the TCP work is the same, the system call entries and
/// exits are not (about 1 µs of the 6-9 µs a loopback send costs on the
/// 2-core benchmark machine, docs/benchmarks.md). Where io_uring is not
/// available (an old kernel, a seccomp profile that forbids it), it warns
/// once and sends one by one. `submissions` counts io_uring submissions.
pub fn push_batch(
    batch: &[(&Outbox, &Bytes)],
    uring: bool,
    submissions: &prometheus::IntCounter,
) -> Vec<Push> {
    assert!(batch.len() <= BATCH, "at most BATCH outboxes per call");
    #[cfg(target_os = "linux")]
    if uring {
        if let Some(pushes) = uring::push_batch(batch) {
            submissions.inc();
            return pushes;
        }
    }
    let _ = (uring, submissions);
    batch.iter().map(|(o, f)| o.push((*f).clone())).collect()
}

#[cfg(target_os = "linux")]
mod uring {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use bytes::Bytes;
    use io_uring::{opcode, types, IoUring};

    use super::{Outbox, Push, BATCH};

    /// Rings kept for reuse when their thread ends.
    const MAX_POOLED: usize = 64;

    /// A thread's ring; given back to `POOL` when the thread ends. A large
    /// room's fanout threads last one fanout each: without the pool every
    /// tick would set up a ring and tear one down.
    struct ThreadRing(Option<IoUring>);

    impl Drop for ThreadRing {
        fn drop(&mut self) {
            if let Some(ring) = self.0.take() {
                let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < MAX_POOLED {
                    pool.push(ring);
                }
            }
        }
    }

    static POOL: Mutex<Vec<IoUring>> = Mutex::new(Vec::new());

    thread_local! {
        /// The writing thread's ring, taken from the pool or made on first use.
        static RING: RefCell<ThreadRing> = const { RefCell::new(ThreadRing(None)) };
    }
    /// Cleared, with a warning, the first time a ring cannot be made.
    static AVAILABLE: AtomicBool = AtomicBool::new(true);

    /// `None`: io_uring is not available; nothing was sent.
    pub(super) fn push_batch(batch: &[(&Outbox, &Bytes)]) -> Option<Vec<Push>> {
        if !AVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        RING.with_borrow_mut(|ThreadRing(slot)| {
            if slot.is_none() {
                let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match pooled.map_or_else(|| IoUring::new(BATCH as u32), Ok) {
                    Ok(ring) => *slot = Some(ring),
                    Err(e) => {
                        if AVAILABLE.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "io_uring not available; fanouts send one by one");
                        }
                        return None;
                    }
                }
            }
            let ring = slot.as_mut().expect("made above");
            Some(send_all(ring, batch))
        })
    }

    fn send_all(ring: &mut IoUring, batch: &[(&Outbox, &Bytes)]) -> Vec<Push> {
        // No outbox stays locked while the kernel sends: a connection task
        // pushing a reply meanwhile queues it behind the frame in flight
        // instead of blocking its runtime worker for the whole submission.
        let mut pushes = vec![Push::Sent; batch.len()];
        let mut in_flight = 0;
        for (i, (outbox, frame)) in batch.iter().enumerate() {
            if let Err(push) = outbox.take_off(frame) {
                pushes[i] = push;
                continue;
            }
            debug_assert!(!frame.is_empty(), "frames have a header");
            let send = opcode::Send::new(types::Fd(outbox.fd), frame.as_ptr(), frame.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the frame's bytes (held by `batch`) and the socket
            // (held by the outbox, which `batch` borrows) outlive the
            // completions, which are all reaped before this returns.
            unsafe { ring.submission().push(&send) }.expect("the ring holds BATCH entries");
            in_flight += 1;
        }
        let mut reaped = 0;
        while reaped < in_flight {
            match ring.submit_and_wait(in_flight - reaped) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Only a broken ring fails here; the sends in it must still
                // be reaped before their frames may be freed.
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
            for done in ring.completion() {
                let i = done.user_data() as usize;
                let res = done.result();
                let sent = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(std::io::Error::from_raw_os_error(-res))
                };
                let (outbox, frame) = batch[i];
                pushes[i] = outbox.land(frame, sent);
                reaped += 1;
            }
        }
        pushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair(send_buffer: usize) -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(send_buffer)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(send_buffer)
            .unwrap();
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_through_a_backlog() {
        let (server, mut client) = pair(4096).await;
        let outbox = Outbox::new(server, 10_000);
        let frames: Vec<Bytes> = (0..2_000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 1 + (i as usize * 7) % 900]))
            .collect();
        let mut queued = 0;
        for f in &frames {
            match outbox.push(f.clone()) {
                Push::Sent => {}
                Push::Queued => queued += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(queued > 0, "a 4 KiB socket buffer must fill");
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        });
        outbox.drain().await.unwrap();
        assert_eq!(outbox.backlog(), 0);
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_backlog_closes_as_slow_consumer_and_keeps_a_partial_frame() {
        let (server, _client) = pair(4096).await;
        let outbox = Outbox::new(server, 8);
        let frame = Bytes::from(vec![7u8; 3000]);
        let mut outcome = Push::Sent;
        for _ in 0..10_000 {
            outcome = outbox.push(frame.clone());
            if outcome == Push::Overflow {
                break;
            }
        }
        assert_eq!(outcome, Push::Overflow);
        assert!(outbox.backlog() <= 1, "only a partly written frame stays");
        assert_eq!(outbox.push(frame.clone()), Push::Closed);
        // The close frame still goes in, behind the partial frame.
        assert_eq!(outbox.push_final(Bytes::from_static(b"x")), Push::Queued);
        assert_eq!(outbox.woken().await, Wake::Close(CloseCode::SlowConsumer));
    }

    /// Many outboxes pushed together, through io_uring and one by one:
    /// sockets that fill give partial writes and queued frames, and every
    /// reader still gets every frame whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_arrive_whole_and_in_order_with_and_without_io_uring() {
        for uring in [true, false] {
            let submissions = prometheus::IntCounter::new("s", "s").unwrap();
            let mut pairs = Vec::new();
            for _ in 0..5 {
                let (server, client) = pair(4096).await;
                // A small send buffer fills; a roomy receive window keeps
                // delayed ACKs from pacing the test.
                socket2::SockRef::from(&client)
                    .set_recv_buffer_size(1 << 20)
                    .unwrap();
                pairs.push((server, client));
            }
            let outboxes: Vec<Outbox> = pairs
                .iter()
                .map(|(server, _)| Outbox::new(server.clone(), 10_000))
                .collect();
            let frames: Vec<Bytes> = (0..400u32)
                .map(|i| Bytes::from(vec![(i % 251) as u8; 1 + (i as usize * 13) % 1500]))
                .collect();
            // Readers read while the frames are pushed: with nobody reading,
            // the 4 KiB windows close and TCP's persist timer paces the test.
            let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            let mut readers = Vec::new();
            for (_, mut client) in pairs.drain(..) {
                let expected = expected.clone();
                readers.push(tokio::spawn(async move {
                    let mut got = vec![0u8; expected.len()];
                    client.read_exact(&mut got).await.unwrap();
                    assert!(got == expected, "a reader's bytes differ");
                }));
            }
            let mut queued = 0;
            for f in &frames {
                let batch: Vec<(&Outbox, &Bytes)> = outboxes.iter().map(|o| (o, f)).collect();
                for push in push_batch(&batch, uring, &submissions) {
                    match push {
                        Push::Sent => {}
                        Push::Queued => queued += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert!(queued > 0, "4 KiB socket buffers must fill");
            for o in &outboxes {
                o.drain().await.unwrap();
            }
            for r in readers {
                r.await.unwrap();
            }
            let available = uring && io_uring::IoUring::new(8).is_ok();
            assert_eq!(submissions.get() > 0, available, "uring {uring}");
        }
    }

    /// A reply pushed while a fanout's io_uring send is with the kernel
    /// queues behind it, and `drain` waits for it to land: a partial send
    /// leaves its rest first in line.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_push_during_an_in_flight_send_goes_after_it() {
        let (server, mut client) = pair(65536).await;
        let outbox = Arc::new(Outbox::new(server.clone(), 8));
        let frame = Bytes::from_static(b"first");
        outbox.take_off(&frame).unwrap();
        assert_eq!(outbox.take_off(&frame), Err(Push::Queued), "one in flight");
        assert_eq!(outbox.push(Bytes::from_static(b"second")), Push::Queued);
        let drainer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drain().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !drainer.is_finished(),
            "drain must wait for the frame in flight"
        );
        // As if the kernel took the frame's first two bytes.
        assert_eq!(server.try_write(&frame[..2]).unwrap(), 2);
        assert_eq!(outbox.land(&frame, Ok(2)), Push::Queued);
        drainer.await.unwrap().unwrap();
        assert_eq!(outbox.backlog(), 0);
        let mut got = [0u8; 16];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstfirstsecond");
    }

    #[tokio::test]
    async fn close_wakes_the_connection_with_the_first_code() {
        let (server, _client) = pair(65536).await;
        let outbox = Outbox::new(server, 8);
        assert_eq!(outbox.push(Bytes::from_static(b"hi")), Push::Sent);
        outbox.close(CloseCode::RoomClosed);
        outbox.close(CloseCode::ServiceRestart);
        assert_eq!(outbox.woken().await, Wake::Close(CloseCode::RoomClosed));
        assert_eq!(outbox.push(Bytes::from_static(b"late")), Push::Closed);
    }
}
