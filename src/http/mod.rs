//! Routing: the WebSocket endpoint, the REST admin API, WHIP/WHEP video,
//! health, metrics and the web pages. Everything below `room` and `engage`
//! knows nothing of HTTP.

pub mod admin;
pub mod commerce;
pub mod extract;
pub mod media;
pub mod recording;
pub mod serve;
pub mod web;
pub mod ws;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::auth::TokenKeys;
use crate::commerce::Commerce;
use crate::limits::{Limits, RateLimiters};
use crate::metrics::Metrics;
use crate::recording::recorder::Recordings;
use crate::room::{ConnId, Registry};
use crate::store::Store;
use flashcast_wire::ErrorCode;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub registry: Arc<Registry>,
    pub commerce: Arc<Commerce>,
    /// The node's clock (see `clock`): token expiry, webhook timestamps.
    pub clock: crate::clock::Clock,
    pub keys: TokenKeys,
    pub admin_key: String,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub limiters: RateLimiters,
    /// Rooms' recordings of client actions (docs/recording.md).
    pub recordings: Arc<Recordings>,
    /// Live video sessions (WHIP/WHEP, docs/video.md).
    pub media: Arc<crate::media::MediaHub>,
    /// The WebSocket connections' sockets and fanout workers.
    pub transport: Arc<crate::transport::Transport>,
    /// Flips to true once, when shutdown begins.
    pub shutdown: watch::Sender<bool>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        keys: TokenKeys,
        admin_key: String,
        store: Store,
        recordings_dir: std::path::PathBuf,
        media: Arc<crate::media::MediaHub>,
        transport: Arc<crate::transport::Transport>,
    ) -> Self {
        let ctx = registry.context().clone();
        Self(Arc::new(AppInner {
            recordings: Arc::new(Recordings::new(
                recordings_dir,
                ctx.limits.clone(),
                ctx.metrics.clone(),
            )),
            limiters: RateLimiters::new(&ctx.limits),
            limits: ctx.limits.clone(),
            metrics: ctx.metrics.clone(),
            commerce: ctx.commerce.clone(),
            clock: ctx.clock.clone(),
            media,
            transport,
            registry,
            keys,
            admin_key,
            store,
            shutdown: watch::channel(false).0,
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        }))
    }

    pub fn is_shutting_down(&self) -> bool {
        let flag = *self.shutdown.borrow();
        flag
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves one of `max_connections`; None when the node is full.
    fn try_connection_slot(&self) -> Option<ws::ConnectionSlot> {
        let max = self.limits.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ws::ConnectionSlot::new(self.clone()))
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// The REST API's OpenAPI document: the info and security scheme here, the
/// paths and schemas from the handlers' own annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Flashcast admin API",
        description = "Rooms, tokens, catalog, flash sales, coupon drops, orders, the \
            payment webhook, recordings of a room's client actions, and live video (WHIP ingest, \
            WHEP playback; bodies are SDP, see docs/video.md). Every error is `{\"error\": {\"code\", \"message\"}}`; the codes \
            are listed in docs/protocol.md."
    ),
    modifiers(&AdminKey),
    components(schemas(ErrorBody, ErrorCode))
)]
struct ApiDoc;

struct AdminKey;

impl utoipa::Modify for AdminKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // WHIP/WHEP: a room token minted by POST /api/v1/tokens.
        components.add_security_scheme(
            "room_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Request bodies refuse unknown fields (`extract::JsonBody`). The types
/// that are WebSocket messages too cannot say so to serde (unknown fields
/// of a client message are ignored), so the document says it for them.
fn strict_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    use utoipa::openapi::RefOr;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for name in ["SaleSpec", "CouponSpec"] {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// The REST routes and the OpenAPI document generated from them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    let (api, mut doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(admin::routes())
        .merge(commerce::routes())
        .merge(recording::routes())
        .merge(media::routes())
        .split_for_parts();
    strict_bodies(&mut doc);
    (api, doc)
}

pub fn router(app: AppState) -> Router {
    let body_limit = app.limits.max_body_bytes;
    let (api, doc) = api();
    let doc = Arc::new(doc);
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(api)
        .merge(web::routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response_with_state(
            app.clone(),
            close_when_draining,
        ))
        .with_state(app)
}

/// During the shutdown drain, every answer asks the client to close its
/// keep-alive connection, so its next request opens a new one (through the
/// load balancer, to another node) instead of finding this one closed.
async fn close_when_draining(State(app): State<AppState>, mut resp: Response) -> Response {
    if app.is_shutting_down() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The body of every REST error.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// What a REST handler answers.
pub type ApiResult = Result<Response, ApiError>;

/// A refused HTTP request. Renders as the JSON error body every REST
/// endpoint uses: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

pub fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}
