//! The `dataset_audits` table: one row per audit of a dataset, inserted
//! `running`, ended `succeeded` (findings and CSV) or `failed` (a
//! message). Each end is a compare-and-set on `running`.

use sqlx::Row as _;
use uuid::Uuid;

use crate::db::{now_ms, Db};

/// An audit row, its JSON documents as text (typed by `audit`).
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub status: String,
    pub base_model: String,
    pub progress: Option<String>,
    pub findings: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str =
    "id, dataset_id, status, base_model, progress, findings, error, created_at, finished_at";

fn row_of(row: &sqlx::any::AnyRow) -> anyhow::Result<AuditRow> {
    let id: String = row.try_get("id")?;
    let dataset_id: String = row.try_get("dataset_id")?;
    Ok(AuditRow {
        id: id.parse()?,
        dataset_id: dataset_id.parse()?,
        status: row.try_get("status")?,
        base_model: row.try_get("base_model")?,
        progress: row.try_get("progress")?,
        findings: row.try_get("findings")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// A new `running` audit.
pub async fn insert(db: &Db, id: Uuid, dataset_id: Uuid, base_model: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO dataset_audits (id, dataset_id, status, base_model, created_at) \
         VALUES ($1, $2, 'running', $3, $4)",
    )
    .bind(id.to_string())
    .bind(dataset_id.to_string())
    .bind(base_model)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_progress(db: &Db, id: Uuid, progress_json: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE dataset_audits SET progress = $2, updated_at = $3 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(progress_json)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// `running` -> `succeeded` with the findings (JSON) and the CSV.
pub async fn succeed(db: &Db, id: Uuid, findings_json: &str, csv: &str) -> anyhow::Result<()> {
    let now = now_ms();
    sqlx::query(
        "UPDATE dataset_audits SET status = 'succeeded', findings = $2, csv = $3, \
         updated_at = $4, finished_at = $4 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(findings_json)
    .bind(csv)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// `running` -> `failed` with what went wrong (for the client).
pub async fn fail(db: &Db, id: Uuid, error: &str) -> anyhow::Result<()> {
    let now = now_ms();
    sqlx::query(
        "UPDATE dataset_audits SET status = 'failed', error = $2, updated_at = $3, \
         finished_at = $3 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(error)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// The dataset's newest audit.
pub async fn latest(db: &Db, dataset_id: Uuid) -> anyhow::Result<Option<AuditRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dataset_audits WHERE dataset_id = $1 ORDER BY id DESC LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(dataset_id.to_string())
        .fetch_optional(db)
        .await?;
    row.as_ref().map(row_of).transpose()
}

/// The CSV of an audit (`None`: not finished, or no such audit).
pub async fn csv(db: &Db, id: Uuid) -> anyhow::Result<Option<String>> {
    let row = sqlx::query("SELECT csv FROM dataset_audits WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("csv")?,
        None => None,
    })
}
