//! What a consumer needs besides the graph: labels, task, thresholds and
//! the exact preprocessing. Written into the file's `metadata_props` (one
//! entry per field, each value a JSON text) and as a sidecar JSON document.

use serde::{Deserialize, Serialize};

use super::onnx_proto::StringStringEntryProto;
use crate::imaging::pipeline::PreprocessingSpec;
use crate::task::Task;

/// The metadata document's format name; bumped on an incompatible change.
pub const FORMAT: &str = "vitrine-onnx/1";

/// The export's metadata (`OUT.json` beside `OUT.onnx`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMetadata {
    pub format: String,
    /// `model_type` of its `config.json` (`vit`, `dinov2`, …).
    pub model_type: String,
    pub task: Task,
    /// Class names; index `i` is output column `i`.
    pub labels: Vec<String>,
    /// Per-label decision thresholds on `probabilities` (multi-label), else `null`.
    pub thresholds: Option<Vec<f64>>,
    /// The model's calibration, when it has one: divide the logits by
    /// these (one, or one per label) before the softmax or sigmoid to get
    /// the scores `/predict` serves by default. `probabilities` and
    /// `thresholds` are uncalibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperatures: Option<Vec<f64>>,
    /// Name and shape of the one input, `[batch, channels, height, width]`;
    /// `batch` is `null` when dynamic. Always float32, NCHW, RGB.
    pub input: TensorSpec,
    /// `logits` and `probabilities`, `[batch, labels]`, float32.
    pub outputs: Vec<TensorSpec>,
    /// `softmax` (multi-class) or `sigmoid` (multi-label): how
    /// `probabilities` come from `logits`.
    pub probabilities: String,
    pub preprocessing: PreprocessingSpec,
    pub opset: i64,
    /// `fp32` or `fp16` (weights and computation; inputs and outputs stay float32).
    pub precision: String,
    pub producer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Option<i64>>,
}

impl ExportMetadata {
    /// One `metadata_props` entry per field, the value as JSON text
    /// (strings quoted), so every entry reads back with `json.loads`.
    pub fn props(&self) -> Vec<StringStringEntryProto> {
        let value = serde_json::to_value(self).expect("metadata serialises");
        let serde_json::Value::Object(fields) = value else {
            unreachable!("a struct serialises to an object")
        };
        fields
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key,
                value: value.to_string(),
            })
            .collect()
    }
}
