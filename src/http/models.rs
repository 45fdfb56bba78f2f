//! `/models`: list, inspect, delete, alias and download trained models,
//! through the model service ([`crate::models`]).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Query};
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::export::{self, ExportOptions, Precision};
use crate::models::download::{Download, DownloadFormat};
pub use crate::models::ModelView;
use crate::models::Models;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model).delete(delete_model))
        .route("/models/{id}/download", get(download_model))
        .route("/models/aliases/{name}", put(set_alias))
}

/// The model service over the application's parts.
fn models(state: &AppState) -> Models<'_> {
    Models {
        db: &state.db,
        data_dir: &state.config.data_dir,
        artifacts: &state.artifacts,
        served: &state.inference.registry,
        exports: &state.exports,
    }
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
    Ok(Json(models(&state).list(q.before.as_deref(), limit).await?))
}

/// One model (by id or alias).
#[utoipa::path(get, path = "/models/{id}", tag = "models",
    responses((status = 200, body = ModelView), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<ModelView>> {
    Ok(Json(models(&state).get(&id).await?))
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
    models(&state).delete(&id).await?;
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
        (status = 409, body = crate::error::Problem, description = "`model_deleted`: the model was deleted as the alias was set"),
        (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn set_alias(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<SetAlias>,
) -> AppResult<Json<ModelView>> {
    Ok(Json(models(&state).set_alias(&name, &body.model_id).await?))
}

/// `GET /models/{id}/download` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DownloadQuery {
    /// `hf` (default): the model directory as a tar.gz (a LoRA model's
    /// adapter as is); `merged`: a LoRA model merged into its base, a plain
    /// Hugging Face checkpoint as a tar.gz; `onnx`: an ONNX
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
    /// The format asked for, with its export options; refuses export
    /// options on the directory archive.
    fn format(&self) -> AppResult<DownloadFormat> {
        let format = self.format.as_deref().unwrap_or("hf");
        let exported = self.opset.is_some() || self.dynamic_batch.is_some() || self.fp16.is_some();
        match format {
            "hf" if exported => Err(AppError::bad_request(
                "invalid_query",
                "`opset`, `dynamic_batch` and `fp16` apply to `format=onnx` only",
            )),
            "hf" => Ok(DownloadFormat::Hf),
            "merged" if exported => Err(AppError::bad_request(
                "invalid_query",
                "`opset`, `dynamic_batch` and `fp16` apply to `format=onnx` only",
            )),
            "merged" => Ok(DownloadFormat::Merged),
            "onnx" => Ok(DownloadFormat::Onnx(self.export_options())),
            "onnx-metadata" => Ok(DownloadFormat::OnnxMetadata(self.export_options())),
            _ => Err(AppError::bad_request(
                "unsupported_format",
                format!("unknown download format `{format}` (use `hf`, `merged`, `onnx` or `onnx-metadata`)"),
            )),
        }
    }

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
    let format = q.format()?;
    let download = models(&state).download(&id, format).await?;
    Ok(render(download))
}

fn render(download: Download) -> Response {
    let attachment = |name: &str, ext: &str| {
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}.{ext}\""),
        )
    };
    match download {
        Download::Metadata(metadata) => axum::Json(metadata).into_response(),
        Download::Onnx { name, file, len } => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, len.to_string()),
                attachment(&name, "onnx"),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        )
            .into_response(),
        Download::Archive { name, file } => (
            [
                (header::CONTENT_TYPE, "application/gzip".to_string()),
                attachment(&name, "tar.gz"),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::new(
                tokio::fs::File::from_std(file),
            )),
        )
            .into_response(),
    }
}
