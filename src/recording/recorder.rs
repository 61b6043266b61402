//! The server side of recording: one writer thread per recording room, fed
//! through a bounded queue by the connections of the room.
//!
//! A connection never waits for the recording: it hands each line to the
//! queue with `try_send`, and a full queue drops the line (counted). When the
//! room is not recording, a connection pays one atomic load per client frame.
//!
//! Files are `<data_dir>/recordings/<room>-<started_unix_ms>.jsonl`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::room::{RoomHandle, RoomShared};
use flashcast_wire::client::ClientMsg;
use flashcast_wire::ids::RoomId;
use flashcast_wire::recording::{TraceAction, TraceHeader, TraceLine, TraceWriter};
use flashcast_wire::{now_ms, Role};

/// How often the writer flushes what it buffered (and checks the room and
/// the time limit).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// After the room closes, how long the recording waits at most for its
/// connections to end (their `leave` lines) before it stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The writer's buffer.
const WRITE_BUFFER: usize = 64 * 1024;

/// The answer to starting a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingStarted {
    /// The file name, under `<data_dir>/recordings/`.
    pub file: String,
    /// The header's `started_unix_ms`: every `t_ms` counts from here.
    pub started_unix_ms: u64,
}

/// A finished recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingSummary {
    pub file: String,
    pub started_unix_ms: u64,
    /// Action lines written (the header not counted).
    pub lines: u64,
    /// Size of the file, header included.
    pub bytes: u64,
    /// Lines dropped because the recording queue was full.
    pub dropped: u64,
    /// What ended the recording.
    pub stopped_by: StopReason,
}

/// What ended a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `DELETE /api/v1/rooms/{id}/recording`.
    Request,
    /// The file reached `max_recording_bytes`.
    MaxRecordingBytes,
    /// The recording ran for `max_recording_secs`.
    MaxRecordingSecs,
    /// The show ended.
    RoomClosed,
    /// The server shut down.
    Shutdown,
    /// The file could not be written (disk full...); see the log.
    WriteError,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Request => "request",
            StopReason::MaxRecordingBytes => "max_recording_bytes",
            StopReason::MaxRecordingSecs => "max_recording_secs",
            StopReason::RoomClosed => "room_closed",
            StopReason::Shutdown => "shutdown",
            StopReason::WriteError => "write_error",
        }
    }

    const ALL: [StopReason; 6] = [
        StopReason::Request,
        StopReason::MaxRecordingBytes,
        StopReason::MaxRecordingSecs,
        StopReason::RoomClosed,
        StopReason::Shutdown,
        StopReason::WriteError,
    ];

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|r| *r == self).expect("listed") as u8 + 1
    }

    fn from_u8(n: u8) -> Option<StopReason> {
        n.checked_sub(1)
            .and_then(|i| Self::ALL.get(i as usize).copied())
    }
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the room is already recording")]
    AlreadyRecording,
    #[error("the show has ended")]
    RoomClosed,
    #[error("max_recordings rooms are already recording")]
    LimitReached,
    #[error("cannot create the recording file: {0}")]
    Io(#[from] io::Error),
}

/// The latest recording file of a room, for download.
#[derive(Debug, Clone)]
pub struct Download {
    pub path: PathBuf,
    pub file: String,
    /// Bytes to serve: the whole file, or for a recording still running
    /// what has been flushed so far (always whole lines).
    pub len: u64,
    /// The recording is still running.
    pub active: bool,
}

/// Every recording of this node.
pub struct Recordings {
    dir: PathBuf,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    slots: DashMap<RoomId, Arc<RecordSlot>>,
    running: Arc<AtomicUsize>,
    next_gen: AtomicU64,
}

/// One room's recording state, shared by its connections.
pub struct RecordSlot {
    /// The running recording's generation; 0 when not recording. The only
    /// thing a connection reads per frame.
    gen: AtomicU64,
    /// Tells quiet connections that a recording started, so each writes
    /// its `join` line without waiting for its own next action.
    started: tokio::sync::watch::Sender<u64>,
    room: Weak<RoomShared>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    active: Option<Arc<Active>>,
    writer: Option<JoinHandle<RecordingSummary>>,
    last: Option<RecordingSummary>,
}

impl RecordSlot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running recording, as its connections see it.
struct Active {
    gen: u64,
    started: Instant,
    started_unix_ms: u64,
    file: String,
    path: PathBuf,
    tx: SyncSender<Msg>,
    next_conn: AtomicU32,
    /// 0 while running, else the StopReason (see `StopReason::to_u8`).
    stop: AtomicU8,
    dropped: AtomicU64,
    /// Connections with a `join` and no `leave` yet in this recording.
    live: AtomicUsize,
    /// Bytes on disk, ending on a line boundary.
    flushed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Active {
    /// Queues a line without waiting; false if it was not taken.
    fn send(&self, conn: u32, action: TraceAction) -> bool {
        if self.stop.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let line = TraceLine {
            t_ms: self.started.elapsed().as_millis() as u64,
            conn,
            action,
        };
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.recording_dropped.inc();
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    fn request_stop(&self, reason: StopReason) {
        let _ = self
            .stop
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Recordings {
    /// Recordings go to `dir` (created when the first one starts).
    pub fn new(dir: PathBuf, limits: Arc<Limits>, metrics: Arc<Metrics>) -> Self {
        Self {
            dir,
            limits,
            metrics,
            slots: DashMap::new(),
            running: Arc::new(AtomicUsize::new(0)),
            next_gen: AtomicU64::new(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The room's slot, created on first use. Slots of rooms that no longer
    /// exist are dropped when a new one is made, so there are never more
    /// slots than rooms.
    fn slot(&self, room: &RoomHandle) -> Arc<RecordSlot> {
        let this = Arc::downgrade(&room.shared);
        if let Some(slot) = self.slots.get(room.id()) {
            if Weak::ptr_eq(&slot.room, &this) {
                return slot.clone();
            }
        }
        // A room seen for the first time (or a new room reusing the id of
        // a forgotten one): drop the slots of rooms that are gone.
        self.slots
            .retain(|_, s| s.room.strong_count() > 0 || s.gen.load(Ordering::Acquire) != 0);
        let fresh = || {
            Arc::new(RecordSlot {
                gen: AtomicU64::new(0),
                started: tokio::sync::watch::Sender::new(0),
                room: this.clone(),
                state: Mutex::new(SlotState::default()),
            })
        };
        let mut slot = self.slots.entry(room.id().clone()).or_insert_with(fresh);
        if !Weak::ptr_eq(&slot.room, &this) && slot.gen.load(Ordering::Acquire) == 0 {
            *slot = fresh();
        }
        slot.clone()
    }

    /// The recorder of one joined connection of `room`, which joined with
    /// `role`. Writes its `join` line now if the room is recording.
    pub fn connection(&self, room: &RoomHandle, role: Role) -> ConnRecorder {
        let slot = self.slot(room);
        let mut rec = ConnRecorder {
            started: slot.started.subscribe(),
            slot,
            role,
            seen: 0,
            conn: 0,
            joined: false,
            active: None,
        };
        rec.touch();
        rec
    }

    /// Whether the room is recording now.
    pub fn is_recording(&self, room: &RoomId) -> bool {
        self.slots
            .get(room)
            .is_some_and(|s| s.gen.load(Ordering::Acquire) != 0)
    }

    /// Starts recording `room`. Blocking (creates the file, starts the
    /// writer thread): call it from `spawn_blocking`.
    pub fn start(&self, room: &RoomHandle) -> Result<RecordingStarted, StartError> {
        if room.shared.is_closed() {
            return Err(StartError::RoomClosed);
        }
        let slot = self.slot(room);
        let mut state = slot.state();
        if state.active.is_some() {
            return Err(StartError::AlreadyRecording);
        }
        let max = self.limits.max_recordings;
        if self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(StartError::LimitReached);
        }
        let opened = self.create_file(room.id());
        let (file, path, started_unix_ms, out) = match opened {
            Ok(f) => f,
            Err(e) => {
                self.running.fetch_sub(1, Ordering::AcqRel);
                return Err(e.into());
            }
        };
        // The header goes to disk before the answer: a download is never
        // empty.
        let mut out = TraceWriter::new(BufWriter::with_capacity(WRITE_BUFFER, out))
            .with_byte_limit(self.limits.max_recording_bytes);
        let header = TraceHeader::new(room.id().as_str(), started_unix_ms);
        if let Err(e) = out.write_header(&header).and_then(|()| out.flush()) {
            self.running.fetch_sub(1, Ordering::AcqRel);
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(self.limits.recording_queue);
        let active = Arc::new(Active {
            gen,
            started: Instant::now(),
            started_unix_ms,
            file: file.clone(),
            path: path.clone(),
            tx,
            next_conn: AtomicU32::new(1),
            stop: AtomicU8::new(0),
            dropped: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            flushed: AtomicU64::new(out.bytes()),
            metrics: self.metrics.clone(),
        });
        let writer = Writer {
            active: active.clone(),
            rx,
            room: room.shared.clone(),
            slot: slot.clone(),
            max_duration: Duration::from_secs(self.limits.max_recording_secs),
            metrics: self.metrics.clone(),
            running: self.running.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("recording-{}", room.id()))
            .spawn(move || writer.run(out));
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                self.running.fetch_sub(1, Ordering::AcqRel);
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        self.metrics.recordings_active.inc();
        state.active = Some(active);
        state.writer = Some(handle);
        slot.gen.store(gen, Ordering::Release);
        slot.started.send_replace(gen);
        drop(state);
        tracing::info!(room = %room.id(), %file, "recording started");
        Ok(RecordingStarted {
            file,
            started_unix_ms,
        })
    }

    fn create_file(&self, room: &RoomId) -> io::Result<(String, PathBuf, u64, File)> {
        std::fs::create_dir_all(&self.dir)?;
        let mut ms = now_ms();
        loop {
            let file = format!("{room}-{ms}.jsonl");
            let path = self.dir.join(&file);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((file, path, ms, f)),
                // Stopped and restarted within the same millisecond.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ms += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the room's recording and answers what it wrote; if none is
    /// running, the last one that ran since the server started (stopped by
    /// a request or by itself). None if the room never recorded. Blocking
    /// (waits for the writer to flush): call it from `spawn_blocking`.
    pub fn stop(&self, room: &RoomId) -> Option<RecordingSummary> {
        let slot = self.slots.get(room)?.clone();
        self.stop_slot(&slot, StopReason::Request)
    }

    fn stop_slot(&self, slot: &RecordSlot, reason: StopReason) -> Option<RecordingSummary> {
        let (active, writer) = {
            let mut state = slot.state();
            slot.gen.store(0, Ordering::Release);
            (state.active.take(), state.writer.take())
        };
        if let Some(active) = active {
            active.request_stop(reason);
            // Wakes the writer if it is waiting; a full queue wakes it anyway.
            let _ = active.tx.try_send(Msg::Wake);
        }
        if let Some(writer) = writer {
            match writer.join() {
                Ok(summary) => return Some(summary),
                Err(_) => tracing::error!("a recording writer panicked"),
            }
        }
        slot.state().last.clone()
    }

    /// Stops every recording (server shutdown), flushing each file.
    /// Blocking.
    pub fn stop_all(&self, reason: StopReason) {
        let slots: Vec<Arc<RecordSlot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        for slot in slots {
            // Also waits for writers that stopped by themselves and may
            // still be flushing.
            if slot.gen.load(Ordering::Acquire) != 0 || slot.state().writer.is_some() {
                self.stop_slot(&slot, reason);
            }
        }
    }

    /// The room's latest recording file: the running one, else the newest
    /// `<room>-<ms>.jsonl` in the directory (recordings of earlier runs of
    /// the server included). Blocking.
    pub fn latest(&self, room: &RoomId) -> io::Result<Option<Download>> {
        if let Some(slot) = self.slots.get(room) {
            if let Some(active) = &slot.state().active {
                return Ok(Some(Download {
                    path: active.path.clone(),
                    file: active.file.clone(),
                    len: active.flushed.load(Ordering::Acquire),
                    active: true,
                }));
            }
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut best: Option<(u64, String)> = None;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(ms) = recording_started(name, room) else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| ms > *b) {
                best = Some((ms, name.to_string()));
            }
        }
        let Some((_, file)) = best else {
            return Ok(None);
        };
        let path = self.dir.join(&file);
        let len = std::fs::metadata(&path)?.len();
        Ok(Some(Download {
            path,
            file,
            len,
            active: false,
        }))
    }
}

/// `<room>-<ms>.jsonl` -> ms, for this room only.
fn recording_started(name: &str, room: &RoomId) -> Option<u64> {
    let stem = name.strip_suffix(".jsonl")?;
    let (r, ms) = stem.rsplit_once('-')?;
    if r != room.as_str() || ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

/// One joined connection's side of its room's recording. Dropping it writes
/// the connection's `leave`.
pub struct ConnRecorder {
    slot: Arc<RecordSlot>,
    started: tokio::sync::watch::Receiver<u64>,
    role: Role,
    /// The recording this connection is numbered in (0: none yet).
    seen: u64,
    conn: u32,
    /// Its `join` line was queued.
    joined: bool,
    active: Option<Arc<Active>>,
}

impl ConnRecorder {
    /// Resolves when a recording of the room starts; then call `touch`.
    /// Cancel-safe.
    pub async fn recording_started(&mut self) {
        if self.started.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Records one decoded client frame (before the room decides on it).
    /// Not recording: one atomic load.
    #[inline]
    pub fn record(&mut self, msg: &ClientMsg) {
        let gen = self.slot.gen.load(Ordering::Relaxed);
        if gen == 0 {
            if self.active.is_some() {
                self.active = None;
            }
            return;
        }
        self.record_slow(gen, msg);
    }

    #[cold]
    fn record_slow(&mut self, gen: u64, msg: &ClientMsg) {
        let Some(action) = TraceAction::from_client(msg) else {
            return;
        };
        if !self.ensure_joined(gen) {
            // Its join was not taken (queue full): neither is this line.
            if let Some(active) = &self.active {
                active.dropped.fetch_add(1, Ordering::Relaxed);
                active.metrics.recording_dropped.inc();
            }
            return;
        }
        if let Some(active) = &self.active {
            active.send(self.conn, action);
        }
    }

    /// Makes sure a connection already in the room when a recording
    /// started gets its `join` line; called when `recording_started`
    /// resolves, so quiet viewers are counted too. Not recording: one atomic load.
    #[inline]
    pub fn touch(&mut self) {
        let gen = self.slot.gen.load(Ordering::Relaxed);
        if gen != 0 && (gen != self.seen || !self.joined) {
            self.ensure_joined(gen);
        }
    }

    /// Numbers the connection in recording `gen` and queues its `join`;
    /// true once the join is queued.
    fn ensure_joined(&mut self, gen: u64) -> bool {
        if self.seen != gen {
            let active = self.slot.state().active.clone();
            match active {
                Some(active) if active.gen == gen => {
                    self.conn = active.next_conn.fetch_add(1, Ordering::Relaxed);
                    self.active = Some(active);
                    self.seen = gen;
                    self.joined = false;
                }
                _ => {
                    self.active = None;
                    return false;
                }
            }
        }
        if !self.joined {
            if let Some(active) = &self.active {
                self.joined = active.send(self.conn, TraceAction::Join { role: self.role });
                if self.joined {
                    active.live.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        self.joined
    }
}

impl Drop for ConnRecorder {
    fn drop(&mut self) {
        if !self.joined {
            return;
        }
        if let Some(active) = &self.active {
            if self.slot.gen.load(Ordering::Relaxed) == self.seen {
                active.send(self.conn, TraceAction::Leave);
            }
            active.live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What the writer's queue carries.
enum Msg {
    Line(TraceLine),
    /// Look at the stop flag now.
    Wake,
}

/// The writer thread of one recording.
struct Writer {
    active: Arc<Active>,
    rx: Receiver<Msg>,
    /// Watched for the show's end (not a handle: the writer never talks
    /// to the room).
    room: Arc<RoomShared>,
    slot: Arc<RecordSlot>,
    max_duration: Duration,
    metrics: Arc<Metrics>,
    running: Arc<AtomicUsize>,
}

/// How writing one line went.
enum Wrote {
    Ok,
    Stop(StopReason),
}

impl Writer {
    /// Runs with `w`, its header already written.
    fn run(self, mut w: TraceWriter<BufWriter<File>>) -> RecordingSummary {
        let reason = self.record(&mut w).unwrap_or(StopReason::Request);
        self.finish(w, reason)
    }

    /// Writes lines until something stops the recording.
    fn record(&self, w: &mut TraceWriter<BufWriter<File>>) -> Option<StopReason> {
        let mut last_flush = Instant::now();
        let mut dirty = false;
        let mut closed_at: Option<Instant> = None;
        loop {
            if let Some(reason) = StopReason::from_u8(self.active.stop.load(Ordering::Acquire)) {
                return Some(reason);
            }
            match self.rx.recv_timeout(FLUSH_EVERY) {
                Ok(Msg::Line(line)) => match self.write(w, line) {
                    Wrote::Ok => dirty = true,
                    Wrote::Stop(reason) => return Some(reason),
                },
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
            if last_flush.elapsed() < FLUSH_EVERY {
                continue;
            }
            last_flush = Instant::now();
            if dirty {
                if let Err(e) = w.flush() {
                    return Some(self.write_failed(&e));
                }
                self.active.flushed.store(w.bytes(), Ordering::Release);
                dirty = false;
            }
            if self.active.started.elapsed() >= self.max_duration {
                return Some(StopReason::MaxRecordingSecs);
            }
            if self.room.is_closed() {
                // The show ended: its viewers are being closed. Their
                // leaves are the recording's last lines.
                let at = *closed_at.get_or_insert_with(Instant::now);
                if self.active.live.load(Ordering::Acquire) == 0 || at.elapsed() >= CLOSE_GRACE {
                    return Some(StopReason::RoomClosed);
                }
            }
        }
    }

    fn write(&self, w: &mut TraceWriter<BufWriter<File>>, mut line: TraceLine) -> Wrote {
        // Lines are stamped by their connections and may arrive a few
        // microseconds out of order; the file's time never goes back.
        line.t_ms = line.t_ms.max(w.last_t_ms());
        match w.write_line(&line) {
            Ok(()) => {
                self.metrics.recording_lines.inc();
                Wrote::Ok
            }
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                Wrote::Stop(StopReason::MaxRecordingBytes)
            }
            Err(e) => Wrote::Stop(self.write_failed(&e)),
        }
    }

    fn write_failed(&self, e: &io::Error) -> StopReason {
        if e.kind() == io::ErrorKind::FileTooLarge {
            return StopReason::MaxRecordingBytes;
        }
        tracing::error!(
            room = %self.room.info.id,
            file = %self.active.file,
            error = %e,
            "could not write the recording; it stops"
        );
        StopReason::WriteError
    }

    fn finish(self, mut w: TraceWriter<BufWriter<File>>, reason: StopReason) -> RecordingSummary {
        // No new lines from now on.
        self.active.request_stop(reason);
        let reason =
            StopReason::from_u8(self.active.stop.load(Ordering::Acquire)).unwrap_or(reason);
        {
            let mut state = self.slot.state();
            if state
                .active
                .as_ref()
                .is_some_and(|a| a.gen == self.active.gen)
            {
                // Stopped by itself: connections stop sending. The handle
                // stays, so a stop request still gets this summary.
                self.slot.gen.store(0, Ordering::Release);
                state.active = None;
            }
        }
        // Lines taken before the stop are written, as far as they fit.
        if matches!(
            reason,
            StopReason::Request | StopReason::RoomClosed | StopReason::Shutdown
        ) {
            while let Ok(msg) = self.rx.try_recv() {
                if let Msg::Line(line) = msg {
                    if let Wrote::Stop(_) = self.write(&mut w, line) {
                        break;
                    }
                }
            }
        }
        let flushed = w.flush().and_then(|()| w.get_ref().get_ref().sync_data());
        if let Err(e) = flushed {
            tracing::error!(file = %self.active.file, error = %e, "could not flush the recording");
        }
        let summary = RecordingSummary {
            file: self.active.file.clone(),
            started_unix_ms: self.active.started_unix_ms,
            lines: w.lines(),
            bytes: w.bytes(),
            dropped: self.active.dropped.load(Ordering::Relaxed),
            stopped_by: reason,
        };
        self.active.flushed.store(w.bytes(), Ordering::Release);
        self.slot.state().last = Some(summary.clone());
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.metrics.recordings_active.dec();
        self.metrics
            .recording_stops
            .with_label_values(&[reason.as_str()])
            .inc();
        let log = |msg: &str| {
            tracing::info!(
                room = %self.room.info.id,
                file = %summary.file,
                lines = summary.lines,
                bytes = summary.bytes,
                dropped = summary.dropped,
                stopped_by = reason.as_str(),
                "{msg}"
            )
        };
        match reason {
            StopReason::Request | StopReason::Shutdown => log("recording stopped"),
            StopReason::RoomClosed => log("recording stopped: the show ended"),
            _ => {
                tracing::warn!(
                    room = %self.room.info.id,
                    file = %summary.file,
                    lines = summary.lines,
                    bytes = summary.bytes,
                    stopped_by = reason.as_str(),
                    "recording stopped by its limit"
                )
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_for_their_room_only() {
        let room = RoomId::new("spring-sale").unwrap();
        assert_eq!(recording_started("spring-sale-17.jsonl", &room), Some(17));
        assert_eq!(recording_started("spring-17.jsonl", &room), None);
        assert_eq!(recording_started("spring-sale-17.json", &room), None);
        assert_eq!(recording_started("spring-sale-.jsonl", &room), None);
        assert_eq!(recording_started("spring-sale-x1.jsonl", &room), None);
        assert_eq!(recording_started("x-spring-sale-17.jsonl", &room), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::sync_channel(2);
        let active = Active {
            gen: 1,
            started: Instant::now(),
            started_unix_ms: 0,
            file: "r-0.jsonl".into(),
            path: PathBuf::from("r-0.jsonl"),
            tx,
            next_conn: AtomicU32::new(1),
            stop: AtomicU8::new(0),
            dropped: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            flushed: AtomicU64::new(0),
            metrics: metrics.clone(),
        };
        let chat = |n: usize| {
            TraceAction::Chat(flashcast_wire::client::Chat {
                text: format!("{n}"),
            })
        };
        // Nobody reads: two lines fit, the rest are dropped at once.
        let taken: Vec<bool> = (0..5).map(|n| active.send(1, chat(n))).collect();
        assert_eq!(taken, [true, true, false, false, false]);
        assert_eq!(active.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.recording_dropped.get(), 3);
        // The lines that were taken are the first ones, in order.
        let first: Vec<TraceAction> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Line(l) => Some(l.action),
                Msg::Wake => None,
            })
            .collect();
        assert_eq!(first, [chat(0), chat(1)]);
        // Once stopped, nothing is taken (nor counted as dropped).
        active.request_stop(StopReason::Request);
        assert!(!active.send(1, chat(9)));
        assert_eq!(active.dropped.load(Ordering::Relaxed), 3);
        // The first reason wins.
        active.request_stop(StopReason::Shutdown);
        assert_eq!(
            StopReason::from_u8(active.stop.load(Ordering::Relaxed)),
            Some(StopReason::Request)
        );
    }

    #[test]
    fn stop_reasons_round_trip_through_their_number() {
        for r in StopReason::ALL {
            assert_eq!(StopReason::from_u8(r.to_u8()), Some(r));
        }
        assert_eq!(StopReason::from_u8(0), None);
    }
}
