//! The one error type of the HTTP layer, rendered as RFC 9457
//! `application/problem+json`. Client errors carry their own status and a
//! stable `code`; everything else is logged and answered with a bare 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:vitrine:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status text.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// A stable, machine-readable name for the problem.
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A problem with the request, reported to the client as is.
    #[error("{detail}")]
    Client {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    /// The service is saturated; the client should retry later.
    #[error("{detail}")]
    Overloaded {
        retry_after_secs: u64,
        detail: String,
    },
    /// Anything else: logged in full, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn client(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", detail)
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, detail)
    }
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    }
    pub fn unauthorized() -> Self {
        Self::client(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, detail, retry_after) = match self {
            Self::Client { code, detail, .. } => (code, detail, None),
            Self::Overloaded {
                retry_after_secs,
                detail,
            } => ("overloaded", detail, Some(retry_after_secs)),
            Self::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                (
                    "internal",
                    "an internal error occurred; it has been logged".to_string(),
                    None,
                )
            }
        };
        problem_response(status, code, detail, retry_after)
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
    let problem = Problem {
        kind: format!("urn:vitrine:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        code: code.to_string(),
    };
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

pub type AppResult<T> = Result<T, AppError>;
