//! `/predict` and `/models/{id}/predict`: classify images with the newest
//! model (or the `production` alias), or with a named model or alias.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::imaging::decode::sniff_format;
use crate::serve::output::{self, ImageResult, OutputOptions, ScoreCalibration};
use crate::serve::predict::{
    check_count, ModelSource, PredictContext, PredictRequest, Predicted, RequestCaps, Upload,
};

pub fn router(state: &AppState) -> Router<AppState> {
    let limit = BodyLimit::body(&state.config).layer();
    Router::new()
        .route("/predict", post(predict_default).layer(limit))
        .route("/models/{id}/predict", post(predict_named).layer(limit))
}

/// Options, in the query string or the JSON body.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictOptions {
    /// Multi-class: how many labels per image (default 5, capped by the
    /// number of labels).
    pub top_k: Option<usize>,
    /// Multi-label: one threshold for every label instead of the per-label
    /// thresholds chosen in training.
    pub threshold: Option<f64>,
    /// Also return every label's score.
    pub all_scores: Option<bool>,
    /// Calibrated scores (default true); `false` gives the model's raw
    /// softmax or sigmoid. A model without calibration always gives raw
    /// scores, and the answer's `calibration` says so.
    pub calibrated: Option<bool>,
}

/// `{"images": ["<base64>", …]}` plus options.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictJson {
    pub images: Vec<String>,
    pub top_k: Option<usize>,
    pub threshold: Option<f64>,
    pub all_scores: Option<bool>,
    pub calibrated: Option<bool>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictResponse {
    /// The model that answered.
    pub model: String,
    /// The first image's predictions (the whole answer for one image).
    pub predictions: Vec<output::Prediction>,
    /// One entry per image, in request order.
    pub results: Vec<ImageResult>,
    /// Whether the scores are calibrated (temperature scaling fitted on
    /// the validation split).
    pub calibrated: bool,
    /// `temperature`: calibrated; `off`: raw, as asked; `none`: raw, the
    /// model has no calibration (imported, or trained before it existed).
    pub calibration: ScoreCalibration,
}

/// Classify images with the default model: the `production` alias, else
/// the newest model.
///
/// The body is `multipart/form-data` with one or more `image` parts, a raw
/// image (`Content-Type: image/*`), or JSON `{"images": ["<base64>", …]}`.
/// At most `--max-images-per-request` images (default 64) of at most
/// `--max-request-pixels` pixels in all, checked before any is decoded.
#[utoipa::path(post, path = "/predict", tag = "predict", params(PredictOptions),
    request_body(content = PredictJson, description = "Or multipart `image` parts, or a raw image/* body"),
    responses((status = 200, body = PredictResponse),
        (status = 409, body = crate::error::Problem, description = "No model yet"),
        (status = 413, body = crate::error::Problem, description = "The body, `too_many_images`, \
            `too_many_pixels`, `image_file_too_large` or `decode_too_large`"),
        (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "Overloaded (the prediction queue \
            or the decoding memory); see Retry-After"),
        (status = 503, body = crate::error::Problem, description = "The device went out of service after a fatal error; a retry may land on another")),
    security(("bearer" = [])))]
pub async fn predict_default(
    State(state): State<AppState>,
    Query(opts): Query<PredictOptions>,
    req: Request,
) -> AppResult<Json<PredictResponse>> {
    predict(state, None, opts, req).await
}

/// Classify images with a named model or alias.
#[utoipa::path(post, path = "/models/{id}/predict", tag = "predict", params(PredictOptions,
        ("id" = String, Path, description = "A model id or an alias")),
    request_body(content = PredictJson, description = "Or multipart `image` parts, or a raw image/* body"),
    responses((status = 200, body = PredictResponse), (status = 404, body = crate::error::Problem),
        (status = 413, body = crate::error::Problem, description = "The body, `too_many_images`, \
            `too_many_pixels`, `image_file_too_large` or `decode_too_large`"),
        (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "Overloaded (the prediction queue \
            or the decoding memory); see Retry-After"),
        (status = 503, body = crate::error::Problem, description = "The device went out of service after a fatal error; a retry may land on another")),
    security(("bearer" = [])))]
pub async fn predict_named(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(opts): Query<PredictOptions>,
    req: Request,
) -> AppResult<Json<PredictResponse>> {
    predict(state, Some(id), opts, req).await
}

/// Reads the images (refusing too many as they arrive), then makes the
/// one call to the prediction service, which orders the rest.
async fn predict(
    state: AppState,
    selector: Option<String>,
    mut opts: PredictOptions,
    req: Request,
) -> AppResult<Json<PredictResponse>> {
    let caps = request_caps(&state.config);
    let images = read_images::<PredictJson>(&state, &caps, &mut opts, req).await?;
    let cx = PredictContext {
        budget: &state.decode_budget,
        caps,
    };
    let request = PredictRequest {
        model: ModelSource::Registered {
            db: &state.db,
            artifacts: &state.artifacts,
            selector,
        },
        images,
        options: OutputOptions {
            top_k: opts.top_k,
            threshold: opts.threshold,
            all_scores: opts.all_scores.unwrap_or(false),
            raw: !opts.calibrated.unwrap_or(true),
        },
    };
    let Predicted {
        model,
        results,
        calibration,
        ..
    } = state.inference.predict(cx, request).await?;
    Ok(Json(PredictResponse {
        model,
        predictions: results[0].predictions.clone(),
        results,
        calibrated: calibration == ScoreCalibration::Temperature,
        calibration,
    }))
}

pub(super) fn request_caps(config: &crate::config::ServeConfig) -> RequestCaps {
    RequestCaps {
        max_images: config.max_images_per_request,
        max_request_pixels: config.max_request_pixels,
        max_image_pixels: config.max_image_pixels,
        max_image_file_bytes: config.max_image_file_bytes,
    }
}

/// The request's images, by its content type: multipart parts, base64 in
/// JSON (whose options join the query's), or one raw image.
pub(super) async fn read_images<B: JsonImages>(
    state: &AppState,
    caps: &RequestCaps,
    opts: &mut B::Options,
    req: Request,
) -> AppResult<Vec<Upload>> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = BodyLimit::body(&state.config);
    if content_type.starts_with("multipart/form-data") {
        read_parts(state, &limit, caps, req).await
    } else if content_type.starts_with("application/json") {
        let Json(body) = Json::<B>::from_request(req, state).await?;
        base64_images(&body.images_and_options(opts), caps)
    } else if content_type.starts_with("image/") || SNIFFED.contains(&content_type.as_str()) {
        read_raw(state, &limit, &content_type, req).await
    } else {
        Err(unsupported(&content_type))
    }
}

/// Multipart `image` parts, refused at the first one over the count (the
/// rest of the body is read and dropped, so the client sees the refusal).
async fn read_parts(
    state: &AppState,
    limit: &BodyLimit,
    caps: &RequestCaps,
    req: Request,
) -> AppResult<Vec<Upload>> {
    let mut multipart = limit.multipart(req, state).await?;
    let mut out = Vec::new();
    let mut received = 0u64;
    while let Some(field) = limit.next_field(&mut multipart).await? {
        if !field.name().is_some_and(|n| IMAGE_PARTS.contains(&n)) {
            return Err(AppError::bad_request(
                "unknown_part",
                format!(
                    "unexpected multipart part `{}`; send images as `image` parts",
                    field.name().unwrap_or("")
                ),
            ));
        }
        if let Err(refused) = check_count(out.len() + 1, caps) {
            // The part holds the reader: dropped before reading on.
            drop(field);
            drain(limit, &mut multipart).await;
            return Err(refused);
        }
        let name = format!(
            "image part {} ({})",
            out.len() + 1,
            field.file_name().unwrap_or("unnamed")
        );
        let bytes = limit.bytes(field).await?;
        received += bytes.len() as u64;
        if received > limit.bytes {
            return Err(limit.too_large());
        }
        out.push(Upload {
            name,
            bytes: bytes.into(),
        });
    }
    Ok(out)
}

/// Reads the rest of a refused request's parts, each within the body
/// limits, and drops them: answered while it is still sending, a client
/// would see its connection reset instead of the refusal. Holds one part
/// at a time, so it costs no more memory than reading had.
async fn drain(limit: &BodyLimit, multipart: &mut axum::extract::Multipart) {
    while let Ok(Some(field)) = limit.next_field(multipart).await {
        if limit.bytes(field).await.is_err() {
            return;
        }
    }
}

/// `{"images": ["<base64>", …]}`; options in the body win over the query's.
/// A JSON body of base64 images and its endpoint's options: the one shape
/// `/predict`, `/embed` and `/explain` read besides multipart and raw
/// images.
pub(super) trait JsonImages: serde::de::DeserializeOwned {
    /// The endpoint's options (from the query), which the body's override.
    type Options;
    /// The images, after merging the body's options into `opts`.
    fn images_and_options(self, opts: &mut Self::Options) -> Vec<String>;
}

impl JsonImages for PredictJson {
    type Options = PredictOptions;
    fn images_and_options(self, opts: &mut PredictOptions) -> Vec<String> {
        opts.top_k = self.top_k.or(opts.top_k);
        opts.threshold = self.threshold.or(opts.threshold);
        opts.all_scores = self.all_scores.or(opts.all_scores);
        opts.calibrated = self.calibrated.or(opts.calibrated);
        self.images
    }
}

/// Base64 images (bare or as `data:` URLs), refused beyond the count.
fn base64_images(images: &[String], caps: &RequestCaps) -> AppResult<Vec<Upload>> {
    check_count(images.len(), caps)?;
    images
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            let data = b64.split_once("base64,").map(|(_, d)| d).unwrap_or(b64);
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map(|bytes| Upload {
                    name: format!("images[{i}]"),
                    bytes,
                })
                .map_err(|e| AppError::unprocessable("invalid_base64", format!("images[{i}]: {e}")))
        })
        .collect()
}

/// One raw image as the body.
async fn read_raw(
    state: &AppState,
    limit: &BodyLimit,
    content_type: &str,
    req: Request,
) -> AppResult<Vec<Upload>> {
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(|e| limit.body_error(e.status(), e.body_text()))?;
    // The route's layer allows multipart framing on top of the limit.
    if bytes.len() as u64 > limit.bytes {
        return Err(limit.too_large());
    }
    // Without an image/* type, only a body that looks like an image is
    // taken for one (`curl --data-binary @cat.jpg` sends form-urlencoded).
    if !content_type.starts_with("image/") && sniff_format(&bytes).is_none() {
        return Err(unsupported(content_type));
    }
    Ok(vec![Upload {
        name: "the request body".into(),
        bytes: bytes.into(),
    }])
}

/// Multipart part names taken as images (`image` is the documented one).
const IMAGE_PARTS: &[&str] = &["image", "images", "file"];

/// Content types under which a raw body is still an image if its bytes say
/// so: none, generic binary, and what `curl --data-binary` sends by default.
const SNIFFED: &[&str] = &[
    "",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
];

fn unsupported(content_type: &str) -> AppError {
    AppError::unsupported_media_type(format!(
        "Content-Type `{content_type}` is not accepted: use multipart/form-data, image/* \
             (e.g. curl -H 'Content-Type: image/jpeg' --data-binary @cat.jpg), or application/json"
    ))
}
