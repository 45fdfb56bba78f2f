//! The one error type of the service. Client errors carry a [`ErrorKind`]
//! and a stable `code`; everything else is logged and answered with a bare
//! 500. Only `http/` knows HTTP: it maps each kind to a status
//! (`http::problem`) and renders RFC 9457 `application/problem+json`.

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

/// What kind of client error: decides the HTTP status (in `http/` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (400).
    BadRequest,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Understood, but refused for where it comes from: a foreign `Host`
    /// or a cross-site browser request (403).
    Forbidden,
    /// No such resource (404).
    NotFound,
    /// The resource's state forbids it (409).
    Conflict,
    /// Over a size or count limit (413).
    TooLarge,
    /// A body type that is not accepted (415).
    UnsupportedMediaType,
    /// Well-formed but not usable (422).
    Unprocessable,
    /// The part of the service it needs is out of order, e.g. a device
    /// after a fatal error; a retry may land elsewhere (503).
    Unavailable,
}

impl ErrorKind {
    /// The kind's stable name, as a record stores it (a dataset's refusal).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable => "unprocessable",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::BadRequest,
            Self::Unauthorized,
            Self::Forbidden,
            Self::NotFound,
            Self::Conflict,
            Self::TooLarge,
            Self::UnsupportedMediaType,
            Self::Unprocessable,
            Self::Unavailable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A problem with the request, reported to the client as is.
    #[error("{detail}")]
    Client {
        kind: ErrorKind,
        code: &'static str,
        detail: String,
    },
    /// A client error recorded earlier and read back from the database (a
    /// dataset's refusal, answered again to a request that waited for it):
    /// the same as `Client`, with the code as stored.
    #[error("{detail}")]
    Recorded {
        kind: ErrorKind,
        code: String,
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
    pub fn client(kind: ErrorKind, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            kind,
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(ErrorKind::BadRequest, code, detail)
    }
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(ErrorKind::Unprocessable, code, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::client(ErrorKind::NotFound, "not_found", detail)
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(ErrorKind::Conflict, code, detail)
    }
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::client(ErrorKind::TooLarge, "payload_too_large", detail)
    }
    pub fn unauthorized() -> Self {
        Self::client(
            ErrorKind::Unauthorized,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::client(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            detail,
        )
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database"))
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// The message of a caught panic (`panic!("…")` carries a `&str` or a
/// `String`; tch's panics carry libtorch's error text), `None` for any other
/// payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}
