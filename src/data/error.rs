//! Why a dataset was refused: a stable `code`, an HTTP status and a detail
//! that names the file or the rule.

use axum::http::StatusCode;

use crate::AppError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct DatasetError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl DatasetError {
    /// 400: the upload is not a usable archive.
    pub fn bad(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
        }
    }
    /// 413: a size or count limit.
    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code,
            detail: detail.into(),
        }
    }
    /// 422: a well-formed archive whose content is not a usable dataset.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail: detail.into(),
        }
    }
}

impl From<DatasetError> for AppError {
    fn from(e: DatasetError) -> Self {
        AppError::client(e.status, e.code, e.detail)
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
