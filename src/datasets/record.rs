//! A stored dataset, in its one shape: the `datasets` row with its
//! summary, progress and refusal typed. The store decodes its rows into
//! it ([`DatasetRecord`] reads the columns by name), the service passes it
//! around and `http::datasets` renders it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;
use uuid::Uuid;

use crate::data::progress::ValidationProgress;
use crate::data::{DatasetSummary, Manifest};
use crate::db::Db;
use crate::error::{AppError, ErrorKind};
pub use crate::store::datasets::DatasetStatus;
use crate::store::datasets::{self as store, Refusal};
use crate::task::Task;

/// Why a dataset was refused: the kind (which decides the HTTP status of
/// the same refusal answered to a request), the stable code and a detail
/// naming the file or the rule, as `POST /datasets` used to answer them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFailure {
    /// `None`: a fault of this service (logged); the detail says only that.
    pub kind: Option<ErrorKind>,
    pub code: String,
    pub detail: String,
}

impl DatasetFailure {
    /// The same refusal as an error, for a request that waited for it.
    pub fn to_app_error(&self) -> AppError {
        match self.kind {
            Some(kind) => AppError::Recorded {
                kind,
                code: self.code.clone(),
                detail: self.detail.clone(),
            },
            None => AppError::Internal(anyhow::anyhow!(
                "validating the dataset failed: {}",
                self.detail
            )),
        }
    }

    /// How a job that waited for this dataset fails.
    pub fn job_error(&self) -> String {
        format!("the dataset was refused ({}): {}", self.code, self.detail)
    }

    /// The refusal as the store records it.
    pub fn to_row(&self) -> Refusal<'_> {
        Refusal {
            kind: self.kind.map_or("internal", ErrorKind::as_str),
            code: &self.code,
            detail: &self.detail,
        }
    }
}

/// A stored dataset, as the API returns it (`http::datasets` renders
/// `error` as a problem document).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecord {
    pub id: Uuid,
    /// SHA-256 of the archive as uploaded (hex); the same archive is stored once.
    pub sha256: String,
    pub status: DatasetStatus,
    /// `zip`, `tar`, `tar.gz` or `tar.bz2`, once validated.
    pub format: Option<String>,
    /// Size of the uploaded archive.
    pub size_bytes: i64,
    /// Extracted directory, relative to the data dir.
    pub path: String,
    /// Once validated.
    pub task: Option<Task>,
    /// Once validated.
    pub summary: Option<DatasetSummary>,
    /// While validating (and the last one after).
    pub progress: Option<ValidationProgress>,
    /// Once refused.
    pub error: Option<DatasetFailure>,
    /// Times its validation has started since it was uploaded (more than
    /// one: the service stopped during a validation and resumed it).
    pub validation_starts: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the validation ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl DatasetRecord {
    /// The dataset's directory.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.path)
    }

    /// The manifest, with absolute sample paths.
    pub fn load_manifest(&self, data_dir: &Path) -> anyhow::Result<Manifest> {
        Manifest::load(&self.dir(data_dir))
    }

    /// Validated: jobs may train on it.
    pub fn is_ready(&self) -> bool {
        self.status == DatasetStatus::Ready
    }

    /// Ready or failed: its validation has ended.
    pub fn is_settled(&self) -> bool {
        self.status != DatasetStatus::Validating
    }
}

/// A row of `datasets` (the store's `COLUMNS`) as the record. The JSON
/// documents are informative: one that does not parse (progress written
/// by an older version, a summary a test stored as `{}`) is logged and
/// left out rather than failing every read of the dataset.
impl<'r> sqlx::FromRow<'r, AnyRow> for DatasetRecord {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let id: String = row.try_get("id")?;
        let id: Uuid = id.parse().map_err(|e| decode("id", e))?;
        let status: String = row.try_get("status")?;
        Ok(DatasetRecord {
            status: DatasetStatus::parse(&status)
                .ok_or_else(|| decode("status", format!("unknown dataset status `{status}`")))?,
            sha256: row.try_get("sha256")?,
            format: row.try_get("format")?,
            size_bytes: row.try_get("size_bytes")?,
            path: row.try_get("path")?,
            task: row.try_get("task")?,
            summary: document(id, row, "summary")?,
            progress: document(id, row, "progress")?,
            error: failure_of_row(row)?,
            validation_starts: row.try_get("validation_starts")?,
            created_at: time(row.try_get("created_at")?)?,
            updated_at: time(
                row.try_get::<Option<i64>, _>("updated_at")?
                    .map_or_else(|| row.try_get("created_at"), Ok)?,
            )?,
            finished_at: row
                .try_get::<Option<i64>, _>("finished_at")?
                .map(time)
                .transpose()?,
            id,
        })
    }
}

/// The refusal's columns, when the row has one.
fn failure_of_row(row: &AnyRow) -> sqlx::Result<Option<DatasetFailure>> {
    let kind: Option<String> = row.try_get("error_kind")?;
    let code: Option<String> = row.try_get("error_code")?;
    Ok(match (kind, code) {
        (Some(kind), Some(code)) => Some(DatasetFailure {
            kind: ErrorKind::parse(&kind),
            code,
            detail: row
                .try_get::<Option<String>, _>("error_detail")?
                .unwrap_or_default(),
        }),
        _ => None,
    })
}

/// The JSON document in `column`, typed; `None` when absent or unreadable
/// (logged).
fn document<T: serde::de::DeserializeOwned>(
    id: Uuid,
    row: &AnyRow,
    column: &str,
) -> sqlx::Result<Option<T>> {
    let Some(text) = row.try_get::<Option<String>, _>(column)? else {
        return Ok(None);
    };
    match serde_json::from_str(&text) {
        Ok(doc) => Ok(Some(doc)),
        Err(e) => {
            tracing::warn!(dataset = %id, column, error = %e, "a stored dataset document does not parse; left out");
            Ok(None)
        }
    }
}

fn time(ms: i64) -> sqlx::Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| decode("timestamp", format!("bad timestamp {ms}")))
}

fn decode(column: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("datasets.{column}: {e}").into())
}

/// The dataset `id`, if stored.
pub async fn get(db: &Db, id: Uuid) -> anyhow::Result<Option<DatasetRecord>> {
    store::get(db, id).await
}

/// The dataset stored from the archive with this SHA-256, if any.
pub async fn find_by_sha256(db: &Db, sha256: &str) -> anyhow::Result<Option<DatasetRecord>> {
    store::find_by_sha256(db, sha256).await
}

/// What a list page shows of a validated dataset: counts, never the
/// lists of the summary (skipped files, labels, duplicates), which a
/// hostile upload can make megabytes long; `GET /datasets/{id}` has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetCounts {
    /// `splits`, `labels`, `metadata` or `parquet`.
    pub layout: String,
    pub task: Task,
    /// Usable images in all splits.
    pub images: usize,
    /// Classes.
    pub labels: usize,
    /// Usable images per split (`train`, `validation`, `test`).
    pub splits: std::collections::BTreeMap<String, usize>,
    /// Files left out.
    pub skipped: usize,
    /// Groups of byte-identical images found in more than one split.
    pub duplicates_across_splits: usize,
    pub warnings: usize,
    /// Bytes the archive expanded to.
    pub extracted_bytes: u64,
}

impl DatasetCounts {
    pub fn of(s: &DatasetSummary) -> Self {
        Self {
            layout: s.layout.clone(),
            task: s.task,
            images: s.images,
            labels: s.labels.len(),
            splits: s
                .splits
                .iter()
                .map(|(k, v)| (k.clone(), v.images))
                .collect(),
            skipped: s.skipped.len(),
            duplicates_across_splits: s.duplicates_across_splits.len(),
            warnings: s.warnings.len(),
            extracted_bytes: s.extracted_bytes,
        }
    }
}

/// A dataset as a list page shows it: the record without its summary,
/// with the summary's counts instead.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetListing {
    /// The record, `summary` always `None`.
    pub record: DatasetRecord,
    /// Once validated.
    pub counts: Option<DatasetCounts>,
}

/// A row of a list page: the counts as stored, or (validated before
/// counts were stored) counted from the summary, which is then dropped.
impl<'r> sqlx::FromRow<'r, AnyRow> for DatasetListing {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let mut record = DatasetRecord::from_row(row)?;
        let summary = record.summary.take();
        let counts =
            document(record.id, row, "counts")?.or_else(|| summary.as_ref().map(DatasetCounts::of));
        Ok(Self { record, counts })
    }
}

/// Newest first, optionally one status only: counts, not summaries.
pub async fn list(
    db: &Db,
    status: Option<DatasetStatus>,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<DatasetListing>> {
    store::list(db, status, limit, offset).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::datasets::NewDataset;

    /// A row decodes straight into the record, its refusal typed; a JSON
    /// document that does not parse is left out, not an error of every
    /// read (the worker only needs the path).
    #[tokio::test]
    async fn rows_decode_into_the_record_and_a_bad_document_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("vitrine.db").display());
        let db = crate::db::connect(&url).await.unwrap();
        let new = NewDataset {
            sha256: "a",
            format: "zip",
            size_bytes: 7,
            path: "datasets/a",
            task: Task::MultiLabel,
            summary_json: "{}",
        };
        let ready: DatasetRecord = store::insert(&db, &new).await.unwrap();
        let read = get(&db, ready.id).await.unwrap().unwrap();
        assert_eq!(read, ready);
        assert!(read.is_ready() && read.summary.is_none() && read.error.is_none());
        assert_eq!((read.task, read.size_bytes), (Some(Task::MultiLabel), 7));
        assert_eq!(read.format.as_deref(), Some("zip"));

        let failing: DatasetRecord = store::insert_validating(&db, "b", 1, "datasets/b")
            .await
            .unwrap()
            .unwrap();
        let failure = DatasetFailure {
            kind: Some(ErrorKind::Unprocessable),
            code: "too_few_labels".into(),
            detail: "one label".into(),
        };
        let (failed, jobs): (DatasetRecord, u64) =
            store::mark_failed(&db, failing.id, &failure.to_row(), "x")
                .await
                .unwrap()
                .unwrap();
        assert_eq!((failed.status, jobs), (DatasetStatus::Failed, 0));
        assert_eq!(failed.error, Some(failure));
        assert!(failed.finished_at.is_some() && failed.is_settled());

        let listed = list(&db, None, 10, 0).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].record.id, failed.id, "newest first");
        assert!(listed.iter().all(|l| l.counts.is_none()));
    }
}
