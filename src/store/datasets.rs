//! The `datasets` table: content-addressed archives, validated in the
//! background. A row is inserted `validating` as soon as the upload is
//! stored, and ends `ready` (with its format, task and summary) or `failed`
//! (with the refusal's kind, code and detail). Every change of state is a
//! compare-and-set on `status`, so a validation that lost its row (a
//! restart re-queued it) cannot overwrite a newer outcome.

use crate::db::Db;
use chrono::{DateTime, TimeZone, Utc};
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

/// Why a dataset failed, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    /// `bad_request`, `too_large`, `unprocessable` or `internal`.
    pub kind: String,
    pub code: String,
    pub detail: String,
}

/// A row of `datasets`. JSON documents stay text here: their types belong
/// to `data`, which turns rows into API records (`data::record`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub id: Uuid,
    /// SHA-256 of the archive as uploaded (hex).
    pub sha256: String,
    pub status: DatasetStatus,
    /// Known once validated.
    pub format: Option<String>,
    pub size_bytes: i64,
    /// Extracted directory, relative to the data dir.
    pub path: String,
    /// Known once validated.
    pub task: Option<Task>,
    /// Known once validated.
    pub summary_json: Option<String>,
    /// While validating.
    pub progress_json: Option<String>,
    /// When failed.
    pub error: Option<FailureRow>,
    /// Times its validation has started since it was (re)uploaded: one
    /// more than the validations that ended only when the process died.
    pub validation_starts: i64,
    /// Once validated: what a list page shows (JSON counts). In a list
    /// row `summary_json` is `None` unless this is (older rows).
    pub counts_json: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl DatasetRow {
    pub fn is_ready(&self) -> bool {
        self.status == DatasetStatus::Ready
    }
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

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    sha256: String,
    status: String,
    format: Option<String>,
    size_bytes: i64,
    path: String,
    task: Option<Task>,
    summary: Option<String>,
    progress: Option<String>,
    error_kind: Option<String>,
    error_code: Option<String>,
    error_detail: Option<String>,
    validation_starts: i64,
    counts: Option<String>,
    created_at: i64,
    updated_at: Option<i64>,
    finished_at: Option<i64>,
}

fn time(ms: i64) -> anyhow::Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| anyhow::anyhow!("bad timestamp {ms}"))
}

impl TryFrom<Row> for DatasetRow {
    type Error = anyhow::Error;
    fn try_from(r: Row) -> anyhow::Result<Self> {
        let error = match (r.error_kind, r.error_code) {
            (Some(kind), Some(code)) => Some(FailureRow {
                kind,
                code,
                detail: r.error_detail.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(DatasetRow {
            id: r.id.parse()?,
            sha256: r.sha256,
            status: DatasetStatus::parse(&r.status)
                .ok_or_else(|| anyhow::anyhow!("unknown dataset status `{}`", r.status))?,
            format: r.format,
            size_bytes: r.size_bytes,
            path: r.path,
            task: r.task,
            summary_json: r.summary,
            progress_json: r.progress,
            error,
            validation_starts: r.validation_starts,
            counts_json: r.counts,
            created_at: time(r.created_at)?,
            updated_at: time(r.updated_at.unwrap_or(r.created_at))?,
            finished_at: r.finished_at.map(time).transpose()?,
        })
    }
}

const COLUMNS: &str = "id, sha256, status, format, size_bytes, path, task, summary, progress, \
                       error_kind, error_code, error_detail, validation_starts, counts, \
                       created_at, updated_at, finished_at";

/// [`COLUMNS`] for list pages: the summary, with its skip lists (tens of
/// megabytes for a hostile upload), only for rows that have no counts.
const LIST_COLUMNS: &str = "id, sha256, status, format, size_bytes, path, task, \
                            CASE WHEN counts IS NULL THEN summary END AS summary, progress, \
                            error_kind, error_code, error_detail, validation_starts, counts, \
                            created_at, updated_at, finished_at";

fn convert(rows: Vec<Row>) -> anyhow::Result<Vec<DatasetRow>> {
    rows.into_iter().map(DatasetRow::try_from).collect()
}

/// Inserts a dataset already validated (`ready`); a second insert of the
/// same sha256 is a unique violation.
pub async fn insert(db: &Db, new: &NewDataset<'_>) -> anyhow::Result<DatasetRow> {
    let now = now_ms();
    let row: Row = sqlx::query_as(&format!(
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
    row.try_into()
}

/// Records an upload about to be validated. Returns the new row, or `None`
/// when a row with this sha256 exists already (a concurrent upload of the
/// same archive won the race).
pub async fn insert_validating(
    db: &Db,
    sha256: &str,
    size_bytes: i64,
    path: &str,
) -> anyhow::Result<Option<DatasetRow>> {
    let now = now_ms();
    let row: Option<Row> = sqlx::query_as(&format!(
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
    row.map(TryInto::try_into).transpose()
}

/// A failed dataset uploaded again is validated again (the limits may have
/// changed, or the failure was ours): back to `validating`, error cleared.
/// `None` when it was not `failed` (another upload restarted it first).
pub async fn restart_failed(db: &Db, id: Uuid) -> anyhow::Result<Option<DatasetRow>> {
    let row: Option<Row> = sqlx::query_as(&format!(
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
    row.map(TryInto::try_into).transpose()
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
pub async fn mark_ready(
    db: &Db,
    id: Uuid,
    found: &Validated<'_>,
    progress_json: &str,
) -> anyhow::Result<Option<DatasetRow>> {
    let now = now_ms();
    let row: Option<Row> = sqlx::query_as(&format!(
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
    row.map(TryInto::try_into).transpose()
}

/// `validating` -> `failed`, and every job still queued on the dataset
/// fails with the same code and detail, in one transaction (no job can be
/// claimed in between: claims skip datasets that are not `ready`).
/// `None` when the row was not `validating` any more.
pub async fn mark_failed(
    db: &Db,
    id: Uuid,
    failure: &FailureRow,
    job_error: &str,
) -> anyhow::Result<Option<(DatasetRow, u64)>> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE datasets SET status = 'failed', error_kind = $2, error_code = $3, error_detail = $4,
                updated_at = $5, finished_at = $5
         WHERE id = $1 AND status = 'validating'
         RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(&failure.kind)
    .bind(&failure.code)
    .bind(&failure.detail)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let jobs =
        super::jobs::fail_queued_on_dataset(&mut *tx, &id.to_string(), &failure.code, job_error)
            .await?;
    tx.commit().await?;
    Ok(Some((row.try_into()?, jobs)))
}

pub async fn get(db: &Db, id: Uuid) -> anyhow::Result<Option<DatasetRow>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(TryInto::try_into).transpose()
}

pub async fn find_by_sha256(db: &Db, sha256: &str) -> anyhow::Result<Option<DatasetRow>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE sha256 = $1"))
            .bind(sha256)
            .fetch_optional(db)
            .await?;
    row.map(TryInto::try_into).transpose()
}

/// Newest first, optionally one status only. Rows with counts come
/// without their summary (see [`DatasetRow::counts_json`]).
pub async fn list(
    db: &Db,
    status: Option<DatasetStatus>,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<DatasetRow>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {LIST_COLUMNS} FROM datasets WHERE ($1 IS NULL OR status = $1)
         ORDER BY id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(status.map(DatasetStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    convert(rows)
}

/// Every dataset still `validating`, oldest first: what a starting server
/// validates again.
pub async fn list_validating(db: &Db) -> anyhow::Result<Vec<DatasetRow>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE status = 'validating' ORDER BY id"
    ))
    .fetch_all(db)
    .await?;
    convert(rows)
}
