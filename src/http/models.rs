//! `/models`: list, inspect, delete, alias and download trained models.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Query};
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::export::{self, ExportOptions, Precision};
use crate::jobs::view::rfc3339;
use crate::store::models::{self as store, ModelRow};
use crate::train::ModelCard;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model).delete(delete_model))
        .route("/models/{id}/download", get(download_model))
        .route("/models/aliases/{name}", put(set_alias))
}

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

async fn view(state: &AppState, row: ModelRow) -> AppResult<ModelView> {
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
        aliases: store::aliases_of(&state.db, &row.id).await?,
        labels,
        metrics,
        id: row.id,
        job_id: row.job_id,
        base_model: row.base_model,
        task: row.task.as_str().to_string(),
        created_at: rfc3339(row.created_at),
    })
}

/// A model by id or alias.
async fn find(state: &AppState, id: &str) -> AppResult<ModelRow> {
    store::by_alias_or_id(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no model or alias `{id}`")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListModels {
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub before: Option<String>,
}

/// Models, newest first.
#[utoipa::path(get, path = "/models", tag = "models", params(ListModels),
    responses((status = 200, body = Vec<ModelView>)), security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    Query(q): Query<ListModels>,
) -> AppResult<Json<Vec<ModelView>>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::bad_request(
            "invalid_query",
            "`limit` must be 1..=200",
        ));
    }
    let mut out = Vec::new();
    for row in store::list(&state.db, q.before.as_deref(), limit).await? {
        out.push(view(&state, row).await?);
    }
    Ok(Json(out))
}

/// One model (by id or alias).
#[utoipa::path(get, path = "/models/{id}", tag = "models",
    responses((status = 200, body = ModelView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<ModelView>> {
    let row = find(&state, &id).await?;
    Ok(Json(view(&state, row).await?))
}

/// Delete a model and its files. Refused while an alias points at it.
#[utoipa::path(delete, path = "/models/{id}", tag = "models",
    responses((status = 204), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem, description = "An alias points at it")),
    security(("bearer" = [])))]
pub async fn delete_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let row = store::get(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no model `{id}`")))?;
    let aliases = store::aliases_of(&state.db, &id).await?;
    if !aliases.is_empty() {
        return Err(AppError::conflict(
            "model_aliased",
            format!(
                "model `{id}` is what alias {} points at; move the alias first",
                aliases
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    store::delete(&state.db, &id).await?;
    state.inference.registry.evict(&id);
    state.exports.forget(&id).await;
    let dir = state.config.data_dir.join(&row.path);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(model = %id, error = ?e, "removing the model directory failed");
    }
    if let Err(e) = state.artifacts.delete_model(&row.path).await {
        tracing::warn!(model = %id, error = %format!("{e:#}"), "removing the model from the artifact store failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /models/aliases/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub model_id: String,
}

/// Point an alias (e.g. `production`, which `/predict` follows) at a model.
#[utoipa::path(put, path = "/models/aliases/{name}", tag = "models", request_body = SetAlias,
    responses((status = 200, body = ModelView), (status = 404, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn set_alias(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<SetAlias>,
) -> AppResult<Json<ModelView>> {
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
    let row = store::get(&state.db, &body.model_id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no model `{}`", body.model_id)))?;
    store::set_alias(&state.db, &name, &row.id).await?;
    Ok(Json(view(&state, row).await?))
}

/// `GET /models/{id}/download` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DownloadQuery {
    /// `hf` (default): the model directory as a tar.gz; `onnx`: an ONNX
    /// file with its metadata in `metadata_props`; `onnx-metadata`: that
    /// metadata alone, as JSON (what `vitrine export` writes as `OUT.json`).
    pub format: Option<String>,
    /// ONNX opset, 17-21 (default 17).
    pub opset: Option<i64>,
    /// A symbolic batch axis (default false: batches of 1).
    pub dynamic_batch: Option<bool>,
    /// fp16 weights and computation; inputs and outputs stay float32 (default false).
    pub fp16: Option<bool>,
}

impl DownloadQuery {
    fn export_options(&self) -> ExportOptions {
        ExportOptions {
            opset: self.opset.unwrap_or(export::DEFAULT_OPSET),
            dynamic_batch: self.dynamic_batch.unwrap_or(false),
            precision: if self.fp16.unwrap_or(false) {
                Precision::Fp16
            } else {
                Precision::Fp32
            },
        }
    }
}

/// The model directory (HF layout: config.json, model.safetensors,
/// preprocessor_config.json, metrics.json) as a tar.gz, or the model as
/// ONNX (`?format=onnx`), or the ONNX export's metadata (`?format=onnx-metadata`).
///
/// An ONNX file is exported once per (model, options) and kept on disk;
/// exports run one at a time (`--export-concurrency`) with a short queue
/// (`--export-queue`), beyond which the answer is 429. The metadata is
/// read from the model's card, without exporting.
#[utoipa::path(get, path = "/models/{id}/download", tag = "models", params(DownloadQuery),
    responses((status = 200, description = "`hf`: a tar.gz; `onnx`: the ONNX file; \
            `onnx-metadata`: labels, task, thresholds, input and preprocessing as JSON",
            content((Vec<u8> = "application/gzip"), (Vec<u8> = "application/octet-stream"),
                (Object = "application/json"))),
        (status = 400, body = crate::error::Problem,
            description = "`unsupported_format`, `unsupported_opset`"),
        (status = 404, body = crate::error::Problem),
        (status = 413, body = crate::error::Problem,
            description = "`decode_too_large`: the export needs more memory than the decoding budget"),
        (status = 422, body = crate::error::Problem,
            description = "`unsupported_architecture`, `export_too_large`"),
        (status = 429, body = crate::error::Problem,
            description = "The export queue is full or its memory is in use; see Retry-After")),
    security(("bearer" = [])))]
pub async fn download_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> AppResult<Response> {
    let format = q.format.as_deref().unwrap_or("hf");
    if !["hf", "onnx", "onnx-metadata"].contains(&format) {
        return Err(AppError::bad_request(
            "unsupported_format",
            format!("unknown download format `{format}` (use `hf`, `onnx` or `onnx-metadata`)"),
        ));
    }
    if format == "hf" && (q.opset.is_some() || q.dynamic_batch.is_some() || q.fp16.is_some()) {
        return Err(AppError::bad_request(
            "invalid_query",
            "`opset`, `dynamic_batch` and `fp16` apply to `format=onnx` only",
        ));
    }
    let row = find(&state, &id).await?;
    let dir = state.artifacts.model_dir(&row.path).await?;
    if format == "hf" {
        return download_archive(&state, row, dir).await;
    }
    let opts = q.export_options();
    if format == "onnx-metadata" {
        let metadata = tokio::task::spawn_blocking(move || export::metadata_of_dir(&dir, &opts))
            .await
            .map_err(anyhow::Error::from)??;
        return Ok(axum::Json(metadata).into_response());
    }
    let path = state.exports.onnx_file(&row.id, &dir, &opts).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| anyhow::anyhow!("opening the export {}: {e}", path.display()))?;
    let len = file.metadata().await.map_err(anyhow::Error::from)?.len();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.onnx\"", row.id),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

async fn download_archive(
    state: &AppState,
    row: ModelRow,
    dir: std::path::PathBuf,
) -> AppResult<Response> {
    let tmp_dir = state.config.data_dir.join("tmp");
    let name = row.id.clone();
    let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(&tmp_dir)?;
        // An anonymous temporary file: gone as soon as the response is sent.
        let mut file = tempfile::tempfile_in(&tmp_dir)?;
        {
            let gz = flate2::write::GzEncoder::new(&mut file, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            tar.append_dir_all(&name, &dir)?;
            tar.into_inner()?.finish()?;
        }
        use std::io::Seek;
        file.rewind()?;
        Ok(file)
    })
    .await
    .map_err(anyhow::Error::from)??;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.tar.gz\"", row.id),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
