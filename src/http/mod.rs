//! The HTTP surface: one file per resource, each with its own `router()`,
//! merged here with the cross-cutting layers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use problem::problem_response;

mod audits;
mod auth;
mod browser;
pub mod connections;
pub mod dataset_images;
pub mod datasets;
mod embed;
mod explain;
pub mod extract;
mod health;
mod jobs;
mod models;
pub mod multipart;
pub mod openapi;
mod page;
mod predict;
pub mod problem;
mod sse;
mod sweeps;
mod web;
pub mod worker_health;

/// Serves `state`'s routes on `listener` until `shutdown` fires, then lets
/// in-flight requests finish; within the connection limits of the
/// configuration (header-read timeout, connection and event-stream caps:
/// [`connections`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = connections::ConnectionLimits::of(&state.config);
    let metrics = state.metrics.clone();
    connections::serve(listener, router(state), limits, &metrics, shutdown).await
}

/// Builds the application: public probes, then everything else behind auth.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .merge(datasets::router(&state.config))
        .merge(audits::router())
        .merge(dataset_images::router())
        .merge(jobs::router(&state))
        .merge(sweeps::router(&state))
        .merge(models::router())
        .merge(predict::router(&state))
        .merge(explain::router(&state))
        .merge(embed::router(&state))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    // The API's document and its page are public, like the web page: they
    // describe the API and hold no data.
    let app = Router::new()
        .merge(health::router())
        .merge(web::router())
        .merge(openapi::router())
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            browser::guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), uri = %req.uri(), route)
        }));
    // Outermost, so a preflight is answered before anything else looks.
    match browser::cors_layer(&state.config) {
        Some(cors) => app.layer(cors).with_state(state),
        None => app.with_state(state),
    }
}

/// The 404 problem document of an unknown route.
async fn not_found() -> Response {
    problem_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route".into(),
        None,
    )
}

/// Counts requests and records latency. Every label comes from a closed
/// set, so no request can grow `/metrics`: the route is the matched
/// template (not the raw URI, which holds ids), or `unmatched`; the method
/// is a standard one or `other` (a client may send any token as a method);
/// the status is a status code.
async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = crate::metrics::method_label(req.method().as_str());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[method, &route, resp.status().as_str()])
        .inc();
    m.http_latency
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    resp
}
