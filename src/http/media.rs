//! WHIP (RFC 9725) and WHEP over HTTP: `POST /whip/{room}` publishes the
//! host's broadcast, `POST /whep/{room}` plays it; each answers `201` with
//! the SDP answer and the session URL in `Location`, which `DELETE` ends.
//! Offers are non-trickle (all candidates in the offer); `PATCH` (trickle
//! ICE, ICE restart) is not supported and answers 405, as the RFC allows.
//! The SFU itself is `crate::media`; docs/video.md is the user's guide.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::auth::{Claims, TokenError};
use crate::media::{Holder, MediaError, SessionId, SessionKind};
use crate::room::RoomHandle;
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{ErrorCode, Role};

/// The media type of offers and answers.
pub const SDP: &str = "application/sdp";

/// Seconds a client is told to wait after a capacity refusal (503).
const RETRY_AFTER_SECS: &str = "10";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whip_publish, whip_options))
        .routes(routes!(whip_end, whip_patch))
        .routes(routes!(whep_play, whep_options))
        .routes(routes!(whep_end, whep_patch))
}

type MediaResult = Result<Response, Refusal>;

/// A refused request: the REST error body, plus the headers some statuses
/// carry (`WWW-Authenticate` on 401, `Retry-After` on 503, `Allow` on 405).
struct Refusal {
    error: ApiError,
    headers: Vec<(header::HeaderName, &'static str)>,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut headers = Vec::new();
        match status {
            StatusCode::UNAUTHORIZED => headers.push((header::WWW_AUTHENTICATE, "Bearer")),
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.push((header::RETRY_AFTER, RETRY_AFTER_SECS))
            }
            StatusCode::METHOD_NOT_ALLOWED => headers.push((header::ALLOW, "DELETE")),
            _ => {}
        }
        Self {
            error: ApiError::new(status, code, message),
            headers,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = self.error.into_response();
        for (name, value) in self.headers {
            resp.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        resp
    }
}

impl From<MediaError> for Refusal {
    fn from(e: MediaError) -> Self {
        let (status, code) = match &e {
            MediaError::BroadcastLive => (StatusCode::CONFLICT, ErrorCode::Conflict),
            MediaError::StreamOffline => (StatusCode::CONFLICT, ErrorCode::StreamOffline),
            MediaError::RoomFull(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::RoomFull),
            MediaError::NodeFull(_) | MediaError::NoPort => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::LimitReached)
            }
            MediaError::TooManySessions(_) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::LimitReached)
            }
            MediaError::BadOffer(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadSdp),
            MediaError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
            MediaError::Internal(msg) => {
                tracing::error!(error = %msg, "media session");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        let message = match e {
            MediaError::Internal(_) => "the session could not be set up".to_string(),
            e => e.to_string(),
        };
        Refusal::new(status, code, message)
    }
}

/// Counts a refusal made here (the hub counts its own).
fn refused(app: &AppState, r: Refusal) -> Refusal {
    app.media
        .metrics
        .media_refused
        .with_label_values(&[r.error.code.as_str()])
        .inc();
    r
}

/// Video is on and the server is not stopping.
fn serving(app: &AppState) -> Result<(), Refusal> {
    if !app.media.enabled() {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "video is disabled on this server (media_enabled = false)",
        ));
    }
    if app.is_shutting_down() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    Ok(())
}

/// The room named in the path, and open.
fn open_room(app: &AppState, room: &str) -> Result<RoomHandle, Refusal> {
    let not_found = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
        )
    };
    let id = RoomId::new(room).map_err(|_| not_found())?;
    let room = app.registry.get(&id).ok_or_else(not_found)?;
    if room.shared.is_closed() {
        return Err(Refusal::new(
            StatusCode::GONE,
            ErrorCode::RoomClosed,
            "the show has ended",
        ));
    }
    Ok(room)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token's claims, if it is valid (checked before the room, as the
/// admin key is: without valid credentials, nothing about rooms is told).
fn verify(app: &AppState, token: &str) -> Result<Claims, Refusal> {
    app.keys.verify(token).map_err(|e| match e {
        TokenError::Expired => Refusal::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::TokenExpired,
            "the token has expired",
        ),
        TokenError::Invalid => Refusal::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "invalid token (Authorization: Bearer <token from POST /api/v1/tokens>)",
        ),
    })
}

/// The token is for this room.
fn same_room(claims: &Claims, room: &RoomHandle) -> Result<(), Refusal> {
    if &claims.room != room.id() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the token is for another room",
        ));
    }
    Ok(())
}

/// The offer: `Content-Type: application/sdp`, at most
/// `media_max_offer_bytes`, UTF-8.
async fn read_offer(app: &AppState, headers: &HeaderMap, body: Body) -> Result<String, Refusal> {
    let is_sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(SDP));
    if !is_sdp {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the offer must be sent with Content-Type: application/sdp",
        ));
    }
    let max = app.media.settings.media_max_offer_bytes;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the offer is larger than media_max_offer_bytes ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadSdp,
            "the offer is not UTF-8 text",
        )
    })
}

/// `201 Created`: the answer, its session URL and the ICE servers.
fn created(app: &AppState, location: String, sdp: String) -> Response {
    let mut resp = (StatusCode::CREATED, sdp).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    add_links(app, h);
    resp
}

fn add_links(app: &AppState, h: &mut HeaderMap) {
    for link in app.media.link_headers() {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
}

/// `OPTIONS`: what the endpoint accepts, and the ICE servers.
fn options(app: &AppState) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    h.insert("accept-post", HeaderValue::from_static(SDP));
    add_links(app, h);
    resp
}

async fn end(app: &AppState, kind: SessionKind, room: &str, session: &str) -> MediaResult {
    let not_found = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such session",
        )
    };
    let (Ok(room), Ok(session)) = (RoomId::new(room), session.parse::<SessionId>()) else {
        return Err(not_found());
    };
    if app.media.end(kind, &room, session).await {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(not_found())
    }
}

fn patch() -> MediaResult {
    Err(Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "trickle ICE and ICE restarts are not supported: send a complete offer (all candidates) with POST",
    ))
}

/// WHIP: publishes the room's broadcast. Needs the room's **host** token.
/// The body is a non-trickle SDP offer (H.264 or VP8 video, Opus audio);
/// the answer comes back with `Location: /whip/{room}/{session}` and the
/// ICE servers as `Link: <url>; rel="ice-server"` headers. One broadcast per
/// room: a second one gets 409 `conflict` while the first is live.
#[utoipa::path(post, path = "/whip/{room}", tag = "video",
    params(("room" = String, Path, description = "room id")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer"),
    responses(
        (status = 201, body = String, content_type = "application/sdp", description = "SDP answer",
            headers(("Location" = String, description = "the session URL, for DELETE"),
                    ("Link" = String, description = "an ICE server, `<url>; rel=\"ice-server\"`, one header per server"))),
        (status = 400, body = ErrorBody, description = "`bad_sdp`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`, `token_expired`; with `WWW-Authenticate: Bearer`"),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a host token, or for another room"),
        (status = 404, body = ErrorBody, description = "`room_not_found`, or `not_found` when video is disabled"),
        (status = 409, body = ErrorBody, description = "`conflict`: the room already has a live broadcast"),
        (status = 410, body = ErrorBody, description = "`room_closed`"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`"),
        (status = 429, body = ErrorBody, description = "`limit_reached`: media_max_sessions_per_token"),
        (status = 500, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`limit_reached` (no UDP port), `shutting_down`; with `Retry-After`")),
    security(("room_token" = [])))]
async fn whip_publish(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> MediaResult {
    let result = async {
        serving(&app)?;
        let token = bearer(&headers).ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "publishing needs the room's host token (Authorization: Bearer <token>)",
            )
        })?;
        let claims = verify(&app, token)?;
        let room = open_room(&app, &room)?;
        same_room(&claims, &room)?;
        if claims.role != Role::Host {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "only the room's host can publish video",
            ));
        }
        let offer = read_offer(&app, &headers, body).await?;
        Ok((room, claims, offer))
    }
    .await;
    let (room, claims, offer) = result.map_err(|r| refused(&app, r))?;
    let holder = Holder::User {
        room: room.id().clone(),
        user: claims.sub.clone(),
    };
    let id = room.id().clone();
    let answer = app.media.publish(room, holder, &offer).await?;
    Ok(created(
        &app,
        format!("/whip/{id}/{}", answer.session),
        answer.sdp,
    ))
}

/// The ICE servers (`Link` headers) and what the endpoint accepts.
#[utoipa::path(options, path = "/whip/{room}", tag = "video",
    params(("room" = String, Path, description = "room id")),
    responses((status = 204, description = "`Link` headers with the ICE servers, `Accept-Post: application/sdp`")))]
async fn whip_options(State(app): State<AppState>) -> Response {
    options(&app)
}

/// Ends the broadcast: its viewers' sessions end too, and the room's
/// `stream` event says `offline`. The session URL is the capability; no
/// token is needed.
#[utoipa::path(delete, path = "/whip/{room}/{session}", tag = "video",
    params(("room" = String, Path, description = "room id"),
        ("session" = String, Path, description = "session id, from `Location`")),
    responses((status = 200, description = "ended"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such session")))]
async fn whip_end(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> MediaResult {
    end(&app, SessionKind::Publisher, &room, &session).await
}

/// Trickle ICE and ICE restarts are not supported: always 405.
#[utoipa::path(patch, path = "/whip/{room}/{session}", tag = "video",
    params(("room" = String, Path, description = "room id"),
        ("session" = String, Path, description = "session id")),
    responses((status = 405, body = ErrorBody, description = "`method_not_allowed`, with `Allow: DELETE`")))]
async fn whip_patch() -> MediaResult {
    patch()
}

/// WHEP: plays the room's live broadcast. A token of the room (any role),
/// or none in a room that allows guests. The body is a non-trickle SDP
/// offer receiving video and/or audio; 409 `stream_offline` while nothing
/// is live.
#[utoipa::path(post, path = "/whep/{room}", tag = "video",
    params(("room" = String, Path, description = "room id")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer"),
    responses(
        (status = 201, body = String, content_type = "application/sdp", description = "SDP answer",
            headers(("Location" = String, description = "the session URL, for DELETE"),
                    ("Link" = String, description = "an ICE server, one header per server"))),
        (status = 400, body = ErrorBody, description = "`bad_sdp`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`, `token_expired` (a room without guests needs a token); with `WWW-Authenticate: Bearer`"),
        (status = 403, body = ErrorBody, description = "`forbidden`: a token for another room, or a viewer banned from the room"),
        (status = 404, body = ErrorBody, description = "`room_not_found`, or `not_found` when video is disabled"),
        (status = 409, body = ErrorBody, description = "`stream_offline`"),
        (status = 410, body = ErrorBody, description = "`room_closed`"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`"),
        (status = 429, body = ErrorBody, description = "`limit_reached`: media_max_sessions_per_token (guests: media_max_guest_sessions_per_ip)"),
        (status = 500, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`room_full` (media_max_viewers_per_room), `limit_reached` (media_max_viewers_per_node, no UDP port), `shutting_down`; with `Retry-After`")))]
async fn whep_play(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> MediaResult {
    let result = async {
        serving(&app)?;
        let claims = bearer(&headers).map(|t| verify(&app, t)).transpose()?;
        let room = open_room(&app, &room)?;
        let holder =
            match claims {
                Some(claims) => {
                    same_room(&claims, &room)?;
                    not_banned(&room, &claims.sub)?;
                    Holder::User {
                        room: room.id().clone(),
                        user: claims.sub,
                    }
                }
                None if room.shared.info.allow_guests => Holder::Guest(peer.ip()),
                None => return Err(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "this room has no guests: send a viewer token (Authorization: Bearer <token>)",
                )),
            };
        let offer = read_offer(&app, &headers, body).await?;
        Ok((room, holder, offer))
    }
    .await;
    let (room, holder, offer) = result.map_err(|r| refused(&app, r))?;
    let id = room.id().clone();
    let answer = app.media.play(room, holder, &offer).await?;
    Ok(created(
        &app,
        format!("/whep/{id}/{}", answer.session),
        answer.sdp,
    ))
}

/// A viewer banned from the room's chat does not get its video either (and
/// one banned while watching loses it: `media::viewer`).
fn not_banned(room: &RoomHandle, user: &UserId) -> Result<(), Refusal> {
    if room.shared.is_banned(user) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "you are banned from this room",
        ));
    }
    Ok(())
}

/// The ICE servers (`Link` headers) and what the endpoint accepts.
#[utoipa::path(options, path = "/whep/{room}", tag = "video",
    params(("room" = String, Path, description = "room id")),
    responses((status = 204, description = "`Link` headers with the ICE servers, `Accept-Post: application/sdp`")))]
async fn whep_options(State(app): State<AppState>) -> Response {
    options(&app)
}

/// Ends this viewer's session.
#[utoipa::path(delete, path = "/whep/{room}/{session}", tag = "video",
    params(("room" = String, Path, description = "room id"),
        ("session" = String, Path, description = "session id, from `Location`")),
    responses((status = 200, description = "ended"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such session")))]
async fn whep_end(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> MediaResult {
    end(&app, SessionKind::Viewer, &room, &session).await
}

/// Trickle ICE and ICE restarts are not supported: always 405.
#[utoipa::path(patch, path = "/whep/{room}/{session}", tag = "video",
    params(("room" = String, Path, description = "room id"),
        ("session" = String, Path, description = "session id")),
    responses((status = 405, body = ErrorBody, description = "`method_not_allowed`, with `Allow: DELETE`")))]
async fn whep_patch() -> MediaResult {
    patch()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status table of docs/video.md, for the refusals the hub makes.
    #[test]
    fn media_refusals_map_to_their_statuses_codes_and_headers() {
        let cases = [
            (MediaError::BroadcastLive, 409, ErrorCode::Conflict, None),
            (
                MediaError::StreamOffline,
                409,
                ErrorCode::StreamOffline,
                None,
            ),
            (
                MediaError::RoomFull(4),
                503,
                ErrorCode::RoomFull,
                Some(header::RETRY_AFTER),
            ),
            (
                MediaError::NodeFull(9),
                503,
                ErrorCode::LimitReached,
                Some(header::RETRY_AFTER),
            ),
            (
                MediaError::NoPort,
                503,
                ErrorCode::LimitReached,
                Some(header::RETRY_AFTER),
            ),
            (
                MediaError::TooManySessions(1),
                429,
                ErrorCode::LimitReached,
                None,
            ),
            (
                MediaError::BadOffer("x".into()),
                400,
                ErrorCode::BadSdp,
                None,
            ),
            (
                MediaError::ShuttingDown,
                503,
                ErrorCode::ShuttingDown,
                Some(header::RETRY_AFTER),
            ),
            (
                MediaError::Internal("secret detail".into()),
                500,
                ErrorCode::Internal,
                None,
            ),
        ];
        for (error, status, code, extra) in cases {
            let r = Refusal::from(error.clone());
            assert_eq!(
                (r.error.status.as_u16(), r.error.code),
                (status, code),
                "{error:?}"
            );
            assert!(
                !r.error.message.contains("secret"),
                "internal details stay in the log"
            );
            match extra {
                Some(h) => assert!(r.headers.iter().any(|(n, _)| *n == h), "{error:?}"),
                None => assert!(r.headers.is_empty(), "{error:?}"),
            }
        }
        let r = Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "x");
        assert_eq!(r.headers, [(header::WWW_AUTHENTICATE, "Bearer")]);
    }
}
