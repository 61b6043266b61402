//! Every node of a cluster must use the same admin key, token secret and
//! webhook secret: a token signed on one node is checked on another, a
//! payment webhook may reach any node. The first node to start records a
//! fingerprint of each (SHA-256, never the secret) in the cluster's KV
//! bucket; a node that starts with a different one is refused, naming
//! which, before it serves anything.
//!
//! To rotate secrets, stop every node, delete the `secrets` key of the
//! bucket (`nats kv del <bucket> secrets`), and start them with the new
//! ones.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{open_bucket, unavailable, ClusterError, ClusterResult};

/// The secrets one node runs with.
pub struct Secrets<'a> {
    pub admin_key: &'a str,
    pub token_secret: &'a str,
    pub webhook_secret: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprints {
    admin_key: String,
    token_secret: String,
    webhook_secret: String,
}

const KEY: &str = "secrets";

fn fingerprint(name: &str, secret: &str) -> String {
    // Named, so equal secrets under different names differ.
    let mut h = Sha256::new();
    h.update(b"flashcast cluster secret\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

impl Secrets<'_> {
    fn fingerprints(&self) -> Fingerprints {
        Fingerprints {
            admin_key: fingerprint("admin_key", self.admin_key),
            token_secret: fingerprint("token_secret", self.token_secret),
            webhook_secret: fingerprint("webhook_secret", self.webhook_secret),
        }
    }
}

/// Records this node's secrets' fingerprints in `bucket` if no node did,
/// else checks them: `Mismatch` names each secret that differs.
pub async fn check_shared(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    secrets: &Secrets<'_>,
) -> ClusterResult<()> {
    let about = "Flashcast cluster facts every node must agree on";
    let kv = open_bucket(js, bucket, about, Duration::ZERO, 4096).await?;
    let mine = secrets.fingerprints();
    let json = serde_json::to_vec(&mine).expect("plain strings serialize");
    match kv.create(KEY, Bytes::from(json)).await {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(unavailable(e)),
    }
    let entry = kv
        .get(KEY)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ClusterError::Unavailable("the secrets entry vanished; retry".into()))?;
    let theirs: Fingerprints = serde_json::from_slice(&entry)
        .map_err(|e| ClusterError::Mismatch(format!("unreadable `{KEY}` in {bucket}: {e}")))?;
    let differ: Vec<&str> = [
        (
            "admin key (FLASHCAST_ADMIN_KEY)",
            mine.admin_key == theirs.admin_key,
        ),
        (
            "token secret (FLASHCAST_TOKEN_SECRET)",
            mine.token_secret == theirs.token_secret,
        ),
        (
            "webhook secret (FLASHCAST_WEBHOOK_SECRET)",
            mine.webhook_secret == theirs.webhook_secret,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(name, _)| name)
    .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(ClusterError::Mismatch(format!(
        "this node's {} differ from the other nodes' (recorded in NATS KV bucket {bucket}): \
         every node of a cluster must start with the same secrets",
        differ.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_hide_the_secret_and_depend_on_its_name() {
        let f = fingerprint("admin_key", "hunter2");
        assert_eq!(f.len(), 64);
        assert!(!f.contains("hunter2"));
        assert_ne!(f, fingerprint("token_secret", "hunter2"));
        assert_eq!(f, fingerprint("admin_key", "hunter2"));
    }
}
