//! The `jobs` table: a queue with leases. A worker claims a job in one
//! atomic `UPDATE … RETURNING` (serialised by an advisory lock on
//! PostgreSQL, see [`claim_next`]), renews its lease while it runs, and every
//! later write is guarded by `lease_owner`, so a worker whose lease expired
//! (and whose job went to another worker) can no longer touch it.

use crate::db::{Backend, Db};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::db::now_ms;

/// The lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Succeeded, failed and cancelled jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A row of `jobs`, as stored (JSON columns still as text).
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: String,
    pub status: String,
    pub dataset_id: String,
    pub config: String,
    pub idempotency_key: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub device: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: i64,
    pub progress: Option<String>,
    pub metrics: String,
    pub error: Option<String>,
    pub model_id: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// The sweep this job is a candidate of.
    pub sweep_id: Option<String>,
    /// The rung (an epoch number) at which the sweep's successive halving
    /// stopped it.
    pub stopped_rung: Option<i64>,
    /// The stable code of `error` when it has one: a job that waited for
    /// its dataset fails with the dataset's refusal code.
    pub error_code: Option<String>,
}

impl JobRow {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

/// What a new job needs.
pub struct NewJob<'a> {
    pub dataset_id: &'a str,
    pub config_json: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub device: Option<&'a str>,
    pub max_attempts: i64,
}

/// Inserts a queued job. With an idempotency key already used, returns the
/// job created under it instead (and `false`).
pub async fn insert(db: &Db, new: NewJob<'_>) -> sqlx::Result<(JobRow, bool)> {
    if let Some(key) = new.idempotency_key {
        if let Some(existing) = find_by_idempotency_key(db, key).await? {
            return Ok((existing, false));
        }
    }
    let id = Uuid::now_v7().to_string();
    let now = now_ms();
    let inserted = sqlx::query_as::<_, JobRow>(
        "INSERT INTO jobs (id, dataset_id, config, idempotency_key, device, max_attempts, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING *",
    )
    .bind(&id)
    .bind(new.dataset_id)
    .bind(new.config_json)
    .bind(new.idempotency_key)
    .bind(new.device)
    .bind(new.max_attempts)
    .bind(now)
    .fetch_optional(db)
    .await?;
    match inserted {
        Some(row) => Ok((row, true)),
        // Lost a race with a concurrent request carrying the same key.
        None => {
            let key = new.idempotency_key.unwrap_or_default();
            Ok((
                find_by_idempotency_key(db, key)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?,
                false,
            ))
        }
    }
}

pub async fn find_by_idempotency_key(db: &Db, key: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(db)
        .await
}

pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A job with its dataset's summary (JSON as stored), as the API shows it:
/// read in one statement, so that a page of jobs is one query.
#[derive(Debug, Clone, FromRow)]
pub struct JobWithDataset {
    #[sqlx(flatten)]
    pub job: JobRow,
    /// `None` while the dataset is validating (or when it was refused).
    pub dataset_summary: Option<String>,
}

/// Jobs joined with their dataset's summary (`jobs.dataset_id` is a foreign
/// key on `datasets.id`, so the join finds exactly the job's dataset).
const WITH_DATASET: &str =
    "SELECT j.*, d.summary AS dataset_summary FROM jobs j LEFT JOIN datasets d ON d.id = j.dataset_id";

/// A job with its dataset's summary.
pub async fn get_with_dataset(db: &Db, id: &str) -> sqlx::Result<Option<JobWithDataset>> {
    sqlx::query_as(&format!("{WITH_DATASET} WHERE j.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first, optionally one status only; `before` is the last id of the
/// previous page (ids are UUID v7, so they sort by creation time).
pub async fn list(
    db: &Db,
    status: Option<JobStatus>,
    before: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT * FROM jobs
         WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status.map(JobStatus::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// [`list`], each job with its dataset's summary, in one statement.
pub async fn list_with_dataset(
    db: &Db,
    status: Option<JobStatus>,
    before: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<JobWithDataset>> {
    sqlx::query_as(&format!(
        "{WITH_DATASET}
         WHERE ($1 IS NULL OR j.status = $1) AND ($2 IS NULL OR j.id < $2)
         ORDER BY j.id DESC LIMIT $3"
    ))
    .bind(status.map(JobStatus::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The summary (JSON as stored) of a dataset, for the view of a job row in
/// hand (one just inserted or cancelled).
pub async fn dataset_summary(db: &Db, dataset_id: &str) -> sqlx::Result<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT summary FROM datasets WHERE id = $1")
            .bind(dataset_id)
            .fetch_optional(db)
            .await?;
    Ok(row.and_then(|(s,)| s))
}

/// Counts per status, for metrics.
pub async fn count_by_status(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .fetch_all(db)
        .await
}

/// Claims the oldest queued job this device may run, in one atomic
/// `UPDATE … RETURNING`. `device` is the worker's device (`cpu`,
/// `cuda:0`); a job asking for `cuda` runs on any GPU. A job whose dataset
/// is still being validated waits (it is skipped until the dataset is
/// `ready`). A sweep's candidate is skipped while `max_parallel` of its
/// sweep's jobs are running (counted in the same statement); other jobs are
/// not held up by it.
///
/// SQLite runs one writer at a time, so two workers can neither take one
/// job nor both take a sweep's last slot. PostgreSQL runs writers at once:
/// under READ COMMITTED two claimers could each count the same running
/// jobs and together exceed `max_parallel`, so there the statement runs in
/// a transaction that first takes one advisory lock (claims are rare and
/// short: serialising them costs nothing), and the candidate row is taken
/// `FOR UPDATE SKIP LOCKED` (a row another transaction is changing, e.g. a
/// cancel, is passed over rather than waited for).
pub async fn claim_next(
    db: &Db,
    device: &str,
    owner: &str,
    lease_ms: i64,
) -> sqlx::Result<Option<JobRow>> {
    match Backend::of(db) {
        Backend::Sqlite => claim(db, "", device, owner, lease_ms).await,
        Backend::Postgres => {
            let mut tx = db.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CLAIM_LOCK)
                .execute(&mut *tx)
                .await?;
            let job = claim(&mut *tx, "FOR UPDATE SKIP LOCKED", device, owner, lease_ms).await?;
            tx.commit().await?;
            Ok(job)
        }
    }
}

/// The key of the PostgreSQL advisory lock claims take ("vitrine").
const CLAIM_LOCK: i64 = 0x0076_6974_7269_6e65;

/// The claim statement; `lock` is appended to the candidate subquery.
async fn claim<'e, E>(
    db: E,
    lock: &str,
    device: &str,
    owner: &str,
    lease_ms: i64,
) -> sqlx::Result<Option<JobRow>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let now = now_ms();
    sqlx::query_as(&format!(
        "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
                attempts = attempts + 1, started_at = COALESCE(started_at, $3), updated_at = $3
         WHERE id = (
             SELECT id FROM jobs q
             WHERE status = 'queued'
               AND (SELECT d.status FROM datasets d WHERE d.id = q.dataset_id) = 'ready'
               AND (device IS NULL OR device = $4 OR (device = 'cuda' AND $4 LIKE 'cuda:%'))
               AND (sweep_id IS NULL OR
                    (SELECT COUNT(*) FROM jobs r WHERE r.sweep_id = q.sweep_id AND r.status = 'running')
                    < (SELECT s.max_parallel FROM sweeps s WHERE s.id = q.sweep_id))
             ORDER BY created_at, id LIMIT 1 {lock})
           AND status = 'queued'
         RETURNING *"
    ))
    .bind(owner)
    .bind(now + lease_ms)
    .bind(now)
    .bind(device)
    .fetch_optional(db)
    .await
}

/// Fails every job still queued on a dataset that was refused, with the
/// dataset's code and `error` (the message). Returns how many. Run in the
/// transaction that marks the dataset failed, and again by a submission
/// that raced with it.
pub async fn fail_queued_on_dataset<'e, E>(
    db: E,
    dataset_id: &str,
    code: &str,
    error: &str,
) -> sqlx::Result<u64>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE jobs SET status = 'failed', error = $3, error_code = $2, finished_at = $4, updated_at = $4
         WHERE dataset_id = $1 AND status = 'queued'",
    )
    .bind(dataset_id)
    .bind(code)
    .bind(error)
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Extends the lease. Returns `None` when the lease is lost (the job was
/// requeued or finished elsewhere), else whether a cancel was requested.
pub async fn renew_lease(
    db: &Db,
    id: &str,
    owner: &str,
    lease_ms: i64,
) -> sqlx::Result<Option<bool>> {
    let now = now_ms();
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE jobs SET lease_expires_at = $3, updated_at = $4
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(owner)
    .bind(now + lease_ms)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(c,)| c != 0))
}

/// Records progress (JSON) under the lease.
pub async fn set_progress(
    db: &Db,
    id: &str,
    owner: &str,
    progress_json: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET progress = $3, updated_at = $4
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(progress_json)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the per-epoch metrics (JSON array) under the lease.
pub async fn set_metrics(db: &Db, id: &str, owner: &str, metrics_json: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET metrics = $3, updated_at = $4
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(metrics_json)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a running job under the lease: `succeeded`/`cancelled` (with the
/// model, if any) or `failed` (with the error).
pub async fn finish(
    db: &Db,
    id: &str,
    owner: &str,
    status: JobStatus,
    model_id: Option<&str>,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    debug_assert!(status.is_terminal());
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE jobs SET status = $3, model_id = $4, error = $5, finished_at = $6, updated_at = $6,
                lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(status.as_str())
    .bind(model_id)
    .bind(error)
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts a running job back in the queue under the lease (graceful shutdown,
/// retryable failure). `refund` gives the attempt back: a shutdown is not
/// the job's fault.
pub async fn requeue(
    db: &Db,
    id: &str,
    owner: &str,
    refund: bool,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                attempts = attempts - $3, error = $4, updated_at = $5
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(refund as i64)
    .bind(error)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Jobs whose worker vanished (lease expired): back to the queue while
/// attempts remain, else failed. Returns (requeued, failed).
pub async fn reap_expired(db: &Db) -> sqlx::Result<(u64, u64)> {
    let now = now_ms();
    let failed = sqlx::query(
        "UPDATE jobs SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL,
                error = 'the worker running this job stopped responding ' || CAST(attempts AS TEXT) || ' times; giving up',
                finished_at = $1, updated_at = $1
         WHERE status = 'running' AND lease_expires_at < $1 AND attempts >= max_attempts",
    )
    .bind(now)
    .execute(db)
    .await?
    .rows_affected();
    let requeued = sqlx::query(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1
         WHERE status = 'running' AND lease_expires_at < $1",
    )
    .bind(now)
    .execute(db)
    .await?
    .rows_affected();
    Ok((requeued, failed))
}

/// Cancels a queued job at once, or flags a running one for its worker, in
/// one statement: the database decides, so a job that ends meanwhile is
/// never reported cancelled. Returns the job after the change, `None` when
/// there is no queued or running job of that id (none at all, or one that
/// already ended: [`get`] tells which).
pub async fn request_cancel(db: &Db, id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "UPDATE jobs SET
                status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                finished_at = CASE WHEN status = 'queued' THEN $2 ELSE finished_at END,
                cancel_requested = CASE WHEN status = 'running' THEN 1 ELSE cancel_requested END,
                updated_at = $2
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING *",
    )
    .bind(id)
    .bind(now_ms())
    .fetch_optional(db)
    .await
}

/// Ends a running job under the lease and records its model, in one
/// transaction: either both happen or neither (the model is recorded once
/// even if the worker dies right after).
pub async fn finish_with_model(
    db: &Db,
    id: &str,
    owner: &str,
    status: JobStatus,
    model: super::models::NewModel<'_>,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE jobs SET status = $3, model_id = $4, error = NULL, finished_at = $5, updated_at = $5,
                lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(status.as_str())
    .bind(model.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    super::models::insert_in(&mut tx, model).await?;
    tx.commit().await?;
    Ok(true)
}
