//! The dataset as the training loop sees it: labels, task, and the three
//! splits (validation carved out of train, stratified, when absent).

use std::path::PathBuf;

use super::{TrainError, TrainSpec};
use crate::data::{Manifest, Sample, Task};

/// A split's samples.
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(|s| s.path.clone()).collect()
    }
    pub fn targets(&self) -> Vec<Vec<usize>> {
        self.0.iter().map(|s| s.labels.clone()).collect()
    }
}

pub struct Prepared {
    pub labels: Vec<String>,
    pub task: Task,
    pub train: Samples,
    pub validation: Samples,
    pub test: Option<Samples>,
}

impl Prepared {
    /// Image counts per split, for `metrics.json`.
    pub fn summary_counts(&self) -> serde_json::Value {
        serde_json::json!({
            "train": self.train.len(),
            "validation": self.validation.len(),
            "test": self.test.as_ref().map(Samples::len),
        })
    }
}

/// Loads the manifest and settles the task and the splits.
pub fn prepare(spec: &TrainSpec) -> Result<Prepared, TrainError> {
    let cfg = &spec.config;
    let manifest =
        Manifest::load(&spec.dataset_dir).map_err(|e| TrainError::fatal(format!("{e:#}")))?;
    let task = match (cfg.task, manifest.task) {
        (None, t) => t,
        (Some(Task::MultiLabel), _) => Task::MultiLabel,
        (Some(Task::MultiClass), Task::MultiClass) => Task::MultiClass,
        (Some(Task::MultiClass), Task::MultiLabel) => {
            if manifest.all_samples().any(|s| s.labels.len() != 1) {
                return Err(TrainError::fatal(
                    "task `multi_class` was asked for, but some images carry several labels",
                ));
            }
            Task::MultiClass
        }
    };
    let (train, validation) = match manifest.validation {
        Some(v) if !v.is_empty() => (manifest.train, v),
        _ => crate::data::stratified_split(&manifest.train, cfg.validation_fraction, cfg.seed),
    };
    if train.is_empty() || validation.is_empty() {
        return Err(TrainError::fatal(
            "the dataset is too small to hold out a validation split",
        ));
    }
    Ok(Prepared {
        labels: manifest.labels,
        task,
        train: Samples(train),
        validation: Samples(validation),
        test: manifest.test.filter(|t| !t.is_empty()).map(Samples),
    })
}
