//! Cluster mode's options. Setting both URLs turns it on; setting one of
//! them alone is a start-up error naming the other, so a typo never starts
//! a lone node that thinks it is part of a cluster.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args, Serialize, Deserialize, Default)]
pub struct ClusterSettings {
    /// NATS server with JetStream (e.g. `nats://127.0.0.1:4222`); with
    /// `database_url`, turns cluster mode on.
    #[arg(long, env = "FLASHCAST_NATS_URL")]
    pub nats_url: Option<String>,
    /// PostgreSQL (e.g. `postgres://flashcast@127.0.0.1/flashcast`); with
    /// `nats_url`, turns cluster mode on.
    #[arg(long, env = "FLASHCAST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// This node's name in the cluster: letters, digits, `-` and `_`, at
    /// most 64. Unset: the host name.
    #[arg(long, env = "FLASHCAST_NODE_ID")]
    pub node_id: Option<String>,
    /// A room owner's lease: another node takes the room this long after
    /// the owner stopped renewing it (it renews every third of it).
    #[arg(long, env = "FLASHCAST_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,
    /// Longest wait for NATS to answer before an action gets `unavailable`.
    #[arg(long, env = "FLASHCAST_NATS_TIMEOUT_MS", default_value_t = 2_000)]
    pub nats_timeout_ms: u64,
}

/// Cluster mode, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nats_url: String,
    pub database_url: String,
    pub node_id: String,
    pub lease_ttl: Duration,
    pub nats_timeout: Duration,
}

impl ClusterSettings {
    /// `None` on one node (neither URL set), the cluster when both are,
    /// and an error naming what is missing or wrong otherwise.
    /// `host_name` is the node id when none is set.
    pub fn cluster(&self, host_name: &str) -> Result<Option<Cluster>, String> {
        let (nats_url, database_url) = match (&self.nats_url, &self.database_url) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(
                    "nats_url is set but database_url is not: cluster mode needs \
                            both (--database-url / FLASHCAST_DATABASE_URL)"
                        .into(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "database_url is set but nats_url is not: cluster mode needs \
                            both (--nats-url / FLASHCAST_NATS_URL)"
                        .into(),
                )
            }
            (Some(n), Some(d)) => (n.clone(), d.clone()),
        };
        let node_id = self
            .node_id
            .clone()
            .unwrap_or_else(|| host_name.to_string());
        let valid = !node_id.is_empty()
            && node_id.len() <= 64
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!(
                "node_id {node_id:?}: use 1-64 letters, digits, '-' or '_' (--node-id)"
            ));
        }
        if !(1_000..=60_000).contains(&self.lease_ttl_ms) {
            return Err("lease_ttl_ms must be between 1000 and 60000".into());
        }
        if !(100..=30_000).contains(&self.nats_timeout_ms) {
            return Err("nats_timeout_ms must be between 100 and 30000".into());
        }
        Ok(Some(Cluster {
            nats_url,
            database_url,
            node_id,
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            nats_timeout: Duration::from_millis(self.nats_timeout_ms),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterSettings,
    }

    fn cluster(args: &[&str]) -> Result<Option<Cluster>, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.cluster.cluster("host-1")
    }

    #[test]
    fn both_urls_or_neither() {
        assert_eq!(cluster(&[]), Ok(None));
        let err = cluster(&["--nats-url", "nats://127.0.0.1:4222"]).unwrap_err();
        assert!(err.contains("database_url is not"), "{err}");
        let err = cluster(&["--database-url", "postgres://127.0.0.1/f"]).unwrap_err();
        assert!(err.contains("nats_url is not"), "{err}");
        let on = cluster(&[
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--database-url",
            "postgres://127.0.0.1/f",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.node_id, "host-1", "the host name by default");
        assert_eq!(on.lease_ttl, Duration::from_secs(5));
    }

    #[test]
    fn node_ids_and_bounds_are_checked() {
        let base = ["--nats-url", "n", "--database-url", "d"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            cluster(&args)
        };
        assert_eq!(
            with(&["--node-id", "edge_2"]).unwrap().unwrap().node_id,
            "edge_2"
        );
        for bad in ["", "a.b", "a b", &"x".repeat(65)] {
            let err = with(&["--node-id", bad]).unwrap_err();
            assert!(err.contains("node_id"), "{bad}: {err}");
        }
        assert!(with(&["--lease-ttl-ms", "999"])
            .unwrap_err()
            .contains("lease_ttl_ms"));
        assert!(with(&["--nats-timeout-ms", "0"])
            .unwrap_err()
            .contains("nats_timeout_ms"));
    }
}
