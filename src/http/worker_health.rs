//! The only HTTP of a `vitrine worker` node, on `--health-listen`: the
//! probes of an orchestrator and Prometheus metrics. No authentication (as
//! on API nodes), no other route.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::{database_not_ready, devices_down, healthz, render_metrics, Health};
use super::problem::problem_response;
use crate::app::WorkerNode;

/// `/healthz`, `/readyz` and `/metrics` of a worker node; anything else is
/// a 404 problem document.
pub fn router(node: WorkerNode) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(super::not_found)
        .with_state(node)
}

/// Serves the probes on `listener` until `shutdown`, within the same
/// connection limits as the API ([`super::connections`]).
pub async fn serve(
    listener: TcpListener,
    node: WorkerNode,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = super::connections::ConnectionLimits::of(&node.config);
    let metrics = node.metrics.clone();
    super::connections::serve(listener, router(node), limits, &metrics, shutdown).await
}

/// Ready to train: the database answers with every migration applied, and
/// at least one of the node's devices is in service (a node whose devices
/// all failed claims nothing until it restarts).
async fn readyz(State(node): State<WorkerNode>) -> Response {
    if let Some(not_ready) = database_not_ready(&node.db).await {
        return not_ready;
    }
    if node.has_usable_device() {
        return axum::Json(Health { status: "ok" }).into_response();
    }
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "device_unavailable",
        devices_down(&node.devices).unwrap_or_else(|| "the node has no device to train on".into()),
        None,
    )
}

async fn metrics(State(node): State<WorkerNode>) -> Response {
    render_metrics(&node.db, &node.metrics).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::app::WorkerNode;
    use crate::config::ServeConfig;

    async fn get(node: &WorkerNode, path: &str) -> (u16, String) {
        let resp = super::router(node.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Ready while a device can train; a fatal error on its only device
    /// makes it unready (named), while `/healthz` still answers; the API's
    /// routes are not there.
    #[tokio::test]
    async fn readyz_needs_a_usable_device_and_nothing_but_probes_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServeConfig::for_data_dir(dir.path());
        config.devices = vec!["cpu".into()];
        let node = WorkerNode::build(config).await.unwrap();
        assert_eq!(get(&node, "/readyz").await.0, 200);
        let (_, metrics) = get(&node, "/metrics").await;
        assert!(
            metrics.contains("vitrine_device_up{device=\"cpu\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("vitrine_jobs{status=\"queued\"} 0"),
            "{metrics}"
        );
        let (status, body) = get(&node, "/jobs").await;
        assert_eq!(status, 404, "{body}");

        node.devices
            .report_fatal("cpu", "CUDA error: device-side assert triggered");
        let (status, body) = get(&node, "/readyz").await;
        assert_eq!(status, 503);
        let problem: crate::error::Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(problem.code, "device_unavailable");
        assert!(
            problem.detail.contains("cpu (CUDA error"),
            "{}",
            problem.detail
        );
        assert_eq!(get(&node, "/healthz").await.0, 200);
    }
}
