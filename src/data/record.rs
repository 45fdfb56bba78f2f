//! A stored dataset as the API shows it: the `datasets` row with its
//! summary, progress and refusal typed, and the manifest the trainer reads
//! from its directory.

use std::path::{Path, PathBuf};

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DatasetSummary, Manifest};
use crate::error::{AppError, ErrorKind};
pub use crate::store::datasets::DatasetStatus;
use crate::store::datasets::{self as store, DatasetRow, FailureRow};
use crate::task::Task;

/// How far a validation has got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidationProgress {
    /// `queued` (waiting for a validation slot), `extracting`, `checking`
    /// (decoding every image) or `done`.
    pub phase: String,
    /// Images decoded and checked so far.
    pub images_checked: u64,
    /// Images to check; known once the archive is extracted.
    pub images_total: Option<u64>,
    /// Images checked per second, since checking began.
    pub images_per_sec: Option<f64>,
    /// Seconds until every image is checked, at that rate.
    pub eta_seconds: Option<f64>,
    /// Seconds since this validation started (extraction included).
    pub elapsed_seconds: f64,
}

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

    pub fn to_row(&self) -> FailureRow {
        FailureRow {
            kind: self.kind.map_or("internal", ErrorKind::as_str).to_string(),
            code: self.code.clone(),
            detail: self.detail.clone(),
        }
    }

    fn from_row(r: FailureRow) -> Self {
        Self {
            kind: ErrorKind::parse(&r.kind),
            code: r.code,
            detail: r.detail,
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

impl TryFrom<DatasetRow> for DatasetRecord {
    type Error = anyhow::Error;
    fn try_from(r: DatasetRow) -> anyhow::Result<Self> {
        Ok(DatasetRecord {
            summary: r
                .summary_json
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            progress: r
                .progress_json
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            error: r.error.map(DatasetFailure::from_row),
            validation_starts: r.validation_starts,
            id: r.id,
            sha256: r.sha256,
            status: r.status,
            format: r.format,
            size_bytes: r.size_bytes,
            path: r.path,
            task: r.task,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
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

    /// Ready or failed: its validation has ended.
    pub fn is_settled(&self) -> bool {
        self.status != DatasetStatus::Validating
    }
}

/// The dataset `id`, if stored.
pub async fn get(db: &Db, id: Uuid) -> anyhow::Result<Option<DatasetRecord>> {
    store::get(db, id).await?.map(TryInto::try_into).transpose()
}

/// The dataset stored from the archive with this SHA-256, if any.
pub async fn find_by_sha256(db: &Db, sha256: &str) -> anyhow::Result<Option<DatasetRecord>> {
    store::find_by_sha256(db, sha256)
        .await?
        .map(TryInto::try_into)
        .transpose()
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

impl TryFrom<DatasetRow> for DatasetListing {
    type Error = anyhow::Error;
    fn try_from(mut r: DatasetRow) -> anyhow::Result<Self> {
        let stored = r.counts_json.take();
        let mut record = DatasetRecord::try_from(r)?;
        let counts = match (stored, record.summary.take()) {
            (Some(json), _) => Some(serde_json::from_str(&json)?),
            // Validated before counts were stored.
            (None, summary) => summary.as_ref().map(DatasetCounts::of),
        };
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
    store::list(db, status, limit, offset)
        .await?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}
