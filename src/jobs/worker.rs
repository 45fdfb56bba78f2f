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
use crate::train::{ModelCard, TrainError, TrainEvent, TrainOutcome, TrainSpec};

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
        tracing::info!(job = %job.id, attempt = job.attempts, device = %self.device_name, owner = %self.owner, "job started");
        self.publish_status(
            &job.id,
            JobStatus::Running,
            false,
            serde_json::json!({"attempts": job.attempts}),
        );
        let policy = RetryPolicy::of(&job);
        let spec = match self.resolve(&job).await {
            Ok(spec) => spec,
            Err(e) => {
                let outcome = Outcome::of(Stop::Finished, Err(e), policy, job.attempts);
                self.conclude(&job, outcome).await;
                return;
            }
        };
        let work_dir = spec.work_dir.clone();
        let training = self.start_training(spec);
        let (result, stop) = self.supervise(&job.id, training, shutdown).await;
        let outcome = Outcome::of(stop, result, policy, job.attempts);
        if let Some(status) = self.conclude(&job, outcome).await {
            self.clean_up(&job.id, &work_dir, status).await;
        }
    }

    /// Starts `train::run` on an OS thread of its own. A panic there (a
    /// libtorch error surfaces as one) becomes a retryable error.
    fn start_training(&self, spec: TrainSpec) -> Training {
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let stop_flag = stop.clone();
        let health = self.queue.health.clone();
        let device_name = self.device_name.clone();
        let ranks = self
            .queue
            .training_ranks
            .hold(&self.device_name, spec.config.ranks_per_node());
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
                drop(ranks);
                let _ = done_tx.send(result);
            })
            .expect("spawning the training thread");
        Training { stop, events, done }
    }

    /// Relays the trainer's reports and renews the lease until training
    /// ends; a cancel, a lost lease or a shutdown raises the stop flag (the
    /// trainer stops at its next step). Returns the trainer's result and
    /// why the run stopped.
    async fn supervise(
        &self,
        id: &str,
        mut training: Training,
        shutdown: &CancellationToken,
    ) -> (Result<TrainOutcome, TrainError>, Stop) {
        let mut reporter = Reporter::new(self, id);
        let mut stop = Stop::Finished;
        let mut lease_tick = tokio::time::interval(Duration::from_millis(
            (self.lease_ms() as u64 / 3).clamp(200, 1000),
        ));
        let result = loop {
            tokio::select! {
                Some(ev) = training.events.recv() => reporter.on_event(ev).await,
                _ = lease_tick.tick() => {
                    if let Some(why) = self.renew_lease(id, stop).await {
                        stop = why;
                        training.stop.store(true, Ordering::Relaxed);
                    }
                }
                _ = shutdown.cancelled(), if stop == Stop::Finished => {
                    tracing::info!(job = %id, "shutting down: stopping the job at the next step");
                    stop = Stop::Shutdown;
                    training.stop.store(true, Ordering::Relaxed);
                }
                result = &mut training.done => {
                    break result.unwrap_or_else(|_| Err(TrainError::retry("the training thread vanished")));
                }
            }
        };
        while let Ok(ev) = training.events.try_recv() {
            reporter.on_event(ev).await;
        }
        reporter.flush().await;
        (result, stop)
    }

    /// Renews the lease. `Some` when the run must stop: a cancel was asked
    /// for (noticed once), or the lease is lost.
    async fn renew_lease(&self, id: &str, stop: Stop) -> Option<Stop> {
        match store::renew_lease(&self.queue.db, id, &self.owner, self.lease_ms()).await {
            Ok(Some(true)) if stop == Stop::Finished => {
                tracing::info!(job = %id, "cancel requested");
                Some(Stop::Cancelled)
            }
            Ok(None) => {
                tracing::warn!(job = %id, owner = %self.owner, "lease lost; stopping");
                Some(Stop::LeaseLost)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(job = %id, error = ?e, "renewing the lease failed");
                None
            }
        }
    }

    /// A job that reached its end needs its work directory no more, nor
    /// its stored checkpoints, unless it failed (a store outage must not
    /// cost the last good one).
    async fn clean_up(&self, id: &str, work_dir: &std::path::Path, status: JobStatus) {
        let _ = tokio::fs::remove_dir_all(work_dir).await;
        if status != JobStatus::Failed {
            self.queue.artifacts.delete_job(id).await;
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
            input_cache: self.queue.input_cache.clone(),
            oom_above_micro_batch: None,
        })
    }

    /// Takes the step `outcome` names. Returns the job's terminal status
    /// when it reached one (its work directory can go), `None` when it goes
    /// on elsewhere or later.
    async fn conclude(&self, job: &JobRow, outcome: Outcome) -> Option<JobStatus> {
        match outcome {
            Outcome::Abandon => None,
            Outcome::Requeue => {
                self.requeue(job).await;
                None
            }
            Outcome::Retry(msg) => {
                self.retry(job, &msg).await;
                None
            }
            Outcome::DeviceLost(msg) => {
                let msg = self.take_device_out(&msg);
                Some(self.fail(job, &msg).await)
            }
            Outcome::Fail(msg) => Some(self.fail(job, &msg).await),
            Outcome::Finish(trained, status) => Some(self.finish(job, *trained, status).await),
        }
    }

    /// Shutdown stopped the job: back to the queue with its attempt
    /// refunded (a shutdown is not the job's fault); the next start resumes
    /// it from its checkpoint.
    async fn requeue(&self, job: &JobRow) {
        let requeued = store::requeue(&self.queue.db, &job.id, &self.owner, true, None).await;
        tracing::info!(job = %job.id, owner = %self.owner, ok = ?requeued, "job requeued for the next start");
        self.publish_status(&job.id, JobStatus::Queued, false, serde_json::json!({}));
    }

    /// A retryable failure with attempts left: back to the queue at once,
    /// the attempt spent, and a worker woken to take it.
    async fn retry(&self, job: &JobRow, msg: &str) {
        tracing::warn!(job = %job.id, owner = %self.owner, error = %msg, "job failed; will retry");
        let _ = store::requeue(&self.queue.db, &job.id, &self.owner, false, Some(msg)).await;
        self.publish_status(
            &job.id,
            JobStatus::Queued,
            false,
            serde_json::json!({"error": msg}),
        );
        self.queue.notify.notify_one();
    }

    /// The device's CUDA context is dead: it leaves service (this worker
    /// stops claiming), and the job's error says why it was not retried.
    fn take_device_out(&self, msg: &str) -> String {
        self.queue.health.report_fatal(&self.device_name, msg);
        format!(
            "device {} failed with a fatal error and is out of service until the service \
             restarts (the job is not retried there): {}",
            self.device_name,
            msg.lines().next().unwrap_or_default()
        )
    }

    /// Ends the job `failed` with `msg`.
    async fn fail(&self, job: &JobRow, msg: &str) -> JobStatus {
        let status = JobStatus::Failed;
        self.record_end(job, status, Some(msg)).await;
        self.ended(job, status, None, Some(msg));
        status
    }

    /// Training ended (to the last epoch, or early on a cancel): the best
    /// epoch becomes the job's model. A cancelled run with no epoch ends
    /// with no model; any other run without one has failed.
    async fn finish(&self, job: &JobRow, trained: TrainOutcome, status: JobStatus) -> JobStatus {
        match self.record_model(job, trained, status).await {
            Ok(Some(model_id)) => self.ended(job, status, Some(&model_id), None),
            Ok(None) => {
                self.record_end(job, status, None).await;
                self.ended(job, status, None, None);
            }
            Err(msg) => return self.fail(job, &msg).await,
        }
        status
    }

    /// Writes the job's end without a model, under the lease.
    async fn record_end(&self, job: &JobRow, status: JobStatus, error: Option<&str>) {
        let id = &job.id;
        if let Err(e) = store::finish(&self.queue.db, id, &self.owner, status, None, error).await {
            tracing::error!(job = %id, error = ?e, "recording the job's end failed");
        }
    }

    /// Logs the job's end and tells its followers (the stream's last event).
    fn ended(&self, job: &JobRow, status: JobStatus, model_id: Option<&str>, error: Option<&str>) {
        tracing::info!(job = %job.id, owner = %self.owner, status = status.as_str(), model = ?model_id, error = ?error, "job ended");
        self.publish_status(
            &job.id,
            status,
            true,
            serde_json::json!({"model_id": model_id, "error": error}),
        );
    }

    /// Moves the best model into `models/` and records it with the job's end
    /// in one transaction. `Ok(None)`: a cancelled run that produced no
    /// model; a run of another kind without one has failed.
    async fn record_model(
        &self,
        job: &JobRow,
        trained: TrainOutcome,
        status: JobStatus,
    ) -> Result<Option<String>, String> {
        let (Some(best), Some(card)) = (trained.best_model_dir, trained.card) else {
            return match status {
                JobStatus::Cancelled => Ok(None),
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
        let rel = rel.to_string_lossy().into_owned();
        let stored = self
            .store_model(job, &model_id, &rel, &dest, &card, status)
            .await;
        if stored.is_err() {
            // No row names the model: neither its directory nor its copy
            // in the shared store may stay.
            let _ = tokio::fs::remove_dir_all(&dest).await;
            let _ = self.queue.artifacts.delete_model(&rel).await;
        }
        stored.map(|()| Some(model_id))
    }

    /// Puts the model in the shared store, then records it with the job's
    /// end under the lease. The store comes first, so no API node ever
    /// looks for a model the store lacks.
    async fn store_model(
        &self,
        job: &JobRow,
        model_id: &str,
        rel: &str,
        dest: &std::path::Path,
        card: &ModelCard,
        status: JobStatus,
    ) -> Result<(), String> {
        self.queue
            .artifacts
            .put_model(rel, dest)
            .await
            .map_err(|e| format!("storing the trained model failed: {e:#}"))?;
        let labels = serde_json::to_string(&card.labels).unwrap_or_default();
        let card_json = serde_json::to_string(card).unwrap_or_default();
        let model = NewModel {
            id: model_id,
            job_id: Some(&job.id),
            path: rel,
            base_model: card.base_model(),
            task: card.task,
            labels_json: &labels,
            metrics_json: &card_json,
        };
        match store::finish_with_model(&self.queue.db, &job.id, &self.owner, status, model).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("lost the job's lease before recording its model".into()),
            Err(e) => {
                tracing::error!(job = %job.id, error = ?e, "recording the model failed");
                Err("recording the trained model failed".into())
            }
        }
    }
}

/// The trainer on its own OS thread: its stop flag, its reports, its
/// result.
struct Training {
    stop: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<TrainEvent>,
    done: oneshot::Receiver<Result<TrainOutcome, TrainError>>,
}

/// When a failed job runs again. The attempt is counted when a worker
/// claims the job; a retryable error sends it back to the queue while
/// attempts are left, at once (no backoff: a delay would need a
/// not-before time the claim honours). A fatal error (bad dataset, config
/// or model) and a dead device are never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RetryPolicy {
    /// Starts of the job, this one included, before it fails for good.
    max_attempts: i64,
}

impl RetryPolicy {
    /// The job's own policy (its `max_attempts`, set when it was queued).
    fn of(job: &JobRow) -> Self {
        Self {
            max_attempts: job.max_attempts,
        }
    }

    /// What a failed run leads to, after `attempts` starts.
    fn on_error(self, attempts: i64, error: TrainError) -> Outcome {
        if let Some(msg) = device_fatal_message(&error) {
            return Outcome::DeviceLost(msg);
        }
        match error {
            TrainError::Retryable(msg) if attempts < self.max_attempts => Outcome::Retry(msg),
            other => Outcome::Fail(other.to_string()),
        }
    }
}

/// How the run of one job ended, from the worker's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Finished,
    Cancelled,
    Shutdown,
    LeaseLost,
}

/// What the worker does once a run has ended: each a named step of
/// [`Worker::conclude`].
#[derive(Debug)]
enum Outcome {
    /// The lease went to another worker: the job is no longer ours to
    /// write.
    Abandon,
    /// Shutdown interrupted it: back to the queue, its attempt refunded.
    Requeue,
    /// A retryable error with attempts left (the message).
    Retry(String),
    /// The device's CUDA context died under it (libtorch's message).
    DeviceLost(String),
    /// Failed for good (the message).
    Fail(String),
    /// Trained to its end, or stopped by a cancel: record its model.
    Finish(Box<TrainOutcome>, JobStatus),
}

impl Outcome {
    /// The step, from why the run stopped and what the trainer returned.
    fn of(
        stop: Stop,
        result: Result<TrainOutcome, TrainError>,
        policy: RetryPolicy,
        attempts: i64,
    ) -> Self {
        match (stop, result) {
            (Stop::LeaseLost, _) => Self::Abandon,
            (Stop::Shutdown, Ok(trained)) if trained.interrupted => Self::Requeue,
            (Stop::Cancelled, Ok(trained)) => Self::Finish(Box::new(trained), JobStatus::Cancelled),
            (_, Ok(trained)) => Self::Finish(Box::new(trained), JobStatus::Succeeded),
            (_, Err(e)) => policy.on_error(attempts, e),
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
                self.worker.queue.phase_seconds.add(&m.time_shares);
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
            TrainEvent::Caching { .. } => self.merge(&value, "caching"),
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
            input_cache: None,
            phase_seconds: Default::default(),
            training_ranks: Default::default(),
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

    /// Each way a run can end leads to one named step; the retry policy
    /// retries a retryable error while attempts are left, and nothing else.
    #[test]
    fn each_ending_leads_to_its_step() {
        let policy = RetryPolicy { max_attempts: 3 };
        let trained = |interrupted| {
            Ok(TrainOutcome {
                best_model_dir: None,
                interrupted,
                card: None,
            })
        };
        let step = |stop, result, attempts| Outcome::of(stop, result, policy, attempts);
        let retry = |m: &str| Err(TrainError::retry(m));
        use Outcome::*;
        assert!(matches!(step(Stop::LeaseLost, trained(true), 1), Abandon));
        assert!(matches!(step(Stop::LeaseLost, retry("x"), 1), Abandon));
        assert!(matches!(step(Stop::Shutdown, trained(true), 1), Requeue));
        // A shutdown that came as training ended: the run is complete.
        assert!(matches!(
            step(Stop::Shutdown, trained(false), 1),
            Finish(_, JobStatus::Succeeded)
        ));
        assert!(matches!(
            step(Stop::Cancelled, trained(true), 1),
            Finish(_, JobStatus::Cancelled)
        ));
        assert!(matches!(
            step(Stop::Finished, trained(false), 1),
            Finish(_, JobStatus::Succeeded)
        ));
        assert!(matches!(step(Stop::Finished, retry("disk"), 2), Retry(m) if m == "disk"));
        assert!(matches!(step(Stop::Shutdown, retry("disk"), 2), Retry(_)));
        assert!(matches!(step(Stop::Finished, retry("disk"), 3), Fail(m) if m == "disk"));
        let fatal = Err(TrainError::fatal("bad config"));
        assert!(matches!(step(Stop::Finished, fatal, 1), Fail(m) if m == "bad config"));
        let crashed =
            retry("training crashed: CUDA error: an illegal memory access was encountered");
        assert!(matches!(step(Stop::Finished, crashed, 1), DeviceLost(_)));
        let dead = Err(TrainError::DeviceFatal(
            "CUDA error: misaligned address".into(),
        ));
        assert!(matches!(
            step(Stop::Cancelled, dead, 1),
            DeviceLost(m) if m == "CUDA error: misaligned address"
        ));
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
