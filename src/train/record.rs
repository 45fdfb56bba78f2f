//! What a trained model is, beside its weights: one typed record, the
//! [`ModelCard`], written once by training as `metrics.json` in the model's
//! directory (the `models` row keeps the same document), and one loader,
//! [`TrainedModel::load`], through which the registry, `vitrine predict`,
//! download and the API read it. `config.json` keeps what `transformers`
//! needs (`id2label`, `problem_type`), derived from the same labels and task.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::config::JobConfig;
use super::eval::{EpochMetrics, Evaluation};
use crate::imaging::{Pipeline, PreprocessorConfig};
use crate::model::{ModelConfig, ModelError};
use crate::task::Task;

/// The card's file name in a model directory.
pub const CARD_FILE: &str = "metrics.json";

/// A trained model's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub task: Task,
    /// Class names; index = class id (as `id2label`).
    pub labels: Vec<String>,
    pub best_epoch: u32,
    /// The best epoch's validation metrics.
    pub validation: Option<EpochMetrics>,
    /// The test split, evaluated once with the best weights.
    pub test: Option<TestMetrics>,
    /// Multi-label decision thresholds chosen on validation, on raw
    /// scores (tuned on the calibrated ones when there is a calibration).
    pub thresholds: Option<Vec<f64>>,
    /// Temperature scaling fitted on validation, and its measures; absent
    /// in cards written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::calibration::Calibration>,
    pub history: Vec<EpochMetrics>,
    /// Images per split.
    pub dataset: SplitCounts,
    /// The job's recipe, `base_model` included.
    pub config: JobConfig,
    /// Where the run's training time went, over all its epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_shares: Option<super::timing::TimeShares>,
}

/// The test split's loss and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestMetrics {
    #[serde(deserialize_with = "lenient_f64")]
    pub loss: f64,
    pub metrics: Evaluation,
}

/// Images per split.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: usize,
    pub validation: usize,
    pub test: Option<usize>,
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`, so a
/// diverged loss must read back as NaN rather than make the card unreadable.
pub(crate) fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl ModelCard {
    /// The base model the job started from.
    pub fn base_model(&self) -> &str {
        &self.config.base_model
    }

    /// Writes the card into a model directory.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(CARD_FILE), serde_json::to_vec_pretty(self)?)
    }

    /// Reads a card document (a model directory's file or a `models` row).
    pub fn from_json(text: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(text)
    }
}

/// The base's preprocessing, for a LoRA directory without its own.
fn lora_base_preprocessor(dir: &Path, lora: bool) -> Option<PreprocessorConfig> {
    let base = lora
        .then(|| crate::model::lora::files::base_dir_of(dir).ok())
        .flatten()?;
    let bytes = std::fs::read(base.join("preprocessor_config.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A model ready to classify: what serving needs to know without touching
/// tensors.
#[derive(Debug)]
pub struct TrainedModel {
    pub dir: PathBuf,
    pub task: Task,
    pub labels: Vec<String>,
    /// Multi-label decision thresholds chosen on validation.
    pub thresholds: Option<Vec<f64>>,
    /// Resize, crop and normalise as its `preprocessor_config.json` says,
    /// to the model's input size.
    pub pipeline: Pipeline,
    /// The record, for a model vitrine trained; `None` for a plain
    /// Hugging Face checkpoint (`vitrine predict` takes those too).
    pub card: Option<ModelCard>,
}

impl TrainedModel {
    /// The model's calibration; `None` for a model without one (imported,
    /// or trained before calibration existed): it serves raw scores.
    pub fn calibration(&self) -> Option<&super::calibration::Calibration> {
        self.card.as_ref().and_then(|c| c.calibration.as_ref())
    }

    /// Reads a model directory: its card when it has one, else the task and
    /// labels of its `config.json` (`problem_type`, `id2label`).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        // A LoRA directory `peft` made alone has no `config.json`: its
        // base's, with labels for its head (`model/lora`).
        let lora = crate::model::lora::is_lora_dir(dir);
        let config = match lora {
            true => crate::model::lora::files::adapted_config(dir)?,
            false => ModelConfig::from_file(&dir.join("config.json"))?,
        };
        let card = match std::fs::read(dir.join(CARD_FILE)) {
            Ok(bytes) => {
                Some(
                    ModelCard::from_json(&bytes).map_err(|e| ModelError::InvalidConfig {
                        path: dir.join(CARD_FILE),
                        detail: e.to_string(),
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(dir.join(CARD_FILE), e)),
        };
        let preprocessor: PreprocessorConfig =
            match std::fs::read(dir.join("preprocessor_config.json")) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|e| ModelError::InvalidConfig {
                        path: dir.join("preprocessor_config.json"),
                        detail: e.to_string(),
                    })?
                }
                Err(_) => lora_base_preprocessor(dir, lora).unwrap_or_default(),
            };
        // One input size per model, whatever the preprocessor says (see
        // `Pipeline::for_model`), so images of any size stack into one batch.
        let pipeline = Pipeline::for_model(&preprocessor, config.image_size() as u32);
        let (task, labels, thresholds) = match &card {
            Some(c) => (c.task, c.labels.clone(), c.thresholds.clone()),
            None => (config.task(), config.labels().to_vec(), None),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            task,
            labels,
            thresholds,
            pipeline,
            card,
        })
    }
}
