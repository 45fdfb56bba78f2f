//! Errors of loading, saving and resolving models. Each names what is wrong
//! (the file, the tensor, the field) so it can be shown to a user as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {detail}")]
    InvalidConfig { path: PathBuf, detail: String },
    #[error("unsupported model_type `{0}` (supported: vit)")]
    UnknownModelType(String),
    #[error("{0}")]
    UnsupportedCheckpoint(String),
    #[error("{path}: invalid safetensors file: {detail}")]
    InvalidCheckpoint { path: PathBuf, detail: String },
    #[error("checkpoint is missing {} tensor(s) the model needs: {}", .0.len(), .0.join(", "))]
    MissingTensors(Vec<String>),
    #[error("checkpoint has {} tensor(s) the model does not use: {}", .0.len(), .0.join(", "))]
    UnexpectedTensors(Vec<String>),
    #[error(
        "tensor `{name}` has shape {found:?} in the checkpoint but the model expects {expected:?}"
    )]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("model `{source_name}` is not available: {detail}")]
    NotAvailable { source_name: String, detail: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
