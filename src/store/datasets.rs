//! The `datasets` table: content-addressed, validated archives.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::task::Task;

/// A row of `datasets`. The summary stays JSON text here: its type belongs
/// to `data`, which turns rows into API records (`data::record`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub id: Uuid,
    /// SHA-256 of the archive as uploaded (hex).
    pub sha256: String,
    pub format: String,
    pub size_bytes: i64,
    /// Extracted directory, relative to the data dir.
    pub path: String,
    pub task: Task,
    pub summary_json: String,
    pub created_at: DateTime<Utc>,
}

/// What [`insert`] needs.
#[derive(Debug, Clone)]
pub struct NewDataset<'a> {
    pub sha256: &'a str,
    pub format: &'a str,
    pub size_bytes: i64,
    pub path: &'a str,
    pub task: Task,
    pub summary_json: &'a str,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    sha256: String,
    format: String,
    size_bytes: i64,
    path: String,
    task: Task,
    summary: String,
    created_at: i64,
}

impl TryFrom<Row> for DatasetRow {
    type Error = anyhow::Error;
    fn try_from(r: Row) -> anyhow::Result<Self> {
        Ok(DatasetRow {
            id: r.id.parse()?,
            sha256: r.sha256,
            format: r.format,
            size_bytes: r.size_bytes,
            path: r.path,
            task: r.task,
            summary_json: r.summary,
            created_at: Utc
                .timestamp_millis_opt(r.created_at)
                .single()
                .ok_or_else(|| anyhow::anyhow!("bad timestamp {}", r.created_at))?,
        })
    }
}

const COLUMNS: &str = "id, sha256, format, size_bytes, path, task, summary, created_at";

fn convert(rows: Vec<Row>) -> anyhow::Result<Vec<DatasetRow>> {
    rows.into_iter().map(DatasetRow::try_from).collect()
}

/// Inserts a dataset; a second insert of the same sha256 is a unique violation.
pub async fn insert(db: &SqlitePool, new: &NewDataset<'_>) -> anyhow::Result<DatasetRow> {
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
    .bind(new.task)
    .bind(new.summary_json)
    .bind(now)
    .fetch_one(db)
    .await?;
    row.try_into()
}

pub async fn get(db: &SqlitePool, id: Uuid) -> anyhow::Result<Option<DatasetRow>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE id = ?"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(TryInto::try_into).transpose()
}

pub async fn find_by_sha256(db: &SqlitePool, sha256: &str) -> anyhow::Result<Option<DatasetRow>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE sha256 = ?"))
            .bind(sha256)
            .fetch_optional(db)
            .await?;
    row.map(TryInto::try_into).transpose()
}

/// Newest first.
pub async fn list(db: &SqlitePool, limit: i64, offset: i64) -> anyhow::Result<Vec<DatasetRow>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM datasets ORDER BY id DESC LIMIT ? OFFSET ?"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    convert(rows)
}
