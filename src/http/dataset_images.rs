//! `/datasets/{id}/thumbnails` and `/datasets/{id}/images/{index}`: a few
//! sample images per class, as small PNGs, for the web page's dataset
//! summary. Images are numbered in manifest order: the train split, then
//! validation, then test.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{Json, Query};
use crate::app::AppState;
use crate::data::manifest::{Manifest, Sample, MANIFEST_FILE};
use crate::datasets::record::{self, DatasetRecord, DatasetStatus};
use crate::error::{AppError, AppResult};
use crate::imaging::thumbnail::SIDES;
use crate::imaging::DecodeLimits;
use crate::serve::thumbnails::{dataset_thumbnail, ThumbnailLimits};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets/{id}/thumbnails", get(thumbnails))
        .route("/datasets/{id}/images/{index}", get(image))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailParams {
    /// Images listed per class, 1-20 (default 4).
    pub per_class: Option<usize>,
}

/// One image of a dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleImage {
    /// Its number for `GET /datasets/{id}/images/{index}`.
    pub index: usize,
    /// `train`, `validation` or `test`.
    pub split: &'static str,
    /// Its path in the dataset, as extracted.
    pub file: String,
}

/// Sample images of one class.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassSamples {
    pub label: String,
    pub images: Vec<SampleImage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Thumbnails {
    pub dataset_id: Uuid,
    /// Every class, in label order, with up to `per_class` images each (a
    /// multi-label image is listed under each of its labels).
    pub classes: Vec<ClassSamples>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    /// The longest side of the thumbnail in pixels, 16-512 (default 96);
    /// smaller images are not enlarged.
    pub size: Option<u32>,
}

async fn find(state: &AppState, id: &str) -> AppResult<DatasetRecord> {
    let not_found = || AppError::not_found(format!("no dataset `{id}`"));
    let uuid: Uuid = id.parse().map_err(|_| not_found())?;
    record::get(&state.db, uuid).await?.ok_or_else(not_found)
}

/// The dataset's manifest; a dataset still being checked has none yet.
async fn manifest(state: &AppState, dataset: &DatasetRecord) -> AppResult<Manifest> {
    if dataset.status == DatasetStatus::Ready {
        // Validated on another node: fetched from the artefact store once.
        state.artifacts.dataset_dir(&dataset.path).await?;
    }
    let dir = dataset.dir(&state.config.data_dir);
    if !dir.join(MANIFEST_FILE).is_file() {
        return Err(AppError::conflict(
            "dataset_not_ready",
            format!("dataset `{}` has no images to show yet", dataset.id),
        ));
    }
    let loaded = tokio::task::spawn_blocking(move || Manifest::load(&dir))
        .await
        .map_err(anyhow::Error::from)??;
    Ok(loaded)
}

/// Every sample with its split, in the order that numbers them.
fn numbered(m: &Manifest) -> impl Iterator<Item = (usize, &'static str, &Sample)> {
    let splits = [
        ("train", Some(&m.train)),
        ("validation", m.validation.as_ref()),
        ("test", m.test.as_ref()),
    ];
    splits
        .into_iter()
        .filter_map(|(name, s)| s.map(|s| s.iter().map(move |x| (name, x))))
        .flatten()
        .enumerate()
        .map(|(i, (split, s))| (i, split, s))
}

/// Up to `per_class` sample images of each class.
#[utoipa::path(
    get, path = "/datasets/{id}/thumbnails", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id"), ThumbnailParams),
    responses(
        (status = 200, body = Thumbnails),
        (status = 400, body = crate::error::Problem, description = "`per_class` out of range"),
        (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem, description = "The dataset is still being checked"),
    ),
    security(("bearer" = []))
)]
pub async fn thumbnails(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ThumbnailParams>,
) -> AppResult<Json<Thumbnails>> {
    let per_class = p.per_class.unwrap_or(4);
    if !(1..=20).contains(&per_class) {
        return Err(AppError::bad_request(
            "invalid_query",
            "`per_class` must be 1..=20",
        ));
    }
    let dataset = find(&state, &id).await?;
    let m = manifest(&state, &dataset).await?;
    let dir = dataset.dir(&state.config.data_dir);
    let mut classes: Vec<ClassSamples> = m
        .labels
        .iter()
        .map(|l| ClassSamples {
            label: l.clone(),
            images: Vec::new(),
        })
        .collect();
    for (index, split, sample) in numbered(&m) {
        for &label in &sample.labels {
            let Some(class) = classes.get_mut(label) else {
                continue;
            };
            if class.images.len() < per_class {
                let file = sample.path.strip_prefix(&dir).unwrap_or(&sample.path);
                class.images.push(SampleImage {
                    index,
                    split,
                    file: file.to_string_lossy().replace('\\', "/"),
                });
            }
        }
    }
    Ok(Json(Thumbnails {
        dataset_id: dataset.id,
        classes,
    }))
}

/// One image of the dataset, shrunk to a PNG thumbnail.
///
/// Its decode draws from the server's decoding budget: a request waits up
/// to 2 s for memory, then answers 429 with Retry-After.
#[utoipa::path(
    get, path = "/datasets/{id}/images/{index}", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id"),
        ("index" = usize, Path, description = "The image's number (see the thumbnails listing)"),
        ImageParams),
    responses(
        (status = 200, content_type = "image/png", body = Vec<u8>),
        (status = 400, body = crate::error::Problem, description = "`size` out of range"),
        (status = 404, body = crate::error::Problem, description = "No such dataset or image"),
        (status = 409, body = crate::error::Problem, description = "The dataset is still being checked"),
        (status = 413, body = crate::error::Problem,
            description = "`image_file_too_large`, `image_too_large`, `decode_too_large`: the image is over today's limits or the decoding budget"),
        (status = 429, body = crate::error::Problem,
            description = "The server's decoding memory stayed busy for 2 s; see Retry-After"),
    ),
    security(("bearer" = []))
)]
pub async fn image(
    State(state): State<AppState>,
    Path((id, index)): Path<(String, String)>,
    Query(p): Query<ImageParams>,
) -> AppResult<Response> {
    let side = p.size.unwrap_or(96);
    if !SIDES.contains(&side) {
        return Err(AppError::bad_request(
            "invalid_query",
            format!("`size` must be {}..={}", SIDES.start(), SIDES.end()),
        ));
    }
    let dataset = find(&state, &id).await?;
    let no_image = || AppError::not_found(format!("dataset `{id}` has no image `{index}`"));
    let index: usize = index.parse().map_err(|_| no_image())?;
    let m = manifest(&state, &dataset).await?;
    let path = numbered(&m)
        .find(|(i, _, _)| *i == index)
        .map(|(_, _, s)| s.path.clone())
        .ok_or_else(no_image)?;
    let limits = ThumbnailLimits {
        decode: DecodeLimits {
            max_pixels: state.config.max_image_pixels,
        },
        max_file_bytes: state.config.max_image_file_bytes,
    };
    let png = dataset_thumbnail(path, side, limits, &state.decode_budget).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            // A stored dataset never changes (it is addressed by its content).
            (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        png,
    )
        .into_response())
}
