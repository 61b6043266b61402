//! The room task. It alone mutates a room, so the order in which it applies
//! actions is the order every viewer sees.
//!
//! Each tick it takes the events appended since the last tick plus the
//! aggregated counts (reactions, viewers, poll tallies), encodes them ONCE per
//! encoding in use, frames them as WebSocket frames once, and writes the same
//! `Bytes` to every viewer's socket (see `outbox`): one kernel send per
//! viewer (submitted 256 at a time through io_uring), no task
//! wake-up. A viewer whose socket stays full for more than
//! `outbound_queue` frames is closed with 4008 and resumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::history::History;
use super::market::MarketWatch;
use super::outbox::{self, Outbox, Push};
use super::{Command, ConnId, JoinRequest, RoomContext, RoomShared};
use crate::engage::moderation::Moderation;
use crate::engage::poll::Poll;
use crate::engage::qa::Questions;
use crate::engage::{text, Rejection};
use crate::ws_frame;
use flashcast_wire::client::{
    Announce, Answer, Ask, Ban, Chat, ClosePoll, DeleteMessage, EndShow, Mute, PinQuestion, React,
    RoomMsg, SetBannedWords, SlowMode, Unban, Unmute, Upvote, Vote,
};
use flashcast_wire::ids::{PollId, RoomId, Seq, UserId};
use flashcast_wire::{
    CloseCode, Encoding, ErrorCode, Event, EventBody, ReactionKind, RoomState, ServerMsg,
    StreamStatus, UserRef,
};

/// Viewer counts go out at most this often (when they changed).
pub const VIEWER_COUNT_INTERVAL: Duration = Duration::from_secs(1);

struct Subscriber {
    user: UserRef,
    encoding: Encoding,
    outbox: Arc<Outbox>,
}

pub(crate) struct RoomActor {
    shared: Arc<RoomShared>,
    ctx: Arc<RoomContext>,
    commands: mpsc::Receiver<Command>,
    /// Distinguishes this run of the room from earlier ones (sequence numbers
    /// restart with the process), so a resume across a restart gets a gap.
    epoch: u64,
    seq: Seq,
    /// Last seq published to subscribers; joins and resumes see up to here.
    flushed_seq: Seq,
    history: History,
    pending: Vec<Arc<Event>>,
    subscribers: HashMap<ConnId, Subscriber>,
    /// Joins wait for the end of the tick, so that their snapshot and their
    /// `seq` describe the same moment (nothing published half-way).
    pending_joins: Vec<(JoinRequest, JoinReply)>,
    viewers_dirty: bool,
    viewers_sent_at: Instant,
    /// When the last batch went out: a room quiet for a whole tick sends
    /// its next event at once instead of at the next tick (see `run`).
    batch_sent_at: Instant,
    moderation: Moderation,
    poll: Option<Poll>,
    next_poll_id: u64,
    questions: Questions,
    market: MarketWatch,
    /// The video state last announced (see `room::stream`).
    stream: Option<StreamStatus>,
    ended: bool,
}

impl RoomActor {
    pub(crate) fn new(
        shared: Arc<RoomShared>,
        ctx: Arc<RoomContext>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let limits = &ctx.limits;
        Self {
            epoch: rand::random::<u64>() >> 11, // fits a JSON number exactly
            history: History::new(limits.history_len),
            moderation: Moderation::with_bans(shared.bans.clone()),
            market: MarketWatch::new(ctx.commerce.shop(&shared.info.id), ctx.clock.now_ms()),
            stream: shared.stream.get(),
            shared,
            commands,
            seq: 0,
            flushed_seq: 0,
            pending: Vec::new(),
            subscribers: HashMap::new(),
            pending_joins: Vec::new(),
            viewers_dirty: false,
            viewers_sent_at: Instant::now()
                .checked_sub(VIEWER_COUNT_INTERVAL)
                .unwrap_or_else(Instant::now),
            batch_sent_at: Instant::now(),
            poll: None,
            next_poll_id: 0,
            questions: Questions::default(),
            ended: false,
            ctx,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut tick_len = self.ctx.limits.tick();
        let mut tick = tokio::time::interval(tick_len);
        // A fanout longer than the tick starts the next one as soon as it is
        // done (not at the next multiple of the tick, which would add idle
        // time to every event's wait); frames per second stay under
        // `room_frames_per_sec` either way.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle(cmd) {
                        break;
                    }
                    // Drain what is already queued before looking at timers
                    // again; bounded so ticks are never starved.
                    let mut stop = false;
                    for _ in 0..256 {
                        match self.commands.try_recv() {
                            Ok(cmd) => if self.handle(cmd) { stop = true; break; },
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                    // Leading edge: a room that sent nothing for a whole
                    // tick sends now, so a lone event (or join) does not
                    // wait for the tick; the tick then restarts, so a
                    // viewer still gets at most one batch per tick and a
                    // busy room still batches a tick's worth of events.
                    if (!self.pending.is_empty() || !self.pending_joins.is_empty())
                        && self.batch_sent_at.elapsed() >= tick_len
                    {
                        if !self.pending.is_empty() {
                            self.ctx.metrics.batches_leading.inc();
                        }
                        self.flush();
                        self.admit_joins();
                        tick.reset();
                    }
                }
                _ = tick.tick() => {
                    self.flush();
                    self.admit_joins();
                }
                _ = housekeeping.tick() => {
                    self.housekeeping();
                    // A large room ticks less often: its fanout cost is
                    // viewers x ticks, and longer ticks carry more events
                    // per frame.
                    let want = self.ctx.limits.tick_for(self.subscribers.len());
                    if want != tick_len {
                        tick_len = want;
                        tick = tokio::time::interval_at(tokio::time::Instant::now() + want, want);
                        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        tracing::debug!(room = %self.shared.info.id, tick_ms = want.as_millis() as u64, "tick length changed");
                    }
                }
            }
        }
        self.ctx.metrics.viewers.sub(self.subscribers.len() as i64);
        self.ctx.metrics.rooms.dec();
        self.shared
            .viewers
            .store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(room = %self.shared.info.id, "room task stopped");
    }

    /// Applies one command; true when the room task should stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Join(req, reply) => {
                if self.pending_joins.len() >= self.ctx.limits.room_queue {
                    let _ = reply.send(Err(CloseCode::RoomFull));
                } else {
                    self.pending_joins.push((req, reply));
                }
            }
            Command::Act {
                conn,
                user,
                reference,
                msg,
            } => {
                let kind = msg.kind();
                match self.act(&user, msg) {
                    Ok(Reply::None) => self.ctx.metrics.events_in.with_label_values(&[kind]).inc(),
                    Ok(Reply::Ack) => {
                        self.ctx.metrics.events_in.with_label_values(&[kind]).inc();
                        self.send_direct(conn, &ServerMsg::Ack { reference });
                    }
                    Err(rejection) => {
                        self.ctx.metrics.reject(rejection.code);
                        let msg = ServerMsg::Error {
                            code: rejection.code,
                            message: rejection.message,
                            reference,
                            retry_after_ms: rejection.retry_after_ms,
                        };
                        self.send_direct(conn, &msg);
                    }
                }
            }
            Command::Leave(conn) => self.remove(conn),
            Command::End => self.end(),
            Command::Shutdown => {
                self.refuse_pending_joins(CloseCode::ServiceRestart);
                self.flush();
                self.close_all(CloseCode::ServiceRestart);
                return true;
            }
        }
        self.ended
    }

    /// Admits the joins of this tick, right after its frame was published.
    fn admit_joins(&mut self) {
        debug_assert!(self.pending.is_empty(), "joins are admitted after a flush");
        for (req, reply) in std::mem::take(&mut self.pending_joins) {
            self.join(req, reply);
        }
    }

    fn refuse_pending_joins(&mut self, code: CloseCode) {
        for (_, reply) in self.pending_joins.drain(..) {
            let _ = reply.send(Err(code));
        }
    }

    fn join(&mut self, req: JoinRequest, reply: JoinReply) {
        let limits = &self.ctx.limits;
        let refusal = if self.ended {
            Some(CloseCode::RoomClosed)
        } else if self.moderation.is_banned(&req.user.id) {
            Some(CloseCode::Forbidden)
        } else if self.subscribers.len() >= limits.max_viewers_per_room {
            Some(CloseCode::RoomFull)
        } else {
            None
        };
        if let Some(code) = refusal {
            let _ = reply.send(Err(code));
            return;
        }

        // Without the epoch the server cannot tell this run from an earlier
        // one, so it must not trust last_seq: that would be a silent hole.
        let same_run = req.epoch == Some(self.epoch);
        let (events, gap) = match req.last_seq {
            None => (
                self.history.tail(limits.snapshot_events, self.flushed_seq),
                false,
            ),
            Some(last) if same_run && last <= self.flushed_seq => {
                match self.history.since(last, self.flushed_seq) {
                    Some(missed) => (missed, false),
                    None => (
                        self.history.tail(limits.snapshot_events, self.flushed_seq),
                        true,
                    ),
                }
            }
            // From another run of the room, or from the future: start over.
            Some(_) => (
                self.history.tail(limits.snapshot_events, self.flushed_seq),
                true,
            ),
        };
        let joined = ServerMsg::Joined {
            you: req.user.clone(),
            room: self.shared.info.id.clone(),
            epoch: self.epoch,
            seq: self.flushed_seq,
            gap,
            state: Box::new(self.state(self.subscribers.len() as u32 + 1)),
            events,
        };
        // Written before the subscriber is added: `joined` comes first and
        // the next tick's frame continues right after its `seq`.
        let pushed = req
            .encoding
            .encode(&joined)
            .map(|frame| req.outbox.push(ws_frame::data(&frame)));
        match pushed {
            Ok(Push::Sent | Push::Queued) => {}
            Ok(Push::Overflow | Push::Closed) => {
                let _ = reply.send(Err(CloseCode::Normal));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "encode failed");
                let _ = reply.send(Err(CloseCode::Normal));
                return;
            }
        }
        if reply.send(Ok(())).is_err() {
            return; // the connection went away while waiting
        }
        self.subscribers.insert(
            req.conn,
            Subscriber {
                user: req.user,
                encoding: req.encoding,
                outbox: req.outbox,
            },
        );
        self.viewers_changed();
        self.ctx.metrics.viewers.inc();
    }

    fn remove(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.viewers_changed();
            self.ctx.metrics.viewers.dec();
        }
    }

    fn viewers_changed(&mut self) {
        self.viewers_dirty = true;
        self.shared.viewers.store(
            self.subscribers.len() as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn state(&self, viewers: u32) -> RoomState {
        RoomState {
            title: self.shared.info.title.clone(),
            viewers,
            slow_mode_secs: self.moderation.slow_mode_secs(),
            ended: self.ended,
            poll: self.poll.as_ref().map(Poll::view),
            pinned_question: self.questions.pinned(),
            questions: self.questions.top(self.ctx.limits.snapshot_questions),
            pinned_product: self.market.pinned(),
            sales: self.market.open_sales(self.ctx.clock.now_ms()),
            coupons: self.market.open_coupons(self.ctx.clock.now_ms()),
            stream: self.stream,
        }
    }

    fn push(&mut self, body: EventBody) {
        self.seq += 1;
        let event = Arc::new(Event {
            seq: self.seq,
            ts: self.ctx.clock.now_ms(),
            body,
        });
        self.history.push(event.clone());
        self.pending.push(event);
    }

    /// Applies a viewer or moderator action. Roles and sizes were checked by
    /// the connection; room state (bans, mutes, polls...) is checked here.
    fn act(&mut self, user: &UserRef, msg: RoomMsg) -> Result<Reply, Rejection> {
        if self.ended {
            return Err(Rejection::new(ErrorCode::RoomClosed, "the show has ended"));
        }
        let now = self.ctx.clock.now_ms();
        let limits = self.ctx.limits.clone();
        match msg {
            RoomMsg::Chat(Chat { text }) => {
                self.moderation.check_post(user, &text, now)?;
                self.moderation.check_slow_mode(user, now)?;
                self.moderation.record_chat(user, now);
                self.push(EventBody::Chat {
                    user: user.clone(),
                    text,
                    deleted: false,
                });
            }
            RoomMsg::Ask(Ask { text }) => {
                self.moderation.check_post(user, &text, now)?;
                let seq = self.seq + 1; // the seq its question_asked event gets
                let question = self.questions.ask(user, text, seq, limits.max_questions)?;
                self.push(EventBody::QuestionAsked { question });
            }
            RoomMsg::Vote(Vote { poll_id, option }) => {
                let poll = self
                    .poll
                    .as_mut()
                    .filter(|p| p.id() == poll_id)
                    .ok_or_else(|| Rejection::new(ErrorCode::NotFound, "no such open poll"))?;
                poll.vote(user, option, limits.max_voters)?;
            }
            RoomMsg::Upvote(Upvote { question_id }) => {
                let upvotes = self
                    .questions
                    .upvote(question_id, &user.id, limits.max_voters)?;
                self.push(EventBody::QuestionUpvoted {
                    question_id,
                    upvotes,
                });
            }
            RoomMsg::Announce(Announce { text }) => self.push(EventBody::Announcement {
                user: user.clone(),
                text,
            }),
            RoomMsg::OpenPoll(spec) => {
                let poll = Poll::open(
                    PollId(self.next_poll_id + 1),
                    spec,
                    limits.max_poll_options,
                    now,
                )?;
                self.next_poll_id += 1;
                if let Some(old) = self.poll.take() {
                    self.push(old.close());
                }
                self.push(EventBody::PollOpened { poll: poll.view() });
                self.poll = Some(poll);
            }
            RoomMsg::ClosePoll(ClosePoll { poll_id }) => {
                if self.poll.as_ref().map(Poll::id) != Some(poll_id) {
                    return Err(Rejection::new(ErrorCode::NotFound, "no such open poll"));
                }
                let poll = self.poll.take().expect("checked above");
                self.push(poll.close());
            }
            RoomMsg::Answer(Answer { question_id, text }) => {
                self.questions.answer(question_id, text.clone())?;
                self.push(EventBody::QuestionAnswered {
                    question_id,
                    answer: text,
                    by: user.clone(),
                });
            }
            RoomMsg::PinQuestion(PinQuestion { question_id }) => {
                self.questions.pin(question_id)?;
                self.push(EventBody::QuestionPinned { question_id });
            }
            RoomMsg::DeleteMessage(DeleteMessage { seq }) => {
                self.delete(seq)?;
                self.push(EventBody::MessageDeleted {
                    target_seq: seq,
                    by: user.clone(),
                });
            }
            RoomMsg::Mute(Mute { user_id, seconds }) => {
                self.protect(&user_id)?;
                let until =
                    self.moderation
                        .mute(&user_id, seconds, now, limits.max_moderated_users)?;
                self.push(EventBody::UserMuted { user_id, until });
            }
            RoomMsg::Unmute(Unmute { user_id }) => {
                if !self.moderation.unmute(&user_id) {
                    return Err(Rejection::new(
                        ErrorCode::NotFound,
                        "that user is not muted",
                    ));
                }
                self.push(EventBody::UserUnmuted { user_id });
            }
            RoomMsg::Ban(Ban { user_id }) => {
                self.protect(&user_id)?;
                self.moderation.ban(&user_id, limits.max_moderated_users)?;
                self.persist(PersistBan::Add(user_id.clone()));
                self.push(EventBody::UserBanned {
                    user_id: user_id.clone(),
                });
                let kicked: Vec<ConnId> = self
                    .subscribers
                    .iter()
                    .filter(|(_, s)| s.user.id == user_id)
                    .map(|(c, _)| *c)
                    .collect();
                // Publish the ban event first, so the banned viewer sees why.
                self.flush();
                for conn in kicked {
                    if let Some(s) = self.subscribers.get(&conn) {
                        s.outbox.close(CloseCode::Forbidden);
                    }
                    self.remove(conn);
                }
            }
            RoomMsg::Unban(Unban { user_id }) => {
                if !self.moderation.unban(&user_id) {
                    return Err(Rejection::new(
                        ErrorCode::NotFound,
                        "that user is not banned",
                    ));
                }
                self.persist(PersistBan::Remove(user_id.clone()));
                self.push(EventBody::UserUnbanned { user_id });
            }
            RoomMsg::SlowMode(SlowMode { seconds }) => {
                self.moderation.set_slow_mode(seconds)?;
                self.push(EventBody::SlowMode { seconds });
            }
            RoomMsg::SetBannedWords(SetBannedWords { words }) => {
                self.moderation
                    .banned_words
                    .set(words, limits.max_banned_words)?;
                return Ok(Reply::Ack);
            }
            // Connections count reactions without queueing them (see
            // `RoomHandle::react`); one that comes this way counts the same.
            RoomMsg::React(React { kind }) => self.shared.add_reaction(kind),
            RoomMsg::EndShow(EndShow {}) => self.end(),
        }
        Ok(Reply::None)
    }

    /// Moderators and hosts who are in the room cannot be muted or banned.
    fn protect(&self, target: &UserId) -> Result<(), Rejection> {
        let is_staff = self
            .subscribers
            .values()
            .any(|s| &s.user.id == target && s.user.role.can_moderate());
        if is_staff {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                "moderators and hosts cannot be muted or banned",
            ));
        }
        Ok(())
    }

    /// Redacts a chat message or question in the history.
    fn delete(&mut self, seq: Seq) -> Result<(), Rejection> {
        if seq == 0 || seq > self.seq {
            return Err(Rejection::new(ErrorCode::NotFound, "no such message"));
        }
        if self.history.is_before_window(seq) {
            return Ok(()); // too old to redact here; clients still hear about it
        }
        let slot = self
            .history
            .get_mut(seq)
            .ok_or_else(|| Rejection::new(ErrorCode::NotFound, "no such message"))?;
        let mut redacted = (**slot).clone();
        match &mut redacted.body {
            EventBody::Chat { text, deleted, .. } => {
                if *deleted {
                    return Err(Rejection::new(ErrorCode::NotFound, "already deleted"));
                }
                text.clear();
                *deleted = true;
            }
            EventBody::QuestionAsked { question } => {
                if question.deleted {
                    return Err(Rejection::new(ErrorCode::NotFound, "already deleted"));
                }
                let id = question.id;
                question.text.clear();
                question.deleted = true;
                self.questions.remove(id);
            }
            _ => {
                return Err(Rejection::new(
                    ErrorCode::InvalidArgument,
                    "only chat messages and questions can be deleted",
                ))
            }
        }
        *slot = Arc::new(redacted);
        Ok(())
    }

    fn persist(&self, op: PersistBan) {
        let store = self.ctx.store.clone();
        let room = self.shared.info.id.clone();
        tokio::task::spawn_blocking(move || {
            let result = match &op {
                PersistBan::Add(u) => store.add_ban(&room, u),
                PersistBan::Remove(u) => store.remove_ban(&room, u),
            };
            if let Err(e) = result {
                tracing::error!(%room, error = %e, "could not persist ban change");
            }
        });
    }

    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.refuse_pending_joins(CloseCode::RoomClosed);
        if let Some(poll) = self.poll.take() {
            self.push(poll.close());
        }
        self.push(EventBody::ShowEnded {});
        self.flush();
        self.ended = true;
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.close_all(CloseCode::RoomClosed);
        let store = self.ctx.store.clone();
        let room: RoomId = self.shared.info.id.clone();
        let now = self.ctx.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.close_room(&room, now) {
                tracing::error!(%room, error = %e, "could not persist room close");
            }
        });
        tracing::info!(room = %self.shared.info.id, "show ended");
    }

    fn close_all(&mut self, code: CloseCode) {
        for (_, s) in self.subscribers.drain() {
            s.outbox.close(code);
            self.ctx.metrics.viewers.dec();
        }
        self.viewers_changed();
    }

    /// Sends a private message, in order with the room's frames; a
    /// connection whose backlog is full is dropped from the room (its task
    /// closes it with 4008).
    fn send_direct(&mut self, conn: ConnId, msg: &ServerMsg) {
        let Some(sub) = self.subscribers.get(&conn) else {
            return;
        };
        let frame = match sub.encoding.encode(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "encode failed");
                return;
            }
        };
        if let Push::Overflow | Push::Closed = sub.outbox.push(ws_frame::data(&frame)) {
            self.remove(conn);
        }
    }

    /// Publishes this tick: one encoded frame per encoding in use.
    fn flush(&mut self) {
        let started = Instant::now();
        let now = self.ctx.clock.now_ms();
        if self.poll.as_ref().is_some_and(|p| p.due(now)) {
            let poll = self.poll.take().expect("checked above");
            self.push(poll.close());
        }
        for body in self.market.changes(now) {
            self.push(body);
        }
        if let Some(s) = self.shared.stream.get().filter(|s| Some(*s) != self.stream) {
            self.stream = Some(s);
            self.push(EventBody::Stream {
                state: s.state,
                since: s.since,
            });
        }
        let counts = self.shared.take_reactions();
        let reactions: BTreeMap<ReactionKind, u32> = ReactionKind::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect();
        let tallies: Vec<_> = self
            .poll
            .as_mut()
            .and_then(Poll::take_tally)
            .into_iter()
            .collect();
        // The viewer count is conflated: during a join storm it changes every
        // tick, and resending it to everyone each tick would cost
        // viewers x ticks for a number nobody reads that fast.
        let viewers =
            if self.viewers_dirty && self.viewers_sent_at.elapsed() >= VIEWER_COUNT_INTERVAL {
                self.viewers_dirty = false;
                self.viewers_sent_at = started;
                Some(self.subscribers.len() as u32)
            } else {
                None
            };
        if self.pending.is_empty()
            && reactions.is_empty()
            && tallies.is_empty()
            && viewers.is_none()
        {
            return;
        }
        self.batch_sent_at = started;
        let events = std::mem::take(&mut self.pending);
        let n_events = events.len();
        let kinds: Vec<&'static str> = events.iter().map(|e| e.body.kind()).collect();
        let batch = ServerMsg::Batch {
            events,
            viewers,
            reactions,
            tallies,
        };
        let ctx = self.ctx.clone();
        let metrics = &ctx.metrics;
        let mut in_use = [0usize; 2];
        for s in self.subscribers.values() {
            in_use[s.encoding.index()] += 1;
        }
        let mut frames: [Option<bytes::Bytes>; 2] = [None, None];
        for encoding in Encoding::ALL {
            let receivers = in_use[encoding.index()];
            if receivers == 0 {
                continue;
            }
            match encoding.encode(&batch) {
                Ok(frame) => {
                    metrics.fanout_batch_bytes.observe(frame.len() as f64);
                    metrics.frames_out.inc_by(receivers as u64);
                    metrics.bytes_out.inc_by((frame.len() * receivers) as u64);
                    for kind in &kinds {
                        metrics
                            .events_out
                            .with_label_values(&[kind])
                            .inc_by(receivers as u64);
                    }
                    frames[encoding.index()] = Some(ws_frame::data(&frame));
                }
                Err(e) => tracing::error!(error = %e, "batch encode failed"),
            }
        }
        self.fan_out(&frames);
        metrics.fanout_batch_events.observe(n_events as f64);
        self.flushed_seq = self.seq;
        metrics
            .tick_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Writes the tick's frame to every subscriber. A full backlog or a dead
    /// socket takes the viewer out of the room; its task closes it (4008)
    /// and it resumes from its last `seq`.
    ///
    /// A large fanout first gives this worker's queued tasks to another
    /// thread (`fanout_offload_viewers`): otherwise the connections that
    /// happened to be scheduled here would wait for the whole fanout. It is
    /// then split over `fanout_threads`: the last viewer's wait is the
    /// fanout's length, and one thread writes 10,000 sockets in over 100 ms.
    fn fan_out(&mut self, frames: &[Option<bytes::Bytes>; 2]) {
        let viewers = self.subscribers.len();
        let sends = Sends {
            io_uring: self.ctx.limits.fanout_io_uring,
            submissions: &self.ctx.metrics.fanout_uring_submissions,
        };
        let dropped = if viewers >= self.ctx.limits.fanout_offload_viewers && multi_thread() {
            self.ctx.metrics.fanouts_offloaded.inc();
            let threads = self.ctx.limits.fanout_threads_for(viewers);
            let (subscribers, split) = (&self.subscribers, &self.ctx.metrics.fanouts_split);
            tokio::task::block_in_place(|| write_split(subscribers, frames, threads, split, sends))
        } else {
            write_to(self.subscribers.iter(), frames, sends)
        };
        for conn in dropped {
            self.remove(conn);
        }
    }

    fn housekeeping(&mut self) {
        self.moderation.prune(self.ctx.clock.now_ms());
        let gone: Vec<ConnId> = self
            .subscribers
            .iter()
            // Only the room still holds the outbox: the connection is gone.
            .filter(|(_, s)| Arc::strong_count(&s.outbox) == 1)
            .map(|(c, _)| *c)
            .collect();
        for conn in gone {
            self.remove(conn);
        }
    }
}

type JoinReply = oneshot::Sender<Result<(), CloseCode>>;

enum Reply {
    None,
    Ack,
}

enum PersistBan {
    Add(UserId),
    Remove(UserId),
}

/// Cleans user text for the actions that carry some; shared by the
/// connection (which checks before queueing) and tests.
pub fn clean_action_text(
    msg: &mut RoomMsg,
    limits: &crate::config::Limits,
) -> Result<(), Rejection> {
    match msg {
        RoomMsg::Chat(Chat { text }) => *text = text::clean(text, limits.max_chat_chars)?,
        RoomMsg::Ask(Ask { text })
        | RoomMsg::Announce(Announce { text })
        | RoomMsg::Answer(Answer { text, .. }) => *text = text::clean(text, limits.max_text_chars)?,
        _ => {}
    }
    Ok(())
}

/// How a fanout's sends reach the kernel (see `outbox::push_batch`).
#[derive(Clone, Copy)]
struct Sends<'a> {
    io_uring: bool,
    submissions: &'a prometheus::IntCounter,
}

/// Writes the tick's frame to each of `viewers` (with io_uring,
/// `outbox::BATCH` at a time); returns the ones to drop.
fn write_to<'a>(
    viewers: impl Iterator<Item = (&'a ConnId, &'a Subscriber)>,
    frames: &[Option<bytes::Bytes>; 2],
    sends: Sends<'_>,
) -> Vec<ConnId> {
    let mut dropped = Vec::new();
    if !sends.io_uring {
        // One send per viewer, straight from the loop: no batch to build.
        for (conn, s) in viewers {
            let Some(frame) = &frames[s.encoding.index()] else {
                continue;
            };
            if let Push::Overflow | Push::Closed = s.outbox.push(frame.clone()) {
                dropped.push(*conn);
            }
        }
        return dropped;
    }
    let mut conns: Vec<ConnId> = Vec::with_capacity(outbox::BATCH);
    let mut batch: Vec<(&Outbox, &bytes::Bytes)> = Vec::with_capacity(outbox::BATCH);
    let mut send = |conns: &mut Vec<ConnId>, batch: &mut Vec<(&Outbox, &bytes::Bytes)>| {
        let pushes = outbox::push_batch(batch, sends.io_uring, sends.submissions);
        for (conn, push) in conns.iter().zip(pushes) {
            if let Push::Overflow | Push::Closed = push {
                dropped.push(*conn);
            }
        }
        conns.clear();
        batch.clear();
    };
    for (conn, s) in viewers {
        let Some(frame) = &frames[s.encoding.index()] else {
            continue;
        };
        conns.push(*conn);
        batch.push((&s.outbox, frame));
        if batch.len() == outbox::BATCH {
            send(&mut conns, &mut batch);
        }
    }
    if !batch.is_empty() {
        send(&mut conns, &mut batch);
    }
    dropped
}

/// Splits one fanout into `threads` slices: this thread writes the first,
/// scoped threads the others, and all are done before the room goes on, so
/// a viewer's frames still leave in tick order. A thread the system refuses
/// to start leaves its slice to this one.
fn write_split(
    subscribers: &HashMap<ConnId, Subscriber>,
    frames: &[Option<bytes::Bytes>; 2],
    threads: usize,
    split: &prometheus::IntCounter,
    sends: Sends<'_>,
) -> Vec<ConnId> {
    if threads <= 1 {
        return write_to(subscribers.iter(), frames, sends);
    }
    let all: Vec<(&ConnId, &Subscriber)> = subscribers.iter().collect();
    let per_thread = all.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut slices = all.chunks(per_thread);
        let mine = slices.next().unwrap_or_default();
        let mut left: Vec<&[(&ConnId, &Subscriber)]> = Vec::new();
        let mut helpers = Vec::with_capacity(threads - 1);
        for slice in slices {
            let spawned = std::thread::Builder::new()
                .name("flashcast-fanout".into())
                .spawn_scoped(scope, move || {
                    write_to(slice.iter().copied(), frames, sends)
                });
            match spawned {
                Ok(helper) => helpers.push(helper),
                Err(e) => {
                    tracing::warn!(error = %e, "fanout thread not started; writing its slice here");
                    left.push(slice);
                }
            }
        }
        if !helpers.is_empty() {
            split.inc();
        }
        let mut dropped = write_to(mine.iter().copied(), frames, sends);
        for slice in left {
            dropped.extend(write_to(slice.iter().copied(), frames, sends));
        }
        for helper in helpers {
            match helper.join() {
                Ok(d) => dropped.extend(d),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        dropped
    })
}

/// `block_in_place` needs the multi-thread runtime (the server's); a
/// single-threaded one (some embedders' tests) just writes in place.
fn multi_thread() -> bool {
    matches!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    )
}
