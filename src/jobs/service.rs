//! Jobs as the API sees them: submitting (everything that can be refused
//! is refused here, before the job is queued), reading, cancelling and
//! following one live.

use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::events::JobEvent;
use super::view::JobView;
use super::JobQueue;
use crate::datasets::record::{DatasetRecord, DatasetStatus};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::model::preflight::BaseModelInfo;
use crate::store::jobs::{self as store, JobRow, JobStatus, NewJob};
use crate::task::Task;
use crate::train::config::{JobConfig, Mode};

/// Parses the client's config document; the error names the field.
pub fn parse_config(text: &str) -> AppResult<JobConfig> {
    JobConfig::from_json(text).map_err(|e| AppError::unprocessable("invalid_config", e))
}

/// Queues a job on an already stored dataset. Returns the job and whether
/// it was created now (false: an earlier request with the same
/// idempotency key created it).
pub async fn submit(
    queue: &JobQueue,
    dataset_id: &str,
    config: JobConfig,
    idempotency_key: Option<&str>,
) -> AppResult<(JobView, bool)> {
    let (job, created) = queue_job(queue, dataset_id, config, idempotency_key).await?;
    Ok((view_of(&queue.db, &job).await?, created))
}

/// [`submit`], up to the stored row.
async fn queue_job(
    queue: &JobQueue,
    dataset_id: &str,
    config: JobConfig,
    idempotency_key: Option<&str>,
) -> AppResult<(JobRow, bool)> {
    if let Some(key) = idempotency_key {
        if let Some(job) = store::find_by_idempotency_key(&queue.db, key).await? {
            return Ok((job, false));
        }
    }
    let dataset = find_dataset(queue, dataset_id).await?;
    check_job(queue, &dataset, &config).await?;
    let config_json = serde_json::to_string(&config).map_err(anyhow::Error::from)?;
    let (job, created) = store::insert(
        &queue.db,
        NewJob {
            dataset_id,
            config_json: &config_json,
            idempotency_key,
            device: config.device.as_deref(),
            max_attempts: queue.max_attempts as i64,
        },
    )
    .await?;
    if created {
        tracing::info!(job = %job.id, dataset = %dataset_id, "job queued");
        queue.notify.notify_waiters();
    }
    if !dataset.is_ready() && fail_if_dataset_failed(queue, dataset_id).await? {
        let job = store::get(&queue.db, &job.id).await?.unwrap_or(job);
        return Ok((job, created));
    }
    Ok((job, created))
}

fn not_found(id: &str) -> AppError {
    AppError::not_found(format!("no job `{id}`"))
}

/// The view of a job row in hand (one just queued or cancelled).
async fn view_of(db: &Db, job: &JobRow) -> AppResult<JobView> {
    let summary = store::dataset_summary(db, &job.dataset_id).await?;
    Ok(JobView::with_dataset(job, summary.as_deref())?)
}

/// A job as the API shows it, with its dataset's summary.
pub async fn get(db: &Db, id: &str) -> AppResult<JobView> {
    let found = store::get_with_dataset(db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(JobView::with_dataset(
        &found.job,
        found.dataset_summary.as_deref(),
    )?)
}

/// A page of jobs, newest first (see [`store::list`]), read in one query.
pub async fn list(
    db: &Db,
    status: Option<JobStatus>,
    before: Option<&str>,
    limit: i64,
) -> AppResult<Vec<JobView>> {
    let rows = store::list_with_dataset(db, status, before, limit).await?;
    let views = rows
        .iter()
        .map(|r| JobView::with_dataset(&r.job, r.dataset_summary.as_deref()))
        .collect::<anyhow::Result<_>>()?;
    Ok(views)
}

/// Cancels a job: a queued one at once (its followers are told), a running
/// one is flagged and its worker stops it at the next step. The database
/// decides in one statement, so a job that ended meanwhile is a 409
/// `job_finished`, as one that had ended before.
pub async fn cancel(queue: &JobQueue, id: &str) -> AppResult<JobView> {
    let Some(row) = store::request_cancel(&queue.db, id).await? else {
        return Err(match store::get(&queue.db, id).await? {
            Some(ended) => AppError::conflict(
                "job_finished",
                format!("job `{id}` already ended ({})", ended.status),
            ),
            None => not_found(id),
        });
    };
    if row.status() == JobStatus::Cancelled {
        queue.hub.publish(
            id,
            JobEvent {
                kind: "status",
                data: serde_json::json!({"id": id, "status": "cancelled"}),
                terminal: true,
            },
        );
    }
    view_of(&queue.db, &row).await
}

/// How often a follower reads the job from the database as well: another
/// node (or a missed broadcast) may end it.
const FOLLOW_POLL: Duration = Duration::from_secs(2);

/// Follows a job live: its view now, and its events from then on
/// (`status`, `progress`, `epoch`), ending with the job (at once when it
/// has already ended).
pub async fn follow(
    queue: &JobQueue,
    id: &str,
) -> AppResult<(JobView, impl Stream<Item = JobEvent> + Send + 'static)> {
    // Only a job that exists gets a channel (an unknown id must leave
    // nothing behind), and the snapshot is read after subscribing so that
    // no event falls in between. The subscription frees the channel when
    // the stream ends or its client leaves.
    store::get(&queue.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut rx = queue.hub.subscribe(id);
    let first = get(&queue.db, id).await?;
    let done = first.status.is_terminal();
    let (queue, id) = (queue.clone(), id.to_string());
    let events = async_stream::stream! {
        if done {
            return;
        }
        let mut poll = tokio::time::interval(FOLLOW_POLL);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(ev) => {
                        let terminal = ev.terminal;
                        yield ev;
                        if terminal { return; }
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => rx = queue.hub.subscribe(&id),
                },
                _ = poll.tick() => {
                    if let Ok(Some(row)) = store::get(&queue.db, &id).await {
                        if row.status().is_terminal() {
                            if let Ok(view) = view_of(&queue.db, &row).await {
                                yield ended(&view);
                            }
                            return;
                        }
                    }
                }
            }
        }
    };
    Ok((first, events))
}

/// The final `status` event of a job the database says has ended.
fn ended(view: &JobView) -> JobEvent {
    JobEvent {
        kind: "status",
        data: serde_json::to_value(view).unwrap_or_default(),
        terminal: true,
    }
}

/// A job queued on a dataset still validating waits for it; if the
/// dataset was refused meanwhile, after the job was checked but before it
/// was inserted, the refusal's transaction could not see the job: fail it
/// (and any other such job) here, as the refusal would have. Returns
/// whether the dataset failed.
pub async fn fail_if_dataset_failed(queue: &JobQueue, dataset_id: &str) -> AppResult<bool> {
    let Ok(uuid) = uuid::Uuid::parse_str(dataset_id) else {
        return Ok(false);
    };
    let Some(dataset) = crate::datasets::record::get(&queue.db, uuid).await? else {
        return Ok(false);
    };
    let Some(error) = dataset
        .error
        .filter(|_| dataset.status == DatasetStatus::Failed)
    else {
        return Ok(false);
    };
    let message = format!("the dataset was refused ({}): {}", error.code, error.detail);
    store::fail_queued_on_dataset(&queue.db, dataset_id, &error.code, &message).await?;
    Ok(true)
}

/// The stored dataset a submission names, ready or still validating (the
/// job then waits for it); an unknown id, or a dataset that was refused,
/// is a 422.
pub async fn find_dataset(queue: &JobQueue, dataset_id: &str) -> AppResult<DatasetRecord> {
    let unknown = || {
        AppError::unprocessable(
            "unknown_dataset",
            format!("no dataset `{dataset_id}`; upload one with POST /datasets"),
        )
    };
    let uuid = uuid::Uuid::parse_str(dataset_id).map_err(|_| unknown())?;
    let dataset = crate::datasets::record::get(&queue.db, uuid)
        .await?
        .ok_or_else(unknown)?;
    if let (DatasetStatus::Failed, Some(error)) = (dataset.status, &dataset.error) {
        return Err(AppError::unprocessable(
            "dataset_failed",
            format!(
                "dataset `{dataset_id}` was refused ({}): {}",
                error.code, error.detail
            ),
        ));
    }
    Ok(dataset)
}

/// Every check a job's config must pass before it is queued (device, task,
/// base model), for `submit` and for each candidate of a sweep alike.
pub async fn check_job(
    queue: &JobQueue,
    dataset: &DatasetRecord,
    config: &JobConfig,
) -> AppResult<()> {
    // Ranks first: their refusal names the devices a multi-device job
    // lacks, which the single-device check would only call `cuda`.
    check_ranks(queue, config)?;
    check_device(queue, config.device.as_deref())?;
    check_task(config, dataset.task)?;
    check_base_model(config).await
}

/// A job asking for a device nobody here serves would wait forever: `cuda`
/// with no GPU worker, `cuda:1` with workers on `cpu,cuda:0`, or a device
/// taken out of service by a fatal error. A process with no workers
/// (`--no-workers`) queues it: another node may serve it.
fn check_device(queue: &JobQueue, wanted: Option<&str>) -> AppResult<()> {
    let Some(wanted) = wanted else { return Ok(()) };
    let devices = queue.device_names();
    if devices.is_empty() {
        return Ok(());
    }
    let matches = |d: &String| d == wanted || (wanted == "cuda" && d.starts_with("cuda:"));
    let in_service: Vec<&String> = devices.iter().filter(|d| queue.health.is_up(d)).collect();
    if in_service.iter().any(|d| matches(d)) {
        return Ok(());
    }
    let asked = if wanted == "cuda" {
        "a GPU (`cuda`)".to_string()
    } else {
        format!("`{wanted}`")
    };
    let detail = if devices.iter().any(matches) {
        format!(
            "the job asks for {asked}, but its worker is out of service after a fatal device error; \
             devices in service: {}",
            list_or_none(&in_service)
        )
    } else {
        format!(
            "the job asks for {asked}, but no worker here runs on it; this service trains on {}",
            devices.join(", ")
        )
    };
    Err(AppError::unprocessable("no_such_device", detail))
}

/// Several devices or nodes per job: what this node cannot run is refused
/// by name (`train/devices.rs`), not queued.
fn check_ranks(queue: &JobQueue, config: &JobConfig) -> AppResult<()> {
    let names = queue.device_names();
    let node = crate::train::devices::NodeDevices {
        names: &names,
        cpus: crate::torch_info::threads::available_cpus(),
    };
    crate::train::devices::check_ranks(
        config.devices.as_ref(),
        config.device.as_deref(),
        config.nodes,
        &node,
    )
    .map_err(|r| AppError::unprocessable(r.code, r.detail))
}

fn list_or_none(devices: &[&String]) -> String {
    if devices.is_empty() {
        "none".into()
    } else {
        devices
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `dataset_task` is `None` while the dataset is validating: a config
/// forcing `multi_class` on what turns out multi-label fails when the job
/// starts (the trainer refuses the manifest), with the same message.
fn check_task(config: &JobConfig, dataset_task: Option<Task>) -> AppResult<()> {
    if config.task == Some(Task::MultiClass) && dataset_task == Some(Task::MultiLabel) {
        return Err(AppError::unprocessable(
            "task_mismatch",
            "task `multi_class` was asked for, but the dataset gives some images several labels",
        ));
    }
    let Some(task) = config.task.or(dataset_task) else {
        return Ok(());
    };
    if let Some(metric) = config.selection_metric.filter(|m| !m.available_for(task)) {
        return Err(AppError::unprocessable(
            "invalid_config",
            format!(
                "`selection_metric`: `{}` is not a metric of a {} task",
                metric.as_str(),
                task.as_str()
            ),
        ));
    }
    Ok(())
}

/// How long a submission waits for the Hub to answer about a base model
/// before queueing the job anyway (the worker downloads it and reports).
const HUB_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The base model must be a local model directory or a Hub id whose
/// `config.json` can be fetched (or is cached), of a supported architecture,
/// deep enough for `partial` mode's `unfreeze_last_n`, with the stochastic
/// depth and dropout a job's `drop_path_rate` and `dropout` set.
async fn check_base_model(config: &JobConfig) -> AppResult<()> {
    let (source, image_size) = (config.base_model.clone(), config.image_size);
    let probe = tokio::task::spawn_blocking(move || check_base_model_blocking(&source, image_size));
    let checked = match tokio::time::timeout(HUB_PROBE_TIMEOUT, probe).await {
        Ok(joined) => joined.map_err(anyhow::Error::from)?,
        Err(_) => {
            tracing::warn!("the Hub did not answer in time; the worker will fetch the base model");
            Ok(None)
        }
    };
    let info =
        checked.map_err(|e| AppError::unprocessable("unknown_base_model", format!("{e:#}")))?;
    if let Some(info) = &info {
        crate::model::Regularisation {
            drop_path_rate: config.drop_path_rate,
            dropout: config.dropout,
        }
        .check(&info.model_type)
        .map_err(|e| AppError::unprocessable("invalid_config", e))?;
    }
    if let (Some(info), Mode::Lora) = (&info, config.mode) {
        crate::model::lora::check_family(&info.model_type)
            .map_err(|e| AppError::unprocessable(e.code(), e.to_string()))?;
    }
    if let (Some(info), Mode::Partial) = (info, config.mode) {
        let n = config.unfreeze_last_n();
        if n > info.num_layers {
            return Err(AppError::unprocessable(
                "invalid_config",
                format!(
                    "`unfreeze_last_n` is {n}, but the base model ({}) has {} {}; \
                     use at most {} or mode `full`",
                    info.model_type,
                    info.num_layers,
                    info.layer_unit(),
                    info.num_layers
                ),
            ));
        }
    }
    Ok(())
}

/// A local directory (or cached Hub snapshot) must hold a checkpoint
/// vitrine can train ([`crate::model::preflight`]). A Hub id is
/// checked against the cache (and must be there when offline); one not yet
/// cached has only its `config.json` fetched here (a misspelt id or an
/// unsupported architecture is refused at once), and the worker downloads
/// the weights, so a slow download never holds up the request. When the Hub
/// cannot be reached the job is queued and the worker reports.
fn check_base_model_blocking(
    source: &str,
    image_size: Option<u32>,
) -> anyhow::Result<Option<BaseModelInfo>> {
    use crate::model::hub::{probe_config, HubId, HubProbe};
    use crate::model::{preflight, resolve_model_source, HubOptions};
    let options = HubOptions::from_env();
    let cache_only = HubOptions {
        offline: true,
        ..options.clone()
    };
    let dir = match resolve_model_source(source, &cache_only) {
        Ok(dir) => dir,
        Err(e) => {
            let hub_id = HubId::parse(source)
                .filter(|_| !source.starts_with('/') && !source.starts_with('.'));
            match hub_id {
                Some(id) if !options.offline => match probe_config(&id, &options) {
                    HubProbe::Config(config) => {
                        return Ok(preflight::check_config(&config, image_size)?);
                    }
                    HubProbe::Refused(detail) => {
                        anyhow::bail!("base model `{source}`: {detail}")
                    }
                    HubProbe::Unreachable(why) => {
                        tracing::warn!(source, error = %why, "the Hub is unreachable; the worker will fetch the base model");
                        return Ok(None);
                    }
                },
                _ => return Err(e.into()),
            }
        }
    };
    Ok(Some(preflight::check_base_model(&dir, image_size)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceHealth;

    fn queue(devices: &[tch::Device], health: &DeviceHealth) -> JobQueue {
        JobQueue {
            // Never connected: check_device reads no table.
            db: crate::db::Db::connect_lazy("sqlite::memory:").unwrap(),
            hub: Default::default(),
            notify: Default::default(),
            devices: devices.to_vec(),
            data_dir: "unused".into(),
            max_attempts: 3,
            lease: std::time::Duration::from_secs(30),
            health: health.clone(),
            artifacts: crate::artifacts::Artifacts::local("unused".as_ref()),
            decode_budget: crate::budget::DecodeBudget::new(1 << 30),
            input_cache: None,
            phase_seconds: Default::default(),
            training_ranks: Default::default(),
        }
    }

    fn refused(q: &JobQueue, wanted: &str) -> String {
        match check_device(q, Some(wanted)).unwrap_err() {
            AppError::Client {
                kind: crate::error::ErrorKind::Unprocessable,
                code: "no_such_device",
                detail,
            } => detail,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_gpu_job_without_a_gpu_worker_is_refused() {
        let health = DeviceHealth::default();
        let cpu_only = queue(&[tch::Device::Cpu], &health);
        assert!(check_device(&cpu_only, None).is_ok());
        assert!(check_device(&cpu_only, Some("cpu")).is_ok());
        let detail = refused(&cpu_only, "cuda");
        assert!(
            detail.contains("a GPU (`cuda`)") && detail.contains("trains on cpu"),
            "{detail}"
        );
        assert!(refused(&cpu_only, "cuda:0").contains("`cuda:0`"));

        let gpus = queue(&[tch::Device::Cpu, tch::Device::Cuda(0)], &health);
        assert!(check_device(&gpus, Some("cuda")).is_ok());
        assert!(check_device(&gpus, Some("cuda:0")).is_ok());
        assert!(refused(&gpus, "cuda:1").contains("trains on cpu, cuda:0"));

        // No workers in this process: another node may serve it.
        assert!(check_device(&queue(&[], &health), Some("cuda")).is_ok());
    }

    #[tokio::test]
    async fn a_device_out_of_service_takes_no_new_jobs() {
        let health = DeviceHealth::default();
        let q = queue(&[tch::Device::Cpu, tch::Device::Cuda(0)], &health);
        health.report_fatal("cuda:0", "CUDA error: unspecified launch failure");
        for wanted in ["cuda", "cuda:0"] {
            let detail = refused(&q, wanted);
            assert!(detail.contains("out of service"), "{detail}");
            assert!(detail.contains("devices in service: cpu"), "{detail}");
        }
        assert!(check_device(&q, Some("cpu")).is_ok());
    }
}
