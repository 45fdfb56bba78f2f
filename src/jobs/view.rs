//! The job as the API shows it.

use serde::Serialize;
use utoipa::ToSchema;

use crate::data::summary::DatasetSummary;
use crate::store::jobs::{JobRow, JobStatus};

/// A fine-tuning job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub status: JobStatus,
    /// Times a worker has started this job.
    pub attempts: i64,
    pub max_attempts: i64,
    pub dataset_id: String,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Epoch, step, total steps, images/s, ETA while running.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// One entry per completed epoch.
    #[schema(value_type = Vec<Object>)]
    pub metrics: serde_json::Value,
    /// The dataset's summary (counts, sizes, warnings).
    #[schema(value_type = Option<Object>)]
    pub dataset: Option<serde_json::Value>,
    pub error: Option<String>,
    /// The stable code of `error` when it has one: a job that waited for
    /// its dataset fails with the dataset's refusal code (e.g.
    /// `undecodable_images`).
    pub error_code: Option<String>,
    pub cancel_requested: bool,
    /// The model produced, once there is one.
    pub model_id: Option<String>,
    /// The sweep this job is a candidate of.
    pub sweep_id: Option<String>,
    /// The rung (an epoch number) at which the sweep's successive halving
    /// stopped it; it then ends `cancelled` with its best epoch as a model.
    pub stopped_rung: Option<i64>,
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

impl JobView {
    pub fn new(row: &JobRow, dataset_summary: Option<serde_json::Value>) -> Self {
        Self {
            id: row.id.clone(),
            status: row.status(),
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            dataset_id: row.dataset_id.clone(),
            config: json(&row.config),
            created_at: rfc3339(row.created_at),
            started_at: row.started_at.map(rfc3339),
            finished_at: row.finished_at.map(rfc3339),
            progress: row.progress.as_deref().map(json),
            metrics: json(&row.metrics),
            dataset: dataset_summary,
            error: row.error.clone(),
            error_code: row.error_code.clone(),
            cancel_requested: row.cancel_requested != 0,
            model_id: row.model_id.clone(),
            sweep_id: row.sweep_id.clone(),
            stopped_rung: row.stopped_rung,
        }
    }

    /// A job with its dataset's summary as stored (`None`: the dataset is
    /// still validating). The summary reads back as the typed
    /// [`DatasetSummary`], so that a job shows it as `GET /datasets/{id}`
    /// does.
    pub fn with_dataset(row: &JobRow, summary_json: Option<&str>) -> anyhow::Result<Self> {
        let summary = summary_json
            .map(serde_json::from_str::<DatasetSummary>)
            .transpose()?
            .and_then(|s| serde_json::to_value(&s).ok());
        Ok(Self::new(row, summary))
    }
}
