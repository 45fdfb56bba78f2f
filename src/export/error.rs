//! Why an export is refused or failed.

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The network has no ONNX writer (yet).
    #[error("exporting `{0}` models to ONNX is not supported (supported: {supported})", supported = super::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    #[error("opset {0} is not supported: use one of {first}..={last} (LayerNormalization needs 17)", first = super::OPSETS.start(), last = super::OPSETS.end())]
    UnsupportedOpset(i64),
    /// Protobuf caps a message at 2 GiB; the weights would not fit in one file.
    #[error("the model's weights take {0} bytes, over the 2 GiB an ONNX file without external data can hold")]
    TooLarge(usize),
    /// The model directory could not be read.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A checkpoint variable the architecture needs is absent (a bug, or a
    /// directory edited by hand).
    #[error("the checkpoint has no `{0}`")]
    MissingWeight(String),
    #[error("converting a tensor: {0}")]
    Tensor(String),
}

impl ExportError {
    /// The stable code of a refusal the caller can fix; `None` for a failure.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::UnsupportedArchitecture(_) => Some("unsupported_architecture"),
            Self::UnsupportedOpset(_) => Some("unsupported_opset"),
            Self::TooLarge(_) => Some("export_too_large"),
            _ => None,
        }
    }
}

/// A refused export as a named client error; a failed one as an internal
/// error (logged, never sent).
impl From<ExportError> for crate::error::AppError {
    fn from(e: ExportError) -> Self {
        use crate::error::AppError;
        match (&e, e.code()) {
            (ExportError::UnsupportedOpset(_), Some(code)) => {
                AppError::bad_request(code, e.to_string())
            }
            (_, Some(code)) => AppError::unprocessable(code, e.to_string()),
            (_, None) => AppError::Internal(anyhow::Error::from(e).context("ONNX export")),
        }
    }
}
