//! One worker per configured device. It claims a job, runs the training on
//! an OS thread of its own, renews its lease while listening to the
//! trainer's reports, and records the outcome under that lease.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::events::JobEvent;
use crate::http::AppState;
use crate::store::jobs::{self as store, JobRow, JobStatus};
use crate::store::models::NewModel;
use crate::train::config::JobConfig;
use crate::train::{TrainError, TrainEvent, TrainOutcome, TrainSpec};

/// Starts a worker task per device; they stop when `shutdown` fires,
/// requeueing the job they were running.
pub fn spawn_workers(
    state: AppState,
    devices: Vec<tch::Device>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    devices
        .into_iter()
        .map(|device| {
            let worker = Worker::new(state.clone(), device);
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect()
}

struct Worker {
    state: AppState,
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
    fn new(state: AppState, device: tch::Device) -> Self {
        let device_name = crate::torch_info::device_name(device);
        let owner = format!(
            "{}-{}-{}",
            std::process::id(),
            device_name,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        Self {
            state,
            device,
            device_name,
            owner,
        }
    }

    fn lease_ms(&self) -> i64 {
        (self.state.config.job_lease_secs * 1000) as i64
    }

    async fn run(self, shutdown: CancellationToken) {
        tracing::info!(device = %self.device_name, owner = %self.owner, "worker started");
        let poll = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            if let Err(e) = store::reap_expired(&self.state.db).await {
                tracing::warn!(error = ?e, "reaping expired leases failed");
            }
            let claimed = store::claim_next(
                &self.state.db,
                &self.device_name,
                &self.owner,
                self.lease_ms(),
            )
            .await;
            match claimed {
                Ok(Some(job)) => self.run_job(job, &shutdown).await,
                Ok(None) => {
                    tokio::select! {
                        _ = self.state.jobs.notify.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.cancelled() => {}
                    }
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
        self.state.jobs.hub.publish(
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
        tracing::info!(job = %id, attempt = job.attempts, device = %self.device_name, "job started");
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
            std::thread::Builder::new()
                .name(format!("vitrine-train-{}", self.device_name))
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::train::run(spec, events_tx, stop_flag)
                    }))
                    .unwrap_or_else(|p| {
                        Err(TrainError::Retryable(format!(
                            "training crashed: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
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
                    match store::renew_lease(&self.state.db, &id, &self.owner, self.lease_ms()).await {
                        Ok(Some(true)) if matches!(stop, Stop::Finished) => {
                            tracing::info!(job = %id, "cancel requested");
                            stop = Stop::Cancelled;
                            stop_flag.store(true, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            tracing::warn!(job = %id, "lease lost; stopping");
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
        if ended {
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
        }
    }

    /// Finds the dataset and the base model; failures here are fatal.
    async fn resolve(&self, job: &JobRow) -> Result<TrainSpec, TrainError> {
        let config: JobConfig = serde_json::from_str(&job.config)
            .map_err(|e| TrainError::fatal(format!("stored config is invalid: {e}")))?;
        let dataset_id = uuid::Uuid::parse_str(&job.dataset_id).map_err(TrainError::fatal)?;
        let dataset = crate::store::datasets::get(&self.state.db, dataset_id)
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
        let data_dir = &self.state.config.data_dir;
        Ok(TrainSpec {
            job_id: job.id.clone(),
            config,
            dataset_dir: data_dir.join(&dataset.path),
            base_model_dir,
            work_dir: data_dir.join("jobs").join(&job.id),
            device: self.device,
        })
    }

    /// Records how the job ended. Returns true when the job reached a
    /// terminal state (its work directory can go).
    async fn conclude(
        &self,
        job: &JobRow,
        result: Result<TrainOutcome, TrainError>,
        stop: Stop,
    ) -> bool {
        let db = &self.state.db;
        let id = job.id.as_str();
        let owner = self.owner.as_str();
        let outcome = match (stop, result) {
            (Stop::LeaseLost, _) => return false,
            (Stop::Shutdown, Ok(o)) if o.interrupted => {
                let requeued = store::requeue(db, id, owner, true, None).await;
                tracing::info!(job = %id, ok = ?requeued, "job requeued for the next start");
                self.publish_status(id, JobStatus::Queued, false, serde_json::json!({}));
                return false;
            }
            (Stop::Cancelled, Ok(o)) => self.record_model(job, o, JobStatus::Cancelled).await,
            (_, Ok(o)) => self.record_model(job, o, JobStatus::Succeeded).await,
            (_, Err(TrainError::Retryable(msg))) if job.attempts < job.max_attempts => {
                tracing::warn!(job = %id, error = %msg, "job failed; will retry");
                let _ = store::requeue(db, id, owner, false, Some(&msg)).await;
                self.publish_status(
                    id,
                    JobStatus::Queued,
                    false,
                    serde_json::json!({"error": msg}),
                );
                self.state.jobs.notify.notify_one();
                return false;
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
        tracing::info!(job = %id, status = status.as_str(), model = ?model_id, error = ?error, "job ended");
        self.publish_status(
            id,
            status,
            true,
            serde_json::json!({"model_id": model_id, "error": error}),
        );
        true
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
        let Some(best) = outcome.best_model_dir else {
            return match status {
                JobStatus::Cancelled => Ok((JobStatus::Cancelled, None)),
                _ => Err("training ended before any epoch completed".into()),
            };
        };
        let model_id = uuid::Uuid::now_v7().to_string();
        let rel = PathBuf::from("models").join(&model_id);
        let dest = self.state.config.data_dir.join(&rel);
        let moved = async {
            tokio::fs::create_dir_all(dest.parent().unwrap()).await?;
            tokio::fs::rename(&best, &dest).await
        };
        if let Err(e) = moved.await {
            tracing::error!(job = %job.id, error = ?e, "moving the model failed");
            return Err("storing the trained model failed".into());
        }
        let config: serde_json::Value = serde_json::from_str(&job.config).unwrap_or_default();
        let labels = serde_json::to_string(&outcome.labels).unwrap_or_default();
        let metrics = outcome.metrics.to_string();
        let task = serde_json::to_value(outcome.task)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let rel_str = rel.to_string_lossy();
        let recorded = store::finish_with_model(
            &self.state.db,
            &job.id,
            &self.owner,
            status,
            NewModel {
                id: &model_id,
                job_id: Some(&job.id),
                path: &rel_str,
                base_model: config["base_model"].as_str().unwrap_or_default(),
                task: &task,
                labels_json: &labels,
                metrics_json: &metrics,
            },
        )
        .await;
        match recorded {
            Ok(true) => Ok((status, Some(model_id))),
            Ok(false) => {
                let _ = tokio::fs::remove_dir_all(&dest).await;
                Err("lost the job's lease before recording its model".into())
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = ?e, "recording the model failed");
                let _ = tokio::fs::remove_dir_all(&dest).await;
                Err("recording the trained model failed".into())
            }
        }
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
        let hub = &self.worker.state.jobs.hub;
        let value = serde_json::to_value(&ev).unwrap_or_default();
        match &ev {
            TrainEvent::Epoch(m) => {
                let m = serde_json::to_value(m).unwrap_or_default();
                self.metrics.retain(|x| x["epoch"] != m["epoch"]);
                self.metrics.push(m.clone());
                let json = serde_json::Value::Array(self.metrics.clone()).to_string();
                let _ = store::set_metrics(
                    &self.worker.state.db,
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
        if let Ok(Some(row)) = store::get(&self.worker.state.db, self.job_id).await {
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
            &self.worker.state.db,
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
