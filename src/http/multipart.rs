//! Request bodies over a limit, and multipart bodies: one wording for every
//! route, one mapping of their errors, and a multipart part handed to the
//! services as a plain stream of chunks.

use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request};
use axum::http::StatusCode;
use futures::{Stream, StreamExt};

use crate::AppError;

/// Slack over a limit for the multipart framing (boundaries, part headers,
/// the `config` part) around the payload the limit is about.
const MULTIPART_FRAMING: u64 = 64 << 10;

/// A limit on a request body and how errors name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub bytes: u64,
    /// What the limit is about, for the message.
    pub what: &'static str,
    /// The flag that sets it, with its environment variable.
    pub setting: &'static str,
}

impl BodyLimit {
    /// Dataset uploads (`POST /datasets`, `POST /jobs`).
    pub fn upload(config: &crate::config::ServeConfig) -> Self {
        Self {
            bytes: config.max_upload_bytes,
            what: "the dataset archive",
            setting: "--max-upload-bytes, VITRINE_MAX_UPLOAD_BYTES",
        }
    }

    /// Every other body (predictions).
    pub fn body(config: &crate::config::ServeConfig) -> Self {
        Self {
            bytes: config.max_body_bytes,
            what: "the request body",
            setting: "--max-body-bytes, VITRINE_MAX_BODY_BYTES",
        }
    }

    /// The 413 answer.
    pub fn too_large(&self) -> AppError {
        AppError::payload_too_large(format!(
            "{} is larger than {} bytes ({})",
            self.what, self.bytes, self.setting
        ))
    }

    /// The route layer enforcing it, with room for multipart framing, so
    /// that a payload of exactly the limit is accepted in any body form.
    pub fn layer(&self) -> DefaultBodyLimit {
        let bytes = self.bytes.saturating_add(MULTIPART_FRAMING);
        DefaultBodyLimit::max(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// A multipart error: 413 for the limit, else 400 naming the problem.
    pub fn multipart_error(&self, e: MultipartError) -> AppError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            self.too_large()
        } else {
            AppError::bad_request("invalid_multipart", e.body_text())
        }
    }

    /// Another body extractor's error, with the same treatment.
    pub fn body_error(&self, status: StatusCode, text: String) -> AppError {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            self.too_large()
        } else {
            AppError::bad_request("invalid_body", text)
        }
    }

    /// Reads the request as multipart.
    pub async fn multipart<S: Send + Sync>(
        &self,
        req: Request,
        state: &S,
    ) -> Result<Multipart, AppError> {
        Multipart::from_request(req, state)
            .await
            .map_err(|e: MultipartRejection| {
                AppError::bad_request("invalid_multipart", e.body_text())
            })
    }

    /// The next part, if any.
    pub async fn next_field<'a>(
        &self,
        m: &'a mut Multipart,
    ) -> Result<Option<Field<'a>>, AppError> {
        m.next_field().await.map_err(|e| self.multipart_error(e))
    }

    /// A whole (small) part as text.
    pub async fn text(&self, field: Field<'_>) -> Result<String, AppError> {
        field.text().await.map_err(|e| self.multipart_error(e))
    }

    /// A whole part as bytes.
    pub async fn bytes(&self, field: Field<'_>) -> Result<Bytes, AppError> {
        field.bytes().await.map_err(|e| self.multipart_error(e))
    }

    /// A part as a stream of chunks, for services that store as they read.
    pub fn chunks<'a>(&self, field: Field<'a>) -> impl Stream<Item = Result<Bytes, AppError>> + 'a {
        let limit = *self;
        field.map(move |c| c.map_err(|e| limit.multipart_error(e)))
    }
}
