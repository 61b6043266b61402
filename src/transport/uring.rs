//! A fanout worker's sends: up to `BATCH` outboxes at a time, as one
//! io_uring submission (one system call) where the kernel allows it, else
//! one `send` each. The TCP work is the same either way; the system call
//! entries and exits are not (about 1 µs of the 6-9 µs a loopback send
//! costs on the 2-core benchmark machine, docs/benchmarks.md).
//!
//! Each worker owns one `Sends` and so one ring for its whole life: no
//! ring is made per fanout and none is shared between threads.
//!
//! # Why nothing is freed while the kernel may hold it
//!
//! A submitted send gives the kernel a raw pointer into a frame and a raw
//! descriptor. Until its completion is reaped, the kernel may read that
//! memory and use that descriptor at any time. Before the first entry is
//! pushed, `Sends` takes its own reference to each frame and outbox
//! (`held`) and sets `dirty`; both are cleared only once every completion
//! of the batch has been reaped. If anything in between unwinds (a failed
//! `submit_and_wait`, a broken invariant in `Outbox::land`), the caller's
//! copies may be dropped but ours are not: the next batch, or `Drop`, finds
//! `dirty` still set and *leaks* the frames, the outboxes (so their
//! sockets stay open) and the ring itself (whose unreaped entries would
//! otherwise complete into the next batch). A leak of one batch after a
//! bug is bounded and safe; freeing early would let the kernel send freed
//! memory, possibly another viewer's data, to a socket.

use std::sync::Arc;

use bytes::Bytes;

use super::outbox::{Outbox, Push};

/// Outboxes one `push_batch` call takes: one io_uring submission sends to
/// this many viewers.
pub const BATCH: usize = 256;

/// See the module docs.
pub struct Sends {
    use_uring: bool,
    submissions: prometheus::IntCounter,
    #[cfg(target_os = "linux")]
    ring: Option<io_uring::IoUring>,
    /// The frames and outboxes of the sends handed to the kernel.
    #[cfg(target_os = "linux")]
    held: Vec<(Arc<Outbox>, Bytes)>,
    /// Set from the first entry pushed until the last completion is reaped.
    #[cfg(target_os = "linux")]
    dirty: bool,
    /// Cleared, with a warning, the first time a ring cannot be made.
    #[cfg(target_os = "linux")]
    available: bool,
}

impl Sends {
    /// `use_uring`: `fanout_io_uring`. `submissions` counts io_uring
    /// submissions.
    pub fn new(use_uring: bool, submissions: prometheus::IntCounter) -> Self {
        Self {
            use_uring,
            submissions,
            #[cfg(target_os = "linux")]
            ring: None,
            #[cfg(target_os = "linux")]
            held: Vec::with_capacity(if use_uring { BATCH } else { 0 }),
            #[cfg(target_os = "linux")]
            dirty: false,
            #[cfg(target_os = "linux")]
            available: true,
        }
    }

    /// Whether batches go through io_uring (`false` once it proved
    /// unavailable): if not, callers may push one by one and skip batching.
    pub fn batches(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.use_uring && self.available;
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Pushes each frame to its outbox, with the same outcome per outbox as
    /// `Outbox::push`, into `pushes` (cleared first).
    pub fn push_batch(&mut self, batch: &[(&Arc<Outbox>, &Bytes)], pushes: &mut Vec<Push>) {
        assert!(batch.len() <= BATCH, "at most BATCH outboxes per call");
        pushes.clear();
        #[cfg(target_os = "linux")]
        if self.use_uring && self.ring().is_some() {
            self.send_all(batch, pushes);
            self.submissions.inc();
            return;
        }
        let _ = (self.use_uring, &self.submissions);
        pushes.extend(batch.iter().map(|(o, f)| o.push((*f).clone())));
    }

    /// The ring, made on first use; `None` when io_uring is not available.
    #[cfg(target_os = "linux")]
    fn ring(&mut self) -> Option<&mut io_uring::IoUring> {
        if self.dirty {
            self.quarantine();
        }
        if self.ring.is_none() && self.available {
            match io_uring::IoUring::new(BATCH as u32) {
                Ok(ring) => self.ring = Some(ring),
                Err(e) => {
                    self.available = false;
                    tracing::warn!(error = %e, "io_uring not available; fanouts send one by one");
                }
            }
        }
        self.ring.as_mut()
    }

    /// An earlier batch unwound with sends possibly still with the kernel:
    /// leak what they point into (see the module docs).
    #[cfg(target_os = "linux")]
    fn quarantine(&mut self) {
        tracing::error!(
            sends = self.held.len(),
            "an io_uring fanout batch was interrupted; leaking its frames and ring"
        );
        std::mem::forget(std::mem::take(&mut self.held));
        if let Some(ring) = self.ring.take() {
            std::mem::forget(ring);
        }
        self.dirty = false;
    }

    #[cfg(target_os = "linux")]
    fn send_all(&mut self, batch: &[(&Arc<Outbox>, &Bytes)], pushes: &mut Vec<Push>) {
        use io_uring::{opcode, types};
        // No outbox stays locked while the kernel sends: a connection task
        // pushing a reply meanwhile queues it behind the frame in flight
        // instead of blocking its runtime worker for the whole submission.
        pushes.resize(batch.len(), Push::Sent);
        debug_assert!(self.held.is_empty() && !self.dirty);
        let ring = self.ring.as_mut().expect("checked by the caller");
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
            // Held before the kernel can see the entry: from here until
            // `dirty` is cleared, an unwind leaks instead of freeing.
            self.held.push(((*outbox).clone(), (*frame).clone()));
            self.dirty = true;
            // SAFETY: the frame's bytes and the socket are kept alive by
            // `held` until this entry's completion is reaped below, or
            // forever if that never happens (`quarantine`).
            unsafe { ring.submission().push(&send) }.expect("the ring holds BATCH entries");
            in_flight += 1;
        }
        let mut reaped = 0;
        while reaped < in_flight {
            match ring.submit_and_wait(in_flight - reaped) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Only a broken ring fails here. Unwinding is safe: `held`
                // and `dirty` stay, and the next call quarantines them.
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
        self.held.clear();
        self.dirty = false;
    }

    /// Whether a batch was left half-done (for tests).
    #[cfg(all(test, target_os = "linux"))]
    fn is_dirty(&self) -> bool {
        self.dirty
    }
}

#[cfg(target_os = "linux")]
impl Drop for Sends {
    fn drop(&mut self) {
        if self.dirty {
            self.quarantine();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::outbox::tests::pair;
    use tokio::io::AsyncReadExt;

    /// Many outboxes pushed together, through io_uring and one by one:
    /// sockets that fill give partial writes and queued frames, and every
    /// reader still gets every frame whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_arrive_whole_and_in_order_with_and_without_io_uring() {
        for uring in [true, false] {
            let submissions = prometheus::IntCounter::new("s", "s").unwrap();
            let mut sends = Sends::new(uring, submissions.clone());
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
            let outboxes: Vec<Arc<Outbox>> = pairs
                .iter()
                .map(|(server, _)| Arc::new(Outbox::new(server.clone(), 10_000)))
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
            let mut pushes = Vec::new();
            for f in &frames {
                let batch: Vec<(&Arc<Outbox>, &Bytes)> = outboxes.iter().map(|o| (o, f)).collect();
                sends.push_batch(&batch, &mut pushes);
                for push in &pushes {
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
            // Where io_uring is unavailable (seccomp, old kernel) say so
            // explicitly, or this fails: the io_uring path must really run.
            let expect_uring = uring && std::env::var_os("FLASHCAST_TEST_NO_IO_URING").is_none();
            assert_eq!(submissions.get() > 0, expect_uring, "uring {uring}");
        }
    }

    /// A batch interrupted with a send in flight (as after a panic between
    /// submission and reaping) is never freed: its frame stays referenced
    /// and the ring is replaced, not reused.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_interrupted_batch_leaks_its_frames_instead_of_freeing_them() {
        if std::env::var_os("FLASHCAST_TEST_NO_IO_URING").is_some() {
            return;
        }
        let (server, _client) = pair(65536).await;
        let outbox = Arc::new(Outbox::new(server, 8));
        let frame = Bytes::from(vec![1u8; 100]);
        let weak_frame = frame.clone();
        let mut sends = Sends::new(true, prometheus::IntCounter::new("s", "s").unwrap());
        assert!(sends.ring().is_some(), "io_uring must be available here");
        // As `send_all` leaves things when it unwinds after pushing an entry.
        outbox.take_off(&frame).unwrap();
        sends.held.push((outbox.clone(), frame.clone()));
        sends.dirty = true;
        drop(frame);
        assert!(sends.is_dirty());
        let frames_before = Arc::strong_count(&outbox);
        // The next batch quarantines the old one before using a ring.
        assert!(sends.ring().is_some(), "a fresh ring");
        assert!(!sends.is_dirty());
        assert!(sends.held.is_empty());
        // The held references were leaked, not dropped.
        assert_eq!(Arc::strong_count(&outbox), frames_before);
        assert!(!weak_frame.is_unique(), "the frame was not freed");
    }
}
