//! Errors as HTTP: each [`ErrorKind`] maps to one status here, and every
//! error, from a handler or from a middleware, becomes the same RFC 9457
//! `application/problem+json` document. Internal causes are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{AppError, ErrorKind, Problem};

/// The status a kind of client error is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The status an error is answered with.
pub fn status(e: &AppError) -> StatusCode {
    match e {
        AppError::Client { kind, .. } | AppError::Recorded { kind, .. } => status_of(*kind),
        AppError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = status(&self);
        let (code, detail, retry_after) = match self {
            AppError::Client { code, detail, .. } => (code.to_string(), detail, None),
            AppError::Recorded { code, detail, .. } => (code, detail, None),
            AppError::Overloaded {
                retry_after_secs,
                detail,
            } => ("overloaded".to_string(), detail, Some(retry_after_secs)),
            AppError::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                (
                    "internal".to_string(),
                    "an internal error occurred; it has been logged".to_string(),
                    None,
                )
            }
        };
        problem_response(status, &code, detail, retry_after)
    }
}

/// The problem document of an error answered with `status`.
pub fn problem(status: StatusCode, code: &str, detail: String) -> Problem {
    Problem {
        kind: format!("urn:vitrine:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        code: code.to_string(),
    }
}

/// Builds a problem document response; also used for errors raised by
/// middleware (body limits, timeouts) so that every error has one shape.
pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: String,
    retry_after_secs: Option<u64>,
) -> Response {
    let problem = problem(status, code, detail);
    let mut resp = (status, axum::Json(problem)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(secs) = retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_client_errors_are_422_and_faults_500() {
        use crate::model::ModelError;
        let e: AppError = ModelError::UnknownModelType("swinv2".into()).into();
        assert_eq!(status(&e), StatusCode::UNPROCESSABLE_ENTITY);
        let io = ModelError::io("/x", std::io::Error::other("disk on fire"));
        let e: AppError = io.into();
        assert_eq!(status(&e), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
