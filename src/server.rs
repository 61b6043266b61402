//! Wiring: open the store, load the rooms, seed the demo room, serve HTTP,
//! and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{random_secret, TokenKeys};
use crate::clock::Clock;
use crate::commerce::Commerce;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::room::{Registry, RoomContext, RoomInfo};
use crate::store::{GroupCommitConfig, RoomRecord, Store, Write};
use crate::transport::workers::WorkerConfig;
use crate::transport::Transport;
use flashcast_wire::ids::RoomId;

/// The id of the room seeded for `cargo run`.
pub const DEMO_ROOM: &str = "demo";

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub app: AppState,
    serve: JoinHandle<std::io::Result<()>>,
    /// Turns true when the drain ends: the listener closes.
    stop_serving: watch::Sender<bool>,
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
    let commit = GroupCommitConfig {
        queue: settings.limits.commit_queue,
        max_batch: settings.limits.commit_batch,
    };
    let store = tokio::task::spawn_blocking(move || Store::open_sqlite(&data_dir, commit))
        .await?
        .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
    let secret = match &settings.token_secret {
        Some(s) => s.clone(),
        None => {
            store
                .get_or_init_meta("token_secret", &random_secret)
                .await?
        }
    };
    let admin_key = match &settings.admin_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => store.get_or_init_meta("admin_key", &random_secret).await?,
    };

    let webhook_secret = match &settings.webhook_secret {
        Some(s) if !s.is_empty() => s.clone(),
        _ => {
            store
                .get_or_init_meta("webhook_secret", &random_secret)
                .await?
        }
    };

    let limits = Arc::new(settings.limits.clone());
    let metrics = Arc::new(Metrics::new());
    let commerce = Arc::new(
        Commerce::open(
            store.clone(),
            limits.clone(),
            metrics.clone(),
            webhook_secret.into_bytes(),
            clock.clone(),
        )
        .await
        .context("loading the open reservations")?,
    );
    let media =
        crate::media::MediaHub::new(settings.media.clone(), settings.listen, metrics.clone());
    let transport = Transport::new(
        WorkerConfig {
            threads: limits.fanout_workers(),
            queue: limits.fanout_queue,
            io_uring: limits.fanout_io_uring,
        },
        metrics.clone(),
    );
    let registry = Arc::new(Registry::new(Arc::new(RoomContext {
        fanout: transport.clone(),
        limits,
        metrics,
        store: store.clone(),
        commerce: commerce.clone(),
        clock: clock.clone(),
        journal: None,
    })));
    let app = AppState::new(
        registry.clone(),
        TokenKeys::new(secret.as_bytes()).with_clock(clock.clone()),
        admin_key,
        store.clone(),
        settings.data_dir.join("recordings"),
        media,
        transport,
    );

    let mut demo_seen = false;
    for record in store.read().rooms().await? {
        let demo = record.id.as_str() == DEMO_ROOM && settings.demo_room;
        demo_seen |= demo;
        let info = RoomInfo::from(&record);
        if record.closed_at.is_some() && !demo {
            registry.remember_closed(info);
        } else {
            if record.closed_at.is_some() {
                // The demo show starts afresh on every run.
                store
                    .write(Write::PutRoom(RoomRecord {
                        closed_at: None,
                        ..record.clone()
                    }))
                    .await?;
            }
            let bans = store.read().bans(&record.id).await?;
            commerce
                .load_shop(&record.id)
                .await
                .context("loading a room's catalog, sales and coupons")?;
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
        registry
            .create(record)
            .await
            .context("could not create the demo room")?;
    }

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let send_buffer = settings.limits.socket_send_buffer;
    let stop_serving = watch::channel(false).0;
    let serve = tokio::spawn(http::serve::serve(
        listener,
        http::router(app.clone()),
        stop_serving.subscribe(),
        Duration::from_millis(settings.limits.shutdown_grace_ms),
        move |tcp| tune_socket(tcp, send_buffer),
    ));

    // Payments may still arrive during the drain; reservations still expire.
    tokio::spawn(commerce.run_expiry(stop_serving.subscribe()));

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
    Ok(Server {
        addr,
        app,
        serve,
        stop_serving,
    })
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
    /// Stops gracefully. Shutdown begins: `/readyz` and new `GET /ws`
    /// requests answer 503, and every viewer is told to reconnect elsewhere
    /// (1012) and given up to `shutdown_grace_ms` to be told. The listener
    /// keeps accepting (the drain) until `shutdown_drain_ms` after the
    /// start, so a load balancer sees the node go not-ready, then closes;
    /// HTTP requests in flight are still answered (up to
    /// `shutdown_grace_ms`).
    pub async fn shutdown(self) {
        self.shutdown_or(std::future::pending()).await
    }

    /// `shutdown`, with a drain that ends early when `hurry` resolves (a
    /// second Ctrl-C).
    pub async fn shutdown_or(self, hurry: impl std::future::Future<Output = ()>) {
        let limits = self.app.limits.clone();
        let began = Instant::now();
        tracing::info!(
            drain_ms = limits.shutdown_drain_ms,
            "shutting down: not ready, draining"
        );
        self.app.shutdown.send_replace(true);
        self.app.registry.shutdown().await;
        // Video sessions end with the rooms (their viewers' connections close).
        self.app.media.shutdown().await;
        let deadline = began + Duration::from_millis(limits.shutdown_grace_ms);
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
        let drained =
            tokio::time::Instant::from_std(began + Duration::from_millis(limits.shutdown_drain_ms));
        tokio::select! {
            _ = tokio::time::sleep_until(drained) => {}
            _ = hurry => tracing::info!("drain cut short"),
        }
        tracing::info!("closing the listener");
        self.stop_serving.send_replace(true);
        // `serve` bounds its own wait by the grace period; this is a backstop.
        let backstop = Duration::from_millis(limits.shutdown_grace_ms) + Duration::from_secs(1);
        if tokio::time::timeout(backstop, self.serve).await.is_err() {
            tracing::warn!("the HTTP server did not stop in time");
        }
        // After the connections, so their leaves are recorded, and after
        // the drain, whose REST requests may have started one.
        let recordings = self.app.recordings.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            recordings.stop_all(crate::recording::recorder::StopReason::Shutdown)
        });
        if stopped.await.is_err() {
            tracing::error!("could not stop the recordings");
        }
    }

    pub fn admin_key(&self) -> &str {
        &self.app.admin_key
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.app.keys
    }
}
