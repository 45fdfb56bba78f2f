//! The web page at `/`: plain HTML, CSS and ES modules from `web/`, embedded
//! in the binary at build time so a deployed binary or image needs no other
//! file. Public (the page itself holds no data; its API calls carry the
//! token). Each asset has a strong ETag and `Cache-Control: no-cache`: the
//! browser keeps it and revalidates with one cheap 304, so a new binary's
//! page is never mixed with an old one's scripts.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::AppError;

/// One embedded file of `web/`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $type:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `web/` (a unit test checks that none is missing).
static ASSETS: &[Asset] = assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "sse.js" => JS,
    "dom.js" => JS,
    "charts.js" => JS,
    "pages/datasets.js" => JS,
    "pages/jobs.js" => JS,
    "pages/job.js" => JS,
    "pages/models.js" => JS,
    "pages/calibration.js" => JS,
    "pages/predict.js" => JS,
    "pages/sweeps.js" => JS,
    "docs.html" => "text/html; charset=utf-8",
    "vendor/redoc.standalone.js" => JS,
    "vendor/redoc.standalone.js.LICENSE.txt" => "text/plain; charset=utf-8",
};

/// The page may load only its own scripts and styles and talk only to its
/// own origin; images are also `blob:` URLs (fetched with the token).
const CSP: &str =
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The API documentation page: ReDoc, embedded (no CDN), may run only its
/// own script; its styles are inline and its search index runs in a
/// `blob:` worker; it fetches only `/openapi.json`.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self' blob:; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/docs", get(docs))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(
        find("index.html").expect("index.html is embedded"),
        &headers,
    )
}

async fn docs(headers: HeaderMap) -> Response {
    serve(find("docs.html").expect("docs.html is embedded"), &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match find(&path).filter(|a| !a.path.ends_with(".html")) {
        Some(a) => serve(a, &headers),
        None => AppError::not_found(format!("no page asset `{path}`")).into_response(),
    }
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The asset's ETag: a hash of its bytes, computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.bytes))[..32]))
            .collect()
    });
    let i = ASSETS
        .iter()
        .position(|a| a.path == asset.path)
        .expect("an embedded asset");
    &tags[i]
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let csp = match asset.path {
        "index.html" => Some(CSP),
        "docs.html" => Some(DOCS_CSP),
        _ => None,
    };
    if let Some(csp) = csp {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `web/` is embedded, so none 404s once deployed
    /// (but the notes on where vendored files come from).
    #[test]
    fn every_file_of_web_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy();
                if rel.ends_with("README.md") {
                    continue;
                }
                assert!(find(&rel).is_some(), "web/{rel} is not in ASSETS");
            }
        }
    }

    #[test]
    fn an_asset_is_revalidated_by_its_etag() {
        let a = find("app.js").unwrap();
        let first = serve(a, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(serve(a, &again).status(), StatusCode::NOT_MODIFIED);
        assert_ne!(etag(a), etag(find("style.css").unwrap()));
    }
}
