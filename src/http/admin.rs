//! The REST admin API under `/api/v1`, guarded by the admin key
//! (`Authorization: Bearer KEY`): create, list, inspect and close rooms, and
//! mint tokens. Every error is `{"error": {"code", "message"}}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::auth::{constant_time_eq, MAX_NAME_CHARS};
use crate::room::{RegistryError, RoomHandle, RoomInfo};
use crate::store::RoomRecord;
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{ErrorCode, Role};

/// Longest room title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// Every route is registered with its OpenAPI description, so the served
/// document cannot list a route that does not exist or miss one that does.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rooms, create_room))
        .routes(routes!(get_room, close_room))
        .routes(routes!(mint_token))
}

pub type ApiResult = Result<Response, ApiError>;

pub fn authorized(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), app.admin_key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong admin key (Authorization: Bearer KEY)",
        ))
    }
}

pub fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Malformed,
            format!("invalid JSON body: {e}"),
        )
    })
}

pub fn invalid(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
}

pub fn parse_room_id(id: &str) -> Result<RoomId, ApiError> {
    RoomId::new(id).map_err(|e| invalid(&format!("room id: {e}")))
}

/// A room as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomView {
    pub id: RoomId,
    pub title: String,
    pub allow_guests: bool,
    pub created_at: u64,
    pub viewers: u32,
    pub closed: bool,
}

impl From<&RoomHandle> for RoomView {
    fn from(room: &RoomHandle) -> Self {
        let info = &room.shared.info;
        RoomView {
            id: info.id.clone(),
            title: info.title.clone(),
            allow_guests: info.allow_guests,
            created_at: info.created_at,
            viewers: room.shared.viewers(),
            closed: room.shared.is_closed(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    /// Generated when absent.
    id: Option<String>,
    title: String,
    #[serde(default = "yes")]
    allow_guests: bool,
}

fn yes() -> bool {
    true
}

/// Opens a room (one per show).
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 201, body = RoomView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn create_room(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorized(&app, &headers)?;
    let req: CreateRoom = parse(&body)?;
    let id = match req.id {
        Some(id) => parse_room_id(&id)?,
        None => RoomId::new(&format!("room-{:010x}", rand::random::<u64>() >> 24))
            .expect("generated ids are valid"),
    };
    let title = req.title.trim().to_string();
    if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
        return Err(invalid(&format!(
            "title must be 1-{MAX_TITLE_CHARS} characters"
        )));
    }
    let record = RoomRecord {
        id: id.clone(),
        title,
        allow_guests: req.allow_guests,
        created_at: app.clock.now_ms(),
        closed_at: None,
    };
    let room = open_room(&app, record).await?;
    Ok((StatusCode::CREATED, Json(RoomView::from(&room))).into_response())
}

/// Opens a room in the registry and persists it. Used by the admin API and
/// by the demo-room seeding at start-up.
pub async fn open_room(app: &AppState, record: RoomRecord) -> Result<RoomHandle, ApiError> {
    let info = RoomInfo {
        id: record.id.clone(),
        title: record.title.clone(),
        allow_guests: record.allow_guests,
        created_at: record.created_at,
    };
    let room = app.registry.open(info, Vec::new()).map_err(|e| match e {
        RegistryError::Exists => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::InvalidArgument,
            "a room with this id already exists",
        ),
        RegistryError::LimitReached => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitReached,
            "this node already hosts max_rooms open rooms",
        ),
    })?;
    let store = app.store.clone();
    let saved = tokio::task::spawn_blocking(move || store.put_room(&record))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not persist room");
        app.registry.end(room.id()).await;
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "could not store the room",
        ));
    }
    Ok(room)
}

/// Rooms on this node.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    responses((status = 200, body = Vec<RoomView>), (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_rooms(State(app): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorized(&app, &headers)?;
    let rooms: Vec<RoomView> = app.registry.list().iter().map(RoomView::from).collect();
    Ok(Json(rooms).into_response())
}

pub fn find(app: &AppState, id: &str) -> Result<RoomHandle, ApiError> {
    let id = parse_room_id(id)?;
    app.registry.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn get_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorized(&app, &headers)?;
    Ok(Json(RoomView::from(&find(&app, &id)?)).into_response())
}

/// Ends the show: viewers get `show_ended` and close code 4010.
#[utoipa::path(delete, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn close_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorized(&app, &headers)?;
    let room = find(&app, &id)?;
    if !app.registry.end(room.id()).await {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::RoomClosed,
            "the room is already closed",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MintToken {
    room: String,
    user_id: String,
    name: String,
    role: Role,
    /// Defaults to one day (or `max_token_ttl_secs` if shorter).
    ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct MintedToken {
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Mints a signed token for one user in one room.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "rooms",
    request_body = MintToken,
    responses((status = 201, body = MintedToken), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn mint_token(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorized(&app, &headers)?;
    let req: MintToken = parse(&body)?;
    if req.role == Role::Guest {
        return Err(invalid(
            "guests join without a token; mint viewer, moderator or host",
        ));
    }
    let user = UserId::new(&req.user_id)
        .map_err(|_| invalid("user_id: 1-64 characters of A-Z a-z 0-9 _ - . :"))?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(&format!(
            "name must be 1-{MAX_NAME_CHARS} characters"
        )));
    }
    let max_ttl = app.limits.max_token_ttl_secs;
    let ttl = req.ttl_secs.unwrap_or(max_ttl.min(24 * 3600));
    if ttl == 0 || ttl > max_ttl {
        return Err(invalid(&format!("ttl_secs must be 1-{max_ttl}")));
    }
    let room = find(&app, &req.room)?;
    let (token, claims) = app.keys.mint(&user, name, req.role, room.id(), ttl);
    let minted = MintedToken {
        token,
        expires_at: claims.exp,
    };
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}
