//! One worker per configured device. It claims a job, runs the training on
//! an OS thread of its own, renews its lease while listening to the
//! trainer's reports, and records the outcome under that lease.
//!
//! A fatal device error ([`crate::devices::is_fatal_device_error`], or the
//! trainer's `TrainError::DeviceFatal`) fails the job at once (a retry
//! would run in the same dead CUDA context), takes the device out of
//! service, and ends the worker: it claims nothing more on that device.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::events::JobEvent;
use super::JobQueue;
use crate::devices::is_fatal_device_error;
use crate::store::jobs::{self as store, JobRow, JobStatus};
use crate::store::models::NewModel;
use crate::train::config::JobConfig;
use crate::train::{TrainError, TrainEvent, TrainOutcome, TrainSpec};

/// Starts a worker task per device; they stop when `shutdown` fires,
/// requeueing the job they were running.
pub fn spawn_workers(
    queue: &JobQueue,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    queue
        .devices
        .iter()
        .map(|&device| {
            let worker = Worker::new(queue.clone(), device);
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect()
}

struct Worker {
    queue: JobQueue,
    device: tch::Device,
    device_name: String,
    /// Unique per process and device: a restarted process never owns the
    /// leases of its previous life.
    owner: String,
}

/// How the run of one job ended, from the worker's side.
enum Stop {
    Finished,
    Cancelled,
    Shutdown,
    LeaseLost,
}

impl Worker {
    fn new(queue: JobQueue, device: tch::Device) -> Self {
        let device_name = crate::torch_info::device_name(device);
        let owner = format!(
            "{}-{}-{}",
            std::process::id(),
            device_name,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        Self {
            queue,
            device,
            device_name,
            owner,
        }
    }

    fn lease_ms(&self) -> i64 {
        self.queue.lease.as_millis() as i64
    }

    async fn run(self, shutdown: CancellationToken) {
        tracing::info!(device = %self.device_name, owner = %self.owner, "worker started");
        let poll = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            // Armed before the claim: a job queued meanwhile still wakes us.
            let work = self.queue.wait_for_work(&shutdown);
            if !self.queue.health.is_up(&self.device_name) {
                tracing::warn!(device = %self.device_name, "worker stopped: its device is out of service until restart");
                return;
            }
            if let Err(e) = store::reap_expired(&self.queue.db).await {
                tracing::warn!(error = ?e, "reaping expired leases failed");
            }
            let claimed = store::claim_next(
                &self.queue.db,
                &self.device_name,
                &self.owner,
                self.lease_ms(),
            )
            .await;
            match claimed {
                Ok(Some(job)) => self.run_job(job, &shutdown).await,
                Ok(None) => {
                    work.await;
                }
                Err(e) => {
                    tracing::error!(error = ?e, "claiming a job failed");
                    tokio::time::sleep(poll * 4).await;
                }
            }
        }
        tracing::info!(device = %self.device_name, "worker stopped");
    }

    fn publish_status(
        &self,
        job_id: &str,
        status: JobStatus,
        terminal: bool,
        extra: serde_json::Value,
    ) {
        let mut data = serde_json::json!({"id": job_id, "status": status});
        if let (Some(obj), Some(more)) = (data.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        self.queue.hub.publish(
            job_id,
            JobEvent {
                kind: "status",
                data,
                terminal,
            },
        );
    }

    async fn run_job(&self, job: JobRow, shutdown: &CancellationToken) {
        let id = job.id.clone();
        tracing::info!(job = %id, attempt = job.attempts, device = %self.device_name, owner = %self.owner, "job started");
        self.publish_status(
            &id,
            JobStatus::Running,
            false,
            serde_json::json!({"attempts": job.attempts}),
        );
        let spec = match self.resolve(&job).await {
            Ok(spec) => spec,
            Err(e) => {
                self.conclude(&job, Err(e), Stop::Finished).await;
                return;
            }
        };
        let work_dir = spec.work_dir.clone();

        let stop_flag = Arc::new(AtomicBool::new(false));
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (done_tx, mut done_rx) = oneshot::channel();
        {
            let stop_flag = stop_flag.clone();
            let health = self.queue.health.clone();
            let device_name = self.device_name.clone();
            std::thread::Builder::new()
                .name(format!("vitrine-train-{}", self.device_name))
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if let Some(message) = health.take_injected_fault(&device_name) {
                            // As a failing kernel would: tch panics with libtorch's message.
                            panic!("{message}");
                        }
                        crate::train::run(spec, events_tx, stop_flag)
                    }))
                    .unwrap_or_else(|p| {
                        Err(TrainError::Retryable(format!(
                            "training crashed: {}",
                            crate::error::panic_message(p.as_ref()).unwrap_or_default()
                        )))
                    });
                    let _ = done_tx.send(result);
                })
                .expect("spawning the training thread");
        }

        let mut reporter = Reporter::new(self, &id);
        let mut stop = Stop::Finished;
        let mut lease_tick = tokio::time::interval(Duration::from_millis(
            (self.lease_ms() as u64 / 3).clamp(200, 1000),
        ));
        let result = loop {
            tokio::select! {
                Some(ev) = events_rx.recv() => reporter.on_event(ev).await,
                _ = lease_tick.tick() => {
                    match store::renew_lease(&self.queue.db, &id, &self.owner, self.lease_ms()).await {
                        Ok(Some(true)) if matches!(stop, Stop::Finished) => {
                            tracing::info!(job = %id, "cancel requested");
                            stop = Stop::Cancelled;
                            stop_flag.store(true, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            tracing::warn!(job = %id, owner = %self.owner, "lease lost; stopping");
                            stop = Stop::LeaseLost;
                            stop_flag.store(true, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(job = %id, error = ?e, "renewing the lease failed"),
                    }
                }
                _ = shutdown.cancelled(), if matches!(stop, Stop::Finished) => {
                    tracing::info!(job = %id, "shutting down: stopping the job at the next step");
                    stop = Stop::Shutdown;
                    stop_flag.store(true, Ordering::Relaxed);
                }
                result = &mut done_rx => {
                    break result.unwrap_or_else(|_| Err(TrainError::retry("the training thread vanished")));
                }
            }
        };
        while let Ok(ev) = events_rx.try_recv() {
            reporter.on_event(ev).await;
        }
        reporter.flush().await;
        let ended = self.conclude(&job, result, stop).await;
        if let Some(status) = ended {
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
            // A failed job keeps its stored checkpoints (a store outage
            // must not cost the last good one); others need them no more.
            if status != JobStatus::Failed {
                self.queue.artifacts.delete_job(&id).await;
            }
        }
    }

    /// Finds the dataset and the base model; failures here are fatal.
    async fn resolve(&self, job: &JobRow) -> Result<TrainSpec, TrainError> {
        let config: JobConfig = serde_json::from_str(&job.config)
            .map_err(|e| TrainError::fatal(format!("stored config is invalid: {e}")))?;
        let dataset_id = uuid::Uuid::parse_str(&job.dataset_id).map_err(TrainError::fatal)?;
        let dataset = crate::datasets::record::get(&self.queue.db, dataset_id)
            .await
            .map_err(TrainError::retry)?
            .ok_or_else(|| TrainError::fatal("the job's dataset no longer exists"))?;
        let base = config.base_model.clone();
        let base_model_dir = tokio::task::spawn_blocking(move || {
            crate::model::resolve_model_source(&base, &crate::model::HubOptions::from_env())
        })
        .await
        .map_err(TrainError::retry)?
        .map_err(|e| TrainError::fatal(format!("base model `{}`: {e:#}", config.base_model)))?;
        let artifacts = &self.queue.artifacts;
        // With a shared store: the dataset once into the local cache, and
        // the job's stored checkpoint when it is newer than the local one
        // (a job resumed after its node died).
        let dataset_dir = artifacts
            .dataset_dir(&dataset.path)
            .await
            .map_err(|e| TrainError::retry(format!("{e:#}")))?;
        let work_dir = self.queue.data_dir.join("jobs").join(&job.id);
        if let Some(epoch) = artifacts
            .pull_job(&job.id, &work_dir)
            .await
            .map_err(|e| TrainError::retry(format!("{e:#}")))?
        {
            tracing::info!(job = %job.id, epoch, "resuming from the stored checkpoint");
        }
        Ok(TrainSpec {
            job_id: job.id.clone(),
            config,
            dataset_dir,
            base_model_dir,
            artifacts: artifacts.job_sync(&job.id, &work_dir),
            work_dir,
            device: self.device,
            decode_budget: Some(self.queue.decode_budget.clone()),
        })
    }

    /// Records how the job ended. Returns its terminal status when it
    /// reached one (its work directory can go), `None` when it goes on
    /// elsewhere or later.
    async fn conclude(
        &self,
        job: &JobRow,
        result: Result<TrainOutcome, TrainError>,
        stop: Stop,
    ) -> Option<JobStatus> {
        let db = &self.queue.db;
        let id = job.id.as_str();
        let owner = self.owner.as_str();
        let device_fatal = result.as_ref().err().and_then(device_fatal_message);
        let outcome = match (stop, result) {
            (Stop::LeaseLost, _) => return None,
            (Stop::Shutdown, Ok(o)) if o.interrupted => {
                let requeued = store::requeue(db, id, owner, true, None).await;
                tracing::info!(job = %id, owner = %owner, ok = ?requeued, "job requeued for the next start");
                self.publish_status(id, JobStatus::Queued, false, serde_json::json!({}));
                return None;
            }
            (_, Err(_)) if device_fatal.is_some() => {
                let msg = device_fatal.unwrap_or_default();
                self.queue.health.report_fatal(&self.device_name, &msg);
                Err(format!(
                    "device {} failed with a fatal error and is out of service until the service \
                     restarts (the job is not retried there): {}",
                    self.device_name,
                    msg.lines().next().unwrap_or_default()
                ))
            }
            (Stop::Cancelled, Ok(o)) => self.record_model(job, o, JobStatus::Cancelled).await,
            (_, Ok(o)) => self.record_model(job, o, JobStatus::Succeeded).await,
            (_, Err(TrainError::Retryable(msg))) if job.attempts < job.max_attempts => {
                tracing::warn!(job = %id, owner = %owner, error = %msg, "job failed; will retry");
                let _ = store::requeue(db, id, owner, false, Some(&msg)).await;
                self.publish_status(
                    id,
                    JobStatus::Queued,
                    false,
                    serde_json::json!({"error": msg}),
                );
                self.queue.notify.notify_one();
                return None;
            }
            (_, Err(e)) => Err(e.to_string()),
        };
        let (status, model_id, error) = match outcome {
            Ok((status, model_id)) => (status, model_id, None),
            Err(msg) => (JobStatus::Failed, None, Some(msg)),
        };
        if status == JobStatus::Failed || model_id.is_none() {
            if let Err(e) = store::finish(db, id, owner, status, None, error.as_deref()).await {
                tracing::error!(job = %id, error = ?e, "recording the job's end failed");
            }
        }
        tracing::info!(job = %id, owner = %owner, status = status.as_str(), model = ?model_id, error = ?error, "job ended");
        self.publish_status(
            id,
            status,
            true,
            serde_json::json!({"model_id": model_id, "error": error}),
        );
        Some(status)
    }

    /// Moves the best model into `models/` and records it with the job's end
    /// in one transaction. A run that produced no model has failed (unless
    /// it was cancelled).
    async fn record_model(
        &self,
        job: &JobRow,
        outcome: TrainOutcome,
        status: JobStatus,
    ) -> Result<(JobStatus, Option<String>), String> {
        let (Some(best), Some(card)) = (outcome.best_model_dir, outcome.card) else {
            return match status {
                JobStatus::Cancelled => Ok((JobStatus::Cancelled, None)),
                _ => Err("training ended before any epoch completed".into()),
            };
        };
        let model_id = uuid::Uuid::now_v7().to_string();
        let rel = PathBuf::from("models").join(&model_id);
        let dest = self.queue.data_dir.join(&rel);
        let moved = async {
            tokio::fs::create_dir_all(dest.parent().unwrap()).await?;
            tokio::fs::rename(&best, &dest).await
        };
        if let Err(e) = moved.await {
            tracing::error!(job = %job.id, error = ?e, "moving the model failed");
            return Err("storing the trained model failed".into());
        }
        let rel_str = rel.to_string_lossy();
        // In the shared store before the row names it, so no API node
        // ever looks for a model the store lacks.
        if let Err(e) = self.queue.artifacts.put_model(&rel_str, &dest).await {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            return Err(format!("storing the trained model failed: {e:#}"));
        }
        let labels = serde_json::to_string(&card.labels).unwrap_or_default();
        let card_json = serde_json::to_string(&card).unwrap_or_default();
        let recorded = store::finish_with_model(
            &self.queue.db,
            &job.id,
            &self.owner,
            status,
            NewModel {
                id: &model_id,
                job_id: Some(&job.id),
                path: &rel_str,
                base_model: card.base_model(),
                task: card.task,
                labels_json: &labels,
                metrics_json: &card_json,
            },
        )
        .await;
        match recorded {
            Ok(true) => Ok((status, Some(model_id))),
            Ok(false) => {
                let _ = tokio::fs::remove_dir_all(&dest).await;
                let _ = self.queue.artifacts.delete_model(&rel_str).await;
                Err("lost the job's lease before recording its model".into())
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = ?e, "recording the model failed");
                let _ = tokio::fs::remove_dir_all(&dest).await;
                let _ = self.queue.artifacts.delete_model(&rel_str).await;
                Err("recording the trained model failed".into())
            }
        }
    }
}

/// libtorch's message when a training error means the device's CUDA
/// context is dead: the trainer said so (`DeviceFatal`), or the message of
/// a libtorch panic caught elsewhere (`training crashed: CUDA error: ...`)
/// says so.
fn device_fatal_message(e: &TrainError) -> Option<String> {
    match e {
        TrainError::DeviceFatal(m) => Some(m.clone()),
        other => Some(other.to_string()).filter(|m| is_fatal_device_error(m)),
    }
}

/// Turns trainer reports into progress rows (throttled), per-epoch metrics
/// and live events.
struct Reporter<'a> {
    worker: &'a Worker,
    job_id: &'a str,
    progress: serde_json::Map<String, serde_json::Value>,
    metrics: Vec<serde_json::Value>,
    last_write: Option<Instant>,
    last_publish: Option<Instant>,
    dirty: bool,
}

impl<'a> Reporter<'a> {
    fn new(worker: &'a Worker, job_id: &'a str) -> Self {
        Self {
            worker,
            job_id,
            progress: Default::default(),
            metrics: Vec::new(),
            last_write: None,
            last_publish: None,
            dirty: false,
        }
    }

    fn due(last: Option<Instant>, every: Duration) -> bool {
        last.is_none_or(|t| t.elapsed() >= every)
    }

    async fn on_event(&mut self, ev: TrainEvent) {
        let hub = &self.worker.queue.hub;
        let value = serde_json::to_value(&ev).unwrap_or_default();
        match &ev {
            TrainEvent::Epoch(m) => {
                let m = serde_json::to_value(m).unwrap_or_default();
                self.metrics.retain(|x| x["epoch"] != m["epoch"]);
                self.metrics.push(m.clone());
                let json = serde_json::Value::Array(self.metrics.clone()).to_string();
                let _ = store::set_metrics(
                    &self.worker.queue.db,
                    self.job_id,
                    &self.worker.owner,
                    &json,
                )
                .await;
                hub.publish(
                    self.job_id,
                    JobEvent {
                        kind: "epoch",
                        data: m,
                        terminal: false,
                    },
                );
                return;
            }
            TrainEvent::Started { .. } => {
                self.load_existing_metrics().await;
                self.merge(&value, "training");
            }
            TrainEvent::Features { .. } => self.merge(&value, "features"),
            TrainEvent::Step { .. } => self.merge(&value, "training"),
            TrainEvent::OutOfMemory { .. } => self.merge(&value, "training"),
        }
        self.dirty = true;
        if Self::due(self.last_publish, Duration::from_millis(250)) {
            self.last_publish = Some(Instant::now());
            hub.publish(
                self.job_id,
                JobEvent {
                    kind: "progress",
                    data: serde_json::Value::Object(self.progress.clone()),
                    terminal: false,
                },
            );
        }
        if Self::due(self.last_write, Duration::from_secs(1)) {
            self.flush().await;
        }
    }

    /// A resumed job keeps the epochs recorded by its earlier attempts.
    async fn load_existing_metrics(&mut self) {
        if let Ok(Some(row)) = store::get(&self.worker.queue.db, self.job_id).await {
            if let Ok(serde_json::Value::Array(list)) = serde_json::from_str(&row.metrics) {
                self.metrics = list;
            }
        }
    }

    fn merge(&mut self, value: &serde_json::Value, phase: &str) {
        if let Some(obj) = value.as_object() {
            for (k, v) in obj {
                if k != "event" {
                    self.progress.insert(k.clone(), v.clone());
                }
            }
        }
        self.progress.insert("phase".into(), phase.into());
    }

    async fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.last_write = Some(Instant::now());
        let json = serde_json::Value::Object(self.progress.clone()).to_string();
        if let Err(e) = store::set_progress(
            &self.worker.queue.db,
            self.job_id,
            &self.worker.owner,
            &json,
        )
        .await
        {
            tracing::warn!(job = %self.job_id, error = ?e, "writing progress failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceHealth;
    use crate::store::datasets::NewDataset;
    use crate::store::jobs::NewJob;

    async fn queue(dir: &std::path::Path) -> JobQueue {
        let url = format!("sqlite://{}", dir.join("vitrine.db").display());
        JobQueue {
            db: crate::db::connect(&url).await.unwrap(),
            hub: Default::default(),
            notify: Default::default(),
            devices: vec![tch::Device::Cpu],
            data_dir: dir.to_path_buf(),
            max_attempts: 3,
            lease: Duration::from_secs(30),
            health: DeviceHealth::new(&["cpu".into()], &prometheus::Registry::new()),
            artifacts: crate::artifacts::Artifacts::local(dir),
            decode_budget: crate::budget::DecodeBudget::new(1 << 30),
        }
    }

    /// Queues a job on a dataset row and a base model directory that exist
    /// (the worker resolves both before training starts).
    async fn queue_job(queue: &JobQueue) -> String {
        let base = queue.data_dir.join("base");
        std::fs::create_dir_all(&base).unwrap();
        let sha = uuid::Uuid::now_v7().simple().to_string();
        let dataset = crate::store::datasets::insert::<crate::datasets::record::DatasetRecord>(
            &queue.db,
            &NewDataset {
                sha256: &sha,
                format: "zip",
                size_bytes: 1,
                path: "datasets/x",
                task: crate::task::Task::MultiClass,
                summary_json: "{}",
            },
        )
        .await
        .unwrap();
        let config = format!(r#"{{"base_model":"{}"}}"#, base.display());
        let (job, _) = store::insert(
            &queue.db,
            NewJob {
                dataset_id: &dataset.id.to_string(),
                config_json: &config,
                idempotency_key: None,
                device: None,
                max_attempts: 3,
            },
        )
        .await
        .unwrap();
        job.id
    }

    /// The training thread sees a fatal CUDA error (injected: tch panics
    /// with libtorch's message, as a failing kernel makes it): the job
    /// fails at once with the reason (attempts were left: a retryable error
    /// would have requeued it), the device leaves service, and the worker
    /// ends without claiming the next job.
    #[tokio::test]
    async fn a_fatal_device_error_fails_the_job_and_stops_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(dir.path()).await;
        let first = queue_job(&queue).await;
        let second = queue_job(&queue).await;
        queue.health.inject_fault(
            "cpu",
            "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported at some other API call",
        );
        let workers = spawn_workers(&queue, CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(workers))
            .await
            .expect("the worker stops by itself");

        let job = store::get(&queue.db, &first).await.unwrap().unwrap();
        assert_eq!(job.status(), JobStatus::Failed);
        assert_eq!(job.attempts, 1, "not retried");
        let error = job.error.unwrap();
        assert!(
            error.starts_with("device cpu failed with a fatal error and is out of service")
                && error.ends_with("training crashed: CUDA error: device-side assert triggered"),
            "{error}"
        );
        assert_eq!(
            store::get(&queue.db, &second)
                .await
                .unwrap()
                .unwrap()
                .status(),
            JobStatus::Queued,
            "nothing more is claimed on a dead device"
        );
        assert!(!queue.health.is_up("cpu"));
    }

    /// The trainer's own words count too: a step that failed with a fatal
    /// message (as `train::session` reports it) or `DeviceFatal`.
    #[test]
    fn fatal_training_errors_are_recognised() {
        let fatal = |e: TrainError| device_fatal_message(&e);
        assert_eq!(
            fatal(TrainError::retry(
                "training step failed: CUDA error: an illegal memory access was encountered"
            ))
            .as_deref(),
            Some("training step failed: CUDA error: an illegal memory access was encountered")
        );
        assert_eq!(
            fatal(TrainError::DeviceFatal(
                "CUDA error: misaligned address".into()
            ))
            .as_deref(),
            Some("CUDA error: misaligned address"),
            "libtorch's words, without the variant's preamble"
        );
        let oom = "training step failed: CUDA out of memory. Tried to allocate 2.00 GiB";
        assert_eq!(fatal(TrainError::retry(oom)), None);
        assert_eq!(
            fatal(TrainError::fatal("the job's dataset no longer exists")),
            None
        );
    }
}
