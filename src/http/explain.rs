//! `/explain` and `/models/{id}/explain`: heat maps of why a model scored
//! labels as it did (`serve/explain.rs` runs them off the prediction
//! engines). The image comes as for `/predict`; the options in the query.

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use super::predict::{read_images, request_caps, JsonImages};
use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::explain::render;
use crate::serve::explain::{ExplainRequest, Explained};
use crate::serve::predict::{ModelSource, PredictContext};

pub fn router(state: &AppState) -> Router<AppState> {
    let limit = BodyLimit::body(&state.config).layer();
    Router::new()
        .route("/explain", post(explain_default).layer(limit))
        .route("/models/{id}/explain", post(explain_named).layer(limit))
}

/// What to explain, and how to answer.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// `gradcam` (ConvNeXt, ResNet, Swin), `attention_rollout` (ViT,
    /// DINOv2) or `integrated_gradients` (all); default: the family's first.
    pub method: Option<String>,
    /// Comma-separated labels to explain; default: the `top_k` best scored.
    pub labels: Option<String>,
    /// Without `labels`: how many of the best-scored labels (default 1).
    pub top_k: Option<usize>,
    /// Integrated gradients' path points (default 128, at most
    /// `--explain-max-steps`).
    pub steps: Option<usize>,
    /// Integrated gradients' starting image: `mean` (zeros after
    /// normalisation, the default, as `captum`), `black` or `white`.
    pub baseline: Option<String>,
    /// `json` (default: grids and PNG overlays), `npy` (the maps as one
    /// `[labels, H, W]` float32 array) or `png` (the first label's overlay).
    pub format: Option<String>,
}

/// `{"images": ["<base64>"]}` (one image; the options are in the query).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainJson {
    pub images: Vec<String>,
}

impl JsonImages for ExplainJson {
    type Options = ();
    fn images_and_options(self, _: &mut ()) -> Vec<String> {
        self.images
    }
}

/// The answer (`format=json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExplainResponse {
    /// The model that answered.
    pub model: String,
    pub method: crate::explain::Method,
    /// The maps' size: the model's input, the image as it saw it.
    pub width: i64,
    pub height: i64,
    /// The uploaded image's `[width, height]`.
    pub image_size: [u32; 2],
    /// Where the maps lie on the uploaded image, in its pixels: `[left,
    /// top, width, height]` of the model's (resized, centre-cropped)
    /// input; scale a map to `width` x `height` and place it at `left`,
    /// `top` to lay it on the original.
    pub image_window: [f64; 4],
    pub explanations: Vec<LabelExplanation>,
}

/// One label's heat map.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelExplanation {
    pub label: String,
    /// The score `/predict` serves for it.
    pub score: f64,
    /// `height` rows of `width` values in `[0, 1]`.
    pub map: Vec<Vec<f32>>,
    /// The map over the image, as a `data:image/png;base64,…` URL.
    pub overlay_png: String,
    /// Integrated gradients: the attributions' sum against the score
    /// difference from the black baseline (equal when complete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completeness: Option<CompletenessView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompletenessView {
    pub attribution_sum: f64,
    pub score_difference: f64,
}

/// Explain the default model's scores of one image (the `production`
/// alias, else the newest model).
///
/// The body is one image, as `/predict` takes it. Explanations run one at
/// a time on their own queue: a full queue is a 429, and `/predict` is
/// not slowed by them.
#[utoipa::path(post, path = "/explain", tag = "predict", params(ExplainQuery),
    request_body(content = Vec<u8>, description = "One image: a raw image/* body, a multipart `image` part, or JSON `{\"images\": [\"<base64>\"]}`"),
    responses((status = 200, body = ExplainResponse, description = "JSON; `format=npy` gives application/octet-stream, `format=png` image/png"),
        (status = 409, body = crate::error::Problem, description = "No model yet"),
        (status = 413, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem, description = "`unknown_method`, \
            `method_not_supported` (naming those the model can do), `unknown_label`, \
            `invalid_steps`, `unknown_baseline`, `one_image` or `undecodable_image`"),
        (status = 429, body = crate::error::Problem, description = "The explanation queue is full; see Retry-After")),
    security(("bearer" = [])))]
pub async fn explain_default(
    State(state): State<AppState>,
    Query(q): Query<ExplainQuery>,
    req: Request,
) -> AppResult<Response> {
    explain(state, None, q, req).await
}

/// Explain a named model's (or alias's) scores of one image.
#[utoipa::path(post, path = "/models/{id}/explain", tag = "predict", params(ExplainQuery,
        ("id" = String, Path, description = "A model id or an alias")),
    request_body(content = Vec<u8>, description = "One image, as for `/explain`"),
    responses((status = 200, body = ExplainResponse, description = "JSON; `format=npy` gives application/octet-stream, `format=png` image/png"),
        (status = 404, body = crate::error::Problem),
        (status = 413, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "The explanation queue is full; see Retry-After")),
    security(("bearer" = [])))]
pub async fn explain_named(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ExplainQuery>,
    req: Request,
) -> AppResult<Response> {
    explain(state, Some(id), q, req).await
}

async fn explain(
    state: AppState,
    selector: Option<String>,
    q: ExplainQuery,
    req: Request,
) -> AppResult<Response> {
    let format = Format::parse(q.format.as_deref())?;
    let caps = request_caps(&state.config);
    let images = read_images::<ExplainJson>(&state, &caps, &mut (), req).await?;
    let request = ExplainRequest {
        model: ModelSource::Registered {
            db: &state.db,
            artifacts: &state.artifacts,
            selector,
        },
        images,
        method: q.method,
        labels: q
            .labels
            .iter()
            .flat_map(|l| l.split(','))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        top_k: q.top_k,
        steps: q.steps,
        baseline: q.baseline,
    };
    let cx = PredictContext {
        budget: &state.decode_budget,
        caps,
    };
    let explained = state
        .explainer
        .explain(&state.inference, cx, request)
        .await?;
    // PNG encoding and the grids are CPU work: off the async runtime.
    tokio::task::spawn_blocking(move || format.render(&explained))
        .await
        .map_err(|e| AppError::Internal(anyhow::Error::from(e)))
}

enum Format {
    Json,
    Npy,
    Png,
}

impl Format {
    fn parse(name: Option<&str>) -> AppResult<Self> {
        match name.unwrap_or("json") {
            "json" => Ok(Self::Json),
            "npy" => Ok(Self::Npy),
            "png" => Ok(Self::Png),
            other => Err(AppError::bad_request(
                "invalid_query",
                format!("`format` must be json, npy or png; got `{other}`"),
            )),
        }
    }

    fn render(&self, e: &Explained) -> Response {
        let labels = ascii_json(
            &e.labels
                .iter()
                .map(|l| l.label.as_str())
                .collect::<Vec<_>>(),
        );
        match self {
            Format::Json => Json(view(e)).into_response(),
            Format::Npy => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"explanation.npy\"".into(),
                    ),
                    (header::HeaderName::from_static("vitrine-labels"), labels),
                ],
                e.npy(),
            )
                .into_response(),
            Format::Png => (
                [
                    (header::CONTENT_TYPE, "image/png".to_string()),
                    (header::HeaderName::from_static("vitrine-labels"), labels),
                ],
                e.overlay_png(0),
            )
                .into_response(),
        }
    }
}

fn view(e: &Explained) -> ExplainResponse {
    let b64 = base64::engine::general_purpose::STANDARD;
    ExplainResponse {
        model: e.model.clone(),
        method: e.method,
        width: e.width,
        height: e.height,
        image_size: e.image_size,
        image_window: e.image_window,
        explanations: e
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| LabelExplanation {
                label: l.label.clone(),
                score: l.score,
                map: render::grid(&l.map),
                overlay_png: format!("data:image/png;base64,{}", b64.encode(e.overlay_png(i))),
                completeness: l.completeness.map(|c| CompletenessView {
                    attribution_sum: c.attribution_sum,
                    score_difference: c.score_difference,
                }),
            })
            .collect(),
    }
}

/// JSON with every non-ASCII character escaped, fit for a header value.
fn ascii_json(labels: &[&str]) -> String {
    serde_json::to_string(labels)
        .unwrap_or_default()
        .chars()
        .flat_map(|c| match c.is_ascii() && !c.is_ascii_control() {
            true => vec![c],
            false => {
                let mut units = [0u16; 2];
                c.encode_utf16(&mut units)
                    .iter()
                    .flat_map(|u| format!("\\u{u:04x}").chars().collect::<Vec<_>>())
                    .collect()
            }
        })
        .collect()
}
