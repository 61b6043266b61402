//! How peers reach this node: the STUN/TURN servers (and their `Link`
//! headers), the local addresses and UDP ports media is bound to, and the
//! public addresses of a 1:1 NAT written into answers.
//!
//! Every session is non-trickle: the answer carries all of this node's
//! candidates, so these are decided once per session, before the answer.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One STUN or TURN server: `URL` or `URL username=NAME credential=SECRET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub url: String,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl IceServer {
    pub fn is_turn(&self) -> bool {
        self.url.starts_with("turn:") || self.url.starts_with("turns:")
    }

    pub fn is_stun(&self) -> bool {
        self.url.starts_with("stun:")
    }

    /// The RFC 9725 `Link` header value that hands this server to a client.
    pub fn link_header(&self) -> String {
        let mut out = format!("<{}>; rel=\"ice-server\"", self.url);
        if let (Some(u), Some(c)) = (&self.username, &self.credential) {
            out.push_str(&format!(
                "; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
            ));
        }
        out
    }

    fn check(self) -> Result<Self, String> {
        let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|s| self.url.starts_with(s) && self.url.len() > s.len());
        if !scheme_ok {
            return Err(format!(
                "ICE server `{}`: the URL must start with stun:, stuns:, turn: or turns:",
                self.url
            ));
        }
        // These end up inside a quoted header parameter and an angle-bracketed URL.
        let clean = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '<' | '>'))
        };
        let fields = [
            Some(&self.url),
            self.username.as_ref(),
            self.credential.as_ref(),
        ];
        if fields.iter().flatten().any(|s| !clean(s)) {
            return Err(format!(
                "ICE server `{}`: URL, username and credential must be printable ASCII without spaces, quotes, backslashes or angle brackets",
                self.url
            ));
        }
        if self.is_turn() != (self.username.is_some() && self.credential.is_some()) {
            return Err(format!(
                "ICE server `{}`: TURN servers need username= and credential=, STUN servers take neither",
                self.url
            ));
        }
        Ok(self)
    }
}

impl FromStr for IceServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        let url = words.next().ok_or("an ICE server needs a URL")?.to_string();
        let (mut username, mut credential) = (None, None);
        for word in words {
            match word.split_once('=') {
                Some(("username", v)) => username = Some(v.to_string()),
                Some(("credential", v)) => credential = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "ICE server `{url}`: unexpected `{word}` (write `URL username=NAME credential=SECRET`)"
                    ))
                }
            }
        }
        IceServer {
            url,
            username,
            credential,
        }
        .check()
    }
}

impl fmt::Display for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        if let (Some(u), Some(c)) = (&self.username, &self.credential) {
            write!(f, " username={u} credential={c}")?;
        }
        Ok(())
    }
}

impl Serialize for IceServer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In the TOML file an ICE server is either the flag's string or a table
/// `{ url, username, credential }`.
impl<'de> Deserialize<'de> for IceServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Line(String),
            Table {
                url: String,
                username: Option<String>,
                credential: Option<String>,
            },
        }
        match Form::deserialize(d)? {
            Form::Line(s) => s.parse().map_err(serde::de::Error::custom),
            Form::Table {
                url,
                username,
                credential,
            } => IceServer {
                url,
                username,
                credential,
            }
            .check()
            .map_err(serde::de::Error::custom),
        }
    }
}

/// A public address of a 1:1 NAT: `PUBLIC`, or `PUBLIC/LOCAL` when this
/// node has several local addresses mapped to different public ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat1to1Ip {
    pub public: IpAddr,
    pub local: Option<IpAddr>,
}

impl FromStr for Nat1to1Ip {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("NAT 1:1 address `{s}`: write PUBLIC or PUBLIC/LOCAL (IP addresses)");
        let (public, local) = match s.split_once('/') {
            Some((p, l)) => (p, Some(l)),
            None => (s, None),
        };
        Ok(Nat1to1Ip {
            public: public.trim().parse().map_err(|_| bad())?,
            local: match local {
                Some(l) => Some(l.trim().parse().map_err(|_| bad())?),
                None => None,
            },
        })
    }
}

impl fmt::Display for Nat1to1Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local {
            Some(l) => write!(f, "{}/{l}", self.public),
            None => write!(f, "{}", self.public),
        }
    }
}

impl Serialize for Nat1to1Ip {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Nat1to1Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How a 1:1 NAT's public address is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatCandidateType {
    /// The public address replaces the local one in host candidates.
    Host,
    /// The public address is added as a server-reflexive candidate.
    Srflx,
}

/// The resolved ICE setup of this node.
pub struct IcePlan {
    /// Local addresses every session binds one UDP socket on.
    pub bind_ips: Vec<IpAddr>,
    pub servers: Vec<IceServer>,
    pub nat: Vec<Nat1to1Ip>,
    pub nat_type: NatCandidateType,
    pub ports: PortPool,
}

impl IcePlan {
    pub fn new(settings: &super::MediaSettings, listen: SocketAddr) -> Self {
        Self {
            bind_ips: bind_ips(&settings.media_ice_ips, listen.ip()),
            servers: settings.media_ice_servers.clone(),
            nat: settings.media_nat_1to1_ips.clone(),
            nat_type: settings.media_nat_1to1_candidate_type,
            ports: PortPool::new(settings.media_udp_port_min, settings.media_udp_port_max),
        }
    }

    /// The `Link` header values of every configured server.
    pub fn link_headers(&self) -> Vec<String> {
        self.servers.iter().map(IceServer::link_header).collect()
    }

    /// The servers this node itself asks for its public address (STUN
    /// only: a relay on the server side would only add a hop).
    pub fn own_servers(&self) -> Vec<&IceServer> {
        self.servers.iter().filter(|s| s.is_stun()).collect()
    }

    /// Writes the NAT's public addresses into an answer's candidates.
    pub fn apply_nat(&self, sdp: &str) -> String {
        rewrite_candidates(sdp, &self.nat, self.nat_type)
    }
}

/// Where media binds when `media_ice_ips` is empty: wherever HTTP listens.
/// A wildcard means every interface (the crate expands it, without
/// loopback) plus 127.0.0.1, so a client on this machine connects too.
pub fn bind_ips(configured: &[IpAddr], listen: IpAddr) -> Vec<IpAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    if listen.is_unspecified() {
        vec![listen, IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        vec![listen]
    }
}

/// Rewrites `a=candidate` lines for a 1:1 NAT: `Host` replaces a mapped
/// local address with its public one; `Srflx` adds a server-reflexive
/// candidate with the public address after each mapped host candidate.
/// Loopback candidates are never mapped (they are for this machine).
pub fn rewrite_candidates(sdp: &str, nat: &[Nat1to1Ip], kind: NatCandidateType) -> String {
    if nat.is_empty() {
        return sdp.to_string();
    }
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len() + 256);
    for line in sdp.split(eol) {
        let Some(fields) = line.strip_prefix("a=candidate:") else {
            out.push_str(line);
            out.push_str(eol);
            continue;
        };
        let parts: Vec<&str> = fields.split(' ').collect();
        // foundation component transport priority address port "typ" type ...
        let public = (parts.len() >= 8 && parts[6] == "typ" && parts[7] == "host")
            .then(|| parts[4].parse::<IpAddr>().ok())
            .flatten()
            .filter(|ip| !ip.is_loopback())
            .and_then(|local| public_for(nat, local).map(|p| (local, p)));
        match (public, kind) {
            (Some((_, public)), NatCandidateType::Host) => {
                let mut parts = parts.clone();
                let public = public.to_string();
                parts[4] = &public;
                out.push_str("a=candidate:");
                out.push_str(&parts.join(" "));
                out.push_str(eol);
            }
            (Some((local, public)), NatCandidateType::Srflx) => {
                out.push_str(line);
                out.push_str(eol);
                // A lower priority than the host candidate, as ICE computes
                // for server-reflexive ones (type preference 100 vs 126).
                let priority =
                    (100u32 << 24) | (parts[3].parse::<u32>().unwrap_or(0) & 0x00ff_ffff);
                out.push_str(&format!(
                    "a=candidate:{}s {} {} {} {} {} typ srflx raddr {} rport {}{eol}",
                    parts[0], parts[1], parts[2], priority, public, parts[5], local, parts[5]
                ));
            }
            (None, _) => {
                out.push_str(line);
                out.push_str(eol);
            }
        }
    }
    // split() yields a last empty piece after the final EOL; do not double it.
    if out.ends_with(&format!("{eol}{eol}")) {
        out.truncate(out.len() - eol.len());
    }
    out
}

fn public_for(nat: &[Nat1to1Ip], local: IpAddr) -> Option<IpAddr> {
    nat.iter()
        .find(|n| n.local == Some(local))
        .or_else(|| {
            nat.iter()
                .find(|n| n.local.is_none() && n.public.is_ipv4() == local.is_ipv4())
        })
        .map(|n| n.public)
}

/// The UDP ports sessions may bind. With no range every session takes an
/// ephemeral port; with one, each takes a port of it until none is left.
#[derive(Clone)]
pub struct PortPool {
    range: Option<(u16, u16)>,
    used: Arc<Mutex<BTreeSet<u16>>>,
}

/// A port taken from the pool; given back when dropped. `port()` is 0 for
/// "any free port".
pub struct PortLease {
    port: u16,
    pool: Option<PortPool>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.used.lock().expect("port pool lock").remove(&self.port);
        }
    }
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Self {
        Self {
            range: (min != 0 && max != 0 && min <= max).then_some((min, max)),
            used: Arc::default(),
        }
    }

    /// Takes the lowest free port of the range not in `skip` (ports found
    /// busy by another program); None when the range is exhausted.
    pub fn acquire(&self, skip: &[u16]) -> Option<PortLease> {
        let Some((min, max)) = self.range else {
            return Some(PortLease {
                port: 0,
                pool: None,
            });
        };
        let mut used = self.used.lock().expect("port pool lock");
        let port = (min..=max).find(|p| !used.contains(p) && !skip.contains(p))?;
        used.insert(port);
        Some(PortLease {
            port,
            pool: Some(self.clone()),
        })
    }

    /// Ports of the range in use now.
    pub fn in_use(&self) -> usize {
        self.used.lock().expect("port pool lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_parse_print_and_become_link_headers() {
        let stun: IceServer = "stun:stun.example.net:3478".parse().unwrap();
        assert_eq!(
            stun.link_header(),
            "<stun:stun.example.net:3478>; rel=\"ice-server\""
        );
        let turn: IceServer =
            "turn:turn.example.net:3478?transport=udp username=ana credential=pa55"
                .parse()
                .unwrap();
        assert_eq!(
            turn.link_header(),
            "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; username=\"ana\"; credential=\"pa55\"; credential-type=\"password\""
        );
        assert_eq!(turn.to_string().parse::<IceServer>().unwrap(), turn);

        for bad in [
            "",
            "http://example.net",
            "stun:",
            "turn:t.example.net",                         // no credentials
            "turn:t.example.net username=a",              // half of them
            "stun:s.example.net username=a credential=b", // STUN takes none
            "turn:t.example.net username=a credential=b\"c",
            "stun:s.example.net colour=red",
        ] {
            assert!(bad.parse::<IceServer>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn media_binds_where_http_listens_unless_told() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lan: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(bind_ips(&[], lo), [lo]);
        assert_eq!(bind_ips(&[], lan), [lan]);
        assert_eq!(bind_ips(&[], any), [any, lo]);
        assert_eq!(bind_ips(&[lan], lo), [lan]);
    }

    const ANSWER: &str = "v=0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host\r\n\
        a=candidate:2 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
        a=candidate:3 1 udp 1694498815 198.51.100.2 40001 typ srflx raddr 10.0.0.5 rport 40001\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn nat_host_mode_replaces_mapped_host_candidates_only() {
        let nat = ["203.0.113.7".parse().unwrap()];
        let out = rewrite_candidates(ANSWER, &nat, NatCandidateType::Host);
        assert!(out.contains("a=candidate:1 1 udp 2130706431 203.0.113.7 40000 typ host\r\n"));
        assert!(
            out.contains("127.0.0.1 40000 typ host"),
            "loopback is left alone"
        );
        assert!(
            out.contains("198.51.100.2 40001 typ srflx"),
            "srflx is left alone"
        );
        assert!(!out.contains("10.0.0.5 40000 typ host"));
        assert!(out.ends_with("a=end-of-candidates\r\n") && !out.ends_with("\r\n\r\n"));
        assert_eq!(
            rewrite_candidates(ANSWER, &[], NatCandidateType::Host),
            ANSWER
        );
    }

    #[test]
    fn nat_srflx_mode_adds_a_candidate_and_pairs_are_honoured() {
        let nat: Vec<Nat1to1Ip> = vec![
            "198.51.100.9/10.9.9.9".parse().unwrap(),
            "203.0.113.7/10.0.0.5".parse().unwrap(),
        ];
        let out = rewrite_candidates(ANSWER, &nat, NatCandidateType::Srflx);
        assert!(out.contains("a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"));
        assert!(out.contains(
            "a=candidate:1s 1 udp 1694498815 203.0.113.7 40000 typ srflx raddr 10.0.0.5 rport 40000\r\n"
        ));
        assert!(
            !out.contains("198.51.100.9"),
            "an unmatched pair is not used"
        );
        assert!("1.2.3/4".parse::<Nat1to1Ip>().is_err());
    }

    #[test]
    fn the_port_pool_hands_out_each_port_once_and_takes_it_back() {
        let pool = PortPool::new(40000, 40002);
        let a = pool.acquire(&[]).unwrap();
        let b = pool.acquire(&[40001]).unwrap();
        assert_eq!((a.port(), b.port()), (40000, 40002));
        let c = pool.acquire(&[]).unwrap();
        assert_eq!(c.port(), 40001);
        assert!(pool.acquire(&[]).is_none(), "the range is exhausted");
        assert_eq!(pool.in_use(), 3);
        drop(b);
        assert_eq!(pool.acquire(&[]).unwrap().port(), 40002);
        assert_eq!(pool.in_use(), 2, "a dropped lease frees its port");
        assert_eq!(PortPool::new(0, 0).acquire(&[]).unwrap().port(), 0);
    }
}
