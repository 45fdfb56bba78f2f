//! `/datasets`: upload a labelled image archive, read what was found in it.

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use crate::app::AppState;
use crate::config::ServeConfig;
use crate::data::record::{self, DatasetRecord};
use crate::AppError;

pub fn router(config: &ServeConfig) -> Router<AppState> {
    Router::new()
        .route(
            "/datasets",
            get(list_datasets)
                .post(upload_dataset)
                .layer(BodyLimit::upload(config).layer()),
        )
        .route("/datasets/{id}", get(get_dataset))
}

/// The multipart form of `POST /datasets`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DatasetUpload {
    /// A zip, tar, tar.gz or tar.bz2 archive in the imagefolder layout.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    dataset: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetRecord>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListParams {
    /// At most this many (default 50, max 500).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Upload a dataset archive (multipart part `dataset`). The same archive
/// uploaded again returns the stored record with 200.
#[utoipa::path(
    post, path = "/datasets", tag = "datasets",
    request_body(content = DatasetUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = DatasetRecord),
        (status = 200, description = "Already stored (same SHA-256)", body = DatasetRecord),
        (status = 400, description = "Not an archive, truncated, unsafe entry path", body = crate::error::Problem),
        (status = 413, description = "Upload, archive, entry count or image over a limit", body = crate::error::Problem),
        (status = 422, description = "Not a usable dataset (labels, metadata, undecodable images)", body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn upload_dataset(
    State(state): State<AppState>,
    mut multipart: Multipart,
) -> Result<(StatusCode, Json<DatasetRecord>), AppError> {
    let limit = BodyLimit::upload(&state.config);
    while let Some(field) = limit.next_field(&mut multipart).await? {
        if field.name() == Some("dataset") {
            let stored = state.datasets.ingest(limit.chunks(field)).await?;
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            return Ok((status, Json(stored.record)));
        }
    }
    Err(AppError::bad_request(
        "missing_dataset",
        "the multipart body has no `dataset` part (the archive)",
    ))
}

/// One dataset with its summary.
#[utoipa::path(
    get, path = "/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, body = DatasetRecord),
        (status = 404, body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_dataset(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DatasetRecord>, AppError> {
    let not_found = || AppError::not_found(format!("no dataset `{id}`"));
    let uuid: Uuid = id.parse().map_err(|_| not_found())?;
    record::get(&state.db, uuid)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}

/// Stored datasets, newest first.
#[utoipa::path(
    get, path = "/datasets", tag = "datasets",
    params(ListParams),
    responses((status = 200, body = DatasetList)),
    security(("bearer" = []))
)]
pub async fn list_datasets(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<DatasetList>, AppError> {
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let offset = p.offset.unwrap_or(0).max(0);
    let records = record::list(&state.db, limit, offset).await?;
    Ok(Json(DatasetList { datasets: records }))
}
