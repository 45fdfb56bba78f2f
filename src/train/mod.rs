//! Fine-tuning on one OS thread. `run` owns the model for the whole job and
//! reports through a channel; the caller (a job worker, one layer up) turns
//! those reports into database writes and server-sent events.
//!
//! Determinism: the shuffle order, augmentation and libtorch's RNG are all
//! derived from `(seed, epoch)`, so a job resumed from an epoch checkpoint
//! continues exactly as if it had never stopped, with no RNG state to save.

pub mod amp;
mod batches;
pub mod calibrate;
pub mod calibration;
mod checkpoint;
pub mod config;
mod data;
pub mod devices;
pub mod distributed;
mod eval;
mod features;
mod input;
pub mod metrics;
pub mod micro_batch;
pub mod mix;
pub mod oom;
pub mod optim;
pub mod recompute;
pub mod record;
mod resolution;
mod session;
pub mod timing;
pub mod weight_decay;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use eval::{EpochMetrics, Evaluation};
pub use features::backbone_features;
pub use record::{ModelCard, TrainedModel};
pub use session::run;

use crate::train::config::JobConfig;

/// Everything a training run needs, resolved by the worker.
pub struct TrainSpec {
    pub job_id: String,
    pub config: JobConfig,
    /// The extracted dataset's directory (holds `manifest.json`).
    pub dataset_dir: PathBuf,
    /// The base model's directory in the HF layout (already fetched).
    pub base_model_dir: PathBuf,
    /// Scratch space that survives restarts: checkpoints, feature cache.
    pub work_dir: PathBuf,
    pub device: tch::Device,
    /// Copies each epoch's checkpoint (and the feature cache) to the
    /// shared artefact store; `None` without one.
    pub artifacts: Option<crate::artifacts::JobSync>,
    /// The node's decoding memory budget: each batch of training input
    /// leases its decode from it. `None` (benchmarks, tests): no budget.
    pub decode_budget: Option<crate::budget::DecodeBudget>,
    /// The node's decode-once input cache; `None`: every epoch decodes.
    pub input_cache: Option<crate::imaging::input_cache::InputCache>,
    /// A test hook: a micro-batch of more images fails as out of memory
    /// (the CPU has no device memory to fill). `None` in service.
    pub oom_above_micro_batch: Option<u32>,
}

/// Progress reported while training.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// Training (re)starts: sizes and step counts.
    Started {
        epochs: u32,
        start_epoch: u32,
        steps_per_epoch: u64,
        train_images: usize,
        validation_images: usize,
        micro_batch: u32,
        /// Parameters (elements) this job's mode trains.
        trainable_parameters: u64,
        /// The device of each data-parallel rank (one entry: one device).
        #[serde(default)]
        ranks: Vec<String>,
    },
    /// The frozen backbone's features are being computed (linear probe).
    Features { done: usize, total: usize },
    /// The dataset is being decoded once into the node's input cache.
    Caching { done: usize, total: usize },
    /// One optimiser step.
    Step {
        epoch: u32,
        step: u64,
        total_steps: u64,
        loss: f64,
        learning_rate: f64,
        images_per_sec: f64,
        eta_secs: f64,
    },
    /// An epoch ended and was evaluated.
    Epoch(EpochMetrics),
    /// A micro-batch did not fit in memory; retrying smaller.
    OutOfMemory { micro_batch: u32 },
}

/// How a run ended without an error.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The best epoch's model directory (HF layout plus `metrics.json`), if
    /// any epoch completed.
    pub best_model_dir: Option<PathBuf>,
    /// True when the stop flag ended the run early.
    pub interrupted: bool,
    /// The model's record (also in the directory), when there is a model.
    pub card: Option<ModelCard>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Retrying cannot help: bad dataset, bad config, unloadable model.
    #[error("{0}")]
    Fatal(String),
    /// Something transient (I/O, a crash inside libtorch): retry.
    #[error("{0}")]
    Retryable(String),
    /// The GPU's CUDA context died (device-side assert, illegal memory
    /// access, ECC error, ...): this job fails, and nothing can run on that
    /// device until the process restarts, so it must not be retried there.
    #[error("the GPU failed and is unusable until the service restarts: {0}")]
    DeviceFatal(String),
}

impl TrainError {
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }
    pub fn retry(e: impl std::fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }

    /// The error for a classified libtorch failure: a dead CUDA context is
    /// `DeviceFatal` (only on a GPU), anything else retryable.
    pub fn from_failure(failure: oom::Failure, device: tch::Device, context: &str) -> Self {
        match failure.kind {
            oom::FailureKind::DeviceFatal if device.is_cuda() => Self::DeviceFatal(failure.message),
            _ => Self::Retryable(format!("{context}: {}", failure.message)),
        }
    }

    /// Whether this error means the device itself is broken.
    pub fn is_device_fatal(&self) -> bool {
        matches!(self, Self::DeviceFatal(_))
    }
}

/// The channel end the training thread reports into.
pub type Events = tokio::sync::mpsc::UnboundedSender<TrainEvent>;

/// A flag the worker sets to stop training at the next step boundary.
pub type StopFlag = std::sync::Arc<AtomicBool>;
