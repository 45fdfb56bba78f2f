//! The sweep supervisor: a task of the server that, every half second,
//! reads each unfinished sweep and its candidates from the database and
//! acts on what it sees. It keeps no state of its own, so after a crash
//! (or on another node) it picks up where the database says the sweep is;
//! every write it makes is a compare-and-set (`store::sweeps`), so a tick
//! that runs twice, or two supervisors, decide nothing twice.
//!
//! Successive halving is synchronous over the candidates still in the
//! race: rung `r` (at epoch `E`) is decided once every such candidate has
//! recorded epoch `E` or ended. Candidates do not wait at a rung: one that
//! gets there first trains on and, if it loses, is stopped a few steps
//! later; the comparison still uses each candidate's metric at epoch `E`
//! exactly, so all are compared at the same point on the same validation
//! split. A stopped candidate ends `cancelled` with its best epoch as a
//! model (the worker's cancel path) and `stopped_rung = E`. Candidates that
//! ended before `E` without reaching it (failed, cancelled alone, early
//! stopping's patience) are left out of the comparison. With
//! `max_parallel` below the number of candidates, queued candidates reach
//! the rung only after the running ones, so the rung is decided late and
//! halving saves less.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::publish_cancelled;
use super::spec::SweepMetric;
use super::view;
use crate::jobs::JobQueue;
use crate::store::jobs::{JobRow, JobStatus};
use crate::store::sweeps::{self as store, SweepRow};

/// How often the supervisor looks at the sweeps.
const TICK: Duration = Duration::from_millis(500);

/// Runs until `shutdown`, ticking every [`TICK`].
pub async fn run(queue: JobQueue, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                if let Err(e) = tick(&queue).await {
                    tracing::warn!(error = ?e, "sweep supervisor tick failed");
                }
            }
        }
    }
}

/// One look at every unfinished sweep.
pub async fn tick(queue: &JobQueue) -> sqlx::Result<()> {
    for sweep in store::list_active(&queue.db).await? {
        if let Err(e) = tick_sweep(queue, &sweep).await {
            tracing::warn!(sweep = %sweep.id, error = ?e, "supervising the sweep failed");
        }
    }
    Ok(())
}

async fn tick_sweep(queue: &JobQueue, sweep: &SweepRow) -> sqlx::Result<()> {
    let db = &queue.db;
    let mut jobs = store::jobs_of(db, &sweep.id).await?;
    if sweep.status() == JobStatus::Queued && jobs.iter().any(|j| j.started_at.is_some()) {
        store::mark_running(db, &sweep.id).await?;
    }
    let stopping = sweep.stop_reason.is_some() || sweep.cancel_requested != 0;

    if let (Some(limit), false) = (sweep.max_seconds, stopping) {
        let now = crate::db::now_ms();
        let spent: f64 = jobs
            .iter()
            .filter_map(|j| Some((j.finished_at.unwrap_or(now) - j.started_at?).max(0)))
            .sum::<i64>() as f64
            / 1000.0;
        if spent >= limit {
            tracing::info!(sweep = %sweep.id, spent, limit, "sweep budget spent; stopping its candidates");
            let cancelled = store::stop_all(db, &sweep.id, "budget").await?;
            publish_cancelled(queue, &cancelled);
            return Ok(()); // the next tick sees the new state
        }
    }

    if !stopping && decide_rungs(queue, sweep, &jobs).await? {
        jobs = store::jobs_of(db, &sweep.id).await?;
    }

    if jobs.iter().all(|j| j.status().is_terminal()) {
        conclude(queue, sweep, &jobs).await?;
    }
    Ok(())
}

/// Decides every rung that can be decided now. Returns true when it
/// decided one.
async fn decide_rungs(queue: &JobQueue, sweep: &SweepRow, jobs: &[JobRow]) -> sqlx::Result<bool> {
    let rungs = sweep.rung_epochs();
    let metric = SweepMetric::parse(&sweep.metric).unwrap_or(SweepMetric::Accuracy);
    let factor = sweep.reduction_factor.max(2) as usize;
    let mut decided_any = false;
    // Losers of rungs decided in this same call.
    let mut stopped: Vec<String> = Vec::new();
    for (index, &epoch) in rungs.iter().enumerate().skip(sweep.rungs_done as usize) {
        let in_race: Vec<&JobRow> = jobs
            .iter()
            .filter(|j| j.stopped_rung.is_none() && !stopped.contains(&j.id))
            .collect();
        let mut scored: Vec<(&JobRow, f64)> = Vec::new();
        for job in &in_race {
            match view::metric_at(job, metric, epoch) {
                Some(v) => scored.push((job, v)),
                // Still on its way to the rung: decide later.
                None if !job.status().is_terminal() => return Ok(decided_any),
                None => {}
            }
        }
        let keep = (scored.len() / factor).max(1);
        // Best first; ties to the cheaper candidate (fewer trainable
        // parameters), then the older job.
        scored.sort_by(|(a, va), (b, vb)| {
            vb.partial_cmp(va)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| trainable(a).cmp(&trainable(b)))
                .then_with(|| a.id.cmp(&b.id))
        });
        let losers: Vec<String> = scored
            .iter()
            .skip(keep)
            .map(|(j, _)| j.id.clone())
            .collect();
        if !store::decide_rung(&queue.db, &sweep.id, index as i64, epoch as i64, &losers).await? {
            return Ok(decided_any); // decided elsewhere; the next tick rereads
        }
        tracing::info!(sweep = %sweep.id, rung = epoch, kept = keep, stopped = ?losers, "halving rung decided");
        decided_any = true;
        stopped.extend(losers);
    }
    Ok(decided_any)
}

/// Trainable parameters, unknown last.
fn trainable(job: &JobRow) -> u64 {
    job.progress
        .as_deref()
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|p| p["trainable_parameters"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Every candidate ended: record the winner and promote it.
async fn conclude(queue: &JobQueue, sweep: &SweepRow, jobs: &[JobRow]) -> sqlx::Result<()> {
    let rows = view::leaderboard(&queue.db, sweep, jobs).await?;
    let winner = view::winner(&rows);
    let cancelled = sweep.cancel_requested != 0;
    let (status, error) = match (cancelled, winner) {
        (true, _) => (JobStatus::Cancelled, None),
        (false, Some(_)) => (JobStatus::Succeeded, None),
        (false, None) => (
            JobStatus::Failed,
            Some("no candidate produced a model".to_string()),
        ),
    };
    // A cancelled sweep records its best candidate but promotes nothing.
    let promote = match (status, &sweep.promote_alias, winner) {
        (JobStatus::Succeeded, Some(alias), Some(w)) => {
            w.model_id.as_deref().map(|m| (alias.as_str(), m))
        }
        _ => None,
    };
    let winner_id = winner.map(|w| w.job_id.as_str());
    if store::finish(
        &queue.db,
        &sweep.id,
        status,
        winner_id,
        promote,
        error.as_deref(),
    )
    .await?
    {
        tracing::info!(sweep = %sweep.id, status = status.as_str(), winner = ?winner_id,
            promoted = ?promote, "sweep ended");
    }
    Ok(())
}
