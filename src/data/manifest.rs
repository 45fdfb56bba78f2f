//! The manifest the trainer reads: labels, task and the samples of each split.
//!
//! On disk (`manifest.json` in the dataset directory) sample paths are
//! relative to that directory, so the data directory can move;
//! [`Manifest::load`] makes them absolute.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::task::Task;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Absolute once loaded; relative to the dataset directory on disk.
    pub path: PathBuf,
    /// Indices into [`Manifest::labels`] (exactly one for multi-class).
    pub labels: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Class names, sorted; the index is the class id.
    pub labels: Vec<String>,
    pub task: Task,
    pub train: Vec<Sample>,
    pub validation: Option<Vec<Sample>>,
    pub test: Option<Vec<Sample>>,
}

impl Manifest {
    /// Reads `<dir>/manifest.json`, resolving sample paths against `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut m: Manifest = serde_json::from_str(&text)?;
        m.for_each_sample(|s| s.path = dir.join(&s.path));
        Ok(m)
    }

    /// Writes `<dir>/manifest.json` (paths must be relative to `dir`).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    fn for_each_sample(&mut self, mut f: impl FnMut(&mut Sample)) {
        self.train.iter_mut().for_each(&mut f);
        for s in [&mut self.validation, &mut self.test].into_iter().flatten() {
            s.iter_mut().for_each(&mut f);
        }
    }

    /// With `task` forced (e.g. by a job's config). Forcing multi-class on a
    /// dataset where some image has other than one label is refused.
    pub fn with_task(mut self, task: Task) -> Result<Manifest, super::DatasetError> {
        if task == Task::MultiClass {
            let all = self
                .train
                .iter()
                .chain(self.validation.iter().flatten())
                .chain(self.test.iter().flatten());
            if let Some(s) = all.into_iter().find(|s| s.labels.len() != 1) {
                return Err(super::DatasetError::invalid(
                    "task_mismatch",
                    format!(
                        "multi_class needs exactly one label per image; `{}` has {}",
                        s.path.display(),
                        s.labels.len()
                    ),
                ));
            }
        }
        self.task = task;
        Ok(self)
    }
}
