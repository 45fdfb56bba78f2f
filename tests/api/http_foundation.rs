//! The service skeleton through its router: probes, errors, auth, OpenAPI.

use crate::common::{body_bytes, body_json, TestApp};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = TestApp::new().await;
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_json(resp).await["status"], "ok");
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = TestApp::new().await;
    app.state.db.close().await;
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = body_json(resp).await;
    assert_eq!(problem["code"], "not_ready");
}

#[tokio::test]
async fn unknown_routes_are_problem_documents() {
    let app = TestApp::new().await;
    let resp = app.get("/no/such/thing").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let problem = body_json(resp).await;
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["type"], "urn:vitrine:problem:not_found");
}

#[tokio::test]
async fn token_guards_everything_but_the_probes_and_the_docs() {
    let app = TestApp::with_config(|c| c.api_token = Some("s3cret".into())).await;
    // The page's footer links work in a browser, which sends no token.
    for open in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/docs",
        "/openapi.json",
    ] {
        assert_eq!(app.get(open).await.status(), StatusCode::OK, "{open}");
    }
    let resp = app.get("/datasets").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(body_json(resp).await["code"], "unauthorized");

    for wrong in [
        "Bearer nope",
        "Bearer s3cret2",
        "Bearer ",
        "s3cret",
        "Basic s3cret",
    ] {
        let req = Request::get("/datasets")
            .header(header::AUTHORIZATION, wrong)
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.send(req).await.status(),
            StatusCode::UNAUTHORIZED,
            "{wrong}"
        );
    }
    // RFC 7235: the scheme is case-insensitive.
    for right in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
        let req = Request::get("/datasets")
            .header(header::AUTHORIZATION, right)
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(req).await.status(), StatusCode::OK, "{right}");
    }
}

#[tokio::test]
async fn without_a_token_nothing_is_guarded() {
    let app = TestApp::new().await;
    assert_eq!(app.get("/openapi.json").await.status(), StatusCode::OK);
    let resp = app.get("/docs").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = String::from_utf8(body_bytes(resp).await).unwrap();
    assert!(html.contains("openapi.json"));
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::new().await;
    app.get("/healthz").await;
    app.get("/healthz").await;
    let text = String::from_utf8(body_bytes(app.get("/metrics").await).await).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("vitrine_http_requests_total")
                && l.contains("route=\"/healthz\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no healthz counter in:\n{text}"));
    assert!(line.ends_with(" 2"), "{line}");
    assert!(text.contains("vitrine_http_request_duration_seconds_bucket"));
}

/// `openapi/openapi.json` is generated from the code: regenerate it with
/// `make openapi` when this fails.
#[tokio::test]
async fn committed_openapi_document_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json exists");
    let generated = vitrine::http::openapi::document_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `make openapi`"
    );
    let served = body_json(TestApp::new().await.get("/openapi.json").await).await;
    let parsed: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(served, parsed);
    assert!(parsed["paths"]["/healthz"].is_object());
}

/// A real server on port 0 stops when asked and closes its listener.
#[tokio::test]
async fn real_server_serves_and_shuts_down_gracefully() {
    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(vitrine::server::serve_on(
        listener,
        app.state.clone(),
        token.clone(),
    ));
    let resp = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    token.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops within the grace period")
        .unwrap()
        .unwrap();
    assert!(reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err());
}
