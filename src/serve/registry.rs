//! Which model answers a request, and what the handlers need to know about
//! it (labels, task, thresholds, preprocessing) without touching tensors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::db::Db;

use crate::error::{AppError, AppResult};
use crate::store::models as store;
use crate::train::TrainedModel;

/// The alias `/predict` follows when it exists.
pub const DEFAULT_ALIAS: &str = "production";

/// A servable model: its id and what [`TrainedModel::load`] read.
#[derive(Debug)]
pub struct ModelInfo {
    pub id: String,
    pub model: TrainedModel,
}

impl std::ops::Deref for ModelInfo {
    type Target = TrainedModel;
    fn deref(&self) -> &TrainedModel {
        &self.model
    }
}

/// Caches `ModelInfo` by id (models never change once recorded).
#[derive(Clone, Default)]
pub struct Registry {
    cache: Arc<Mutex<HashMap<String, Arc<ModelInfo>>>>,
}

impl Registry {
    /// The model behind `selector` (an id or an alias), or the default: the
    /// `production` alias if set, else the newest model.
    pub async fn resolve(
        &self,
        db: &Db,
        artifacts: &crate::artifacts::Artifacts,
        selector: Option<&str>,
    ) -> AppResult<Arc<ModelInfo>> {
        let row = match selector {
            Some(name) => store::by_alias_or_id(db, name)
                .await?
                .ok_or_else(|| AppError::not_found(format!("no model or alias `{name}`")))?,
            None => store::pinned_or_newest(db, DEFAULT_ALIAS)
                .await?
                .ok_or_else(|| {
                    AppError::conflict(
                        "no_model",
                        "no model has been trained yet: submit a job with POST /jobs and wait for it to succeed",
                    )
                })?,
        };
        if let Some(info) = self.cache.lock().unwrap().get(&row.id).cloned() {
            // In use: its directory is the last the disk cache evicts.
            artifacts.touch_model(&row.path);
            return Ok(info);
        }
        // On a node that has never seen it: fetched from the artefact
        // store (once, however many requests ask at once).
        let dir = artifacts.model_dir(&row.path).await?;
        let model = tokio::task::spawn_blocking(move || TrainedModel::load(&dir))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|e| anyhow::anyhow!("model {}: {e}", row.id))?;
        let info = Arc::new(ModelInfo {
            id: row.id.clone(),
            model,
        });
        self.cache
            .lock()
            .unwrap()
            .insert(row.id.clone(), info.clone());
        Ok(info)
    }

    /// Forgets a deleted model.
    pub fn evict(&self, id: &str) {
        self.cache.lock().unwrap().remove(id);
    }
}

/// A model outside the registry, for `vitrine predict`: a directory in the
/// Hugging Face layout or a Hub id (downloaded and cached), named as given.
pub async fn load_local(source: &str) -> AppResult<Arc<ModelInfo>> {
    let id = source.to_string();
    let model = tokio::task::spawn_blocking(move || {
        let dir = crate::model::resolve_model_source(&id, &crate::model::HubOptions::from_env())?;
        TrainedModel::load(&dir)
    })
    .await
    .map_err(anyhow::Error::from)??;
    Ok(Arc::new(ModelInfo {
        id: source.to_string(),
        model,
    }))
}
