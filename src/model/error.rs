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
    #[error(
        "unsupported model_type `{0}` (supported: vit, dinov2, dinov2_with_registers, swin, convnext, resnet)"
    )]
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
    /// A LoRA configuration or adapter refused (`model/lora`); `code` names
    /// the problem (`lora_unknown_target`, `lora_invalid_rank`,
    /// `adapter_base_mismatch`, `unsupported_peft_type`, ...).
    #[error("{detail}")]
    Lora { code: &'static str, detail: String },
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

impl ModelError {
    /// Whether the error is about what the user named or sent (a model that
    /// does not exist or cannot be loaded, bad labels, bad input) rather than
    /// a fault of this service.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Io { .. } | Self::Torch(_))
            || matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The stable problem `code` of a client error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownModelType(_) | Self::UnsupportedCheckpoint(_) => "unsupported_model",
            Self::InvalidConfig { .. }
            | Self::InvalidCheckpoint { .. }
            | Self::MissingTensors(_)
            | Self::UnexpectedTensors(_)
            | Self::ShapeMismatch { .. } => "invalid_model",
            Self::InvalidLabels(_) => "invalid_labels",
            Self::InvalidInput(_) => "invalid_input",
            Self::NotAvailable { .. } | Self::Io { .. } => "model_not_available",
            Self::Lora { code, .. } => code,
            Self::Torch(_) => "internal",
        }
    }
}

/// Client errors become 422 problem documents naming the problem; I/O and
/// libtorch faults are internal (logged, not sent).
impl From<ModelError> for crate::AppError {
    fn from(e: ModelError) -> Self {
        if e.is_client_error() {
            crate::AppError::unprocessable(e.code(), e.to_string())
        } else {
            crate::AppError::Internal(anyhow::Error::new(e).context("model"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_422_with_codes() {
        let e: crate::AppError = ModelError::UnknownModelType("swinv2".into()).into();
        assert!(matches!(
            e,
            crate::AppError::Client {
                kind: crate::error::ErrorKind::Unprocessable,
                ..
            }
        ));
        assert!(e.to_string().contains("`swinv2`"));
        let io = ModelError::io("/x", std::io::Error::other("disk on fire"));
        assert!(!io.is_client_error());
        let e: crate::AppError = io.into();
        assert!(matches!(e, crate::AppError::Internal(_)));
        let missing = ModelError::io("/x", std::io::ErrorKind::NotFound.into());
        assert_eq!(missing.code(), "model_not_available");
        assert!(missing.is_client_error());
    }
}
