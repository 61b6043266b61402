//! Room changes that must survive a restart (bans, unbans, the end of the
//! show) are answered only once they are durable. The room applies the
//! change's restrictive part at once (a banned viewer can no longer post
//! or join; an ending show takes no more actions), hands the write to the
//! store from a task of its own (the room never waits on the disk), and
//! announces the change (the `user_banned` event, `show_ended`, the 204 of
//! `DELETE /rooms/{id}`) when the store's answer comes back as
//! `Command::Persisted`. A failed write is undone and answered with an
//! `internal` error.

use tokio::sync::oneshot;

use super::RoomActor;
use crate::engage::Rejection;
use crate::room::{Command, ConnId};
use crate::store::{StoreError, StoreResult, Write};
use flashcast_wire::ids::UserId;
use flashcast_wire::{CloseCode, ErrorCode, EventBody, ServerMsg};

/// Who waits for the end of a show to be durable (the REST close).
pub(crate) type EndReply = oneshot::Sender<StoreResult<bool>>;

/// A change waiting for its write.
pub(crate) enum Durable {
    /// `new`: the user was not banned before (a failed write unbans).
    Ban {
        user_id: UserId,
        new: bool,
    },
    Unban(UserId),
    End(Option<EndReply>),
}

/// Who asked for the change: told of a failure.
#[derive(Clone, Copy)]
pub(crate) struct Asker {
    pub conn: Option<ConnId>,
    pub reference: Option<u32>,
}

impl RoomActor {
    /// Refuses a durable change while `room_queue` of them are in flight.
    pub(super) fn can_persist(&self) -> Result<(), Rejection> {
        if self.persisting >= self.ctx.limits.room_queue {
            return Err(Rejection::new(
                ErrorCode::RoomBusy,
                "room is busy, try again",
            ));
        }
        Ok(())
    }

    /// Starts the write of `change` (after `can_persist`); the room hears
    /// back through its queue.
    pub(super) fn persist(&mut self, asker: Asker, change: Durable) {
        let room = self.shared.info.id.clone();
        let write = match &change {
            Durable::Ban { user_id, .. } => Write::Ban {
                room,
                user: user_id.clone(),
            },
            Durable::Unban(user) => Write::Unban {
                room,
                user: user.clone(),
            },
            Durable::End(_) => Write::CloseRoom {
                room,
                at: self.ctx.clock.now_ms(),
            },
        };
        self.persisting += 1;
        let store = self.ctx.store.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let result = store.write(write).await;
            if let Some(me) = me.upgrade() {
                let _ = me
                    .send(Command::Persisted {
                        asker,
                        change,
                        result,
                    })
                    .await;
            }
        });
    }

    /// The store answered: announce the change, or undo it.
    pub(super) fn persisted(&mut self, asker: Asker, change: Durable, result: StoreResult<()>) {
        self.persisting -= 1;
        if let Err(e) = &result {
            tracing::error!(room = %self.shared.info.id, error = %e, "could not persist a room change");
        }
        match (change, result) {
            (Durable::Ban { user_id, .. }, Ok(())) => self.announce_ban(user_id),
            (Durable::Unban(user_id), Ok(())) => self.push(EventBody::UserUnbanned { user_id }),
            (Durable::End(reply), Ok(())) => {
                self.finish_end();
                self.ctx.commerce.unload_shop(&self.shared.info.id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(true));
                }
            }
            (Durable::Ban { user_id, new }, Err(_)) => {
                // A ban that was already stored stays.
                if new {
                    self.moderation.unban(&user_id);
                }
                self.refuse(asker);
            }
            (Durable::Unban(user_id), Err(_)) => {
                // Back as it was: the ban is still stored.
                let _ = self.moderation.ban(&user_id, usize::MAX);
                self.refuse(asker);
            }
            (Durable::End(reply), Err(e)) => {
                self.ending = false;
                self.refuse(asker);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    fn refuse(&mut self, asker: Asker) {
        let Some(conn) = asker.conn else { return };
        self.ctx.metrics.reject(ErrorCode::Internal);
        let msg = ServerMsg::Error {
            code: ErrorCode::Internal,
            message: "could not store the change; nothing was applied".into(),
            reference: asker.reference,
            retry_after_ms: None,
        };
        self.send_direct(conn, &msg);
    }

    /// The ban is durable: everyone hears of it, then the banned viewer's
    /// connections close (they see why first).
    fn announce_ban(&mut self, user_id: UserId) {
        self.push(EventBody::UserBanned {
            user_id: user_id.clone(),
        });
        let kicked: Vec<ConnId> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.user.id == user_id)
            .map(|(c, _)| *c)
            .collect();
        self.flush();
        for conn in kicked {
            self.ctx.fanout.close(conn, CloseCode::Forbidden);
            self.remove(conn);
        }
    }

    /// Ends the show (a host's `end_show` or the admin API): from now on
    /// the room takes no actions and no joins; `show_ended` goes out once
    /// the close is durable. `reply` (if any) hears whether it ended now.
    pub(super) fn end(&mut self, asker: Asker, reply: Option<EndReply>) {
        if self.ended || self.ending {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(false));
            }
            return;
        }
        if let Err(busy) = self.can_persist() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(StoreError::Backend(busy.message)));
            }
            return;
        }
        self.ending = true;
        self.persist(asker, Durable::End(reply));
    }
}

#[cfg(test)]
mod tests {
    //! Against a store whose writer waits at a gate: nothing is announced
    //! or answered while the write is held, a failed write is undone, and
    //! the number of changes waiting is bounded.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use crate::commerce::Commerce;
    use crate::limits::Limits;
    use crate::metrics::Metrics;
    use crate::room::{Registry, RoomContext, RoomHandle, RoomInfo};
    use crate::store::sqlite::{self, SqliteWriter};
    use crate::store::{Store, StoreError, StoreResult, Write, WriteBackend};
    use flashcast_wire::client::{Ban, RoomMsg};
    use flashcast_wire::ids::{RoomId, UserId};
    use flashcast_wire::{ErrorCode, Role, UserRef};

    /// Applies a batch only once a permit is there; fails it while `fail`.
    struct Gated {
        inner: SqliteWriter,
        gate: Arc<Semaphore>,
        fail: Arc<AtomicBool>,
    }

    #[async_trait]
    impl WriteBackend for Gated {
        async fn apply(&mut self, batch: &[Write]) -> StoreResult<Vec<StoreResult<()>>> {
            self.gate.acquire().await.unwrap().forget();
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("disk on fire".into()));
            }
            self.inner.apply(batch).await
        }
    }

    struct Room {
        handle: RoomHandle,
        registry: Registry,
        store: Store,
        metrics: Arc<Metrics>,
        gate: Arc<Semaphore>,
        fail: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
    }

    async fn room(room_queue: usize, fail: bool) -> Room {
        let dir = tempfile::tempdir().unwrap();
        let (inner, reader) = sqlite::open(dir.path()).unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let fail = Arc::new(AtomicBool::new(fail));
        let backend = Gated {
            inner,
            gate: gate.clone(),
            fail: fail.clone(),
        };
        let (store, _) =
            Store::new(Box::new(backend), Arc::new(reader), Default::default()).unwrap();
        let limits = Arc::new(Limits {
            room_queue,
            ..Limits::default()
        });
        let metrics = Arc::new(Metrics::new());
        let commerce = Commerce::open(
            store.clone(),
            limits.clone(),
            metrics.clone(),
            Vec::new(),
            crate::clock::Clock::system(),
        )
        .await
        .unwrap();
        let fanout = crate::transport::Transport::new(
            crate::transport::workers::WorkerConfig {
                threads: 1,
                queue: 64,
                io_uring: false,
            },
            metrics.clone(),
        );
        let registry = Registry::new(Arc::new(RoomContext {
            fanout,
            clock: crate::clock::Clock::system(),
            limits,
            metrics: metrics.clone(),
            store: store.clone(),
            commerce: Arc::new(commerce),
            journal: None,
        }));
        let info = RoomInfo {
            id: RoomId::new("r").unwrap(),
            title: "Show".into(),
            allow_guests: true,
            created_at: 0,
        };
        let handle = registry.open(info, Vec::new()).unwrap();
        Room {
            handle,
            registry,
            store,
            metrics,
            gate,
            fail,
            _dir: dir,
        }
    }

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn ban(r: &Room, id: &str) {
        let moderator = UserRef {
            id: user("mod"),
            name: "Mod".into(),
            role: Role::Moderator,
        };
        let msg = RoomMsg::Ban(Ban { user_id: user(id) });
        r.handle.act(1, moderator, Some(1), msg).unwrap();
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..5_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never happened: {what}");
    }

    fn rejected(r: &Room, code: ErrorCode) -> u64 {
        r.metrics.rejected.with_label_values(&[code.as_str()]).get()
    }

    async fn stored_bans(r: &Room) -> usize {
        r.store.read().bans(r.handle.id()).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_ban_holds_at_once_and_changes_waiting_for_the_store_are_bounded() {
        let r = room(2, false).await;
        ban(&r, "a");
        ban(&r, "b");
        eventually("both bans hold", || {
            r.handle.shared.is_banned(&user("a")) && r.handle.shared.is_banned(&user("b"))
        })
        .await;
        ban(&r, "c");
        eventually("the third is refused", || {
            rejected(&r, ErrorCode::RoomBusy) == 1
        })
        .await;
        assert!(!r.handle.shared.is_banned(&user("c")));
        assert_eq!(stored_bans(&r).await, 0, "the writer is held");

        r.gate.add_permits(100);
        for _ in 0..5_000 {
            if stored_bans(&r).await == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(stored_bans(&r).await, 2);
        ban(&r, "c");
        eventually("room again once stored", || {
            r.handle.shared.is_banned(&user("c"))
        })
        .await;
    }

    #[tokio::test]
    async fn a_ban_that_cannot_be_stored_is_undone() {
        let r = room(16, true).await;
        r.gate.add_permits(1_000);
        r.fail.store(false, Ordering::SeqCst);
        ban(&r, "kept");
        for _ in 0..5_000 {
            if stored_bans(&r).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(stored_bans(&r).await, 1);
        r.fail.store(true, Ordering::SeqCst);
        ban(&r, "a");
        ban(&r, "kept"); // banned again: a failure leaves the stored ban
        eventually("both refused", || rejected(&r, ErrorCode::Internal) == 2).await;
        assert!(!r.handle.shared.is_banned(&user("a")), "undone");
        assert!(r.handle.shared.is_banned(&user("kept")), "still banned");
    }

    #[tokio::test]
    async fn the_end_of_a_show_is_answered_once_stored() {
        let r = room(16, false).await;
        let id = r.handle.id().clone();
        r.gate.add_permits(1);
        let record = crate::store::RoomRecord {
            id: id.clone(),
            title: "Show".into(),
            allow_guests: true,
            created_at: 0,
            closed_at: None,
        };
        r.store.write(Write::PutRoom(record)).await.unwrap();
        let ending = r.registry.end(&id);
        tokio::pin!(ending);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut ending).await;
        assert!(early.is_err(), "no answer while the close is not stored");
        assert!(!r.handle.shared.is_closed());
        r.gate.add_permits(100);
        assert_eq!(ending.await, Ok(true));
        assert!(r.handle.shared.is_closed());
        let rooms = r.store.read().rooms().await.unwrap();
        assert!(rooms[0].closed_at.is_some(), "stored before the answer");
        assert_eq!(r.registry.end(&id).await, Ok(false), "already ended");
    }
}
