//! The application state: the database, the configuration and the runtime
//! handles (job queue, dataset store, inference engines, metrics) that the
//! HTTP layer hands to the services. It knows nothing of HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use anyhow::Context;

use crate::config::ServeConfig;
use crate::datasets::DatasetStore;
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
    /// The one memory budget of every path that decodes user bytes.
    pub decode_budget: crate::budget::DecodeBudget,
    /// ONNX exports: one bounded queue and their disk cache.
    pub exports: crate::export::ExportQueue,
    /// Explanations: their own thread and bounded queue, off the engines.
    pub explainer: crate::serve::explain::Explainer,
    /// Dataset audits: label errors, duplicates, outliers.
    pub audits: crate::audit::Audits,
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
        let (db, metrics, artifacts) = open_shared(&config).await?;
        let engine = crate::serve::engine::EngineConfig {
            max_batch: config.predict_max_batch,
            max_wait: Duration::from_millis(config.predict_max_wait_ms),
            queue: config.predict_queue,
            cache: config.model_cache,
            precision: config.predict_precision,
            adapter_cache_bytes: config.adapter_cache_bytes,
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
        let decode_budget = config.decode_budget();
        let jobs = job_queue(
            &config,
            &db,
            worker_devices,
            &devices,
            &artifacts,
            &decode_budget,
            &metrics.registry,
        );
        let exports = crate::export::ExportQueue::new(
            config.export_concurrency,
            config.export_queue,
            decode_budget.clone(),
            config.data_dir.join("exports"),
        );
        let explainer = explainer(&config, &inference_devices);
        let datasets = DatasetStore {
            db: db.clone(),
            data_dir: config.data_dir.clone(),
            limits: config.ingest_limits(&decode_budget),
            max_upload_bytes: config.max_upload_bytes,
            artifacts: artifacts.clone(),
            max_validation_starts: config.max_validation_starts,
            validations: crate::datasets::pool::Validations::new(
                config.ingest_concurrency,
                match config.ingest_threads {
                    0 => crate::torch_info::threads::available_cpus(),
                    n => n,
                },
            )?,
        };
        let audits = crate::audit::Audits::new(db.clone(), config.data_dir.clone());
        Ok(Self {
            audits,
            db,
            config: Arc::new(config),
            metrics,
            jobs,
            datasets,
            inference,
            devices,
            artifacts,
            decode_budget,
            exports,
            explainer,
        })
    }
}

/// The explainer thread, on the first inference device.
fn explainer(config: &ServeConfig, devices: &[tch::Device]) -> crate::serve::explain::Explainer {
    crate::serve::explain::Explainer::start(crate::serve::explain::ExplainConfig {
        queue: config.explain_queue,
        max_steps: config.explain_max_steps,
        device: devices.first().copied().unwrap_or(tch::Device::Cpu),
    })
}

/// What every node opens at start: the database (migrations applied), its
/// metrics registry and the artefact store (probed).
async fn open_shared(
    config: &ServeConfig,
) -> anyhow::Result<(Db, Metrics, crate::artifacts::Artifacts)> {
    let db = crate::db::connect(&config.database_url()).await?;
    let metrics = Metrics::new();
    let artifacts = crate::artifacts::Artifacts::open(
        &config.artifact_options(),
        &config.data_dir,
        &metrics.registry,
    )
    .await?;
    Ok((db, metrics, artifacts))
}

/// The job queue of a node: its workers' devices, leases and attempts.
fn job_queue(
    config: &ServeConfig,
    db: &Db,
    worker_devices: Vec<tch::Device>,
    health: &crate::devices::DeviceHealth,
    artifacts: &crate::artifacts::Artifacts,
    decode_budget: &crate::budget::DecodeBudget,
    registry: &prometheus::Registry,
) -> JobQueue {
    let input_cache = config.input_cache();
    if let Some(cache) = &input_cache {
        cache.register(registry);
    }
    JobQueue {
        db: db.clone(),
        hub: Default::default(),
        notify: Default::default(),
        devices: worker_devices,
        data_dir: config.data_dir.clone(),
        max_attempts: config.job_max_attempts,
        lease: Duration::from_secs(config.job_lease_secs),
        health: health.clone(),
        artifacts: artifacts.clone(),
        decode_budget: decode_budget.clone(),
        input_cache,
        phase_seconds: crate::train::timing::PhaseSeconds::registered(registry),
        training_ranks: crate::train::distributed::RankGauge::registered(registry),
    }
}

/// What a `vitrine worker` node holds: the database, the job queue over its
/// devices, their health and the metrics. No inference engines, no dataset
/// validation pool: API nodes do those. Cheap to clone.
#[derive(Clone)]
pub struct WorkerNode {
    pub db: Db,
    pub config: Arc<ServeConfig>,
    pub metrics: Metrics,
    pub jobs: JobQueue,
    pub devices: crate::devices::DeviceHealth,
    /// The memory budget training input decodes under (also in `jobs`).
    pub decode_budget: crate::budget::DecodeBudget,
}

impl WorkerNode {
    /// Opens the database (applying migrations, as every node may be the
    /// first) and settles the devices the workers will train on.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let worker_devices = crate::torch_info::resolve_devices(&config.devices).map_err(|e| {
            anyhow::anyhow!("invalid device list (--devices, VITRINE_DEVICES): {e}")
        })?;
        let (db, metrics, artifacts) = open_shared(&config).await?;
        let names: Vec<String> = worker_devices
            .iter()
            .map(|d| crate::torch_info::device_name(*d))
            .collect();
        let devices = crate::devices::DeviceHealth::new(&names, &metrics.registry);
        let decode_budget = config.decode_budget();
        let jobs = job_queue(
            &config,
            &db,
            worker_devices,
            &devices,
            &artifacts,
            &decode_budget,
            &metrics.registry,
        );
        Ok(Self {
            db,
            config: Arc::new(config),
            metrics,
            jobs,
            devices,
            decode_budget,
        })
    }

    /// Whether a device of this node can still train (some may be out of
    /// service after a fatal error).
    pub fn has_usable_device(&self) -> bool {
        self.jobs
            .device_names()
            .iter()
            .any(|d| self.devices.is_up(d))
    }
}
