//! The `models` and `model_aliases` tables.

use crate::db::Db;
use sqlx::FromRow;

use crate::db::now_ms;
use crate::task::Task;

#[derive(Debug, Clone, FromRow)]
pub struct ModelRow {
    pub id: String,
    pub job_id: Option<String>,
    /// Relative to the data directory.
    pub path: String,
    pub base_model: String,
    pub task: Task,
    /// JSON array of label names, index = class id.
    pub labels: String,
    /// The model's card (`metrics.json`), as JSON text.
    pub metrics: String,
    pub created_at: i64,
}

pub struct NewModel<'a> {
    pub id: &'a str,
    pub job_id: Option<&'a str>,
    pub path: &'a str,
    pub base_model: &'a str,
    pub task: Task,
    pub labels_json: &'a str,
    pub metrics_json: &'a str,
}

pub async fn insert(db: &Db, m: NewModel<'_>) -> sqlx::Result<ModelRow> {
    let mut conn = db.acquire().await?;
    insert_in(&mut conn, m).await
}

/// `insert` on a given connection (or transaction).
pub async fn insert_in(conn: &mut sqlx::AnyConnection, m: NewModel<'_>) -> sqlx::Result<ModelRow> {
    sqlx::query_as(
        "INSERT INTO models (id, job_id, path, base_model, task, labels, metrics, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
    )
    .bind(m.id)
    .bind(m.job_id)
    .bind(m.path)
    .bind(m.base_model)
    .bind(m.task)
    .bind(m.labels_json)
    .bind(m.metrics_json)
    .bind(now_ms())
    .fetch_one(conn)
    .await
}

pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as("SELECT * FROM models WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The model `name` designates, in one statement: the alias `name`'s
/// model, else the model with id `name`.
pub async fn by_alias_or_id(db: &Db, name: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(
        "SELECT * FROM models
         WHERE id = COALESCE((SELECT model_id FROM model_aliases WHERE name = $1), $1)",
    )
    .bind(name)
    .fetch_optional(db)
    .await
}

/// The model `/predict` answers with by default, in one statement (it runs
/// on every request): the alias `alias`'s model when the alias exists,
/// else the newest model.
pub async fn pinned_or_newest(db: &Db, alias: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(
        "SELECT * FROM models
         WHERE id = COALESCE(
             (SELECT a.model_id FROM model_aliases a JOIN models m ON m.id = a.model_id
              WHERE a.name = $1),
             -- ids are UUID v7: the newest sorts last
             (SELECT id FROM models ORDER BY id DESC LIMIT 1))",
    )
    .bind(alias)
    .fetch_optional(db)
    .await
}

pub async fn list(db: &Db, before: Option<&str>, limit: i64) -> sqlx::Result<Vec<ModelRow>> {
    sqlx::query_as("SELECT * FROM models WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2")
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// What [`delete_unaliased`] did.
#[derive(Debug)]
pub enum Deletion {
    /// The row is gone (committed); here is what it held.
    Deleted(ModelRow),
    /// Aliases point at it: nothing changed.
    Aliased(Vec<String>),
    /// No such model.
    Missing,
}

/// Deletes model `id` unless an alias points at it, in one transaction
/// whose first statement writes: SQLite takes its write lock there (a
/// transaction that read first could not upgrade under a concurrent
/// writer), so the check and the delete are one step. On PostgreSQL an
/// alias inserted concurrently surfaces as a foreign-key violation
/// ([`is_foreign_key_violation`]) and the transaction rolls back.
pub async fn delete_unaliased(db: &Db, id: &str) -> sqlx::Result<Deletion> {
    let mut tx = db.begin().await?;
    let deleted: Option<ModelRow> = sqlx::query_as(
        "DELETE FROM models WHERE id = $1
         AND NOT EXISTS (SELECT 1 FROM model_aliases WHERE model_id = $1)
         RETURNING *",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match deleted {
        Some(row) => Deletion::Deleted(row),
        None => {
            let aliases = aliases_in(&mut tx, id).await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM models WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            match exists {
                Some(_) => Deletion::Aliased(aliases),
                None => Deletion::Missing,
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Points `name` at model `model_id` (creating or moving the alias) in one
/// statement that reads the model as it writes; `false` when there is no
/// such model. A model deleted concurrently on PostgreSQL surfaces as a
/// foreign-key violation ([`is_foreign_key_violation`]).
pub async fn set_alias(db: &Db, name: &str, model_id: &str) -> sqlx::Result<bool> {
    // SQLite reads `INSERT … SELECT … ON CONFLICT` right only when the
    // SELECT has a WHERE clause, which this one needs anyway.
    let done = sqlx::query(
        "INSERT INTO model_aliases (name, model_id, updated_at)
         SELECT $1, id, $2 FROM models WHERE id = $3
         ON CONFLICT (name) DO UPDATE SET model_id = excluded.model_id, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(now_ms())
    .bind(model_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `e` is a foreign-key violation: the database refused a write
/// that a concurrent one made invalid (an alias to a model being deleted,
/// or the delete of a model being aliased), a conflict rather than a fault.
pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

/// Names of the aliases that point at a model.
pub async fn aliases_of(db: &Db, model_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT name FROM model_aliases WHERE model_id = $1 ORDER BY name")
        .bind(model_id)
        .fetch_all(db)
        .await
}

async fn aliases_in(conn: &mut sqlx::AnyConnection, model_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT name FROM model_aliases WHERE model_id = $1 ORDER BY name")
        .bind(model_id)
        .fetch_all(conn)
        .await
}
