//! The HTTP/1.1 server loop: accept, tune the socket, serve the router
//! with upgrades; on stop, close the listener and let the requests in
//! flight finish.
//!
//! Not `axum::serve`: its connections detect HTTP/2 and wrap the socket in a
//! private type, while the WebSocket path (`http::ws`) needs the TCP socket
//! itself back after the upgrade, so that a room can write its frames to it
//! directly. Flashcast speaks HTTP/1.1 only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Serves `router` until `stop` turns true (after the drain, see
/// `Server::shutdown`), then closes the listener: new connections are
/// refused. Open HTTP connections are told to finish the request they are
/// on and close; this returns once they have, or after `grace`. Upgraded
/// WebSockets are not hyper's any more and close through the rooms.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    tune: impl Fn(&TcpStream) + Send + 'static,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reaps finished connections, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stopping(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of
                // spinning, and keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tune(&tcp);
        connections.spawn(connection(tcp, peer, router.clone(), stop.clone(), grace));
    }
    drop(listener);
    let open = connections.len();
    let finished = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open,
            left = connections.len(),
            "HTTP connections still open at the end of the grace period"
        );
    }
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(error = %e, %peer, "HTTP connection ended with an error");
            }
        }
        _ = stopping(&mut stop) => {
            // Idle: closes now. A request in flight: answered, then closed.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
