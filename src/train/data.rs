//! The dataset as the training loop sees it: labels, task, and the three
//! splits (validation carved out of train, stratified, when absent).

use std::path::PathBuf;

use super::{TrainError, TrainSpec};
use crate::data::{Manifest, Sample};
use crate::task::Task;

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
    /// Image counts per split, for the model card.
    pub fn split_counts(&self) -> super::record::SplitCounts {
        super::record::SplitCounts {
            train: self.train.len(),
            validation: self.validation.len(),
            test: self.test.as_ref().map(Samples::len),
        }
    }
}

/// Loads the manifest and settles the task and the splits.
pub fn prepare(spec: &TrainSpec) -> Result<Prepared, TrainError> {
    let cfg = &spec.config;
    let mut manifest =
        Manifest::load(&spec.dataset_dir).map_err(|e| TrainError::fatal(format!("{e:#}")))?;
    if let Some(task) = cfg.task {
        manifest = manifest
            .with_task(task)
            .map_err(|e| TrainError::fatal(e.to_string()))?;
    }
    if manifest.validation.as_ref().is_some_and(Vec::is_empty) {
        manifest.validation = None;
    }
    let manifest = manifest.with_validation_split(cfg.validation_fraction, cfg.seed);
    let task = manifest.task;
    let train = manifest.train;
    let validation = manifest.validation.unwrap_or_default();
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
