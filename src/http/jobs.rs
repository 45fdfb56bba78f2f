//! `/jobs`: submit, list, inspect, follow and cancel fine-tuning jobs.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::connections::EventStreamSlot;
use super::extract::{Json, Query};
use super::multipart::{read_submission, BodyLimit, Submission};
use super::page;
use super::sse::{self, EventStream};
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::jobs::service;
use crate::jobs::view::JobView;
use crate::store::jobs::JobStatus;
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

impl Submission for CreateJob {
    type Document = JobConfig;
    const PART: &'static str = "config";
    const MISSING: &'static str = "missing_config";

    fn parse_part(text: &str) -> AppResult<JobConfig> {
        service::parse_config(text)
    }

    fn into_parts(self) -> AppResult<(String, JobConfig)> {
        self.config
            .validate()
            .map_err(|e| AppError::unprocessable("invalid_config", e))?;
        Ok((self.dataset_id, self.config))
    }
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
    let (dataset_id, config) = read_submission::<CreateJob>(&state, req).await?;
    let (view, created) = service::submit(&state.jobs, &dataset_id, config, key.as_deref()).await?;
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
    let views = service::list(&state.db, q.status, q.before.as_deref(), limit).await?;
    let last_id = views.last().map(|v| v.id.clone());
    Ok(page::respond(views, "/jobs", limit, last_id))
}

/// A job: status, progress, per-epoch metrics, dataset summary, model.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    responses((status = 200, body = JobView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<JobView>> {
    Ok(Json(service::get(&state.db, &id).await?))
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
    let view = service::cancel(&state.jobs, &id).await?;
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
) -> AppResult<EventStream> {
    let (first, events) = service::follow(&state.jobs, &id).await?;
    // As a JSON value, as before: its keys sorted.
    let snapshot = serde_json::to_value(&first).unwrap_or_default();
    Ok(sse::snapshot_then_follow(
        slot,
        &snapshot,
        events.map(|ev| (ev.kind, ev.data)),
    ))
}
