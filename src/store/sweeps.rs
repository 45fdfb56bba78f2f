//! The `sweeps` table and the sweep columns of `jobs`. A sweep's whole
//! state lives here (its rungs decided so far, which candidates halving
//! stopped, its winner), so a supervisor that restarts after a crash
//! recomputes everything from these rows. Every decision is a
//! compare-and-set on the sweep's row: two supervisors (or one that runs a
//! tick twice) never decide a rung, or end a sweep, twice.

use crate::db::{Backend, Db};
use sqlx::FromRow;
use uuid::Uuid;

use super::jobs::{JobRow, JobStatus};
use crate::db::now_ms;

/// A row of `sweeps`, as stored.
#[derive(Debug, Clone, FromRow)]
pub struct SweepRow {
    pub id: String,
    pub dataset_id: String,
    pub spec_json: String,
    pub status: String,
    pub metric: String,
    pub max_parallel: i64,
    pub promote_alias: Option<String>,
    /// JSON array of rung epochs, ascending; `None`: no halving.
    pub rungs: Option<String>,
    pub reduction_factor: i64,
    pub rungs_done: i64,
    pub max_seconds: Option<f64>,
    pub cancel_requested: i64,
    pub stop_reason: Option<String>,
    pub winner_job_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

impl SweepRow {
    /// Sweeps share the jobs' lifecycle words.
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }

    /// The rung epochs (empty without halving).
    pub fn rung_epochs(&self) -> Vec<u32> {
        self.rungs
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default()
    }
}

/// What a new sweep needs.
pub struct NewSweep<'a> {
    pub dataset_id: &'a str,
    pub spec_json: &'a str,
    pub metric: &'a str,
    pub max_parallel: i64,
    pub promote_alias: Option<&'a str>,
    pub rungs_json: Option<&'a str>,
    pub reduction_factor: i64,
    pub max_seconds: Option<f64>,
}

/// One candidate job: its validated config (JSON) and requested device.
pub struct NewCandidate {
    pub config_json: String,
    pub device: Option<String>,
}

/// Inserts the sweep and its candidates as queued jobs, in one
/// transaction: a sweep never exists with half its candidates.
pub async fn insert(
    db: &Db,
    sweep: NewSweep<'_>,
    candidates: &[NewCandidate],
    max_attempts: i64,
) -> sqlx::Result<(SweepRow, Vec<JobRow>)> {
    let id = Uuid::now_v7().to_string();
    let now = now_ms();
    let mut tx = db.begin().await?;
    let row: SweepRow = sqlx::query_as(
        "INSERT INTO sweeps (id, dataset_id, spec_json, metric, max_parallel, promote_alias, rungs,
                             reduction_factor, max_seconds, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING *",
    )
    .bind(&id)
    .bind(sweep.dataset_id)
    .bind(sweep.spec_json)
    .bind(sweep.metric)
    .bind(sweep.max_parallel)
    .bind(sweep.promote_alias)
    .bind(sweep.rungs_json)
    .bind(sweep.reduction_factor)
    .bind(sweep.max_seconds)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let mut jobs = Vec::with_capacity(candidates.len());
    for c in candidates {
        // UUID v7 ids are monotonic within the process: the queue (oldest
        // first, then id) takes candidates in the spec's order.
        let job: JobRow = sqlx::query_as(
            "INSERT INTO jobs (id, dataset_id, config, device, max_attempts, sweep_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING *",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(sweep.dataset_id)
        .bind(&c.config_json)
        .bind(c.device.as_deref())
        .bind(max_attempts)
        .bind(&id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        jobs.push(job);
    }
    tx.commit().await?;
    Ok((row, jobs))
}

pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<SweepRow>> {
    sqlx::query_as("SELECT * FROM sweeps WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first; `before` is the last id of the previous page.
pub async fn list(db: &Db, before: Option<&str>, limit: i64) -> sqlx::Result<Vec<SweepRow>> {
    sqlx::query_as("SELECT * FROM sweeps WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2")
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Sweeps not yet ended, oldest first (the supervisor's work list).
pub async fn list_active(db: &Db) -> sqlx::Result<Vec<SweepRow>> {
    sqlx::query_as("SELECT * FROM sweeps WHERE status IN ('queued', 'running') ORDER BY id")
        .fetch_all(db)
        .await
}

/// The sweep's candidates, in the spec's order.
pub async fn jobs_of(db: &Db, sweep_id: &str) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE sweep_id = $1 ORDER BY created_at, id")
        .bind(sweep_id)
        .fetch_all(db)
        .await
}

/// A sweep's candidate with its model's card (`models.metrics`, JSON),
/// once it has a model.
#[derive(Debug, Clone, FromRow)]
pub struct Candidate {
    #[sqlx(flatten)]
    pub job: JobRow,
    pub model_card: Option<String>,
}

/// The candidates of these sweeps, each with its model's card, in one
/// statement; in the spec's order within a sweep (as [`jobs_of`]).
pub async fn candidates_of(db: &Db, sweep_ids: &[&str]) -> sqlx::Result<Vec<Candidate>> {
    if sweep_ids.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<String> = (1..=sweep_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT j.*, m.metrics AS model_card FROM jobs j LEFT JOIN models m ON m.id = j.model_id
         WHERE j.sweep_id IN ({}) ORDER BY j.created_at, j.id",
        params.join(", ")
    );
    let mut query = sqlx::query_as(&sql);
    for id in sweep_ids {
        query = query.bind(*id);
    }
    query.fetch_all(db).await
}

/// `queued` → `running` once a candidate has started.
pub async fn mark_running(db: &Db, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE sweeps SET status = 'running', updated_at = $2 WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the decision of rung number `rung_index` (0-based; at epoch
/// `rung_epoch`): the losers are marked with the rung and asked to stop
/// (a running job stops at its next step and keeps its best epoch as a
/// model, as a cancelled job does; a queued one, i.e. requeued after a
/// crash, is claimed, resumes from its checkpoint, sees the flag and stops
/// the same way). Only if the rung is still undecided: returns false when
/// another tick decided it first.
pub async fn decide_rung(
    db: &Db,
    sweep_id: &str,
    rung_index: i64,
    rung_epoch: i64,
    losers: &[String],
) -> sqlx::Result<bool> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let cas = sqlx::query(
        "UPDATE sweeps SET rungs_done = $2 + 1, updated_at = $3
         WHERE id = $1 AND rungs_done = $2 AND status IN ('queued', 'running')",
    )
    .bind(sweep_id)
    .bind(rung_index)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if cas.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    for job in losers {
        sqlx::query(
            "UPDATE jobs SET stopped_rung = $3,
                    cancel_requested = CASE WHEN status IN ('queued', 'running') THEN 1 ELSE cancel_requested END,
                    updated_at = $4
             WHERE id = $1 AND sweep_id = $2",
        )
        .bind(job)
        .bind(sweep_id)
        .bind(rung_epoch)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Stops every unfinished candidate: queued ones that never ran are
/// cancelled at once; running ones (and queued ones that already have
/// epochs, waiting to resume) are flagged, so they stop at their next step
/// and keep their best epoch as a model. `reason` (`cancelled`, `budget`)
/// is recorded on the sweep. Returns the ids of the jobs cancelled at once.
pub async fn stop_all(db: &Db, sweep_id: &str, reason: &str) -> sqlx::Result<Vec<String>> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE sweeps SET cancel_requested = CASE WHEN $2 = 'cancelled' THEN 1 ELSE cancel_requested END,
                stop_reason = COALESCE(stop_reason, $2), updated_at = $3
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(sweep_id)
    .bind(reason)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let cancelled: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET status = 'cancelled', finished_at = $2, updated_at = $2
         WHERE sweep_id = $1 AND status = 'queued' AND metrics = '[]'
         RETURNING id",
    )
    .bind(sweep_id)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET cancel_requested = 1, updated_at = $2
         WHERE sweep_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(sweep_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Ends the sweep (once): its status, winner and, when `promote` is given
/// (alias, model id), the alias moved to the winner's model, in one
/// transaction. Returns false when the sweep had already ended.
pub async fn finish(
    db: &Db,
    sweep_id: &str,
    status: JobStatus,
    winner_job_id: Option<&str>,
    promote: Option<(&str, &str)>,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    debug_assert!(status.is_terminal());
    let now = now_ms();
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "UPDATE sweeps SET status = $2, winner_job_id = $3, error = $4, finished_at = $5, updated_at = $5
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(sweep_id)
    .bind(status.as_str())
    .bind(winner_job_id)
    .bind(error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some((alias, model_id)) = promote {
        sqlx::query(
            "INSERT INTO model_aliases (name, model_id, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET model_id = excluded.model_id, updated_at = excluded.updated_at",
        )
        .bind(alias)
        .bind(model_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The best training throughput (images/s) a job on `base_model` in `mode`
/// has recorded, if any: the basis of a budget's one-epoch estimate. The
/// JSON columns are read by each backend's own JSON functions.
pub async fn best_throughput(db: &Db, base_model: &str, mode: &str) -> sqlx::Result<Option<f64>> {
    let sql = match Backend::of(db) {
        Backend::Sqlite => {
            "SELECT MAX(CAST(json_extract(progress, '$.images_per_sec') AS REAL)) FROM jobs
             WHERE progress IS NOT NULL
               AND json_extract(config, '$.base_model') = $1 AND json_extract(config, '$.mode') = $2"
        }
        Backend::Postgres => {
            "SELECT MAX(CAST(CAST(progress AS jsonb) ->> 'images_per_sec' AS DOUBLE PRECISION)) FROM jobs
             WHERE progress IS NOT NULL
               AND CAST(config AS jsonb) ->> 'base_model' = $1 AND CAST(config AS jsonb) ->> 'mode' = $2"
        }
    };
    sqlx::query_scalar(sql)
        .bind(base_model)
        .bind(mode)
        .fetch_one(db)
        .await
}
