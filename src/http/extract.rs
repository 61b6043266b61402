//! What every REST handler needs before its own logic, as axum extractors,
//! each answering its documented error body when it cannot: the admin key
//! (`Admin`), the room named in the path (`AdminRoom`), a numeric id in the
//! path (`PathId`) and a JSON body (`JsonBody`). Extractors run in argument
//! order, so a handler lists them in the order the checks are documented:
//! the key first (without it nothing about rooms is told), then the room,
//! then the body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::auth::constant_time_eq;
use crate::room::RoomHandle;
use flashcast_wire::ids::RoomId;
use flashcast_wire::ErrorCode;

/// Proof that the request carries the admin key
/// (`Authorization: Bearer KEY`); else 401 `unauthorized`.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), app.admin_key.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong admin key (Authorization: Bearer KEY)",
            ))
        }
    }
}

/// The room named by the path's `{room}` (or `{id}`) segment, open or
/// remembered as ended, for an admin: the key is checked first (401), then
/// the id (400 `invalid_argument`), then the room (404 `room_not_found`).
pub struct AdminRoom(pub RoomHandle);

impl FromRequestParts<AppState> for AdminRoom {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        Admin::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let id = params
            .iter()
            .find(|(name, _)| matches!(*name, "room" | "id"))
            .map(|(_, value)| value)
            .ok_or_else(|| internal("the route names no room").into_response())?;
        find_room(app, id)
            .map(AdminRoom)
            .map_err(IntoResponse::into_response)
    }
}

/// The number in the path's last segment (`{product_id}`, `{sale_id}`,
/// `{order_id}`); else 400 `invalid_argument`.
pub struct PathId(pub u64);

impl FromRequestParts<AppState> for PathId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let (_, value) = params
            .iter()
            .last()
            .ok_or_else(|| internal("the route has no id").into_response())?;
        value.parse().map(PathId).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidArgument,
                "ids are numbers",
            )
            .into_response()
        })
    }
}

/// A JSON request body; else 400 `malformed`, also for an unknown field
/// (whatever the type says: `SaleSpec` is a WebSocket message too, where
/// unknown fields are ignored). A body over `max_body_bytes` is refused
/// before (413).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, Response> {
        let body = Bytes::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_strict(&body)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// `parse`, refusing fields the type does not know.
fn parse_strict<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut unknown = None;
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_ignored::deserialize(&mut json, |path| {
        unknown.get_or_insert_with(|| path.to_string());
    })
    .and_then(|value| json.end().map(|()| value))
    .map_err(malformed)?;
    match unknown {
        None => Ok(value),
        Some(field) => Err(malformed(format!("unknown field `{field}`"))),
    }
}

/// Decodes a JSON body; for handlers that need the raw bytes too (the
/// payment webhook checks their signature first).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(malformed)
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::Malformed,
        format!("invalid JSON body: {e}"),
    )
}

/// 400 `invalid_argument`.
pub fn invalid(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
}

pub fn parse_room_id(id: &str) -> Result<RoomId, ApiError> {
    RoomId::new(id).map_err(|e| invalid(&format!("room id: {e}")))
}

/// A room of this node by id: 400 `invalid_argument` for a malformed id,
/// 404 `room_not_found` for an unknown one.
pub fn find_room(app: &AppState, id: &str) -> Result<RoomHandle, ApiError> {
    let id = parse_room_id(id)?;
    app.registry.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
        )
    })
}

/// A route wired to the wrong extractor: a bug, said as one.
fn internal(what: &str) -> ApiError {
    tracing::error!(what, "REST extractor");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, what)
}
