//! The REST admin API under `/api/v1`, guarded by the admin key
//! (`Authorization: Bearer KEY`): create, list, inspect and close rooms, and
//! mint tokens. Every error is `{"error": {"code", "message"}}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{find_room, invalid, parse_room_id, Admin, AdminRoom, JsonBody};
use super::{ApiError, ApiResult, AppState, ErrorBody};
use crate::auth::MAX_NAME_CHARS;
use crate::room::{RegistryError, RoomHandle};
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
async fn create_room(
    State(app): State<AppState>,
    _: Admin,
    JsonBody(req): JsonBody<CreateRoom>,
) -> ApiResult {
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
    let room = app.registry.create(record).await?;
    Ok((StatusCode::CREATED, Json(RoomView::from(&room))).into_response())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match e {
            RegistryError::Exists => StatusCode::CONFLICT,
            RegistryError::LimitReached => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::NotStored => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match e {
            RegistryError::Exists => ErrorCode::InvalidArgument,
            RegistryError::LimitReached => ErrorCode::LimitReached,
            RegistryError::NotStored => ErrorCode::Internal,
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Rooms on this node.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    responses((status = 200, body = Vec<RoomView>), (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_rooms(State(app): State<AppState>, _: Admin) -> ApiResult {
    let rooms: Vec<RoomView> = app.registry.list().iter().map(RoomView::from).collect();
    Ok(Json(rooms).into_response())
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn get_room(AdminRoom(room): AdminRoom) -> ApiResult {
    Ok(Json(RoomView::from(&room)).into_response())
}

/// Ends the show: viewers get `show_ended` and close code 4010.
#[utoipa::path(delete, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn close_room(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    let ended = app.registry.end(room.id()).await.map_err(|e| {
        tracing::error!(error = %e, "could not store the end of a show");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "could not store the change; nothing was applied",
        )
    })?;
    if !ended {
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
async fn mint_token(
    State(app): State<AppState>,
    _: Admin,
    JsonBody(req): JsonBody<MintToken>,
) -> ApiResult {
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
    let room = find_room(&app, &req.room)?;
    let (token, claims) = app.keys.mint(&user, name, req.role, room.id(), ttl);
    let minted = MintedToken {
        token,
        expires_at: claims.exp,
    };
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}
