//! The room task. It alone mutates a room, so the order in which it applies
//! actions is the order every viewer sees.
//!
//! Fanout-paced batching: as soon as the previous batch's fanout has
//! finished and something is pending, it takes the events appended since
//! plus the aggregated counts (reactions, viewers, poll tallies), encodes
//! them ONCE per encoding in use and hands the frames to the fanout
//! (`transport::Fanout`), which writes the same bytes to every viewer. A
//! batch grows only while the fanout is busy, the way a group commit grows
//! while the disk is; `tick_ms` bounds how long aggregates wait. An
//! operator who prefers CPU to latency sets `room_frames_per_sec`: a room
//! then also spaces its batches by viewers / that rate, so a large room's
//! batches carry more events each (docs/benchmarks.md, chat-10k). The room
//! knows viewers only by `ConnId`: no socket, no WebSocket framing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

mod durable;

pub(crate) use durable::{Asker, Durable, EndReply};

use super::history::History;
use super::market::MarketWatch;
use super::{Command, ConnId, JoinRequest, RoomContext, RoomShared};
use crate::engage::moderation::Moderation;
use crate::engage::poll::Poll;
use crate::engage::qa::Questions;
use crate::engage::Rejection;
use crate::transport::{Published, TopicId};
use flashcast_wire::client::{
    Announce, Answer, Ask, Ban, Chat, ClosePoll, DeleteMessage, EndShow, Mute, PinQuestion, React,
    RoomMsg, SetBannedWords, SlowMode, Unban, Unmute, Upvote, Vote,
};
use flashcast_wire::ids::{PollId, Seq, UserId};
use flashcast_wire::{
    CloseCode, Encoding, ErrorCode, Event, EventBody, ReactionKind, RoomState, ServerMsg,
    StreamStatus, UserRef,
};

/// Viewer counts go out at most this often (when they changed).
pub const VIEWER_COUNT_INTERVAL: Duration = Duration::from_secs(1);

struct Subscriber {
    user: UserRef,
    encoding: Encoding,
}

pub(crate) struct RoomActor {
    shared: Arc<RoomShared>,
    ctx: Arc<RoomContext>,
    commands: mpsc::Receiver<Command>,
    /// The room's own queue, for the answers of its durable writes (weak:
    /// the room still stops when its last handle is gone).
    me: mpsc::WeakSender<Command>,
    /// Durable changes waiting for the store (at most `room_queue`).
    persisting: usize,
    /// The end of the show is being made durable: no more actions or joins.
    ending: bool,
    /// Distinguishes this run of the room from earlier ones (sequence numbers
    /// restart with the process), so a resume across a restart gets a gap.
    epoch: u64,
    seq: Seq,
    /// Last seq published to subscribers; joins and resumes see up to here.
    flushed_seq: Seq,
    history: History,
    pending: Vec<Arc<Event>>,
    subscribers: HashMap<ConnId, Subscriber>,
    /// Joins wait for the next flush, so that their snapshot and their
    /// `seq` describe the same moment (nothing published half-way).
    pending_joins: Vec<(JoinRequest, JoinReply)>,
    viewers_dirty: bool,
    viewers_sent_at: Instant,
    /// This room's subscribers on the fanout.
    topic: TopicId,
    /// The last batch handed to the fanout, until it is written: the next
    /// one waits for it (see `run`).
    in_flight: Option<Published>,
    /// When the last batch was handed to the fanout.
    batch_at: tokio::time::Instant,
    /// Cluster mode: batches are published only once journaled.
    journal: Option<Box<dyn crate::cluster::journal::RoomJournal>>,
    /// The batch being journaled: nothing else is flushed meanwhile.
    journaling: Option<Journaling>,
    /// A tick passed since the last flush: aggregates may be waiting.
    tick_due: bool,
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
        me: mpsc::WeakSender<Command>,
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
            me,
            persisting: 0,
            ending: false,
            seq: 0,
            flushed_seq: 0,
            pending: Vec::new(),
            subscribers: HashMap::new(),
            pending_joins: Vec::new(),
            viewers_dirty: false,
            viewers_sent_at: Instant::now()
                .checked_sub(VIEWER_COUNT_INTERVAL)
                .unwrap_or_else(Instant::now),
            topic: crate::transport::new_topic(),
            in_flight: None,
            batch_at: tokio::time::Instant::now(),
            journal: None,
            journaling: None,
            tick_due: false,
            poll: None,
            next_poll_id: 0,
            questions: Questions::default(),
            ended: false,
            ctx,
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(journal) = &self.ctx.journal {
            self.journal = Some(journal.room(&self.shared.info.id, self.epoch));
        }
        // The upper bound: aggregates (reactions, tallies, stock, poll and
        // sale deadlines) are collected at least this often. The first tick
        // is one period away, not at once: nothing is due yet.
        let period = self.ctx.limits.tick();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let in_flight = self.in_flight.clone();
            // A large room spaces its batches (`room_frames_per_sec`).
            let gap_end = self.next_batch_at();
            let spacing = in_flight.is_none()
                && self.journaling.is_none()
                && self.batch_waiting()
                && tokio::time::Instant::now() < gap_end;
            let mut arrived = false;
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    arrived = true;
                    if self.handle(cmd) {
                        break;
                    }
                    // Drain what is already queued before flushing: all of
                    // it can share the batch. Bounded, so the fanout is
                    // never starved.
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
                }
                _ = finished(in_flight.as_ref()), if in_flight.is_some() => {}
                _ = tokio::time::sleep_until(gap_end), if spacing => {}
                _ = tick.tick() => self.tick_due = true,
                _ = housekeeping.tick() => self.housekeeping(),
            }
            if self.in_flight.as_ref().is_some_and(Published::is_finished) {
                self.in_flight = None;
                self.ctx
                    .metrics
                    .fanout_seconds
                    .observe(self.batch_at.elapsed().as_secs_f64());
            }
            // Fanout-paced: send as soon as the fanout is free (and, in a
            // large room, the gap has passed). What arrives meanwhile
            // waits and shares one batch.
            let free = self.in_flight.is_none()
                && self.journaling.is_none()
                && tokio::time::Instant::now() >= self.next_batch_at();
            if free && self.batch_waiting() {
                if arrived && !self.pending.is_empty() {
                    self.ctx.metrics.batches_leading.inc();
                }
                self.tick_due = false;
                self.flush();
                if self.journaling.is_none() {
                    self.admit_joins();
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

    /// Something is waiting for the next batch: events, joins, or
    /// aggregates (a tick passed).
    fn batch_waiting(&self) -> bool {
        !self.pending.is_empty() || !self.pending_joins.is_empty() || self.tick_due
    }

    /// The earliest moment the next batch may leave: the last one's start
    /// plus viewers / `room_frames_per_sec` (none unless that is set).
    fn next_batch_at(&self) -> tokio::time::Instant {
        self.batch_at + self.ctx.limits.batch_gap(self.subscribers.len())
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
                let asker = Asker {
                    conn: Some(conn),
                    reference,
                };
                match self.act(&user, msg) {
                    Ok(Reply::None) => self.ctx.metrics.events_in.with_label_values(&[kind]).inc(),
                    Ok(Reply::Ack) => {
                        self.ctx.metrics.events_in.with_label_values(&[kind]).inc();
                        self.send_direct(conn, &ServerMsg::Ack { reference });
                    }
                    Ok(Reply::Persist(change)) => {
                        self.ctx.metrics.events_in.with_label_values(&[kind]).inc();
                        self.persist(asker, change);
                    }
                    Ok(Reply::End) => {
                        self.ctx.metrics.events_in.with_label_values(&[kind]).inc();
                        self.end(asker, None);
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
            Command::End(reply) => self.end(
                Asker {
                    conn: None,
                    reference: None,
                },
                Some(reply),
            ),
            Command::Persisted {
                asker,
                change,
                result,
            } => self.persisted(asker, change, result),
            Command::Journaled(result) => return self.journaled(result),
            Command::JournalRetry => self.append_to_journal(),
            Command::Shutdown => {
                self.refuse_pending_joins(CloseCode::ServiceRestart);
                self.flush();
                self.close_all(CloseCode::ServiceRestart);
                return true;
            }
        }
        self.ended
    }

    /// Admits the waiting joins, right after a batch was handed out: their
    /// snapshot ends at `flushed_seq` and the next batch continues it.
    fn admit_joins(&mut self) {
        debug_assert!(
            self.pending
                .first()
                .is_none_or(|e| e.seq == self.flushed_seq + 1),
            "joins are admitted right after a batch was published"
        );
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
        let refusal = if self.ended || self.ending {
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
        // Sent before the subscription: `joined` comes first and the next
        // batch continues right after its `seq` (the fanout keeps a
        // connection's frames in call order). The join is answered once
        // `joined` is in the outbox, so nothing the connection writes
        // itself can overtake it.
        let fanout = &self.ctx.fanout;
        if !fanout.connected(req.conn) {
            let _ = reply.send(Err(CloseCode::Normal));
            return;
        }
        let written = match req.encoding.encode(&joined) {
            Ok(frame) => fanout.send(req.conn, frame),
            Err(e) => {
                tracing::error!(error = %e, "encode failed");
                let _ = reply.send(Err(CloseCode::Normal));
                return;
            }
        };
        fanout.subscribe(self.topic, req.conn, req.encoding);
        // A connection gone meanwhile is removed by housekeeping.
        tokio::spawn(async move {
            written.finished().await;
            let _ = reply.send(Ok(()));
        });
        self.subscribers.insert(
            req.conn,
            Subscriber {
                user: req.user,
                encoding: req.encoding,
            },
        );
        self.viewers_changed();
        self.ctx.metrics.viewers.inc();
    }

    fn remove(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.ctx.fanout.unsubscribe(self.topic, conn);
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
        if self.ended || self.ending {
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
                self.can_persist()?;
                // In force at once; announced (and the viewer kicked) once
                // durable (see `durable`).
                let new = !self.moderation.is_banned(&user_id);
                self.moderation.ban(&user_id, limits.max_moderated_users)?;
                return Ok(Reply::Persist(Durable::Ban { user_id, new }));
            }
            RoomMsg::Unban(Unban { user_id }) => {
                if !self.moderation.unban(&user_id) {
                    return Err(Rejection::new(
                        ErrorCode::NotFound,
                        "that user is not banned",
                    ));
                }
                if let Err(busy) = self.can_persist() {
                    let _ = self.moderation.ban(&user_id, usize::MAX);
                    return Err(busy);
                }
                return Ok(Reply::Persist(Durable::Unban(user_id)));
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
            RoomMsg::EndShow(EndShow {}) => {
                self.can_persist()?;
                return Ok(Reply::End);
            }
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

    /// The end of the show is durable: tell everyone, close every
    /// connection; the room task then stops.
    fn finish_end(&mut self) {
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
        tracing::info!(room = %self.shared.info.id, "show ended");
    }

    fn close_all(&mut self, code: CloseCode) {
        for (conn, _) in self.subscribers.drain() {
            self.ctx.fanout.close(conn, code);
            self.ctx.fanout.unsubscribe(self.topic, conn);
            self.ctx.metrics.viewers.dec();
        }
        self.viewers_changed();
    }

    /// Sends a private message, in order with the room's frames; a
    /// connection whose backlog is full is closed by its task (4008) and
    /// then leaves the room.
    fn send_direct(&mut self, conn: ConnId, msg: &ServerMsg) {
        let Some(sub) = self.subscribers.get(&conn) else {
            return;
        };
        match sub.encoding.encode(msg) {
            Ok(frame) => {
                self.ctx.fanout.send(conn, frame);
            }
            Err(e) => tracing::error!(error = %e, "encode failed"),
        }
    }

    /// Hands what is pending to the fanout: one encoded frame per encoding
    /// in use.
    fn flush(&mut self) {
        if self.journaling.is_some() {
            // One batch at a time in the journal; this one waits (at a
            // shutdown or show end it is never sent: viewers resume).
            return;
        }
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
        let events = std::mem::take(&mut self.pending);
        let n_events = events.len();
        let first_seq = events.first().map(|e| e.seq);
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
        let mut frames: crate::transport::Frames = [None, None];
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
                    frames[encoding.index()] = Some(frame);
                }
                Err(e) => tracing::error!(error = %e, "batch encode failed"),
            }
        }
        metrics.fanout_batch_events.observe(n_events as f64);
        metrics
            .tick_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Some(first_seq), Some(_)) = (first_seq, &self.journal) {
            // Journaled in MessagePack whatever the viewers use.
            let record = match &frames[Encoding::MsgPack.index()] {
                Some(frame) => Ok(frame.bytes().clone()),
                None => Encoding::MsgPack.encode(&batch).map(|f| f.bytes().clone()),
            };
            match record {
                Ok(record) => {
                    self.journaling = Some(Journaling {
                        frames,
                        first_seq,
                        last_seq: self.seq,
                        record,
                        started: Instant::now(),
                    });
                    self.append_to_journal();
                }
                Err(e) => tracing::error!(error = %e, "batch encode failed"),
            }
            return;
        }
        self.publish(frames, self.seq);
    }

    /// Hands `frames` to the fanout; joins and resumes now see up to
    /// `last_seq`.
    fn publish(&mut self, frames: crate::transport::Frames, last_seq: Seq) {
        // Overflowing viewers are closed by the transport (4008); their
        // tasks then tell the room they left.
        self.in_flight = Some(self.ctx.fanout.publish(self.topic, frames));
        self.batch_at = tokio::time::Instant::now();
        self.flushed_seq = last_seq;
    }

    /// Appends the batch being journaled (again, after a failure); its
    /// answer comes back as `Command::Journaled`.
    fn append_to_journal(&mut self) {
        let (Some(journal), Some(j)) = (self.journal.as_mut(), self.journaling.as_ref()) else {
            return;
        };
        let append = journal.append(j.first_seq, j.record.clone());
        let me = self.me.clone();
        tokio::spawn(async move {
            let result = append.await;
            if let Some(room) = me.upgrade() {
                let _ = room.send(Command::Journaled(result)).await;
            }
        });
    }

    /// The journal's answer: publish the batch, retry it, or step down.
    /// True when the room task must stop.
    fn journaled(&mut self, result: crate::cluster::ClusterResult<()>) -> bool {
        let Some(j) = self.journaling.as_ref() else {
            return false;
        };
        let metrics = &self.ctx.metrics;
        match result {
            Ok(()) => {
                metrics
                    .journal_seconds
                    .observe(j.started.elapsed().as_secs_f64());
                let j = self.journaling.take().expect("checked above");
                self.publish(j.frames, j.last_seq);
                self.admit_joins();
                false
            }
            Err(crate::cluster::ClusterError::Fenced(why)) => {
                // Another node owns the room now: nothing of this batch was
                // stored or seen. Viewers reconnect and find the new owner.
                tracing::warn!(room = %self.shared.info.id, %why, "room lost to another owner; stepping down");
                metrics
                    .journal_failures
                    .with_label_values(&["fenced"])
                    .inc();
                self.journaling = None;
                self.refuse_pending_joins(CloseCode::ServiceRestart);
                self.close_all(CloseCode::ServiceRestart);
                true
            }
            Err(e) => {
                tracing::warn!(room = %self.shared.info.id, error = %e, "journal append failed; retrying");
                metrics
                    .journal_failures
                    .with_label_values(&["unavailable"])
                    .inc();
                let me = self.me.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(JOURNAL_RETRY).await;
                    if let Some(room) = me.upgrade() {
                        let _ = room.send(Command::JournalRetry).await;
                    }
                });
                false
            }
        }
    }

    fn housekeeping(&mut self) {
        self.moderation.prune(self.ctx.clock.now_ms());
        let gone: Vec<ConnId> = self
            .subscribers
            .iter()
            // Missed `leave` commands (the queue was full): the
            // connection is gone.
            .filter(|(c, _)| !self.ctx.fanout.connected(**c))
            .map(|(c, _)| *c)
            .collect();
        for conn in gone {
            self.remove(conn);
        }
    }
}

type JoinReply = oneshot::Sender<Result<(), CloseCode>>;

/// A batch waiting for the journal before it is published.
struct Journaling {
    frames: crate::transport::Frames,
    first_seq: Seq,
    last_seq: Seq,
    /// What is appended: the batch in MessagePack.
    record: bytes::Bytes,
    started: Instant,
}

/// Wait before appending again after the journal was unavailable.
const JOURNAL_RETRY: Duration = Duration::from_millis(500);

enum Reply {
    None,
    Ack,
    /// Announced once durable (see `durable`).
    Persist(Durable),
    /// The host ends the show.
    End,
}

/// Resolves when `published` is written (never for none).
async fn finished(published: Option<&Published>) {
    match published {
        Some(p) => p.finished().await,
        None => std::future::pending().await,
    }
}
