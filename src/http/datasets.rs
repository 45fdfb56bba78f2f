//! `/datasets`: upload a labelled image archive (validated in the
//! background), follow its validation, read what was found in it.

use std::time::Duration;

use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use super::problem::{problem, status_of};
use crate::app::AppState;
use crate::config::ServeConfig;
use crate::data::parquet::ParquetColumns;
use crate::data::progress::ValidationProgress;
use crate::data::DatasetSummary;
use crate::datasets::record::{
    self, DatasetCounts, DatasetFailure, DatasetListing, DatasetRecord, DatasetStatus,
};
use crate::error::Problem;
use crate::task::Task;
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
        .route("/datasets/{id}/events", get(dataset_events))
}

/// The multipart form of `POST /datasets`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DatasetUpload {
    /// A zip, tar, tar.gz or tar.bz2 archive in the imagefolder layout, or
    /// a Hugging Face Parquet dataset (one `.parquet` file, or an archive
    /// of them in the Hub's layout).
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    dataset: String,
}

/// A stored dataset: its validation's status and progress, and once
/// validated what was found in it, or why it was refused.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetView {
    pub id: Uuid,
    /// SHA-256 of the archive as uploaded (hex); the same archive is stored
    /// once. With `image_column`/`label_column` named, a SHA-256 of the
    /// archive's and the names (another reading of the same file).
    pub sha256: String,
    pub status: DatasetStatus,
    /// `zip`, `tar`, `tar.gz` or `tar.bz2`; once validated.
    pub format: Option<String>,
    /// Size of the uploaded archive.
    pub size_bytes: i64,
    /// Inferred task; once validated.
    pub task: Option<Task>,
    /// What was found in the archive; once validated.
    pub summary: Option<DatasetSummary>,
    /// While validating: phase, images checked, total, images/s, ETA (the
    /// last one stays after the end).
    pub progress: Option<ValidationProgress>,
    /// Why it was refused (`failed`): the problem document a synchronous
    /// upload would have been answered with, with its stable `code`.
    pub error: Option<Problem>,
    /// Times its validation has started (more than one: the service
    /// stopped while validating it and resumed; a dataset whose validation
    /// started `--max-validation-starts` times without ending fails with
    /// `validation_crashed`).
    pub validation_starts: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the validation ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A refusal as the problem document it would have been answered with.
fn refusal(e: DatasetFailure) -> Problem {
    match e.kind {
        Some(kind) => problem(status_of(kind), &e.code, e.detail),
        None => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.code, e.detail),
    }
}

impl From<DatasetRecord> for DatasetView {
    fn from(r: DatasetRecord) -> Self {
        let error = r.error.map(refusal);
        Self {
            id: r.id,
            sha256: r.sha256,
            status: r.status,
            format: r.format,
            size_bytes: r.size_bytes,
            task: r.task,
            summary: r.summary,
            progress: r.progress,
            error,
            validation_starts: r.validation_starts,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// A dataset in a list page: as [`DatasetView`], but with the summary's
/// counts instead of the summary (whose skip lists can be megabytes);
/// `GET /datasets/{id}` has the whole summary.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetListItem {
    pub id: Uuid,
    pub sha256: String,
    pub status: DatasetStatus,
    pub format: Option<String>,
    pub size_bytes: i64,
    pub task: Option<Task>,
    /// What was found in the archive, counted; once validated.
    pub counts: Option<DatasetCounts>,
    pub progress: Option<ValidationProgress>,
    pub error: Option<Problem>,
    pub validation_starts: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<DatasetListing> for DatasetListItem {
    fn from(l: DatasetListing) -> Self {
        let r = l.record;
        Self {
            id: r.id,
            sha256: r.sha256,
            status: r.status,
            format: r.format,
            size_bytes: r.size_bytes,
            task: r.task,
            counts: l.counts,
            progress: r.progress,
            error: r.error.map(refusal),
            validation_starts: r.validation_starts,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetListItem>,
}

/// The columns of a Parquet dataset, when `datasets`' names (`image`/`img`,
/// `label`/`labels`) and its features metadata do not tell them.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The column holding the images (`struct{bytes, path}` or binary).
    pub image_column: Option<String>,
    /// The column holding the labels (`ClassLabel` ids, integers, strings,
    /// or a list of them for multi-label).
    pub label_column: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only datasets in this status.
    #[param(value_type = Option<DatasetStatus>)]
    pub status: Option<String>,
    /// At most this many (default 50, max 500).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Upload a dataset archive (multipart part `dataset`).
///
/// The archive is stored as it streams in; then the answer comes at once,
/// 202 with the dataset `validating`, while it is checked in the background
/// (decoding every image, limits, layout, metadata). Follow it with
/// `GET /datasets/{id}` or `GET /datasets/{id}/events`; it ends `ready` or
/// `failed` with the refusal in `error`. The same archive uploaded again
/// answers 200 with the stored dataset (ready or still validating); one
/// that failed is validated again (202).
#[utoipa::path(
    post, path = "/datasets", tag = "datasets",
    params(UploadParams),
    request_body(content = DatasetUpload, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Stored; validating in the background", body = DatasetView),
        (status = 200, description = "Already stored (same SHA-256)", body = DatasetView),
        (status = 400, description = "No `dataset` part, or an unknown query parameter", body = crate::error::Problem),
        (status = 413, description = "Upload over --max-upload-bytes", body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn upload_dataset(
    State(state): State<AppState>,
    Query(params): Query<UploadParams>,
    mut multipart: Multipart,
) -> Result<Response, AppError> {
    let limit = BodyLimit::upload(&state.config);
    let columns = ParquetColumns {
        image: params.image_column.filter(|c| !c.is_empty()),
        label: params.label_column.filter(|c| !c.is_empty()),
    };
    while let Some(field) = limit.next_field(&mut multipart).await? {
        if field.name() == Some("dataset") {
            let stored = state
                .datasets
                .ingest_with(limit.chunks(field), &columns)
                .await?;
            let status = if stored.started {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let location = format!("/datasets/{}", stored.record.id);
            let mut resp = (status, axum::Json(DatasetView::from(stored.record))).into_response();
            if let Ok(loc) = location.parse() {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            return Ok(resp);
        }
    }
    Err(AppError::bad_request(
        "missing_dataset",
        "the multipart body has no `dataset` part (the archive)",
    ))
}

async fn find(state: &AppState, id: &str) -> Result<DatasetRecord, AppError> {
    let not_found = || AppError::not_found(format!("no dataset `{id}`"));
    let uuid: Uuid = id.parse().map_err(|_| not_found())?;
    record::get(&state.db, uuid).await?.ok_or_else(not_found)
}

/// One dataset: status, progress, and its summary or refusal.
#[utoipa::path(
    get, path = "/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, body = DatasetView),
        (status = 404, body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_dataset(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DatasetView>, AppError> {
    let record = find(&state, &id).await?;
    // While it validates here, the live progress (a quarter second old at
    // most) rather than the row's (written every second).
    let live = state
        .datasets
        .validations
        .subscribe(record.id)
        .map(|rx| rx.borrow().clone())
        .filter(|r| !r.is_settled() && !record.is_settled());
    Ok(Json(live.unwrap_or(record).into()))
}

/// Stored datasets with their status, newest first: each with the
/// counts of its summary (images, labels, skipped files, ...), not the
/// summary itself, which `GET /datasets/{id}` returns.
#[utoipa::path(
    get, path = "/datasets", tag = "datasets",
    params(ListParams),
    responses((status = 200, body = DatasetList), (status = 400, body = crate::error::Problem)),
    security(("bearer" = []))
)]
pub async fn list_datasets(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<DatasetList>, AppError> {
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let offset = p.offset.unwrap_or(0).max(0);
    let status = p
        .status
        .map(|s| {
            DatasetStatus::parse(&s).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_query",
                    "`status` must be `validating`, `ready` or `failed`",
                )
            })
        })
        .transpose()?;
    let records = record::list(&state.db, status, limit, offset).await?;
    Ok(Json(DatasetList {
        datasets: records.into_iter().map(Into::into).collect(),
    }))
}

/// Follow a dataset's validation live (Server-Sent Events): a `snapshot`
/// first, then `progress` while it is checked (every quarter second at
/// most), and one `status` when it is `ready` or `failed`, which ends the
/// stream. Each event's data is the dataset, as `GET /datasets/{id}`.
#[utoipa::path(
    get, path = "/datasets/{id}/events", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = crate::error::Problem)),
    security(("bearer" = []))
)]
pub async fn dataset_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    slot: super::connections::EventStreamSlot,
) -> Result<super::sse::EventStream, AppError> {
    let uuid: Uuid = id
        .parse()
        .map_err(|_| AppError::not_found(format!("no dataset `{id}`")))?;
    // Subscribe before reading the snapshot so nothing falls in between.
    let mut live = state.datasets.validations.subscribe(uuid);
    let first = find(&state, &id).await?;
    let done = first.is_settled();
    let snapshot = DatasetView::from(first);
    let follow = async_stream::stream! {
        if done {
            return;
        }
        // The database is read again now and then: the validation may run
        // on no watch here (started before this process) or end unseen.
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            // A live record, or None: read the database (a poll, or the
            // validation ended or runs elsewhere).
            let next = match live.as_mut() {
                Some(rx) => tokio::select! {
                    changed = rx.changed() => match changed {
                        Ok(()) => Some(rx.borrow_and_update().clone()),
                        Err(_) => { live = None; None }
                    },
                    _ = poll.tick() => None,
                },
                None => {
                    poll.tick().await;
                    live = state.datasets.validations.subscribe(uuid);
                    None
                }
            };
            let from_live = next.is_some();
            let record = match next {
                Some(r) if !r.is_settled() => r,
                _ => match record::get(&state.db, uuid).await {
                    Ok(Some(r)) => r,
                    _ => continue,
                },
            };
            if record.is_settled() {
                yield ("status", DatasetView::from(record));
                return;
            }
            // The database's progress lags the live one: sent only when
            // there is no live one, so the counts never go back.
            if from_live || live.is_none() {
                yield ("progress", DatasetView::from(record));
            }
        }
    };
    Ok(super::sse::snapshot_then_follow(slot, &snapshot, follow))
}
