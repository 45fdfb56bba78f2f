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

/// The database answers, every migration is applied, and no device is out
/// of service after a fatal error (only a restart brings it back).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health),
        (status = 503, body = crate::error::Problem, description = "Database not ready, or a device out of service (named)")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(not_ready) = database_not_ready(&state.db).await {
        return not_ready;
    }
    match devices_down(&state.devices) {
        None => axum::Json(Health { status: "ok" }).into_response(),
        Some(detail) => problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "device_unavailable",
            detail,
            None,
        ),
    }
}

/// The 503 problem document when the database does not answer or lacks a
/// migration, `None` when it is ready.
pub(super) async fn database_not_ready(db: &crate::db::Db) -> Option<Response> {
    let detail = match crate::db::is_ready(db).await {
        Ok(true) => return None,
        Ok(false) => "database migrations are not applied",
        Err(e) => {
            tracing::warn!(error = ?e, "readiness check failed");
            "database unreachable"
        }
    };
    Some(problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        detail.into(),
        None,
    ))
}

/// What `/readyz` says about devices out of service, if any.
pub(super) fn devices_down(health: &crate::devices::DeviceHealth) -> Option<String> {
    let down = health.down();
    if down.is_empty() {
        return None;
    }
    let each: Vec<String> = down.iter().map(|(d, why)| format!("{d} ({why})")).collect();
    Some(format!(
        "out of service after a fatal device error, until the process restarts: {}",
        each.join("; ")
    ))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    render_metrics(&state.db, &state.metrics).await
}

/// The metrics in the text exposition format, with the jobs per status read
/// from the database first.
pub(super) async fn render_metrics(
    db: &crate::db::Db,
    metrics: &crate::metrics::Metrics,
) -> Response {
    if let Ok(counts) = crate::store::jobs::count_by_status(db).await {
        for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            metrics.jobs_by_status.with_label_values(&[status]).set(n);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::app::AppState;
    use crate::config::ServeConfig;

    async fn get(state: &AppState, path: &str) -> (u16, String) {
        let resp = super::super::router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A fatal error on a device turns `/readyz` into a 503 problem
    /// document naming it, and `/metrics` shows it down and counted.
    #[tokio::test]
    async fn readyz_names_a_device_out_of_service_and_metrics_count_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServeConfig::for_data_dir(dir.path());
        config.devices = vec!["cpu".into()];
        let state = AppState::build(config).await.unwrap();
        assert_eq!(get(&state, "/readyz").await.0, 200);
        let (_, metrics) = get(&state, "/metrics").await;
        assert!(
            metrics.contains("vitrine_device_up{device=\"cpu\"} 1"),
            "{metrics}"
        );

        state.devices.report_fatal(
            "cpu",
            "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported",
        );
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, 503);
        let problem: crate::error::Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(problem.code, "device_unavailable");
        assert!(
            problem
                .detail
                .contains("cpu (CUDA error: device-side assert triggered)"),
            "{}",
            problem.detail
        );
        assert_eq!(
            get(&state, "/healthz").await.0,
            200,
            "the process itself is alive"
        );
        let (_, metrics) = get(&state, "/metrics").await;
        assert!(
            metrics.contains("vitrine_device_up{device=\"cpu\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("vitrine_device_fatal_errors_total{device=\"cpu\"} 1"),
            "{metrics}"
        );
    }
}
