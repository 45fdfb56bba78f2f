//! Probes for orchestrators and Prometheus: never behind auth.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::problem::problem_response;
use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = crate::error::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match crate::db::is_ready(&state.db).await {
        Ok(true) => axum::Json(Health { status: "ok" }).into_response(),
        Ok(false) => problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "database migrations are not applied".into(),
            None,
        ),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness check failed");
            problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "database unreachable".into(),
                None,
            )
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(counts) = crate::store::jobs::count_by_status(&state.db).await {
        for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            state
                .metrics
                .jobs_by_status
                .with_label_values(&[status])
                .set(n);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
