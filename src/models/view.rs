//! A model as the API shows it.

use serde::Serialize;
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::AppResult;
use crate::jobs::view::rfc3339;
use crate::store::models::{self as store, ModelRow};
use crate::train::ModelCard;

/// A trained model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    /// The job that trained it.
    pub job_id: Option<String>,
    pub base_model: String,
    pub task: String,
    /// Class names; index = class id (as `id2label` in its config.json).
    pub labels: Vec<String>,
    /// Validation (and test) metrics of the best epoch, and the history.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    pub created_at: String,
}

/// The view of `row`, with the aliases that point at it now.
pub async fn of(db: &Db, row: ModelRow) -> AppResult<ModelView> {
    // The row keeps the model's card; a card that no longer reads (written
    // by a future version, say) still lists the model, with its row's facts.
    let (labels, metrics) = match ModelCard::from_json(row.metrics.as_bytes()) {
        Ok(card) => (
            card.labels.clone(),
            serde_json::to_value(&card).map_err(anyhow::Error::from)?,
        ),
        Err(e) => {
            tracing::warn!(model = %row.id, error = %e, "unreadable model card");
            (
                serde_json::from_str(&row.labels).unwrap_or_default(),
                serde_json::Value::Object(Default::default()),
            )
        }
    };
    Ok(ModelView {
        aliases: store::aliases_of(db, &row.id).await?,
        labels,
        metrics,
        id: row.id,
        job_id: row.job_id,
        base_model: row.base_model,
        task: row.task.as_str().to_string(),
        created_at: rfc3339(row.created_at),
    })
}
