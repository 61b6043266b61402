//! A real WebSocket from a chosen loopback source address (with the
//! MessagePack subprotocol for Flashcast, with none for the nchan peer):
//! what every simulated viewer and subscriber connects with.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Context;
use flashcast_wire::codec::SUBPROTOCOL_MSGPACK;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the URL for the handshake and its resolved address.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// Asked for in the handshake, and required in the answer.
    pub subprotocol: Option<&'static str>,
}

impl Target {
    /// Resolves the host of a `ws://host:port/path` URL (MessagePack).
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("not a ws:// URL: {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{host_port} has no IPv4 address"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            subprotocol: Some(SUBPROTOCOL_MSGPACK),
        })
    }

    /// The same target, connected to with no subprotocol.
    pub fn without_subprotocol(self) -> Target {
        Target {
            subprotocol: None,
            ..self
        }
    }
}

/// The `index`-th loopback source address: 127.0.0.1, 127.0.0.2, ...
/// 127.0.0.254, 127.0.1.1, ... (skipping .0 and .255).
pub fn source_ip(index: u32) -> Ipv4Addr {
    let host = index % 254 + 1;
    let net = index / 254;
    Ipv4Addr::new(127, (net / 256 % 256) as u8, (net % 256) as u8, host as u8)
}

/// Opens a WebSocket from `source` (any free port) with the target's
/// subprotocol. The error is a short reason, used as a counter key.
pub async fn connect(target: &Target, source: Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddrV4::new(source, 0).into())
        .map_err(|e| format!("bind {source}: {}", e.kind()))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    if let Some(subprotocol) = target.subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(subprotocol),
        );
    }
    // Server frames are small; tungstenite's default 128 KiB read buffer
    // (zero-filled, so resident) would cost 128 KiB per simulated viewer.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => format!("http {}", resp.status().as_u16()),
            other => format!("handshake: {other}"),
        })?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if target.subprotocol.is_some() && chosen != target.subprotocol {
        return Err(format!("subprotocol not accepted: {chosen:?}"));
    }
    Ok(ws)
}

/// Sends a 1000 close and waits briefly for the server's answer.
pub async fn close_politely(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "storm done".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_network_and_broadcast_octets() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_ip(254), Ipv4Addr::new(127, 0, 1, 1));
    }
}
