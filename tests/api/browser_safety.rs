//! Safe defaults for browsers (issue 26, finding 9): without a token (the
//! default) another site's page must neither read answers (no CORS unless
//! `--cors-origin`), nor reach the server under a name it controls (DNS
//! rebinding: the `Host` allow-list), nor change state with a form or a
//! `no-cors` fetch (cross-site refusal). And `/docs` runs only its own,
//! embedded script.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};

use crate::common::{body_bytes, body_json, upload_request, TestApp};

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::empty()).unwrap()
}

const EVIL: &str = "https://evil.example";

#[tokio::test]
async fn no_cors_by_default() {
    let app = TestApp::new().await;
    let resp = app
        .send(request(Method::GET, "/datasets", &[("origin", EVIL)]))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        !resp
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "a page of another origin could read the answer"
    );
    // A preflight for a DELETE gets no grant, so the browser never sends it.
    let preflight = app
        .send(request(
            Method::OPTIONS,
            "/models/x",
            &[
                ("origin", EVIL),
                ("access-control-request-method", "DELETE"),
            ],
        ))
        .await;
    assert!(!preflight
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn cors_only_for_the_named_origins() {
    let app =
        TestApp::with_config(|c| c.cors_origin = vec!["https://app.example.com".into()]).await;
    let resp = app
        .send(request(
            Method::OPTIONS,
            "/models/x",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
                ("access-control-request-headers", "authorization"),
            ],
        ))
        .await;
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    let resp = app
        .send(request(Method::GET, "/datasets", &[("origin", EVIL)]))
        .await;
    assert!(!resp
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    // The named origin may change state without a token; others may not.
    let listed = app
        .send(request(
            Method::DELETE,
            "/models/no-such-model",
            &[
                ("origin", "https://app.example.com"),
                ("sec-fetch-site", "cross-site"),
            ],
        ))
        .await;
    assert_eq!(listed.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_foreign_host_is_refused_but_addresses_and_localhost_are_not() {
    let app = TestApp::with_config(|c| c.allowed_hosts = vec!["ml.example.com".into()]).await;
    let resp = app
        .send(request(
            Method::GET,
            "/datasets",
            &[("host", "rebind.evil.example:8080")],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let problem = body_json(resp).await;
    assert_eq!(problem["code"], "host_not_allowed");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("rebind.evil.example"));
    for host in [
        "127.0.0.1:8080",
        "[::1]:8080",
        "10.0.0.7",
        "localhost:8080",
        "ML.example.com:443",
    ] {
        let resp = app
            .send(request(Method::GET, "/datasets", &[("host", host)]))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
    // Probes answer whatever name they are sent to.
    let resp = app
        .send(request(
            Method::GET,
            "/healthz",
            &[("host", "rebind.evil.example")],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_sites_page_cannot_change_state() {
    let app = TestApp::new().await;
    // A form posted to /datasets from another site: refused, nothing stored.
    let mut form = upload_request("dataset", b"PK\x05\x06not really a zip");
    form.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    form.headers_mut()
        .insert(header::ORIGIN, EVIL.parse().unwrap());
    let resp = app.send(form).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(resp).await["code"], "cross_site_request");
    let list = body_json(app.get("/datasets").await).await;
    assert_eq!(list["datasets"].as_array().map(Vec::len), Some(0), "{list}");

    // The DELETE a page once sent: refused before any lookup.
    let resp = app
        .send(request(
            Method::DELETE,
            "/models/no-such-model",
            &[("sec-fetch-site", "cross-site"), ("origin", EVIL)],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // An old browser sends only Origin: compared with Host.
    let resp = app
        .send(request(
            Method::DELETE,
            "/models/no-such-model",
            &[("origin", EVIL), ("host", "127.0.0.1:8080")],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The server's own page, and curl, pass (to a 404 here).
    for headers in [
        vec![("sec-fetch-site", "same-origin")],
        vec![
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ],
        vec![],
    ] {
        let resp = app
            .send(request(Method::DELETE, "/models/no-such-model", &headers))
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{headers:?}");
    }
}

#[tokio::test]
async fn the_docs_page_embeds_its_script_under_a_policy() {
    let app = TestApp::new().await;
    let resp = app.get("/docs").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = String::from_utf8(body_bytes(resp).await).unwrap();
    assert!(
        !html.contains("https://"),
        "the page loads from elsewhere:\n{html}"
    );
    let src = html
        .split("<script src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a script tag");
    let script = app.get(src).await;
    assert_eq!(script.status(), StatusCode::OK, "{src}");
    let js = body_bytes(script).await;
    assert!(js.len() > 500_000, "ReDoc's bundle is embedded");
    // The HTML pages are not reachable as plain assets (no CSP there).
    assert_eq!(
        app.get("/ui/docs.html").await.status(),
        StatusCode::NOT_FOUND
    );
}
