//! Room ownership: a lease per room in a NATS KV bucket.
//!
//! The key is the room's [`subject_token`], the value the owner's node id.
//! Acquiring is a KV *create* (it fails while anyone holds the key);
//! renewing is a KV *update* that names the revision the holder last
//! wrote, so a node that lost the lease (it stalled past the TTL and
//! another node created the key again) finds out on its next renewal and
//! never overwrites the new owner. The bucket's `max_age` is the TTL: a
//! lease that is not renewed disappears and another node may create it.
//!
//! The revision at acquisition is the owner's **term**, its fencing token:
//! revisions only grow within a bucket, so a later owner always holds a
//! higher term, and writes elsewhere (the room's PostgreSQL rows) refuse a
//! lower one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{subject_token, unavailable, ClusterError, ClusterResult};
use flashcast_wire::ids::RoomId;

/// The lease bucket of one cluster.
pub struct Leases {
    kv: kv::Store,
    node: String,
    ttl: Duration,
}

/// A room held by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub room: RoomId,
    /// The revision that created the lease: the fencing token.
    pub term: u64,
    /// The revision this node last wrote; the next renewal must match it.
    revision: u64,
}

/// Who holds a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    /// The revision last written (a renewal or the creation).
    pub revision: u64,
}

impl Leases {
    /// Opens (creating if needed) the bucket `bucket`, whose entries live
    /// `ttl` after their last write. `node` is this node's id.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        node: &str,
        ttl: Duration,
    ) -> ClusterResult<Leases> {
        assert!(!node.is_empty(), "node ids are validated non-empty");
        assert!(ttl >= Duration::from_millis(500), "validated TTL");
        let about = "Flashcast room leases: room -> owner node";
        let kv = super::open_bucket(js, bucket, about, ttl, 256).await?;
        Ok(Leases {
            kv,
            node: node.to_string(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes `room` if nobody holds it; `Fenced` names the holder if
    /// someone does.
    pub async fn acquire(&self, room: &RoomId) -> ClusterResult<Lease> {
        let key = subject_token(room);
        match self.kv.create(&key, self.value()).await {
            Ok(revision) => Ok(Lease {
                room: room.clone(),
                term: revision,
                revision,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let holder = self.holder(room).await?;
                Err(ClusterError::Fenced(match holder {
                    Some(h) => format!("room {room} is held by node {}", h.node),
                    None => format!("room {room} was taken meanwhile"),
                }))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Extends `lease` by another TTL. `Fenced` when it was lost: the
    /// lease expired and the key was created again (by any node), so the
    /// caller must stop acting as the owner at once.
    pub async fn renew(&self, lease: &mut Lease) -> ClusterResult<()> {
        let key = subject_token(&lease.room);
        match self.kv.update(&key, self.value(), lease.revision).await {
            Ok(revision) => {
                lease.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                ClusterError::Fenced(format!("lease of room {} was lost", lease.room)),
            ),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Gives `lease` up at once (a show ended, a node drains), unless it
    /// was lost already.
    pub async fn release(&self, lease: Lease) -> ClusterResult<()> {
        let key = subject_token(&lease.room);
        match self
            .kv
            .purge_expect_revision(&key, Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The current holder of `room`, if any.
    pub async fn holder(&self, room: &RoomId) -> ClusterResult<Option<Holder>> {
        let entry = self
            .kv
            .entry(subject_token(room))
            .await
            .map_err(unavailable)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Holder {
                node: String::from_utf8_lossy(&e.value).into_owned(),
                revision: e.revision,
            }))
    }

    fn value(&self) -> Bytes {
        Bytes::from(self.node.clone())
    }
}

/// A lease kept in the background: renewed every third of the TTL until
/// released or lost. The owner watches [`Held::lost`] and stops acting as
/// the owner the moment it resolves.
pub struct Held {
    term: u64,
    lost: watch::Receiver<Option<String>>,
    release: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// Keeps `lease` alive until [`Held::release`]. The lease counts as
    /// lost when a renewal is refused (another node holds the room) or
    /// when no renewal succeeded for two thirds of the TTL (NATS
    /// unreachable): the last third is the margin before another node may
    /// take the room, so this node has stepped down by then.
    pub fn hold(self: &Arc<Self>, mut lease: Lease) -> Held {
        let (lost_tx, lost) = watch::channel(None);
        let (release, mut released) = oneshot::channel();
        let leases = self.clone();
        let term = lease.term;
        let task = tokio::spawn(async move {
            let every = leases.ttl / 3;
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = &mut released => {
                        if let Err(e) = leases.release(lease).await {
                            tracing::warn!(error = %e, "lease not released; it lapses after its TTL");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
                match leases.renew(&mut lease).await {
                    Ok(()) => last_ok = tokio::time::Instant::now(),
                    Err(ClusterError::Fenced(why)) => {
                        let _ = lost_tx.send(Some(why));
                        return;
                    }
                    Err(e) if last_ok.elapsed() >= every * 2 => {
                        let why = format!(
                            "lease of room {} not renewed for {:?}: {e}",
                            lease.room,
                            last_ok.elapsed()
                        );
                        let _ = lost_tx.send(Some(why));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(room = %lease.room, error = %e, "lease renewal failed; retrying")
                    }
                }
            }
        });
        Held {
            term,
            lost,
            release: Some(release),
            task,
        }
    }
}

impl Held {
    /// The fencing token of this ownership.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Still the owner (as far as this node knows).
    pub fn is_held(&self) -> bool {
        self.lost.borrow().is_none()
    }

    /// Resolves, with the reason, once the lease is lost. Cancel-safe.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the lease keeper stopped".into(),
        }
    }

    /// Stops renewing and gives the room up at once.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Held {
    /// Dropped without `release`: stop renewing; the lease lapses.
    fn drop(&mut self) {
        if self.release.is_some() {
            self.task.abort();
        }
    }
}
