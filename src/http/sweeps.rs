//! `/sweeps`: submit, list, inspect, follow and cancel hyper-parameter
//! sweeps. The logic is in `crate::sweeps`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::connections::EventStreamSlot;
use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use super::page;
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::store::sweeps as store;
use crate::sweeps::service;
use crate::sweeps::spec::SweepSpec;
use crate::sweeps::view::{self, SweepView};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/sweeps",
            post(create_sweep)
                .layer(BodyLimit::upload(&state.config).layer())
                .get(list_sweeps),
        )
        .route("/sweeps/{id}", get(get_sweep))
        .route("/sweeps/{id}/events", get(sweep_events))
        .route("/sweeps/{id}/cancel", post(cancel_sweep))
}

/// `POST /sweeps` as JSON, naming a dataset uploaded before.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSweep {
    pub dataset_id: String,
    /// Checked by the service, so that its errors name the spec's fields.
    #[schema(value_type = SweepSpec)]
    pub spec: serde_json::Value,
}

/// Start a hyper-parameter sweep.
///
/// Either `multipart/form-data` with a `dataset` part (an archive, as for
/// `POST /jobs`) or a `dataset_id` part, and a `spec` part (JSON), or JSON
/// `{"dataset_id": …, "spec": {…}}`. Every candidate becomes an ordinary
/// job (in `GET /jobs`, with its `sweep_id`), checked as `POST /jobs`
/// checks one.
#[utoipa::path(post, path = "/sweeps", tag = "sweeps",
    request_body(content = CreateSweep, description = "JSON, or multipart with `dataset` (or `dataset_id`) and `spec` parts"),
    responses(
        (status = 202, body = SweepView, description = "Queued: the sweep and its candidates"),
        (status = 400, body = crate::error::Problem), (status = 413, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem, description = "A bad spec; `detail` names the field")),
    security(("bearer" = [])))]
pub async fn create_sweep(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> AppResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (dataset_id, spec) = if content_type.starts_with("multipart/form-data") {
        let multipart = BodyLimit::upload(&state.config)
            .multipart(req, &state)
            .await?;
        read_multipart(&state, multipart).await?
    } else {
        let Json(body) = Json::<CreateSweep>::from_request(req, &state).await?;
        (body.dataset_id, body.spec)
    };
    let (sweep, _) = service::submit(
        &state.jobs,
        &dataset_id,
        spec,
        state.config.max_sweep_candidates,
    )
    .await?;
    let view = view::view(&state.db, &sweep).await?;
    let mut resp = (StatusCode::ACCEPTED, axum::Json(&view)).into_response();
    if let Ok(loc) = format!("/sweeps/{}", view.id).parse() {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// Reads `spec` (and `dataset` or `dataset_id`) parts.
async fn read_multipart(
    state: &AppState,
    mut multipart: Multipart,
) -> AppResult<(String, serde_json::Value)> {
    let mut spec = None;
    let mut dataset_id = None;
    let limit = BodyLimit::upload(&state.config);
    while let Some(field) = limit.next_field(&mut multipart).await? {
        match field.name().unwrap_or("") {
            "spec" => {
                let text = limit.text(field).await?;
                spec = Some(serde_json::from_str(&text).map_err(|e| {
                    AppError::unprocessable("invalid_spec", format!("the `spec` part: {e}"))
                })?);
            }
            "dataset" => {
                // Validated before the job is queued, as before: a bad
                // archive is refused here with its own status and code.
                let dataset = state.datasets.ingest_and_wait(limit.chunks(field)).await?;
                dataset_id = Some(dataset.id.to_string());
            }
            "dataset_id" => dataset_id = Some(limit.text(field).await?),
            other => {
                return Err(AppError::bad_request(
                    "unknown_part",
                    format!("unexpected multipart part `{other}`; expected `dataset` and `spec`"),
                ))
            }
        }
    }
    let spec = spec.ok_or_else(|| {
        AppError::bad_request("missing_spec", "the `spec` part (JSON) is missing")
    })?;
    let dataset_id = dataset_id.ok_or_else(|| {
        AppError::bad_request(
            "missing_dataset",
            "a `dataset` part (zip, tar, tar.gz or tar.bz2) or a `dataset_id` part is required",
        )
    })?;
    Ok((dataset_id, spec))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListSweeps {
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub before: Option<String>,
}

/// List sweeps, newest first, each with its leaderboard.
#[utoipa::path(get, path = "/sweeps", tag = "sweeps", params(ListSweeps),
    responses((status = 200, body = Vec<SweepView>)), security(("bearer" = [])))]
pub async fn list_sweeps(
    State(state): State<AppState>,
    Query(q): Query<ListSweeps>,
) -> AppResult<Response> {
    let limit = page::limit(q.limit)?;
    let rows = store::list(&state.db, q.before.as_deref(), limit).await?;
    let last_id = rows.last().map(|r| r.id.clone());
    let mut views = Vec::with_capacity(rows.len());
    for row in &rows {
        views.push(view::view(&state.db, row).await?);
    }
    Ok(page::respond(views, "/sweeps", limit, last_id))
}

async fn find(state: &AppState, id: &str) -> AppResult<store::SweepRow> {
    store::get(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no sweep `{id}`")))
}

/// A sweep: status, winner, and the leaderboard (one row per candidate,
/// best first).
#[utoipa::path(get, path = "/sweeps/{id}", tag = "sweeps",
    responses((status = 200, body = SweepView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_sweep(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<SweepView>> {
    let row = find(&state, &id).await?;
    Ok(Json(view::view(&state.db, &row).await?))
}

/// Cancel a sweep: every unfinished candidate stops (queued ones at once,
/// running ones at their next step, keeping their best epoch as a model);
/// the sweep ends `cancelled` and promotes nothing.
#[utoipa::path(post, path = "/sweeps/{id}/cancel", tag = "sweeps",
    responses((status = 202, body = SweepView), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem, description = "The sweep already ended")),
    security(("bearer" = [])))]
pub async fn cancel_sweep(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let row = service::cancel(&state.jobs, &id).await?;
    let view = view::view(&state.db, &row).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

/// Follow a sweep live (Server-Sent Events): a `snapshot` first, then an
/// `update` (the whole sweep, leaderboard included) whenever it changes;
/// the stream ends with the sweep.
#[utoipa::path(get, path = "/sweeps/{id}/events", tag = "sweeps",
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = crate::error::Problem),
        (status = 503, body = crate::error::Problem, description = "Too many event streams open (`too_many_streams`)")),
    security(("bearer" = [])))]
pub async fn sweep_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    slot: EventStreamSlot,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let row = find(&state, &id).await?;
    let first = view::view(&state.db, &row).await?;
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut last = serde_json::to_value(&first).unwrap_or_default();
        yield Ok(sse("snapshot", &last));
        if first.status.is_terminal() {
            return;
        }
        // The sweep's state is the database's (the supervisor and the
        // workers of any node write it): read it, and send what changed.
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            poll.tick().await;
            let Ok(Some(row)) = store::get(&state.db, &id).await else { continue };
            let Ok(now) = view::view(&state.db, &row).await else { continue };
            let mut value = serde_json::to_value(&now).unwrap_or_default();
            // Running candidates' wall time changes every tick; it alone is no news.
            let unchanged = strip_clock(&mut value.clone()) == strip_clock(&mut last.clone());
            if !unchanged {
                yield Ok(sse("update", &value));
                last = std::mem::take(&mut value);
            }
            if now.status.is_terminal() {
                return;
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The view without the fields that move with the clock.
fn strip_clock(v: &mut serde_json::Value) -> &serde_json::Value {
    if let Some(rows) = v["leaderboard"].as_array_mut() {
        for r in rows {
            if let Some(o) = r.as_object_mut() {
                o.remove("wall_seconds");
            }
        }
    }
    v
}

fn sse(kind: &str, data: &serde_json::Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}
