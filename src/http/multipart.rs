//! Request bodies over a limit, and multipart bodies: one wording for every
//! route, one mapping of their errors, a multipart part handed to the
//! services as a plain stream of chunks, and the one reader of the "a
//! dataset plus a JSON document" bodies of `/jobs` and `/sweeps`.

use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::extract::Json;
use crate::app::AppState;
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

/// A body that names a dataset and carries one JSON document: `POST /jobs`
/// (a `config`) and `POST /sweeps` (a `spec`). It comes as JSON
/// (`{"dataset_id": …, "<part>": {…}}`, this type) or as
/// `multipart/form-data` with a `dataset` part (an archive, stored and
/// validated as it streams in) or a `dataset_id` part, and the `<part>`
/// part; [`read_submission`] reads either.
pub trait Submission: DeserializeOwned {
    /// The document, once checked.
    type Document;
    /// The name of its multipart part (`config`, `spec`).
    const PART: &'static str;
    /// The error code when that part is missing.
    const MISSING: &'static str;
    /// The document from the text of its part.
    fn parse_part(text: &str) -> Result<Self::Document, AppError>;
    /// The dataset id and the document of a JSON body.
    fn into_parts(self) -> Result<(String, Self::Document), AppError>;
}

/// Reads a [`Submission`] in either form: the dataset id and the document.
pub async fn read_submission<B: Submission>(
    state: &AppState,
    req: Request,
) -> Result<(String, B::Document), AppError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("multipart/form-data"));
    if !multipart {
        let Json(body) = Json::<B>::from_request(req, state).await?;
        return body.into_parts();
    }
    let limit = BodyLimit::upload(&state.config);
    let mut form = limit.multipart(req, state).await?;
    let mut document = None;
    let mut dataset_id = None;
    while let Some(field) = limit.next_field(&mut form).await? {
        match field.name().unwrap_or("") {
            "dataset" => {
                // Validated before the job is queued: a bad archive is
                // refused here with its own status and code.
                let dataset = state.datasets.ingest_and_wait(limit.chunks(field)).await?;
                dataset_id = Some(dataset.id.to_string());
            }
            "dataset_id" => dataset_id = Some(limit.text(field).await?),
            name if name == B::PART => {
                document = Some(B::parse_part(&limit.text(field).await?)?);
            }
            other => {
                return Err(AppError::bad_request(
                    "unknown_part",
                    format!(
                        "unexpected multipart part `{other}`; expected `dataset` and `{}`",
                        B::PART
                    ),
                ))
            }
        }
    }
    let document = document.ok_or_else(|| {
        AppError::bad_request(
            B::MISSING,
            format!("the `{}` part (JSON) is missing", B::PART),
        )
    })?;
    let dataset_id = dataset_id.ok_or_else(|| {
        AppError::bad_request(
            "missing_dataset",
            "a `dataset` part (zip, tar, tar.gz or tar.bz2) or a `dataset_id` part is required",
        )
    })?;
    Ok((dataset_id, document))
}
