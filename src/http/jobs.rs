//! `/jobs`: submit, list, inspect, follow and cancel fine-tuning jobs.

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
use crate::jobs::service;
use crate::jobs::view::JobView;
use crate::store::jobs::{self as store, JobStatus};
use crate::train::config::JobConfig;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/jobs",
            post(create_job)
                .layer(BodyLimit::upload(&state.config).layer())
                .get(list_jobs),
        )
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/cancel", post(cancel_job))
}

/// `POST /jobs` as JSON, naming a dataset uploaded before.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    pub dataset_id: String,
    pub config: JobConfig,
}

/// Queue a fine-tuning job.
///
/// Either `multipart/form-data` with a `dataset` part (zip, tar, tar.gz or tar.bz2) and a
/// `config` part (JSON), or JSON `{"dataset_id": …, "config": {…}}`. An
/// `Idempotency-Key` header makes retries safe: the same key returns the
/// job created the first time.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    request_body(content = CreateJob, description = "JSON, or multipart with `dataset` and `config` parts"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, body = JobView, description = "Queued (or the job an earlier request with the same key queued)"),
        (status = 400, body = crate::error::Problem), (status = 413, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> AppResult<Response> {
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_string)
                .ok_or_else(|| {
                    AppError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1-255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (dataset_id, config) = if content_type.starts_with("multipart/form-data") {
        let multipart = BodyLimit::upload(&state.config)
            .multipart(req, &state)
            .await?;
        read_multipart(&state, multipart).await?
    } else {
        let Json(body) = Json::<CreateJob>::from_request(req, &state).await?;
        body.config
            .validate()
            .map_err(|e| AppError::unprocessable("invalid_config", e))?;
        (body.dataset_id, body.config)
    };
    let (job, created) = service::submit(&state.jobs, &dataset_id, config, key.as_deref()).await?;
    let view = view_of(&state, job).await?;
    let mut resp = (StatusCode::ACCEPTED, axum::Json(&view)).into_response();
    let headers = resp.headers_mut();
    if let Ok(loc) = format!("/jobs/{}", view.id).parse() {
        headers.insert(header::LOCATION, loc);
    }
    if !created {
        headers.insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// Reads `config` (and `dataset` or `dataset_id`) parts; the dataset is
/// stored (content-addressed) as it streams in.
async fn read_multipart(
    state: &AppState,
    mut multipart: Multipart,
) -> AppResult<(String, JobConfig)> {
    let mut config = None;
    let mut dataset_id = None;
    let limit = BodyLimit::upload(&state.config);
    while let Some(field) = limit.next_field(&mut multipart).await? {
        match field.name().unwrap_or("") {
            "config" => {
                config = Some(service::parse_config(&limit.text(field).await?)?);
            }
            "dataset" => {
                // Validated before the job is queued, as before: a bad
                // archive is refused here with its own status and code.
                let dataset = state.datasets.ingest_and_wait(limit.chunks(field)).await?;
                dataset_id = Some(dataset.id.to_string());
            }
            "dataset_id" => {
                dataset_id = Some(limit.text(field).await?);
            }
            other => {
                return Err(AppError::bad_request(
                    "unknown_part",
                    format!("unexpected multipart part `{other}`; expected `dataset` and `config`"),
                ))
            }
        }
    }
    let config = config.ok_or_else(|| {
        AppError::bad_request("missing_config", "the `config` part (JSON) is missing")
    })?;
    let dataset_id = dataset_id.ok_or_else(|| {
        AppError::bad_request(
            "missing_dataset",
            "a `dataset` part (zip, tar, tar.gz or tar.bz2) or a `dataset_id` part is required",
        )
    })?;
    Ok((dataset_id, config))
}

async fn view_of(state: &AppState, job: store::JobRow) -> AppResult<JobView> {
    let summary = match uuid::Uuid::parse_str(&job.dataset_id) {
        Ok(id) => crate::datasets::record::get(&state.db, id)
            .await?
            .and_then(|d| d.summary)
            .and_then(|s| serde_json::to_value(&s).ok()),
        Err(_) => None,
    };
    Ok(JobView::new(&job, summary))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub before: Option<String>,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListJobs),
    responses((status = 200, body = Vec<JobView>)), security(("bearer" = [])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<ListJobs>,
) -> AppResult<Response> {
    let limit = page::limit(q.limit)?;
    let rows = store::list(&state.db, q.status, q.before.as_deref(), limit).await?;
    let last_id = rows.last().map(|r| r.id.clone());
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        views.push(view_of(&state, row).await?);
    }
    Ok(page::respond(views, "/jobs", limit, last_id))
}

async fn find(state: &AppState, id: &str) -> AppResult<store::JobRow> {
    store::get(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no job `{id}`")))
}

/// A job: status, progress, per-epoch metrics, dataset summary, model.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    responses((status = 200, body = JobView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<JobView>> {
    let row = find(&state, &id).await?;
    Ok(Json(view_of(&state, row).await?))
}

/// Cancel a job: a queued one at once; a running one stops at the next
/// step and keeps its best epoch so far as a model.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    responses((status = 202, body = JobView), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem, description = "The job already ended")),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let before = find(&state, &id).await?;
    if before.status().is_terminal() {
        return Err(AppError::conflict(
            "job_finished",
            format!("job `{id}` already ended ({})", before.status),
        ));
    }
    let row = store::request_cancel(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no job `{id}`")))?;
    if row.status() == JobStatus::Cancelled {
        state.jobs.hub.publish(
            &id,
            crate::jobs::events::JobEvent {
                kind: "status",
                data: serde_json::json!({"id": id, "status": "cancelled"}),
                terminal: true,
            },
        );
    }
    let view = view_of(&state, row).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

/// Follow a job live (Server-Sent Events): a `snapshot` first, then
/// `status`, `progress` (throttled) and `epoch` events; the stream ends
/// with the job.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs",
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = crate::error::Problem),
        (status = 503, body = crate::error::Problem, description = "Too many event streams open (`too_many_streams`)")),
    security(("bearer" = [])))]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    slot: EventStreamSlot,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Only a job that exists gets a channel (an unknown id must leave
    // nothing behind), and the snapshot is read after subscribing so that
    // no event falls in between. The subscription frees the channel when
    // the stream ends or its client leaves.
    find(&state, &id).await?;
    let mut rx = state.jobs.hub.subscribe(&id);
    let row = find(&state, &id).await?;
    let first = view_of(&state, row).await?;
    let stream = async_stream::stream! {
        let _slot = slot;
        let done = first.status.is_terminal();
        yield Ok(sse("snapshot", &serde_json::to_value(&first).unwrap_or_default()));
        if done {
            return;
        }
        // Another node (or a missed broadcast) may end the job: check the
        // database now and then as well.
        let mut poll = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(ev) => {
                        yield Ok(sse(ev.kind, &ev.data));
                        if ev.terminal { return; }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        rx = state.jobs.hub.subscribe(&id);
                    }
                },
                _ = poll.tick() => {
                    if let Ok(Some(row)) = store::get(&state.db, &id).await {
                        if row.status().is_terminal() {
                            if let Ok(view) = view_of(&state, row).await {
                                yield Ok(sse("status", &serde_json::to_value(&view).unwrap_or_default()));
                            }
                            return;
                        }
                    }
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse(kind: &str, data: &serde_json::Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}
