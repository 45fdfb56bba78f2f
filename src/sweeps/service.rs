//! Sweeps as the API sees them: submitting (everything that can be refused
//! is refused here, before any candidate is queued), reading, cancelling
//! and following one live.

use std::collections::HashSet;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;

use super::spec::{SweepMetric, SweepSpec};
use super::view::{self, SweepView};
use crate::data::DatasetSummary;
use crate::datasets::record::DatasetRecord;
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::jobs::events::JobEvent;
use crate::jobs::{service as jobs, JobQueue};
use crate::store::sweeps::{self as store, NewCandidate, NewSweep, SweepRow};
use crate::task::Task;
use crate::train::config::JobConfig;

/// Training throughput assumed for a one-epoch estimate when no job on the
/// same base model and mode has recorded one: optimistic on purpose, so
/// only a budget that surely cannot fit an epoch is refused.
const OPTIMISTIC_IMAGES_PER_SEC: f64 = 1000.0;

/// Checks the spec, expands it and runs every candidate through the checks
/// of `POST /jobs` (config, device, task, base model), then stores the
/// sweep and its candidates as queued jobs in one transaction.
/// `max_candidates` is the service's limit (`--max-sweep-candidates`).
pub async fn submit(
    queue: &JobQueue,
    dataset_id: &str,
    spec: Value,
    max_candidates: usize,
) -> AppResult<SweepView> {
    let parsed = SweepSpec::from_value(spec)?;
    let mut configs = parsed.expand(max_candidates)?;
    let dataset = jobs::find_dataset(queue, dataset_id).await?;
    let metric = sweep_metric(&parsed, &configs, &dataset, dataset_id)?;
    // Each candidate keeps the epoch that is best on the sweep's metric.
    for config in &mut configs {
        config.selection_metric.get_or_insert(metric);
    }
    let rungs = parsed.rungs.clone().unwrap_or_default();
    check_rungs(&rungs, &configs)?;
    check_candidates(queue, &dataset, &configs).await?;
    if let Some(seconds) = parsed.budget.as_ref().and_then(|b| b.max_seconds) {
        check_budget(queue, dataset.summary.as_ref(), &configs, seconds).await?;
    }
    let sweep = queue_sweep(queue, dataset_id, &parsed, &configs, metric, &rungs).await?;
    Ok(view::view(&queue.db, &sweep).await?)
}

/// The metric the sweep ranks by: the spec's, else the task's default. The
/// task is known once the dataset is validated, and must be one for all
/// candidates.
fn sweep_metric(
    parsed: &SweepSpec,
    configs: &[JobConfig],
    dataset: &DatasetRecord,
    dataset_id: &str,
) -> AppResult<SweepMetric> {
    let Some(dataset_task) = dataset.task.filter(|_| dataset.is_ready()) else {
        return Err(AppError::conflict(
            "dataset_not_ready",
            format!(
                "dataset `{dataset_id}` is still being validated; submit the sweep once \
                 GET /datasets/{dataset_id} says `ready`"
            ),
        ));
    };
    let task = common_task(configs, dataset_task)?;
    let metric = parsed.metric.unwrap_or(SweepMetric::default_for(task));
    if metric.available_for(task) {
        return Ok(metric);
    }
    let choices = match task {
        Task::MultiClass => "`accuracy` or `macro_f1`",
        Task::MultiLabel => "`map` or `macro_f1`",
    };
    Err(AppError::unprocessable(
        "metric_unavailable",
        format!(
            "`metric`: `{}` is not a metric of a {} task; use {choices}",
            metric.as_str(),
            task.as_str()
        ),
    ))
}

/// Every rung must come before the end of every candidate.
fn check_rungs(rungs: &[u32], configs: &[JobConfig]) -> AppResult<()> {
    if let (Some(&last), Some(fewest)) = (rungs.last(), configs.iter().map(|c| c.epochs).min()) {
        if last >= fewest {
            return Err(AppError::unprocessable(
                "invalid_rungs",
                format!(
                    "`rungs`: the last rung (epoch {last}) must be below every candidate's \
                     `epochs` (the fewest is {fewest})"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the candidates through the checks of `POST /jobs`; the same base
/// model (and size and depth) is checked once. A refusal names its
/// candidate.
async fn check_candidates(
    queue: &JobQueue,
    dataset: &DatasetRecord,
    configs: &[JobConfig],
) -> AppResult<()> {
    let mut checked = HashSet::new();
    for (i, config) in configs.iter().enumerate() {
        let key = (
            config.base_model.clone(),
            config.image_size,
            config.device.clone(),
            config.task,
            serde_json::to_string(&config.mode).unwrap_or_default(),
            config.unfreeze_last_n,
        );
        if checked.insert(key) {
            jobs::check_job(queue, dataset, config)
                .await
                .map_err(|e| name_candidate(e, i))?;
        }
    }
    Ok(())
}

/// Stores the checked sweep and its candidates, and wakes the workers.
async fn queue_sweep(
    queue: &JobQueue,
    dataset_id: &str,
    parsed: &SweepSpec,
    configs: &[JobConfig],
    metric: SweepMetric,
    rungs: &[u32],
) -> AppResult<SweepRow> {
    let spec_json = serde_json::to_string(parsed).map_err(anyhow::Error::from)?;
    let rungs_json = parsed
        .early_stop
        .map(|_| serde_json::to_string(rungs).unwrap_or_default());
    let mut candidates = Vec::with_capacity(configs.len());
    for c in configs {
        candidates.push(NewCandidate {
            config_json: serde_json::to_string(c).map_err(anyhow::Error::from)?,
            device: c.device.clone(),
        });
    }
    let (sweep, jobs) = store::insert(
        &queue.db,
        NewSweep {
            dataset_id,
            spec_json: &spec_json,
            metric: metric.as_str(),
            max_parallel: parsed.max_parallel as i64,
            promote_alias: parsed.promote_alias.as_deref(),
            rungs_json: rungs_json.as_deref(),
            reduction_factor: parsed.reduction_factor() as i64,
            max_seconds: parsed.budget.as_ref().and_then(|b| b.max_seconds),
        },
        &candidates,
        queue.max_attempts as i64,
    )
    .await?;
    tracing::info!(sweep = %sweep.id, candidates = jobs.len(), metric = metric.as_str(), "sweep queued");
    queue.notify.notify_waiters();
    Ok(sweep)
}

/// Candidates are ranked on one metric, so they must share a task.
fn common_task(configs: &[JobConfig], dataset_task: Task) -> AppResult<Task> {
    let tasks: HashSet<Task> = configs
        .iter()
        .map(|c| c.task.unwrap_or(dataset_task))
        .collect();
    match tasks.len() {
        1 => Ok(tasks.into_iter().next().unwrap_or(dataset_task)),
        _ => Err(AppError::unprocessable(
            "mixed_tasks",
            "`task`: the candidates would train different tasks, whose metrics cannot be compared",
        )),
    }
}

/// Prefixes a candidate's refusal with which candidate it is.
fn name_candidate(e: AppError, index: usize) -> AppError {
    match e {
        AppError::Client { kind, code, detail } => AppError::Client {
            kind,
            code,
            detail: format!("candidate {index}: {detail}"),
        },
        other => other,
    }
}

/// A budget must leave time for one epoch of the cheapest candidate, at the
/// best throughput a job on the same base model and mode has recorded here
/// (else [`OPTIMISTIC_IMAGES_PER_SEC`]).
async fn check_budget(
    queue: &JobQueue,
    summary: Option<&DatasetSummary>,
    configs: &[JobConfig],
    max_seconds: f64,
) -> AppResult<()> {
    let splits = summary.map(|s| &s.splits);
    let train = splits.and_then(|s| s.get("train")).map_or(0, |t| t.images) as f64;
    let has_validation = splits.is_some_and(|s| s.contains_key("validation"));
    let mut cheapest = f64::INFINITY;
    for c in configs {
        let images = if has_validation {
            train
        } else {
            train * (1.0 - c.validation_fraction)
        };
        let mode = serde_json::to_value(c.mode)
            .ok()
            .and_then(|m| m.as_str().map(str::to_string))
            .unwrap_or_default();
        let rate = store::best_throughput(&queue.db, &c.base_model, &mode)
            .await?
            .filter(|r| *r > 0.0)
            .unwrap_or(OPTIMISTIC_IMAGES_PER_SEC);
        cheapest = cheapest.min(images / rate);
    }
    if max_seconds < cheapest {
        return Err(AppError::unprocessable(
            "budget_too_small",
            format!(
                "`budget.max_seconds` ({max_seconds} s) is less than one epoch of the cheapest \
                 candidate (about {cheapest:.2} s)"
            ),
        ));
    }
    Ok(())
}

fn not_found(id: &str) -> AppError {
    AppError::not_found(format!("no sweep `{id}`"))
}

/// A sweep as the API shows it, with its leaderboard.
pub async fn get(db: &Db, id: &str) -> AppResult<SweepView> {
    let sweep = store::get(db, id).await?.ok_or_else(|| not_found(id))?;
    Ok(view::view(db, &sweep).await?)
}

/// A page of sweeps, newest first, each with its leaderboard: two queries
/// (the sweeps, then all their candidates with their models).
pub async fn list(db: &Db, before: Option<&str>, limit: i64) -> AppResult<Vec<SweepView>> {
    let sweeps = store::list(db, before, limit).await?;
    Ok(view::views(db, &sweeps).await?)
}

/// Stops a sweep: every candidate not yet ended stops (queued ones at once,
/// running ones at their next step, keeping their best epoch); the sweep
/// ends `cancelled` once they all have, and promotes nothing.
pub async fn cancel(queue: &JobQueue, id: &str) -> AppResult<SweepView> {
    let sweep = store::get(&queue.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if sweep.status().is_terminal() {
        return Err(AppError::conflict(
            "sweep_finished",
            format!("sweep `{id}` already ended ({})", sweep.status),
        ));
    }
    let cancelled = store::stop_all(&queue.db, id, "cancelled").await?;
    publish_cancelled(queue, &cancelled);
    tracing::info!(sweep = %id, "sweep cancel requested");
    let after = store::get(&queue.db, id).await?.unwrap_or(sweep);
    Ok(view::view(&queue.db, &after).await?)
}

/// How often a follower reads the sweep: its state is the database's (the
/// supervisor and the workers of any node write it).
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Follows a sweep live: its view now (as JSON), then an `update` with the
/// whole view whenever it changes, ending with the sweep (at once when it
/// has already ended).
pub async fn follow(
    db: &Db,
    id: &str,
) -> AppResult<(
    Value,
    impl Stream<Item = (&'static str, Value)> + Send + 'static,
)> {
    let first = get(db, id).await?;
    let done = first.status.is_terminal();
    let first = serde_json::to_value(&first).unwrap_or_default();
    let (db, id, mut last) = (db.clone(), id.to_string(), first.clone());
    let updates = async_stream::stream! {
        if done {
            return;
        }
        let mut poll = tokio::time::interval(FOLLOW_POLL);
        loop {
            poll.tick().await;
            let Ok(Some(row)) = store::get(&db, &id).await else { continue };
            let Ok(now) = view::view(&db, &row).await else { continue };
            let value = serde_json::to_value(&now).unwrap_or_default();
            if view::without_clock(&value) != view::without_clock(&last) {
                yield ("update", value.clone());
                last = value;
            }
            if now.status.is_terminal() {
                return;
            }
        }
    };
    Ok((first, updates))
}

/// Tells SSE followers of jobs cancelled before they ran.
pub(crate) fn publish_cancelled(queue: &JobQueue, ids: &[String]) {
    for id in ids {
        queue.hub.publish(
            id,
            JobEvent {
                kind: "status",
                data: serde_json::json!({"id": id, "status": "cancelled"}),
                terminal: true,
            },
        );
    }
}
