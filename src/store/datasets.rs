//! The `datasets` table: content-addressed, validated archives.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::data::{DatasetSummary, Manifest, Task};

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

/// What [`insert`] needs.
#[derive(Debug, Clone)]
pub struct NewDataset<'a> {
    pub sha256: &'a str,
    pub format: &'a str,
    pub size_bytes: i64,
    pub path: &'a str,
    pub task: Task,
    pub summary: &'a DatasetSummary,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    sha256: String,
    format: String,
    size_bytes: i64,
    path: String,
    task: String,
    summary: String,
    created_at: i64,
}

impl TryFrom<Row> for DatasetRecord {
    type Error = anyhow::Error;
    fn try_from(r: Row) -> anyhow::Result<Self> {
        Ok(DatasetRecord {
            id: r.id.parse()?,
            sha256: r.sha256,
            format: r.format,
            size_bytes: r.size_bytes,
            path: r.path,
            task: Task::parse(&r.task)
                .ok_or_else(|| anyhow::anyhow!("unknown task `{}`", r.task))?,
            summary: serde_json::from_str(&r.summary)?,
            created_at: Utc
                .timestamp_millis_opt(r.created_at)
                .single()
                .ok_or_else(|| anyhow::anyhow!("bad timestamp {}", r.created_at))?,
        })
    }
}

const COLUMNS: &str = "id, sha256, format, size_bytes, path, task, summary, created_at";

fn convert(rows: Vec<Row>) -> anyhow::Result<Vec<DatasetRecord>> {
    rows.into_iter().map(DatasetRecord::try_from).collect()
}

/// Inserts a dataset; a second insert of the same sha256 is a unique violation.
pub async fn insert(db: &SqlitePool, new: &NewDataset<'_>) -> anyhow::Result<DatasetRecord> {
    let id = Uuid::now_v7();
    let now = crate::db::now_ms();
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO datasets ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(new.sha256)
    .bind(new.format)
    .bind(new.size_bytes)
    .bind(new.path)
    .bind(new.task.as_str())
    .bind(serde_json::to_string(new.summary)?)
    .bind(now)
    .fetch_one(db)
    .await?;
    row.try_into()
}

pub async fn get(db: &SqlitePool, id: Uuid) -> anyhow::Result<Option<DatasetRecord>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE id = ?"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(TryInto::try_into).transpose()
}

pub async fn find_by_sha256(
    db: &SqlitePool,
    sha256: &str,
) -> anyhow::Result<Option<DatasetRecord>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE sha256 = ?"))
            .bind(sha256)
            .fetch_optional(db)
            .await?;
    row.map(TryInto::try_into).transpose()
}

/// Newest first.
pub async fn list(db: &SqlitePool, limit: i64, offset: i64) -> anyhow::Result<Vec<DatasetRecord>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM datasets ORDER BY id DESC LIMIT ? OFFSET ?"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    convert(rows)
}
