//! A stored dataset as the API shows it: the `datasets` row with its summary
//! typed, and the manifest the trainer reads from its directory.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqlitePool;
use uuid::Uuid;

use super::{DatasetSummary, Manifest, Task};
use crate::store::datasets::{self as store, DatasetRow};

/// A stored dataset, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DatasetRecord {
    pub id: Uuid,
    /// SHA-256 of the archive as uploaded (hex); the same archive is stored once.
    pub sha256: String,
    /// `zip`, `tar`, `tar.gz` or `tar.bz2`.
    pub format: String,
    /// Size of the uploaded archive.
    pub size_bytes: i64,
    /// Extracted directory, relative to the data dir.
    #[serde(skip)]
    pub path: String,
    pub task: Task,
    pub summary: DatasetSummary,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<DatasetRow> for DatasetRecord {
    type Error = anyhow::Error;
    fn try_from(r: DatasetRow) -> anyhow::Result<Self> {
        Ok(DatasetRecord {
            summary: serde_json::from_str(&r.summary_json)?,
            id: r.id,
            sha256: r.sha256,
            format: r.format,
            size_bytes: r.size_bytes,
            path: r.path,
            task: r.task,
            created_at: r.created_at,
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
}

/// The dataset `id`, if stored.
pub async fn get(db: &SqlitePool, id: Uuid) -> anyhow::Result<Option<DatasetRecord>> {
    store::get(db, id).await?.map(TryInto::try_into).transpose()
}

/// The dataset stored from the archive with this SHA-256, if any.
pub async fn find_by_sha256(
    db: &SqlitePool,
    sha256: &str,
) -> anyhow::Result<Option<DatasetRecord>> {
    store::find_by_sha256(db, sha256)
        .await?
        .map(TryInto::try_into)
        .transpose()
}

/// Newest first.
pub async fn list(db: &SqlitePool, limit: i64, offset: i64) -> anyhow::Result<Vec<DatasetRecord>> {
    store::list(db, limit, offset)
        .await?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}
