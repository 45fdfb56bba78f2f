//! Keyset pagination of list endpoints (`?limit=&before=`): one check of
//! `limit` and one `Link: rel="next"` header for jobs and sweeps alike.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{AppError, AppResult};

/// `limit` (default 50) must be 1..=200.
pub fn limit(asked: Option<i64>) -> AppResult<i64> {
    let limit = asked.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::bad_request(
            "invalid_query",
            "`limit` must be 1..=200",
        ));
    }
    Ok(limit)
}

/// The items as JSON; when the page is full, a `Link` to the next one,
/// which starts after `last_id`.
pub fn respond<T: Serialize>(
    items: Vec<T>,
    path: &str,
    limit: i64,
    last_id: Option<String>,
) -> Response {
    let full = items.len() as i64 == limit;
    let mut resp = axum::Json(items).into_response();
    let link = last_id.filter(|_| full).and_then(|id| {
        format!("<{path}?limit={limit}&before={id}>; rel=\"next\"")
            .parse()
            .ok()
    });
    if let Some(link) = link {
        resp.headers_mut().insert(header::LINK, link);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_page_links_to_the_next() {
        let full = respond(vec![1, 2], "/jobs", 2, Some("b".into()));
        assert_eq!(
            full.headers()[header::LINK],
            "</jobs?limit=2&before=b>; rel=\"next\""
        );
        let last = respond(vec![1], "/sweeps", 2, Some("a".into()));
        assert!(last.headers().get(header::LINK).is_none());
        assert!(limit(Some(0)).is_err() && limit(Some(201)).is_err());
        assert_eq!(limit(None).unwrap(), 50);
    }
}
