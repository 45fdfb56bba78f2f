//! `/datasets/{id}/audit`: start an audit of a dataset (label errors,
//! duplicates and leakage, outliers, class balance), follow it, read its
//! findings as JSON or CSV. The work is `audit::Audits`'.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::extract::Json;
use crate::app::AppState;
use crate::audit::{AuditRequest, AuditView};
use crate::AppError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets/{id}/audit", get(get_audit).post(start_audit))
        .route("/datasets/{id}/audit.csv", get(audit_csv))
        .route("/datasets/{id}/audit/events", get(audit_events))
}

/// Audit a ready dataset in the background.
///
/// Answers 202 at once with the audit `running`; follow it with
/// `GET /datasets/{id}/audit` or `/datasets/{id}/audit/events`. The audit
/// computes the base model's features of every image (cached for the
/// next audit with that model), trains K-fold linear probes on them for
/// out-of-sample probabilities, and finds suspected label errors
/// (confident learning), exact and near duplicates and the groups that
/// cross splits (leakage), outliers, and classes too small.
#[utoipa::path(
    post, path = "/datasets/{id}/audit", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    request_body = AuditRequest,
    responses(
        (status = 202, description = "Started", body = AuditView),
        (status = 404, body = crate::error::Problem),
        (status = 409, description = "The dataset is not ready, or is being audited", body = crate::error::Problem),
        (status = 422, description = "An unknown base model, or a bad setting", body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn start_audit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<AuditRequest>,
) -> Result<Response, AppError> {
    let view = state.audits.start(&id, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

/// The dataset's newest audit: its status, progress while running, and
/// its findings once done (each image named by its path in the dataset).
#[utoipa::path(
    get, path = "/datasets/{id}/audit", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses((status = 200, body = AuditView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = []))
)]
pub async fn get_audit(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AuditView>, AppError> {
    Ok(Json(state.audits.latest(&id).await?))
}

/// The newest audit's findings per image as CSV: path, split, given and
/// suggested label, label quality, label issue, outlier score, duplicate
/// groups, leakage.
#[utoipa::path(
    get, path = "/datasets/{id}/audit.csv", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 404, body = crate::error::Problem),
        (status = 409, description = "The audit has not succeeded", body = crate::error::Problem)),
    security(("bearer" = []))
)]
pub async fn audit_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let csv = state.audits.latest_csv(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
}

/// Follow the newest audit live (Server-Sent Events): a `snapshot`, then
/// `progress` as it goes, and one `status` when it has succeeded or
/// failed, which ends the stream. Each event's data is the audit, as
/// `GET /datasets/{id}/audit`.
#[utoipa::path(
    get, path = "/datasets/{id}/audit/events", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = crate::error::Problem)),
    security(("bearer" = []))
)]
pub async fn audit_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    slot: super::connections::EventStreamSlot,
) -> Result<super::sse::EventStream, AppError> {
    let first = state.audits.latest(&id).await?;
    let mut live = state.audits.subscribe(first.dataset_id);
    let done = first.is_settled();
    let follow = async_stream::stream! {
        if done {
            return;
        }
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next: Option<AuditView> = match live.as_mut() {
                Some(rx) => tokio::select! {
                    changed = rx.changed() => match changed {
                        Ok(()) => Some(rx.borrow_and_update().clone()),
                        Err(_) => { live = None; None }
                    },
                    _ = poll.tick() => None,
                },
                None => { poll.tick().await; None }
            };
            let view = match next {
                Some(v) => v,
                None => match state.audits.latest(&id).await {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            if view.is_settled() {
                yield ("status", view);
                return;
            }
            yield ("progress", view);
        }
    };
    Ok(super::sse::snapshot_then_follow(slot, &first, follow))
}
