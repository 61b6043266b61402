//! Cluster mode's building blocks on NATS JetStream (issue #17, in
//! progress; not yet wired into start-up):
//!
//! - `lease`: one owner node per room, a lease in a NATS KV bucket whose
//!   revision at acquisition is the owner's fencing token (its *term*);
//! - `log`: each room's batches appended to one JetStream subject, each
//!   append fenced by the subject's last sequence and de-duplicated by a
//!   message id, read back in order by edges and by a new owner.
//!
//! - `journal`: the room journal, the seam the room actor publishes
//!   through in cluster mode, and its JetStream form on that log: an owner
//!   publishes a batch only once JetStream acknowledged it;
//! - `secrets`: every node must share the admin key, token secret and
//!   webhook secret; a node started with others is refused;
//! - `settings`: the cluster options and their rules.
//!
//! Both name rooms by [`subject_token`], since room ids may hold `.` and
//! `:`, which NATS subjects and KV keys give other meanings or refuse.

pub mod journal;
pub mod lease;
pub mod log;
pub mod secrets;
pub mod settings;

use std::time::Duration;

use flashcast_wire::ids::RoomId;

/// What a cluster call can fail with, as the caller must tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached or did not answer in time: retry later
    /// (clients get `unavailable`).
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// Another node holds the room, or this node's claim is stale: the
    /// write was refused and nothing of it applied.
    #[error("fenced: {0}")]
    Fenced(String),
    /// This node's settings disagree with the cluster's.
    #[error("{0}")]
    Mismatch(String),
}

pub type ClusterResult<T> = Result<T, ClusterError>;

/// Longest wait for NATS to answer one request before it counts as
/// unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to NATS at `url` with JetStream, failing after `timeout`.
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> ClusterResult<async_nats::jetstream::Context> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(REQUEST_TIMEOUT));
    let client = tokio::time::timeout(timeout, options.connect(url))
        .await
        .map_err(|_| ClusterError::Unavailable(format!("no answer from {url} in {timeout:?}")))?
        .map_err(|e| ClusterError::Unavailable(format!("{url}: {e}")))?;
    Ok(async_nats::jetstream::new(client))
}

/// A room id as one subject token and KV key: letters, digits and `-`
/// stay, `_` `.` `:` become `_5f` `_2e` `_3a`, so distinct rooms never
/// share a token and the token reads like the id.
pub fn subject_token(room: &RoomId) -> String {
    let mut out = String::with_capacity(room.as_str().len() + 8);
    for c in room.as_str().chars() {
        match c {
            '_' => out.push_str("_5f"),
            '.' => out.push_str("_2e"),
            ':' => out.push_str("_3a"),
            c => out.push(c),
        }
    }
    out
}

/// Creates a KV bucket's stream the way async-nats lays one out
/// (`KV_<bucket>` on `$KV.<bucket>.>`, one value per key, rollups, direct
/// gets), unless it exists. Not `create_key_value`: async-nats 0.52 first
/// reads the account's info, whose answer from Debian's nats-server 2.9 it
/// fails to parse. `max_age` zero: entries never expire.
async fn create_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    about: &str,
    max_age: Duration,
    max_value_bytes: i32,
) -> ClusterResult<()> {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(about.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: max_value_bytes,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => Ok(()),
        // Another node created it first.
        Err(_) if js.get_key_value(bucket).await.is_ok() => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

/// Opens the KV bucket `bucket`, creating it first if missing.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    about: &str,
    max_age: Duration,
    max_value_bytes: i32,
) -> ClusterResult<async_nats::jetstream::kv::Store> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    create_bucket(js, bucket, about, max_age, max_value_bytes).await?;
    js.get_key_value(bucket).await.map_err(unavailable)
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_become_distinct_subject_tokens() {
        let token = |s: &str| subject_token(&RoomId::new(s).unwrap());
        assert_eq!(token("demo-1"), "demo-1");
        assert_eq!(token("a.b:c_d"), "a_2eb_3ac_5fd");
        // `_` itself is escaped, so an id that looks like an escape differs.
        assert_ne!(token("a_2eb"), token("a.b"));
        for t in [token("a.b:c_d"), token("x_2e")] {
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }
}
