//! Which model answers a request, and what the handlers need to know about
//! it (labels, task, thresholds, preprocessing) without touching tensors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;

use crate::data::Task;
use crate::error::{AppError, AppResult};
use crate::imaging::{Pipeline, PreprocessorConfig};
use crate::store::models::{self as store, ModelRow};

/// The alias `/predict` follows when it exists.
pub const DEFAULT_ALIAS: &str = "production";

/// A servable model's description.
pub struct ModelInfo {
    pub id: String,
    pub dir: PathBuf,
    pub labels: Vec<String>,
    pub task: Task,
    /// Multi-label decision thresholds chosen on validation.
    pub thresholds: Option<Vec<f64>>,
    pub pipeline: Pipeline,
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
        db: &SqlitePool,
        data_dir: &std::path::Path,
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
        if let Some(info) = self.cache.lock().unwrap().get(&row.id) {
            return Ok(info.clone());
        }
        let info = Arc::new(load_info(&row, data_dir)?);
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

fn load_info(row: &ModelRow, data_dir: &std::path::Path) -> AppResult<ModelInfo> {
    let dir = data_dir.join(&row.path);
    let labels: Vec<String> = serde_json::from_str(&row.labels).map_err(anyhow::Error::from)?;
    let task: Task = serde_json::from_value(serde_json::Value::String(row.task.clone()))
        .map_err(anyhow::Error::from)?;
    let metrics: serde_json::Value = serde_json::from_str(&row.metrics).unwrap_or_default();
    let thresholds = metrics["thresholds"].as_array().map(|a| {
        a.iter()
            .map(|v| v.as_f64().unwrap_or(0.5))
            .collect::<Vec<_>>()
    });
    let preprocessor: PreprocessorConfig = match std::fs::read(dir.join("preprocessor_config.json"))
    {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(anyhow::Error::from)?,
        Err(_) => serde_json::from_str("{}").map_err(anyhow::Error::from)?,
    };
    // The model's input size, for preprocessors that leave it open.
    let image_size = crate::model::ModelConfig::from_file(&dir.join("config.json"))
        .map_err(|e| anyhow::anyhow!("model {}: {e}", row.id))?
        .image_size();
    Ok(ModelInfo {
        id: row.id.clone(),
        labels,
        task,
        thresholds,
        pipeline: Pipeline::for_model(&preprocessor, image_size as u32),
        dir,
    })
}
