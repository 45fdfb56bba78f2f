//! The application state: the database, the configuration and the runtime
//! handles (job queue, dataset store, inference engines, metrics) that the
//! HTTP layer hands to the services. It knows nothing of HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use anyhow::Context;

use crate::config::ServeConfig;
use crate::data::service::DatasetStore;
use crate::jobs::JobQueue;
use crate::metrics::Metrics;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<ServeConfig>,
    pub metrics: Metrics,
    pub jobs: JobQueue,
    pub datasets: DatasetStore,
    pub inference: crate::serve::Inference,
    /// Devices taken out of service by a fatal error (`/readyz`, `/metrics`).
    pub devices: crate::devices::DeviceHealth,
    /// The artefact store shared by every node (or the data dir alone).
    pub artifacts: crate::artifacts::Artifacts,
}

impl AppState {
    /// Opens the database under the configured data directory, settles the
    /// devices (workers on none with `--no-workers`; inference on all) and
    /// starts the inference threads. Workers start with the server.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let inference_devices =
            crate::torch_info::resolve_devices(&config.devices).map_err(|e| {
                anyhow::anyhow!("invalid device list (--devices, VITRINE_DEVICES): {e}")
            })?;
        let worker_devices = if config.no_workers {
            vec![]
        } else {
            inference_devices.clone()
        };
        let db = crate::db::connect(&config.database_url()).await?;
        let metrics = Metrics::new();
        let artifacts = crate::artifacts::Artifacts::open(
            &config.artifact_options(),
            &config.data_dir,
            &metrics.registry,
        )
        .await?;
        let engine = crate::serve::engine::EngineConfig {
            max_batch: config.predict_max_batch,
            max_wait: Duration::from_millis(config.predict_max_wait_ms),
            queue: config.predict_queue,
            cache: config.model_cache,
            precision: config.predict_precision,
        };
        let names: Vec<String> = inference_devices
            .iter()
            .map(|d| crate::torch_info::device_name(*d))
            .collect();
        let devices = crate::devices::DeviceHealth::new(&names, &metrics.registry);
        let inference = crate::serve::Inference::start(
            &inference_devices,
            engine,
            &metrics.registry,
            devices.clone(),
        );
        let jobs = JobQueue {
            db: db.clone(),
            hub: Default::default(),
            notify: Default::default(),
            devices: worker_devices,
            data_dir: config.data_dir.clone(),
            max_attempts: config.job_max_attempts,
            lease: Duration::from_secs(config.job_lease_secs),
            health: devices.clone(),
            artifacts: artifacts.clone(),
        };
        let datasets = DatasetStore {
            db: db.clone(),
            data_dir: config.data_dir.clone(),
            limits: config.ingest_limits(),
            max_upload_bytes: config.max_upload_bytes,
            artifacts: artifacts.clone(),
            validations: crate::data::validation::Validations::new(
                config.ingest_concurrency,
                match config.ingest_threads {
                    0 => crate::torch_info::threads::available_cpus(),
                    n => n,
                },
            )?,
        };
        Ok(Self {
            db,
            config: Arc::new(config),
            metrics,
            jobs,
            datasets,
            inference,
            devices,
            artifacts,
        })
    }
}
