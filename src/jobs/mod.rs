//! Fine-tuning jobs: submission, the per-device workers that run them, the
//! reaper of expired leases, and the live events clients follow.

pub mod events;
pub mod reaper;
pub mod relay;
pub mod service;
pub mod view;
pub mod wake;
pub mod worker;

use crate::db::Db;
use std::path::PathBuf;

/// What job submission and the workers share. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    pub db: Db,
    /// Live events per job (SSE).
    pub hub: events::EventHub,
    /// Wakes idle workers when a job may be claimable: a submission here,
    /// or (PostgreSQL) a notification from any node.
    pub notify: wake::Wake,
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
    /// The node's decoding memory budget; training batches draw from it.
    pub decode_budget: crate::budget::DecodeBudget,
    /// The node's decode-once input cache (`None`: off).
    pub input_cache: Option<crate::imaging::input_cache::InputCache>,
    /// Training time by phase, in `/metrics`.
    pub phase_seconds: crate::train::timing::PhaseSeconds,
    /// Ranks training now, in `/metrics`.
    pub training_ranks: crate::train::distributed::RankGauge,
}

impl JobQueue {
    /// The names of the devices that have a worker here (`cpu`, `cuda:0`).
    pub fn device_names(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| crate::torch_info::device_name(*d))
            .collect()
    }

    /// A future that ends when there may be work for the workers (see
    /// [`wake::Wake::wait`]): create it before looking for work.
    pub fn wait_for_work<'a>(
        &'a self,
        shutdown: &'a tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = wake::Woken> + Send + 'a {
        self.notify.wait(&self.db, shutdown)
    }
}
