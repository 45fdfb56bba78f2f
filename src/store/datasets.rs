//! The `datasets` table: content-addressed archives, validated in the
//! background. A row is inserted `validating` as soon as the upload is
//! stored, and ends `ready` (with its format, task and summary) or `failed`
//! (with the refusal's kind, code and detail). Every change of state is a
//! compare-and-set on `status`, so a validation that lost its row (a
//! restart re-queued it) cannot overwrite a newer outcome.
//!
//! A row is read into one record type, `datasets::DatasetRecord`, which
//! decodes the [`COLUMNS`] itself (see [`DatasetRecordRow`]): the JSON
//! documents a row holds are typed in `data`, above this layer.

use crate::db::Db;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::db::now_ms;
use crate::task::Task;

/// Where a dataset is in its validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetStatus {
    /// Stored; being checked in the background.
    Validating,
    /// Checked and extracted: jobs may train on it.
    Ready,
    /// Refused: `error` says why; nothing but the record is kept.
    Failed,
}

impl DatasetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "validating" => Self::Validating,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A refusal to record with [`mark_failed`]: the error's kind
/// (`bad_request`, `too_large`, `unprocessable` or `internal`), its stable
/// code and its detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub kind: &'a str,
    pub code: &'a str,
    pub detail: &'a str,
}

/// What [`insert`] needs: a dataset validated elsewhere, stored `ready`.
#[derive(Debug, Clone)]
pub struct NewDataset<'a> {
    pub sha256: &'a str,
    pub format: &'a str,
    pub size_bytes: i64,
    pub path: &'a str,
    pub task: Task,
    pub summary_json: &'a str,
}

/// What a validation found, for [`mark_ready`].
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    pub format: &'a str,
    pub task: Task,
    pub summary_json: &'a str,
    /// The summary's counts, for list pages.
    pub counts_json: &'a str,
}

/// The record a row of `datasets` decodes into, reading the [`COLUMNS`]
/// by name: `datasets::DatasetRecord`, the one shape of a dataset. The
/// store names it only through this bound because the row's JSON
/// documents (summary, progress, counts) are typed above it, in `data`.
pub trait DatasetRecordRow: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin {}

impl<T> DatasetRecordRow for T where T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin {}

/// The columns every statement returns: `id` (TEXT uuid), `sha256`,
/// `status` ([`DatasetStatus`]), `format`, `size_bytes`, `path`, `task`,
/// the JSON documents `summary`, `progress` and `counts`, the refusal
/// (`error_kind`, `error_code`, `error_detail`), `validation_starts` and
/// the times in milliseconds (`created_at`, `updated_at` (NULL in rows
/// older than it: `created_at`), `finished_at`).
const COLUMNS: &str = "id, sha256, status, format, size_bytes, path, task, summary, progress, \
                       error_kind, error_code, error_detail, validation_starts, counts, \
                       created_at, updated_at, finished_at";

/// [`COLUMNS`] for list pages: the summary, with its skip lists (tens of
/// megabytes for a hostile upload), only for rows that have no counts.
const LIST_COLUMNS: &str = "id, sha256, status, format, size_bytes, path, task, \
                            CASE WHEN counts IS NULL THEN summary END AS summary, progress, \
                            error_kind, error_code, error_detail, validation_starts, counts, \
                            created_at, updated_at, finished_at";

/// Inserts a dataset already validated (`ready`); a second insert of the
/// same sha256 is a unique violation.
pub async fn insert<R: DatasetRecordRow>(db: &Db, new: &NewDataset<'_>) -> anyhow::Result<R> {
    let now = now_ms();
    let row: R = sqlx::query_as(&format!(
        "INSERT INTO datasets (id, sha256, status, format, size_bytes, path, task, summary,
                               created_at, updated_at, finished_at)
         VALUES ($1, $2, 'ready', $3, $4, $5, $6, $7, $8, $8, $8) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7().to_string())
    .bind(new.sha256)
    .bind(new.format)
    .bind(new.size_bytes)
    .bind(new.path)
    .bind(new.task)
    .bind(new.summary_json)
    .bind(now)
    .fetch_one(db)
    .await?;
    Ok(row)
}

/// Records an upload about to be validated. Returns the new row, or `None`
/// when a row with this sha256 exists already (a concurrent upload of the
/// same archive won the race).
pub async fn insert_validating<R: DatasetRecordRow>(
    db: &Db,
    sha256: &str,
    size_bytes: i64,
    path: &str,
) -> anyhow::Result<Option<R>> {
    let now = now_ms();
    let row: Option<R> = sqlx::query_as(&format!(
        "INSERT INTO datasets (id, sha256, status, size_bytes, path, created_at, updated_at)
         VALUES ($1, $2, 'validating', $3, $4, $5, $5)
         ON CONFLICT (sha256) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7().to_string())
    .bind(sha256)
    .bind(size_bytes)
    .bind(path)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(row)
}

/// A failed dataset uploaded again is validated again (the limits may have
/// changed, or the failure was ours): back to `validating`, error cleared.
/// `None` when it was not `failed` (another upload restarted it first).
pub async fn restart_failed<R: DatasetRecordRow>(db: &Db, id: Uuid) -> anyhow::Result<Option<R>> {
    let row: Option<R> = sqlx::query_as(&format!(
        "UPDATE datasets SET status = 'validating', progress = NULL, error_kind = NULL,
                error_code = NULL, error_detail = NULL, finished_at = NULL, updated_at = $2,
                validation_starts = 0, counts = NULL
         WHERE id = $1 AND status = 'failed'
         RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(now_ms())
    .fetch_optional(db)
    .await?;
    Ok(row)
}

/// Counts one more start of the dataset's validation, unless it has
/// started `max_starts` times already: the new count, or `None` when it
/// may not start (no longer `validating`, or started too often: each
/// earlier start ended only with its process). One statement, so that
/// nodes resuming the same row count every start.
pub async fn begin_validation(db: &Db, id: Uuid, max_starts: i64) -> anyhow::Result<Option<i64>> {
    let starts: Option<i64> = sqlx::query_scalar(
        "UPDATE datasets SET validation_starts = validation_starts + 1, updated_at = $3
         WHERE id = $1 AND status = 'validating' AND validation_starts < $2
         RETURNING validation_starts",
    )
    .bind(id.to_string())
    .bind(max_starts)
    .bind(now_ms())
    .fetch_optional(db)
    .await?;
    Ok(starts)
}

/// Gives back a start of a validation that a shutdown interrupted (it did
/// not crash the process; it runs again at the next start).
pub async fn refund_validation_start(db: &Db, id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE datasets SET validation_starts = validation_starts - 1
         WHERE id = $1 AND status = 'validating' AND validation_starts > 0",
    )
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Records progress (JSON) while `validating`. False when it no longer is.
pub async fn set_progress(db: &Db, id: Uuid, progress_json: &str) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE datasets SET progress = $2, updated_at = $3 WHERE id = $1 AND status = 'validating'",
    )
    .bind(id.to_string())
    .bind(progress_json)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `validating` -> `ready`, with what the validation found. `None` when
/// the row was not `validating` any more.
pub async fn mark_ready<R: DatasetRecordRow>(
    db: &Db,
    id: Uuid,
    found: &Validated<'_>,
    progress_json: &str,
) -> anyhow::Result<Option<R>> {
    let now = now_ms();
    let row: Option<R> = sqlx::query_as(&format!(
        "UPDATE datasets SET status = 'ready', format = $2, task = $3, summary = $4, progress = $5,
                updated_at = $6, finished_at = $6, counts = $7
         WHERE id = $1 AND status = 'validating'
         RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(found.format)
    .bind(found.task)
    .bind(found.summary_json)
    .bind(progress_json)
    .bind(now)
    .bind(found.counts_json)
    .fetch_optional(db)
    .await?;
    Ok(row)
}

/// `validating` -> `failed`, and every job still queued on the dataset
/// fails with the same code and detail, in one transaction (no job can be
/// claimed in between: claims skip datasets that are not `ready`).
/// `None` when the row was not `validating` any more.
pub async fn mark_failed<R: DatasetRecordRow>(
    db: &Db,
    id: Uuid,
    failure: &Refusal<'_>,
    job_error: &str,
) -> anyhow::Result<Option<(R, u64)>> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let row: Option<R> = sqlx::query_as(&format!(
        "UPDATE datasets SET status = 'failed', error_kind = $2, error_code = $3, error_detail = $4,
                updated_at = $5, finished_at = $5
         WHERE id = $1 AND status = 'validating'
         RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(failure.kind)
    .bind(failure.code)
    .bind(failure.detail)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let jobs =
        super::jobs::fail_queued_on_dataset(&mut *tx, &id.to_string(), failure.code, job_error)
            .await?;
    tx.commit().await?;
    Ok(Some((row, jobs)))
}

pub async fn get<R: DatasetRecordRow>(db: &Db, id: Uuid) -> anyhow::Result<Option<R>> {
    let row: Option<R> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    Ok(row)
}

pub async fn find_by_sha256<R: DatasetRecordRow>(
    db: &Db,
    sha256: &str,
) -> anyhow::Result<Option<R>> {
    let row: Option<R> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE sha256 = $1"))
            .bind(sha256)
            .fetch_optional(db)
            .await?;
    Ok(row)
}

/// Newest first, optionally one status only. Rows with counts come
/// without their summary (`counts` set, `summary` NULL).
pub async fn list<R: DatasetRecordRow>(
    db: &Db,
    status: Option<DatasetStatus>,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<R>> {
    let rows: Vec<R> = sqlx::query_as(&format!(
        "SELECT {LIST_COLUMNS} FROM datasets WHERE ($1 IS NULL OR status = $1)
         ORDER BY id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(status.map(DatasetStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    Ok(rows)
}

/// Every dataset still `validating`, oldest first: what a starting server
/// validates again.
pub async fn list_validating<R: DatasetRecordRow>(db: &Db) -> anyhow::Result<Vec<R>> {
    let rows: Vec<R> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE status = 'validating' ORDER BY id"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows)
}
