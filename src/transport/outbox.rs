//! A connection's outgoing byte stream, written from two places: its
//! fanout worker (the room's batches, shared by every viewer; the room's
//! private replies) and the connection's own task (replies, close; answers
//! from the commit writer's thread). All push whole WebSocket frames here.
//!
//! The fast path is one non-blocking send on the socket from the pushing
//! thread, with no task wake-up, channel or per-viewer copy in between. A
//! fanout worker hands its sends to the kernel 256 at a time as io_uring
//! submissions (`uring`, `fanout_io_uring`): 10,000 viewers, 40 system
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
    pub(super) fd: std::os::fd::RawFd,
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
    pub(super) fn take_off(&self, frame: &Bytes) -> Result<(), Push> {
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
    pub(super) fn land(&self, frame: &Bytes, sent: io::Result<usize>) -> Push {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    pub(in crate::transport) async fn pair(send_buffer: usize) -> (Arc<TcpStream>, TcpStream) {
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
