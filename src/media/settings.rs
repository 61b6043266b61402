//! The video options (`media_*`): flags, FLASHCAST_MEDIA_* variables and
//! keys of the TOML file, like every other option. docs/configuration.md
//! lists them with their defaults (tests/config_docs.rs checks it).

use std::net::IpAddr;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::ice::{IceServer, Nat1to1Ip, NatCandidateType};
use crate::limits::{all_positive, at_least};

/// Every video option, with its default. Sizes and counts are bounds:
/// exceeding one is a documented HTTP refusal, never unbounded memory.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct MediaSettings {
    /// Serve live video: WHIP ingest (POST /whip/{room}) and WHEP playback
    /// (POST /whep/{room}). When false, both answer 404.
    #[arg(long, env = "FLASHCAST_MEDIA_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub media_enabled: bool,
    /// STUN/TURN servers, each `URL` or `URL username=NAME credential=SECRET`
    /// (several: repeat the flag, or separate with ';'). Sent to clients in
    /// the answers' `Link` headers; STUN servers are also asked for this
    /// node's public address.
    #[arg(long, env = "FLASHCAST_MEDIA_ICE_SERVERS", value_delimiter = ';')]
    #[serde(default)]
    pub media_ice_servers: Vec<IceServer>,
    /// Local IP addresses whose UDP ports carry media (host candidates).
    /// Empty: follow --listen (a loopback listen address gives 127.0.0.1, a
    /// wildcard every interface plus 127.0.0.1, a specific address itself).
    #[arg(long, env = "FLASHCAST_MEDIA_ICE_IPS", value_delimiter = ',')]
    #[serde(default)]
    pub media_ice_ips: Vec<IpAddr>,
    /// Lowest UDP port for media; with --media-udp-port-max, every session
    /// takes one port of the range. 0 (both): any free port.
    #[arg(long, env = "FLASHCAST_MEDIA_UDP_PORT_MIN", default_value_t = 0)]
    pub media_udp_port_min: u16,
    /// Highest UDP port for media (inclusive); the range size caps the
    /// sessions (publishers plus viewers) of this node.
    #[arg(long, env = "FLASHCAST_MEDIA_UDP_PORT_MAX", default_value_t = 0)]
    pub media_udp_port_max: u16,
    /// Public IPs of a 1:1 NAT in front of this node, `PUBLIC` or
    /// `PUBLIC/LOCAL`, written into the answers' candidates.
    #[arg(long, env = "FLASHCAST_MEDIA_NAT_1TO1_IPS", value_delimiter = ',')]
    #[serde(default)]
    pub media_nat_1to1_ips: Vec<Nat1to1Ip>,
    /// How the NAT's public IPs are announced: `host` (replaces the local
    /// address) or `srflx` (added beside it).
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_NAT_1TO1_CANDIDATE_TYPE",
        default_value = "host"
    )]
    pub media_nat_1to1_candidate_type: NatCandidateType,
    /// Video viewers (WHEP sessions) of one room at once.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_MAX_VIEWERS_PER_ROOM",
        default_value_t = 500
    )]
    pub media_max_viewers_per_room: usize,
    /// Video viewers of all rooms of this node at once.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_MAX_VIEWERS_PER_NODE",
        default_value_t = 1_000
    )]
    pub media_max_viewers_per_node: usize,
    /// WHIP plus WHEP sessions one user (one token's user in its room) may
    /// hold at once.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_MAX_SESSIONS_PER_TOKEN",
        default_value_t = 4
    )]
    pub media_max_sessions_per_token: usize,
    /// WHEP sessions guests (no token) from one IP address may hold at once.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_MAX_GUEST_SESSIONS_PER_IP",
        default_value_t = 50
    )]
    pub media_max_guest_sessions_per_ip: usize,
    /// Largest SDP offer, in bytes.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_MAX_OFFER_BYTES",
        default_value_t = 32_768
    )]
    pub media_max_offer_bytes: usize,
    /// A broadcast ends when its publisher sends no RTP for this long (or
    /// stays disconnected this long).
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_PUBLISHER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub media_publisher_timeout_ms: u64,
    /// A session whose peer has not connected (ICE and DTLS) this long after
    /// its answer is ended; a viewer disconnected this long too.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_CONNECT_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub media_connect_timeout_ms: u64,
    /// Longest wait for the server's ICE candidates before answering (the
    /// answer carries what was gathered by then).
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_ICE_GATHER_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub media_ice_gather_timeout_ms: u64,
    /// RTP packets queued per viewer per track; a viewer that falls further
    /// behind loses packets (counted), never the broadcast or other viewers.
    #[arg(long, env = "FLASHCAST_MEDIA_VIEWER_QUEUE", default_value_t = 512)]
    pub media_viewer_queue: usize,
    /// Least time between two keyframe requests (PLI) to a publisher;
    /// requests in between are merged into one at the end of the interval.
    #[arg(
        long,
        env = "FLASHCAST_MEDIA_KEYFRAME_INTERVAL_MS",
        default_value_t = 500
    )]
    pub media_keyframe_interval_ms: u64,
}

impl MediaSettings {
    /// Refuses settings that cannot work (an empty port range, a zero-sized
    /// queue...), naming the option.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            (
                "media_max_viewers_per_room",
                self.media_max_viewers_per_room,
            ),
            (
                "media_max_viewers_per_node",
                self.media_max_viewers_per_node,
            ),
            (
                "media_max_sessions_per_token",
                self.media_max_sessions_per_token,
            ),
            (
                "media_max_guest_sessions_per_ip",
                self.media_max_guest_sessions_per_ip,
            ),
            ("media_viewer_queue", self.media_viewer_queue),
            (
                "media_publisher_timeout_ms",
                self.media_publisher_timeout_ms as usize,
            ),
            (
                "media_connect_timeout_ms",
                self.media_connect_timeout_ms as usize,
            ),
            (
                "media_ice_gather_timeout_ms",
                self.media_ice_gather_timeout_ms as usize,
            ),
        ];
        all_positive(&positive)?;
        at_least(
            "media_max_offer_bytes",
            self.media_max_offer_bytes,
            MIN_OFFER_BYTES,
        )?;
        match (self.media_udp_port_min, self.media_udp_port_max) {
            (0, 0) => {}
            (0, _) | (_, 0) => {
                return Err(
                    "media_udp_port_min and media_udp_port_max are set together (or both 0)".into(),
                )
            }
            (min, max) if min > max => {
                return Err("media_udp_port_min must not exceed media_udp_port_max".into())
            }
            _ => {}
        }
        Ok(())
    }
}

/// The smallest `media_max_offer_bytes`: below it even a minimal
/// audio-only offer would not fit.
pub const MIN_OFFER_BYTES: usize = 1_024;

#[cfg(test)]
mod tests {
    use crate::Settings;

    #[test]
    fn defaults_are_valid_and_ranges_are_checked() {
        let s = Settings::load_from(["flashcast"]).unwrap();
        assert!(s.media.media_enabled);
        assert!(s.media.media_ice_servers.is_empty());
        s.media.validate().unwrap();
        let err = Settings::load_from(["flashcast", "--media-udp-port-min", "40000"]).unwrap_err();
        assert!(err.contains("media_udp_port_max"), "{err}");
        let err = Settings::load_from([
            "flashcast",
            "--media-udp-port-min",
            "40010",
            "--media-udp-port-max",
            "40000",
        ])
        .unwrap_err();
        assert!(err.contains("must not exceed"), "{err}");
        let err = Settings::load_from(["flashcast", "--media-viewer-queue", "0"]).unwrap_err();
        assert!(err.contains("media_viewer_queue"), "{err}");
        let err = Settings::load_from(["flashcast", "--media-max-offer-bytes", "100"]).unwrap_err();
        assert!(err.contains("media_max_offer_bytes"), "{err}");
    }

    #[test]
    fn ice_servers_from_flags_env_style_lists_and_the_file() {
        let s = Settings::load_from([
            "flashcast",
            "--media-ice-servers",
            "stun:stun.example.net:3478;turn:turn.example.net:3478?transport=udp username=ana credential=s3cret",
            "--media-ice-servers",
            "stun:second.example.net",
        ])
        .unwrap();
        let urls: Vec<&str> = s
            .media
            .media_ice_servers
            .iter()
            .map(|i| i.url.as_str())
            .collect();
        assert_eq!(
            urls,
            [
                "stun:stun.example.net:3478",
                "turn:turn.example.net:3478?transport=udp",
                "stun:second.example.net"
            ]
        );

        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "media_ice_servers = [\"stun:a.example.net\", {{ url = \"turns:b.example.net:5349\", username = \"u\", credential = \"p\" }}]\n\
             media_ice_ips = [\"127.0.0.1\"]\n\
             media_nat_1to1_ips = [\"203.0.113.7/10.0.0.5\"]\n\
             media_nat_1to1_candidate_type = \"srflx\"\n\
             media_udp_port_min = 40000\nmedia_udp_port_max = 40100"
        )
        .unwrap();
        let path = f.path().to_str().unwrap().to_string();
        let s = Settings::load_from(["flashcast", "--config", &path]).unwrap();
        assert_eq!(s.media.media_ice_servers.len(), 2);
        assert_eq!(s.media.media_ice_servers[1].username.as_deref(), Some("u"));
        assert_eq!(
            s.media.media_ice_ips,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(s.media.media_udp_port_max, 40100);
        assert_eq!(
            s.media.media_nat_1to1_candidate_type,
            super::NatCandidateType::Srflx
        );

        let err =
            Settings::load_from(["flashcast", "--media-ice-servers", "http://x"]).unwrap_err();
        assert!(err.contains("stun:"), "{err}");
    }
}
