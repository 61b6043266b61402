//! `/api/v1/rooms/{id}/recording`: start, stop and download a recording of
//! a room's client actions (docs/recording.md). The recording itself is in
//! `crate::recording::recorder`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use tokio::io::{AsyncReadExt, Take};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::AdminRoom;
use super::{ApiError, ApiResult, AppState, ErrorBody};
use crate::recording::recorder::{RecordingStarted, RecordingSummary, Recordings, StartError};
use flashcast_wire::ErrorCode;

/// The media type of a recording: JSON lines.
pub const NDJSON: &str = "application/x-ndjson";

/// Size of one chunk of a download.
const CHUNK: usize = 64 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_recording, stop_recording, download_recording))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "recording");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "could not access the recording",
    )
}

/// Runs `f` on the node's recordings on a blocking thread: they open,
/// flush and close files.
async fn off_runtime<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&Recordings) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let recordings = app.recordings.clone();
    tokio::task::spawn_blocking(move || f(&recordings))
        .await
        .map_err(internal)
}

fn no_recording() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "this room has no recording",
    )
}

/// Starts recording the room's client actions to
/// `<data_dir>/recordings/<room>-<started_unix_ms>.jsonl`.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/recording", tag = "recording",
    params(("id" = String, Path, description = "room id")),
    responses(
        (status = 201, body = RecordingStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already recording (`conflict`), or the show has ended (`room_closed`)"),
        (status = 500, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`max_recordings` rooms are recording")),
    security(("admin_key" = [])))]
async fn start_recording(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    let started = off_runtime(&app, move |r| r.start(&room)).await?;
    match started {
        Ok(started) => Ok((StatusCode::CREATED, Json(started)).into_response()),
        Err(StartError::AlreadyRecording) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "the room is already recording",
        )),
        Err(StartError::RoomClosed) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::RoomClosed,
            "the show has ended",
        )),
        Err(StartError::LimitReached) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitReached,
            "max_recordings rooms are already recording on this node",
        )),
        Err(StartError::Io(e)) => Err(internal(e)),
    }
}

/// Stops the room's recording and answers what it wrote. If it already
/// stopped by itself (a limit, the show's end), answers that recording,
/// with `stopped_by` saying why.
#[utoipa::path(delete, path = "/api/v1/rooms/{id}/recording", tag = "recording",
    params(("id" = String, Path, description = "room id")),
    responses(
        (status = 200, body = RecordingSummary),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such room, or it has not recorded since the server started")),
    security(("admin_key" = [])))]
async fn stop_recording(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    let id = room.id().clone();
    let summary = off_runtime(&app, move |r| r.stop(&id)).await?;
    match summary {
        Some(summary) => Ok(Json(summary).into_response()),
        None => Err(no_recording()),
    }
}

/// Downloads the room's latest recording (JSON lines). While the recording
/// runs, what has been written so far (whole lines; `X-Flashcast-Recording:
/// active`).
#[utoipa::path(get, path = "/api/v1/rooms/{id}/recording", tag = "recording",
    params(("id" = String, Path, description = "room id")),
    responses(
        (status = 200, content_type = "application/x-ndjson", body = String,
            description = "the recording: a header line, then one line per client action"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such room, or no recording of it"),
        (status = 500, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn download_recording(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    let id = room.id().clone();
    let latest = off_runtime(&app, move |r| r.latest(&id))
        .await?
        .map_err(internal)?;
    let Some(download) = latest else {
        return Err(no_recording());
    };
    let file = tokio::fs::File::open(&download.path)
        .await
        .map_err(internal)?;
    let body = Body::from_stream(futures_util::stream::try_unfold(
        file.take(download.len),
        read_chunk,
    ));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(download.len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", download.file)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-flashcast-recording",
        HeaderValue::from_static(if download.active { "active" } else { "stopped" }),
    );
    Ok(resp)
}

async fn read_chunk(
    mut file: Take<tokio::fs::File>,
) -> std::io::Result<Option<(Bytes, Take<tokio::fs::File>)>> {
    let mut buf = vec![0u8; CHUNK];
    let n = file.read(&mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((Bytes::from(buf), file)))
}
