//! The `flashcast` binary: read settings, start the server, print where to
//! open it, and shut down gracefully on Ctrl-C or SIGTERM (a second one
//! cuts the drain short).

use flashcast::config::{LogFormat, Settings};
use flashcast::server::DEMO_ROOM;
use flashcast_wire::codec::{SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::Role;

#[tokio::main]
async fn main() {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    init_tracing(settings.log_format);
    // Install the handlers before anything can be told to stop us.
    let mut signals = Signals::install();
    let demo = settings.demo_room;
    let server = match flashcast::start(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flashcast: {e:#}");
            std::process::exit(1);
        }
    };
    print_banner(&server, demo);
    signals.next().await;
    eprintln!(
        "flashcast: stopping; draining for {} ms (Ctrl-C again to stop now)",
        server.app.limits.shutdown_drain_ms
    );
    server.shutdown_or(signals.next()).await;
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The WebRTC stack logs every connection's state changes at info,
        // and warns of harmless things at every connection's start (a DTLS
        // server name, media arriving before the keys): per viewer, noise.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,rtc=warn,rtc::peer_connection::handler=error,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn,webrtc=warn",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Prints where to open Flashcast. Written in one go, ignoring errors: a
/// closed stdout must never take the server down.
fn print_banner(server: &flashcast::Server, demo: bool) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let base = format!("http://{}", server.addr);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Flashcast {} is running at {base}",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "  admin key:  {}", server.admin_key());
    let _ = writeln!(
        out,
        "  admin API:  {base}/api/v1/rooms  (Authorization: Bearer <admin key>)"
    );
    let _ = writeln!(
        out,
        "  WebSocket:  ws://{}/ws  (subprotocol {SUBPROTOCOL_MSGPACK} or {SUBPROTOCOL_JSON})",
        server.addr
    );
    let _ = writeln!(
        out,
        "  API docs:   {base}/api/v1/openapi.json  (commerce: docs/commerce.md)"
    );
    let _ = writeln!(
        out,
        "  payment webhook: {base}/api/v1/payments/webhook  (secret: {})",
        String::from_utf8_lossy(server.app.commerce.webhook_secret())
    );
    let _ = writeln!(out, "  metrics:    {base}/metrics");
    if demo {
        let room = RoomId::new(DEMO_ROOM).expect("valid id");
        let day = 24 * 3600;
        let (host, _) = server.keys().mint(
            &UserId::new("host").expect("valid id"),
            "Demo Host",
            Role::Host,
            &room,
            day,
        );
        let (viewer, _) = server.keys().mint(
            &UserId::new("viewer-1").expect("valid id"),
            "Demo Viewer",
            Role::Viewer,
            &room,
            day,
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "Demo room \"{DEMO_ROOM}\" (tokens valid 24 h):");
        let _ = writeln!(out, "  watch as a guest:  {base}/?room={DEMO_ROOM}");
        let _ = writeln!(
            out,
            "  watch as viewer:   {base}/?room={DEMO_ROOM}#token={viewer}"
        );
        let _ = writeln!(
            out,
            "  host the show:     {base}/?room={DEMO_ROOM}#token={host}"
        );
        let _ = writeln!(out, "  host token:   {host}");
        let _ = writeln!(out, "  viewer token: {viewer}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Press Ctrl-C to stop.");
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Ctrl-C and SIGTERM, listened to from `install` on (before anything can
/// be told to stop us); `next` resolves on the next one of either.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).expect("installing a SIGINT handler"),
                terminate: signal(SignalKind::terminate()).expect("installing a SIGTERM handler"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
