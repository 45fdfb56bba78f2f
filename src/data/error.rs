//! Why a dataset was refused: a stable `code`, a kind of error and a
//! detail that names the file or the rule.

use crate::error::ErrorKind;
use crate::AppError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct DatasetError {
    /// `None`: a fault of this service (i/o), logged and never sent.
    pub kind: Option<ErrorKind>,
    pub code: &'static str,
    pub detail: String,
}

impl DatasetError {
    /// 400: the upload is not a usable archive.
    pub fn bad(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: Some(ErrorKind::BadRequest),
            code,
            detail: detail.into(),
        }
    }
    /// 413: a size or count limit.
    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: Some(ErrorKind::TooLarge),
            code,
            detail: detail.into(),
        }
    }
    /// 422: a well-formed archive whose content is not a usable dataset.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: Some(ErrorKind::Unprocessable),
            code,
            detail: detail.into(),
        }
    }
    /// 422 `label_too_long`: a label of `len` bytes, more than
    /// [`super::metadata::MAX_LABEL_BYTES`]; `at` says where (file, row).
    /// The label itself is not repeated: it may be megabytes.
    pub fn label_too_long(at: &str, len: usize) -> Self {
        Self::invalid(
            "label_too_long",
            format!(
                "{at}: a label of {len} bytes, more than the {} accepted",
                super::metadata::MAX_LABEL_BYTES
            ),
        )
    }
    /// The refusal of the decode budget (`decode_too_large`, or a wait
    /// that timed out) as a dataset's refusal; anything else is internal.
    pub fn from_budget(e: AppError) -> Self {
        match e {
            AppError::Client { kind, code, detail } => Self {
                kind: Some(kind),
                code,
                detail,
            },
            AppError::Overloaded { detail, .. } => Self {
                kind: Some(ErrorKind::Unavailable),
                code: "decode_budget_exhausted",
                detail,
            },
            other => Self::internal(format!("the decode budget: {other}")),
        }
    }
    /// A fault of this service while reading the upload (disk, i/o).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            kind: None,
            code: "internal",
            detail: detail.into(),
        }
    }
}

impl From<DatasetError> for AppError {
    fn from(e: DatasetError) -> Self {
        match e.kind {
            Some(kind) => AppError::client(kind, e.code, e.detail),
            None => AppError::Internal(anyhow::anyhow!("dataset: {}", e.detail)),
        }
    }
}

/// Lists at most `max` names, then how many more there are.
pub fn name_some(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}
