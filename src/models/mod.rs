//! The trained models as the API manages them: list and look up
//! ([`view`]), alias, delete, and download ([`download`]).
//!
//! Aliasing and deletion let the database decide rather than checking
//! first and acting after (another request may act in between):
//!
//! - deleting is one transaction whose `DELETE` refuses a model an alias
//!   points at; an alias set at the same moment on PostgreSQL trips the
//!   foreign key instead, and both answer 409 `model_aliased`. The model's
//!   files, exports and cached copies go only after the commit;
//! - setting an alias is one statement that reads the model as it writes:
//!   no such model is a 404, and a model deleted under it (the foreign
//!   key again) a 409 `model_deleted`, never a 500.

pub mod download;
pub mod view;

use std::path::Path;

use crate::artifacts::Artifacts;
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::export::ExportQueue;
use crate::serve::Registry;
use crate::store::models::{self as store, Deletion, ModelRow};
pub use view::ModelView;

/// The model service: what model requests read and change. Built per
/// request from the application's parts.
pub struct Models<'a> {
    pub db: &'a Db,
    /// The data directory model paths are relative to.
    pub data_dir: &'a Path,
    pub artifacts: &'a Artifacts,
    /// The prediction side's cache of loaded models, told of deletions.
    pub served: &'a Registry,
    pub exports: &'a ExportQueue,
}

impl Models<'_> {
    /// Models, newest first: at most `limit`, older than `before`.
    pub async fn list(&self, before: Option<&str>, limit: i64) -> AppResult<Vec<ModelView>> {
        let rows = store::list(self.db, before, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(view::of(self.db, row).await?);
        }
        Ok(out)
    }

    /// The model `name` designates: an alias's model, else the model of id `name`.
    pub async fn get(&self, name: &str) -> AppResult<ModelView> {
        view::of(self.db, self.find(name).await?).await
    }

    async fn find(&self, name: &str) -> AppResult<ModelRow> {
        store::by_alias_or_id(self.db, name)
            .await?
            .ok_or_else(|| AppError::not_found(format!("no model or alias `{name}`")))
    }

    /// Deletes model `id` and then its files; refused (409) while an alias
    /// points at it.
    pub async fn delete(&self, id: &str) -> AppResult<()> {
        let row = match store::delete_unaliased(self.db, id).await {
            Ok(Deletion::Deleted(row)) => row,
            Ok(Deletion::Missing) => return Err(AppError::not_found(format!("no model `{id}`"))),
            Ok(Deletion::Aliased(aliases)) => return Err(aliased(id, &aliases)),
            // An alias set at the same moment (PostgreSQL).
            Err(e) if store::is_foreign_key_violation(&e) => {
                return Err(aliased(id, &store::aliases_of(self.db, id).await?))
            }
            Err(e) => return Err(e.into()),
        };
        self.remove_files(&row).await;
        Ok(())
    }

    /// After the row is gone: the cached copy, exports, the directory and
    /// the shared artefact store's copy. A failure here leaves only files
    /// nothing refers to, so it is logged, not answered.
    async fn remove_files(&self, row: &ModelRow) {
        self.served.evict(&row.id);
        self.exports.forget(&row.id).await;
        let dir = self.data_dir.join(&row.path);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(model = %row.id, error = ?e, "removing the model directory failed");
        }
        if let Err(e) = self.artifacts.delete_model(&row.path).await {
            tracing::warn!(model = %row.id, error = %format!("{e:#}"), "removing the model from the artifact store failed");
        }
    }

    /// Points alias `name` at model `model_id` (creating or moving it).
    pub async fn set_alias(&self, name: &str, model_id: &str) -> AppResult<ModelView> {
        check_alias_name(name)?;
        let missing = || AppError::not_found(format!("no model `{model_id}`"));
        match store::set_alias(self.db, name, model_id).await {
            Ok(true) => {}
            Ok(false) => return Err(missing()),
            Err(e) if store::is_foreign_key_violation(&e) => {
                return Err(AppError::conflict(
                    "model_deleted",
                    format!("model `{model_id}` was deleted while the alias was being set"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let row = store::get(self.db, model_id).await?.ok_or_else(missing)?;
        view::of(self.db, row).await
    }
}

fn aliased(id: &str, aliases: &[String]) -> AppError {
    let names: Vec<String> = aliases.iter().map(|a| format!("`{a}`")).collect();
    let detail = match names.is_empty() {
        // Set and moved again while the delete ran.
        true => format!("an alias was pointed at model `{id}` as it was being deleted; retry"),
        false => format!(
            "model `{id}` is what alias {} points at; move the alias first",
            names.join(", ")
        ),
    };
    AppError::conflict("model_aliased", detail)
}

/// Alias names are 1-64 characters of letters, digits, `-`, `_` and `.`.
fn check_alias_name(name: &str) -> AppResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(AppError::unprocessable(
            "invalid_alias",
            "alias names are 1-64 characters of letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}
