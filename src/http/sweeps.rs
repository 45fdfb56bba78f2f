//! `/sweeps`: submit, list, inspect, follow and cancel hyper-parameter
//! sweeps. The logic is in `crate::sweeps`.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::connections::EventStreamSlot;
use super::extract::{Json, Query};
use super::multipart::{read_submission, BodyLimit, Submission};
use super::page;
use super::sse::{self, EventStream};
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::sweeps::service;
use crate::sweeps::spec::SweepSpec;
use crate::sweeps::view::SweepView;

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

impl Submission for CreateSweep {
    type Document = serde_json::Value;
    const PART: &'static str = "spec";
    const MISSING: &'static str = "missing_spec";

    fn parse_part(text: &str) -> AppResult<serde_json::Value> {
        serde_json::from_str(text)
            .map_err(|e| AppError::unprocessable("invalid_spec", format!("the `spec` part: {e}")))
    }

    fn into_parts(self) -> AppResult<(String, serde_json::Value)> {
        Ok((self.dataset_id, self.spec))
    }
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
pub async fn create_sweep(State(state): State<AppState>, req: Request) -> AppResult<Response> {
    let (dataset_id, spec) = read_submission::<CreateSweep>(&state, req).await?;
    let max_candidates = state.config.max_sweep_candidates;
    let view = service::submit(&state.jobs, &dataset_id, spec, max_candidates).await?;
    let mut resp = (StatusCode::ACCEPTED, axum::Json(&view)).into_response();
    if let Ok(loc) = format!("/sweeps/{}", view.id).parse() {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
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
    let views = service::list(&state.db, q.before.as_deref(), limit).await?;
    let last_id = views.last().map(|v| v.id.clone());
    Ok(page::respond(views, "/sweeps", limit, last_id))
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
    Ok(Json(service::get(&state.db, &id).await?))
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
    let view = service::cancel(&state.jobs, &id).await?;
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
) -> AppResult<EventStream> {
    let (first, updates) = service::follow(&state.db, &id).await?;
    Ok(sse::snapshot_then_follow(slot, &first, updates))
}
