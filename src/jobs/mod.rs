//! Fine-tuning jobs: submission, the per-device workers that run them, and
//! the live events clients follow.

pub mod events;
pub mod service;
pub mod view;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use crate::db::Db;

/// What job submission and the workers share. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    pub db: Db,
    /// Live events per job (SSE).
    pub hub: events::EventHub,
    /// Wakes idle workers when a job is queued.
    pub notify: Arc<tokio::sync::Notify>,
    /// Devices that have a worker in this process.
    pub devices: Vec<tch::Device>,
    /// Datasets, job work directories and models live under it.
    pub data_dir: PathBuf,
    /// Times a job is started before it fails for good.
    pub max_attempts: u32,
    /// How long a worker's claim lasts without renewal.
    pub lease: std::time::Duration,
    /// Which devices are out of service (shared with the inference engines).
    pub health: crate::devices::DeviceHealth,
    /// Where datasets are fetched from and checkpoints and models go.
    pub artifacts: crate::artifacts::Artifacts,
}

impl JobQueue {
    /// The names of the devices that have a worker here (`cpu`, `cuda:0`).
    pub fn device_names(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| crate::torch_info::device_name(*d))
            .collect()
    }
}
