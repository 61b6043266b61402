//! Wiring: open the store, load the rooms, seed the demo room, serve HTTP,
//! and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{random_secret, TokenKeys};
use crate::clock::Clock;
use crate::commerce::Commerce;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::room::{Registry, RoomContext, RoomInfo};
use crate::store::{RoomRecord, SqliteStore, Store};
use flashcast_wire::ids::RoomId;

/// The id of the room seeded for `cargo run`.
pub const DEMO_ROOM: &str = "demo";

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub app: AppState,
    serve: JoinHandle<std::io::Result<()>>,
}

/// Starts a server and returns once it is listening.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    start_with_clock(settings, Clock::system()).await
}

/// [`start`] on a given clock: tests pass a `clock::ManualClock`'s, so time
/// passes when they say (sale windows, reservation deadlines, token expiry).
pub async fn start_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Server> {
    settings.limits.validate().map_err(anyhow::Error::msg)?;
    settings.media.validate().map_err(anyhow::Error::msg)?;
    let data_dir = settings.data_dir.clone();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir))
            .await?
            .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?,
    );
    let secret = match &settings.token_secret {
        Some(s) => s.clone(),
        None => store.get_or_init_meta("token_secret", &random_secret)?,
    };
    let admin_key = match &settings.admin_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => store.get_or_init_meta("admin_key", &random_secret)?,
    };

    let webhook_secret = match &settings.webhook_secret {
        Some(s) if !s.is_empty() => s.clone(),
        _ => store.get_or_init_meta("webhook_secret", &random_secret)?,
    };

    let limits = Arc::new(settings.limits.clone());
    let metrics = Arc::new(Metrics::new());
    let commerce = {
        let (dir, limits, metrics) = (settings.data_dir.clone(), limits.clone(), metrics.clone());
        let clock = clock.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || {
                Commerce::open(&dir, limits, metrics, webhook_secret.into_bytes(), clock)
            })
            .await?
            .context("loading orders, sales and the catalog")?,
        )
    };
    let media =
        crate::media::MediaHub::new(settings.media.clone(), settings.listen, metrics.clone());
    let registry = Arc::new(Registry::new(Arc::new(RoomContext {
        limits,
        metrics,
        store: store.clone(),
        commerce: commerce.clone(),
        clock: clock.clone(),
    })));
    let app = AppState::new(
        registry.clone(),
        TokenKeys::new(secret.as_bytes()).with_clock(clock.clone()),
        admin_key,
        store.clone(),
        settings.data_dir.join("recordings"),
        media,
    );

    let mut demo_seen = false;
    for record in store.rooms()? {
        let demo = record.id.as_str() == DEMO_ROOM && settings.demo_room;
        demo_seen |= demo;
        let info = RoomInfo {
            id: record.id.clone(),
            title: record.title.clone(),
            allow_guests: record.allow_guests,
            created_at: record.created_at,
        };
        if record.closed_at.is_some() && !demo {
            registry.remember_closed(info);
        } else {
            if record.closed_at.is_some() {
                // The demo show starts afresh on every run.
                store.put_room(&RoomRecord {
                    closed_at: None,
                    ..record.clone()
                })?;
            }
            let bans = store.bans(&record.id)?;
            registry.open(info, bans)?;
        }
    }
    if settings.demo_room && !demo_seen {
        let record = RoomRecord {
            id: RoomId::new(DEMO_ROOM).expect("valid id"),
            title: "Flashcast demo show".into(),
            allow_guests: true,
            created_at: clock.now_ms(),
            closed_at: None,
        };
        http::admin::open_room(&app, record)
            .await
            .map_err(|e| anyhow::anyhow!("could not create the demo room: {}", e.message))?;
    }

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let send_buffer = settings.limits.socket_send_buffer;
    let serve = tokio::spawn(http::serve::serve(
        listener,
        http::router(app.clone()),
        app.shutdown.subscribe(),
        move |tcp| tune_socket(tcp, send_buffer),
    ));

    tokio::spawn(commerce.run_expiry(app.shutdown.subscribe()));

    let janitor_app = app.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            if janitor_app.is_shutting_down() {
                break;
            }
            janitor_app.limiters.retain_recent();
        }
    });

    tracing::info!(%addr, "flashcast listening");
    Ok(Server { addr, app, serve })
}

/// Low latency for small frames, and a bounded kernel send buffer.
fn tune_socket(tcp: &tokio::net::TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %e, "could not set SO_SNDBUF");
        }
    }
}

impl Server {
    /// Stops accepting, tells every viewer to reconnect elsewhere (1012),
    /// and waits up to `shutdown_grace_ms` for them to be told.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.app.shutdown.send_replace(true);
        self.app.registry.shutdown().await;
        // Video sessions end with the rooms (their viewers' connections close).
        self.app.media.shutdown().await;
        let deadline = Instant::now() + Duration::from_millis(self.app.limits.shutdown_grace_ms);
        while self.app.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.app.open_connections();
        if left > 0 {
            tracing::warn!(
                left,
                "connections still open at the end of the grace period"
            );
        }
        // After the connections, so their leaves are recorded.
        let recordings = self.app.recordings.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            recordings.stop_all(crate::recording::recorder::StopReason::Shutdown)
        });
        if stopped.await.is_err() {
            tracing::error!("could not stop the recordings");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.serve).await;
    }

    pub fn admin_key(&self) -> &str {
        &self.app.admin_key
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.app.keys
    }
}
