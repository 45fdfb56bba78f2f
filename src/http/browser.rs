//! Safe defaults for browsers. A server without a token (the default) must
//! not be drivable by whatever page its user happens to have open:
//! - no CORS unless `--cors-origin` names origins, so another site's page
//!   cannot read an answer;
//! - a `Host` allow-list, so a page on a name the attacker controls that
//!   resolves to this server (DNS rebinding) is refused: browsers send that
//!   name as `Host`;
//! - state-changing requests from another site's page refused: a form or a
//!   `no-cors` fetch is sent without any CORS check, so the browser's own
//!   `Sec-Fetch-Site` and `Origin` headers decide.
//!
//! Requests without those headers (curl, scripts, other services) are not
//! browsers and pass; a request with an `Authorization` header is left to
//! the token check (a cross-site page cannot set that header without a
//! CORS preflight, which only `--cors-origin` origins pass).

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::AppState;
use crate::config::ServeConfig;
use crate::error::{AppError, ErrorKind};

/// The CORS layer for `--cors-origin`, or none at all when unset.
pub fn cors_layer(config: &ServeConfig) -> Option<CorsLayer> {
    if config.cors_origin.is_empty() {
        return None;
    }
    let origins = if config.cors_origin.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origin
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

/// Middleware: refuses a foreign `Host` and cross-site state changes.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = &state.config;
    let path = req.uri().path();
    let probe = path == "/healthz" || path == "/readyz";
    if let Some(host) = request_host(&req) {
        if !probe && !host_allowed(&host, &config.allowed_hosts) {
            return AppError::client(
                ErrorKind::Forbidden,
                "host_not_allowed",
                format!(
                    "this server does not answer to the name `{host}`; add it to \
                     --allowed-hosts (VITRINE_ALLOWED_HOSTS) if it is one of its names"
                ),
            )
            .into_response();
        }
    }
    if is_cross_site_change(req.method(), req.headers(), &config.cors_origin) {
        return AppError::client(
            ErrorKind::Forbidden,
            "cross_site_request",
            "a page of another site may not change this server's state: call it from its own \
             page, send the bearer token, or list the page's origin in --cors-origin",
        )
        .into_response();
    }
    next.run(req).await
}

/// The host name of the request (`Host`, else the URI's authority), lower
/// case, without its port; IPv6 keeps its brackets off.
fn request_host(req: &Request) -> Option<String> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    Some(strip_port(&authority).to_ascii_lowercase())
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// IP addresses (no name to rebind), `localhost` and its subdomains, this
/// machine's host name, and `--allowed-hosts` (`*`: any; `*.example.com`:
/// its subdomains) are allowed.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.');
    if host.parse::<IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if machine_hostname().is_some_and(|m| m.eq_ignore_ascii_case(host)) {
        return true;
    }
    allowed.iter().any(|a| {
        let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
        match a.strip_prefix("*.") {
            _ if a == "*" => true,
            Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
            None => a == host,
        }
    })
}

fn machine_hostname() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// A request that changes state (not GET, HEAD, OPTIONS), sent by a
/// browser from another site's page, without a token, and from an origin
/// not listed in `--cors-origin`.
pub fn is_cross_site_change(method: &Method, headers: &HeaderMap, cors: &[String]) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key(header::AUTHORIZATION)
    {
        return false;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if origin.is_some_and(|o| cors.iter().any(|c| c == "*" || c == o)) {
        return false;
    }
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match fetch_site {
        Some("same-origin" | "none") => false,
        Some(_) => true,
        // Older browsers: compare `Origin` with the `Host` it was sent to.
        None => origin.is_some_and(|o| !origin_matches_host(o, headers)),
    }
}

fn origin_matches_host(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts_by_address_loopback_and_list() {
        let none: Vec<String> = vec![];
        for h in ["127.0.0.1", "10.1.2.3", "::1", "localhost", "app.localhost"] {
            assert!(host_allowed(h, &none), "{h}");
        }
        for h in ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io"] {
            assert!(!host_allowed(h, &none), "{h}");
        }
        let list = vec!["ML.example.com".to_string(), "*.svc.cluster.local".into()];
        assert!(host_allowed("ml.example.com", &list));
        assert!(host_allowed("vitrine.default.svc.cluster.local", &list));
        assert!(!host_allowed("svc.cluster.local", &list));
        assert!(host_allowed("anything", &["*".to_string()]));
    }

    #[test]
    fn ports_and_brackets_come_off() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }

    #[test]
    fn cross_site_changes_are_told_apart() {
        let none: Vec<String> = vec![];
        let cross = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ]);
        assert!(is_cross_site_change(&Method::DELETE, &cross, &none));
        assert!(is_cross_site_change(&Method::POST, &cross, &none));
        assert!(!is_cross_site_change(&Method::GET, &cross, &none));
        let listed = vec!["https://evil.example".to_string()];
        assert!(!is_cross_site_change(&Method::POST, &cross, &listed));
        let same = headers(&[("sec-fetch-site", "same-origin")]);
        assert!(!is_cross_site_change(&Method::POST, &same, &none));
        // curl: no browser headers at all.
        assert!(!is_cross_site_change(
            &Method::POST,
            &HeaderMap::new(),
            &none
        ));
        // An old browser: Origin alone, compared with Host.
        let old = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(!is_cross_site_change(&Method::POST, &old, &none));
        let old = headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(is_cross_site_change(&Method::POST, &old, &none));
        let with_token = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("authorization", "Bearer x"),
        ]);
        assert!(!is_cross_site_change(&Method::POST, &with_token, &none));
    }
}
