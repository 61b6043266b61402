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
use crate::ids::UserId;
use crate::protocol::{CloseCode, ErrorCode, EventBody, ServerMsg};
use crate::room::{Command, ConnId};
use crate::store::{StoreError, StoreResult, Write};

/// Who waits for the end of a show to be durable (the REST close).
pub(crate) type EndReply = oneshot::Sender<StoreResult<bool>>;

/// A change waiting for its write.
pub(crate) enum Durable {
    Ban(UserId),
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
            Durable::Ban(user) => Write::Ban {
                room,
                user: user.clone(),
            },
            Durable::Unban(user) => Write::Unban {
                room,
                user: user.clone(),
            },
            Durable::End(_) => Write::CloseRoom {
                room,
                at: crate::protocol::now_ms(),
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
            (Durable::Ban(user_id), Ok(())) => self.announce_ban(user_id),
            (Durable::Unban(user_id), Ok(())) => self.push(EventBody::UserUnbanned { user_id }),
            (Durable::End(reply), Ok(())) => {
                self.finish_end();
                self.ctx.commerce.unload_shop(&self.shared.info.id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(true));
                }
            }
            (Durable::Ban(user_id), Err(_)) => {
                self.moderation.unban(&user_id);
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
            if let Some(s) = self.subscribers.get(&conn) {
                s.outbox.close(CloseCode::Forbidden);
            }
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
