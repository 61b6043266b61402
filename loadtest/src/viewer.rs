//! One simulated viewer running its script: join at its moment, read every
//! frame (sequence contiguity, delivery latency), do its timed actions
//! (chat, reactions, reconnects, replayed actions) and react to what it
//! sees (vote when a poll opens, buy when the sale starts, claim when
//! coupons drop), then close when the run ends.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use flashcast_wire::client::{
    Ask, Buy, Chat, ClaimCoupon, ClientFrame, ClientMsg, Join, React, Upvote, Vote,
};
use flashcast_wire::codec::decode_server;
use flashcast_wire::ids::{CouponId, IdemKey, PollId, QuestionId, RoomId, Sku};
use flashcast_wire::{now_ms, Encoding, ErrorCode, EventBody, ReactionKind, RoomState, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use flashcast_wire::recording::TraceAction;
use flashcast_wire::Role;

use crate::client::{close_politely, connect, Target, Ws};
use crate::stats::SeqCheck;
use crate::tally::{Live, PerSecond, Timing};
use crate::wire::{scan, Scan};

/// Requests awaiting an answer per connection (buys and claims); beyond
/// it the oldest is counted as unanswered.
const MAX_PENDING: usize = 64;

/// Something a viewer does at a moment of its script.
#[derive(Debug, Clone)]
pub enum Act {
    Chat(String),
    React(ReactionKind),
    /// Votes this option of the poll open now.
    Vote(u8),
    Ask(String),
    Upvote(QuestionId),
    /// Upvotes the newest question this viewer has seen (`upvotes` phase).
    UpvoteSeen,
    Buy {
        sku: Sku,
        qty: u32,
        key: IdemKey,
    },
    /// Claims the coupon dropped last.
    Claim,
    /// Drops the connection without a close frame and resumes.
    Reconnect,
    /// Closes the connection for good (a replayed viewer leaving).
    Leave,
}

/// Actions started by what the viewer sees.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    /// For each poll phase the viewer votes in: (delay after seeing the
    /// poll, option), in phase order.
    pub votes: VecDeque<(Duration, u8)>,
    /// For each flash sale the viewer buys in: the SKU and when after its
    /// start to buy.
    pub buys: Vec<BuyTrigger>,
    /// For each coupon drop the viewer claims in: delay after seeing it.
    pub claims: VecDeque<Duration>,
}

#[derive(Debug, Clone)]
pub struct BuyTrigger {
    pub sku: Sku,
    pub qty: u32,
    pub key: IdemKey,
    pub delay: Duration,
    pub fired: bool,
}

/// A viewer's whole script. Times are offsets from the go signal.
#[derive(Debug, Clone)]
pub struct Script {
    /// Global number of the viewer (replayed viewers come after the
    /// scenario's own).
    pub id: u32,
    pub token: Option<String>,
    pub source: Ipv4Addr,
    pub join_at: Duration,
    /// Sorted by time.
    pub timed: Vec<(Duration, Act)>,
    pub triggers: Triggers,
}

/// What every viewer of one process shares.
pub struct Shared {
    pub target: Target,
    pub room: RoomId,
    pub live: Arc<Live>,
    pub t0: Instant,
    pub join_timeout: Duration,
    pub join_retries: u32,
}

/// Why a request is pending.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Buy { at: Instant, qty: u32 },
    Claim { at: Instant },
    Other(&'static str),
}

/// The state of one connection.
struct Conn {
    ws: Ws,
    seq: SeqCheck,
    epoch: u64,
    poll: Option<PollId>,
    coupon: Option<CouponId>,
    /// The newest question seen, for `upvotes` phases.
    question: Option<QuestionId>,
    pending: HashMap<u32, Pending>,
    next_ref: u32,
}

/// Runs the script to the end of the run (`stop` turns true).
pub async fn run(shared: Arc<Shared>, mut script: Script, mut stop: watch::Receiver<bool>) {
    let live = &shared.live;
    let shard = script.id as usize;
    tokio::select! {
        _ = tokio::time::sleep_until(shared.t0 + script.join_at) => {}
        _ = stop.changed() => return,
    }
    Live::add(&live.c.join_attempts, 1);
    let (mut conn, state) = match join_with_retries(&shared, &script, None).await {
        Ok(joined) => {
            Live::add(&live.c.joined, 1);
            let role = if script.token.is_some() {
                Role::Viewer
            } else {
                Role::Guest
            };
            live.record(script.id + 1, || Some(TraceAction::Join { role }));
            joined
        }
        Err(reason) => {
            live.join_failure(&reason);
            return;
        }
    };
    // Triggered actions waiting for their moment, sorted by time.
    let mut soon: VecDeque<(Instant, Act)> = VecDeque::new();
    let mut timed: VecDeque<(Duration, Act)> = std::mem::take(&mut script.timed).into();
    let mut scan_buf = Scan::default();
    let mut latencies: Vec<u64> = Vec::with_capacity(64);
    // Triggers already satisfied by the room as it was when we joined.
    fire_from_state(&state, &mut script.triggers, &mut conn, &mut soon);
    drop(state);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    loop {
        let next_timed = timed.front().map(|(d, _)| shared.t0 + *d).unwrap_or(far);
        let next_soon = soon.front().map(|(at, _)| *at).unwrap_or(far);
        let wake = next_timed.min(next_soon);
        tokio::select! {
            biased;
            _ = stop.changed() => {
                live.record(script.id + 1, || Some(TraceAction::Leave));
                close_politely(&mut conn.ws).await;
                connection_ended(live, &mut conn);
                return;
            }
            msg = conn.ws.next() => {
                let ended = match msg {
                    Some(Ok(Message::Binary(b))) => {
                        on_frame(&shared, shard, &b, &mut conn, &mut script.triggers, &mut soon,
                                 &mut scan_buf, &mut latencies);
                        false
                    }
                    Some(Ok(Message::Close(frame))) => {
                        live.close(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                        true
                    }
                    Some(Ok(Message::Text(_))) => {
                        Live::add(&live.c.decode_errors, 1);
                        false
                    }
                    Some(Ok(_)) => false,
                    Some(Err(_)) | None => {
                        live.close(1006);
                        true
                    }
                };
                if ended {
                    connection_ended(live, &mut conn);
                    return;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                live.timing(Timing::SendLag, wake.elapsed().as_millis() as u64);
                let act = if next_soon <= next_timed {
                    soon.pop_front().map(|(_, a)| a)
                } else {
                    timed.pop_front().map(|(_, a)| a)
                };
                let Some(act) = act else { continue };
                match act {
                    Act::Reconnect => {
                        Live::add(&live.c.reconnects, 1);
                        connection_ended(live, &mut conn);
                        let last = conn.seq.last();
                        let resume = Some((last, conn.epoch));
                        let started = Instant::now();
                        drop(conn);
                        match join_with_retries(&shared, &script, resume).await {
                            Ok((c, state)) => {
                                live.timing(Timing::Reconnect, started.elapsed().as_millis() as u64);
                                conn = c;
                                fire_from_state(&state, &mut script.triggers, &mut conn, &mut soon);
                            }
                            Err(reason) => {
                                Live::add(&live.c.reconnect_failed, 1);
                                live.join_failure(&format!("reconnect: {reason}"));
                                return;
                            }
                        }
                    }
                    Act::Leave => {
                        live.record(script.id + 1, || Some(TraceAction::Leave));
                        close_politely(&mut conn.ws).await;
                        connection_ended(live, &mut conn);
                        return;
                    }
                    act => {
                        if !perform(live, script.id + 1, &mut conn, act).await {
                            live.close(1006);
                            connection_ended(live, &mut conn);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A connection ended: it is no longer counted as connected, and the
/// requests still pending on it are unanswered.
fn connection_ended(live: &Live, conn: &mut Conn) {
    Live::add(&live.c.disconnected, 1);
    for (_, p) in conn.pending.drain() {
        unanswered(live, p);
    }
}

fn unanswered(live: &Live, p: Pending) {
    match p {
        Pending::Buy { .. } => Live::add(&live.c.buys_unanswered, 1),
        Pending::Claim { .. } => Live::add(&live.c.claims_unanswered, 1),
        Pending::Other(_) => {}
    }
}

/// Fires triggers that the room's current state already satisfies (a viewer
/// that joins, or comes back, after the sale started still buys).
fn fire_from_state(
    state: &RoomState,
    triggers: &mut Triggers,
    conn: &mut Conn,
    soon: &mut VecDeque<(Instant, Act)>,
) {
    let now = Instant::now();
    conn.poll = state.poll.as_ref().map(|p| p.id);
    conn.coupon = state.coupons.last().map(|c| c.id);
    conn.question = state.questions.first().map(|q| q.id);
    for sale in &state.sales {
        if sale.status == flashcast_wire::commerce::SaleStatus::Live {
            fire_buy(triggers, &sale.sku, now, soon);
        }
    }
}

fn fire_buy(triggers: &mut Triggers, sku: &Sku, now: Instant, soon: &mut VecDeque<(Instant, Act)>) {
    for b in triggers
        .buys
        .iter_mut()
        .filter(|b| !b.fired && &b.sku == sku)
    {
        b.fired = true;
        schedule(
            soon,
            now + b.delay,
            Act::Buy {
                sku: b.sku.clone(),
                qty: b.qty,
                key: b.key.clone(),
            },
        );
    }
}

fn schedule(soon: &mut VecDeque<(Instant, Act)>, at: Instant, act: Act) {
    let i = soon.partition_point(|(t, _)| *t <= at);
    soon.insert(i, (at, act));
}

#[allow(clippy::too_many_arguments)]
fn on_frame(
    shared: &Shared,
    shard: usize,
    bytes: &[u8],
    conn: &mut Conn,
    triggers: &mut Triggers,
    soon: &mut VecDeque<(Instant, Act)>,
    scan_buf: &mut Scan,
    latencies: &mut Vec<u64>,
) {
    let live = &shared.live;
    scan_buf.time_chat = shard.is_multiple_of(crate::tally::CHAT_SAMPLE);
    if scan(bytes, scan_buf).is_none() {
        Live::add(&live.c.decode_errors, 1);
        return;
    }
    let now = now_ms();
    if scan_buf.is_batch {
        Live::add(&live.c.reactions_received, scan_buf.reactions);
        latencies.clear();
        for &(seq, ts) in &scan_buf.events {
            match conn.seq.observe(seq) {
                crate::stats::SeqVerdict::InOrder => latencies.push(now.saturating_sub(ts)),
                crate::stats::SeqVerdict::Gap(missing) => {
                    Live::add(&live.c.gaps, 1);
                    Live::add(&live.c.missed, missing);
                    latencies.push(now.saturating_sub(ts));
                }
                crate::stats::SeqVerdict::Duplicate => Live::add(&live.c.duplicates, 1),
            }
        }
        live.delivered(shard, now, latencies, bytes.len());
        live.chat_received(now, &scan_buf.sent_at);
        if !scan_buf.needs_full_decode {
            return;
        }
    }
    let Some(msg) = decode_server::<ServerMsg>(Encoding::MsgPack, bytes) else {
        Live::add(&live.c.decode_errors, 1);
        return;
    };
    let at = Instant::now();
    match msg {
        ServerMsg::Batch { events, .. } => {
            for ev in events {
                match &ev.body {
                    EventBody::PollOpened { poll } => {
                        conn.poll = Some(poll.id);
                        if let Some((delay, option)) = triggers.votes.pop_front() {
                            schedule(soon, at + delay, Act::Vote(option));
                        }
                    }
                    EventBody::PollClosed { poll_id, .. } if conn.poll == Some(*poll_id) => {
                        conn.poll = None;
                    }
                    EventBody::SaleStarted { sale } => fire_buy(triggers, &sale.sku, at, soon),
                    EventBody::QuestionAsked { question } => conn.question = Some(question.id),
                    EventBody::CouponDropped { coupon } => {
                        conn.coupon = Some(coupon.id);
                        if let Some(delay) = triggers.claims.pop_front() {
                            schedule(soon, at + delay, Act::Claim);
                        }
                    }
                    _ => {}
                }
            }
        }
        ServerMsg::Order { reference, order } => {
            if let Some(Pending::Buy { at: sent, qty }) =
                reference.and_then(|r| conn.pending.remove(&r))
            {
                live.timing(Timing::Buy, sent.elapsed().as_millis() as u64);
                Live::add(&live.c.buys_accepted, 1);
                Live::add(&live.c.units_accepted, qty as u64);
                live.per_second(now, PerSecond::BuysAccepted);
                live.order(order.id.0);
            }
        }
        ServerMsg::CouponClaimed { reference, .. } => {
            if let Some(Pending::Claim { at: sent }) =
                reference.and_then(|r| conn.pending.remove(&r))
            {
                live.timing(Timing::Claim, sent.elapsed().as_millis() as u64);
                Live::add(&live.c.claims_won, 1);
                live.per_second(now, PerSecond::ClaimsAnswered);
            }
        }
        ServerMsg::Error {
            code, reference, ..
        } => {
            let pending = reference.and_then(|r| conn.pending.remove(&r));
            match pending {
                Some(Pending::Buy { at: sent, .. }) => {
                    live.timing(Timing::Buy, sent.elapsed().as_millis() as u64);
                    Live::add(&live.c.buys_refused, 1);
                    live.per_second(now, PerSecond::BuysRefused);
                    live.buy_refused(code.as_str());
                    if !matches!(code, ErrorCode::SoldOut | ErrorCode::PerUserLimit) {
                        live.unexpected_error(&format!("buy: {}", code.as_str()));
                    }
                }
                Some(Pending::Claim { at: sent }) => {
                    live.timing(Timing::Claim, sent.elapsed().as_millis() as u64);
                    Live::add(&live.c.claims_refused, 1);
                    live.per_second(now, PerSecond::ClaimsAnswered);
                    live.claim_refused(code.as_str());
                    if code != ErrorCode::CouponsGone {
                        live.unexpected_error(&format!("claim_coupon: {}", code.as_str()));
                    }
                }
                Some(Pending::Other(kind)) => {
                    live.unexpected_error(&format!("{kind}: {}", code.as_str()))
                }
                None => live.unexpected_error(code.as_str()),
            }
        }
        _ => {}
    }
}

/// Sends one action. False if the connection is gone.
async fn perform(live: &Live, id: u32, conn: &mut Conn, act: Act) -> bool {
    let now = now_ms();
    let (msg, pending) = match act {
        Act::Chat(mut text) => {
            if text.ends_with(crate::wire::SENT_AT) {
                text.push_str(&now.to_string());
            }
            Live::add(&live.c.chat_sent, 1);
            live.per_second(now, PerSecond::ChatSent);
            (Chat { text }.into(), Pending::Other("chat"))
        }
        Act::React(kind) => {
            Live::add(&live.c.reactions_sent, 1);
            live.per_second(now, PerSecond::ReactionsSent);
            (React { kind }.into(), Pending::Other("react"))
        }
        Act::Vote(option) => {
            let Some(poll_id) = conn.poll else {
                Live::add(&live.c.replay_skipped, 1);
                return true;
            };
            Live::add(&live.c.votes_sent, 1);
            (Vote { poll_id, option }.into(), Pending::Other("vote"))
        }
        Act::Ask(text) => {
            Live::add(&live.c.asks_sent, 1);
            (Ask { text }.into(), Pending::Other("ask"))
        }
        Act::UpvoteSeen => {
            let Some(question_id) = conn.question else {
                Live::add(&live.c.upvotes_skipped, 1);
                return true;
            };
            Live::add(&live.c.upvotes_sent, 1);
            (Upvote { question_id }.into(), Pending::Other("upvote"))
        }
        Act::Upvote(question_id) => {
            Live::add(&live.c.upvotes_sent, 1);
            (Upvote { question_id }.into(), Pending::Other("upvote"))
        }
        Act::Buy { sku, qty, key } => {
            Live::add(&live.c.buys_sent, 1);
            live.per_second(now, PerSecond::BuysSent);
            (
                Buy {
                    sku,
                    qty,
                    key,
                    coupon_id: None,
                }
                .into(),
                Pending::Buy {
                    at: Instant::now(),
                    qty,
                },
            )
        }
        Act::Claim => {
            let Some(coupon_id) = conn.coupon else {
                Live::add(&live.c.replay_skipped, 1);
                return true;
            };
            Live::add(&live.c.claims_sent, 1);
            live.per_second(now, PerSecond::ClaimsSent);
            (
                ClaimCoupon { coupon_id }.into(),
                Pending::Claim { at: Instant::now() },
            )
        }
        Act::Reconnect | Act::Leave => unreachable!("handled by the viewer loop"),
    };
    live.per_second(now, PerSecond::Sent);
    conn.next_ref = conn.next_ref.wrapping_add(1).max(1);
    let reference = conn.next_ref;
    if conn.pending.len() >= MAX_PENDING {
        // Only replies that never came pile up here; forget the oldest.
        if let Some(&oldest) = conn.pending.keys().min() {
            if let Some(p) = conn.pending.remove(&oldest) {
                unanswered(live, p);
            }
        }
    }
    conn.pending.insert(reference, pending);
    live.record(id, || TraceAction::from_client(&msg));
    send(&mut conn.ws, reference, msg).await
}

async fn send(ws: &mut Ws, reference: u32, msg: ClientMsg) -> bool {
    let frame = ClientFrame {
        reference: Some(reference),
        msg,
    };
    let bytes = rmp_serde::to_vec_named(&frame).expect("client frames encode");
    ws.send(Message::Binary(bytes.into())).await.is_ok()
}

/// Joins (or resumes after `resume` = (last_seq, epoch)), retrying with
/// back-off. The error is a short reason, used as a counter key.
async fn join_with_retries(
    shared: &Shared,
    script: &Script,
    resume: Option<(u64, u64)>,
) -> Result<(Conn, Box<RoomState>), String> {
    let mut attempt = 0;
    loop {
        let result = tokio::time::timeout(shared.join_timeout, join_once(shared, script, resume))
            .await
            .unwrap_or_else(|_| Err("join timeout".into()));
        match result {
            Ok(c) => return Ok(c),
            Err(reason) if attempt >= shared.join_retries => return Err(reason),
            Err(_) => {
                attempt += 1;
                let jitter = (script.id % 500) as u64;
                tokio::time::sleep(Duration::from_millis(1_000 + jitter)).await;
            }
        }
    }
}

async fn join_once(
    shared: &Shared,
    script: &Script,
    resume: Option<(u64, u64)>,
) -> Result<(Conn, Box<RoomState>), String> {
    let live = &shared.live;
    let started = Instant::now();
    let mut ws = connect(&shared.target, script.source).await?;
    live.timing(Timing::Connect, started.elapsed().as_millis() as u64);
    let join = Join {
        room: shared.room.clone(),
        token: script.token.clone(),
        last_seq: resume.map(|r| r.0),
        epoch: resume.map(|r| r.1),
    }
    .into();
    let sent = Instant::now();
    if !send(&mut ws, 0, join).await {
        return Err("send join".into());
    }
    let mut last_error = None;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match decode_server::<ServerMsg>(Encoding::MsgPack, &b)
            {
                Some(ServerMsg::Joined {
                    seq,
                    gap,
                    epoch,
                    state,
                    events,
                    ..
                }) => {
                    if resume.is_none() {
                        live.timing(Timing::Join, sent.elapsed().as_millis() as u64);
                    }
                    let mut check = SeqCheck::starting_at(seq);
                    if let Some((last, _)) = resume {
                        if gap {
                            Live::add(&live.c.resume_gaps, 1);
                        } else {
                            Live::add(&live.c.resumed, 1);
                            // The missed events must be exactly last+1..=seq.
                            Live::add(&live.c.resume_events, events.len() as u64);
                            let mut replayed = SeqCheck::starting_at(last);
                            for ev in &events {
                                replayed.observe(ev.seq);
                            }
                            let ok = replayed.gaps == 0
                                && replayed.duplicates == 0
                                && replayed.last() == seq;
                            if !ok {
                                Live::add(&live.c.gaps, 1);
                                Live::add(&live.c.missed, seq.saturating_sub(replayed.last()));
                            }
                            check = SeqCheck::starting_at(seq);
                        }
                    }
                    let conn = Conn {
                        ws,
                        seq: check,
                        epoch,
                        poll: None,
                        coupon: None,
                        question: None,
                        pending: HashMap::new(),
                        next_ref: 0,
                    };
                    return Ok((conn, state));
                }
                Some(ServerMsg::Error { code, .. }) => last_error = Some(code.as_str()),
                Some(_) => {}
                None => return Err("undecodable frame before joined".into()),
            },
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(match last_error {
                    Some(e) => format!("close {code} ({e})"),
                    None => format!("close {code}"),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("eof before joined".into()),
        }
    }
}
