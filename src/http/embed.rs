//! `/embed` and `/models/{id}/embed`: image embeddings, taken the way
//! `/predict` takes images (multipart `image` parts, a raw image/* body,
//! or JSON with base64 images) and computed by the same engines in the
//! same dynamic batches (`serve::embed`).

use axum::extract::{Path, Request, State};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Query};
use super::multipart::BodyLimit;
use super::predict::{read_images, request_caps, JsonImages};
use crate::app::AppState;
use crate::error::AppResult;
use crate::serve::embed::{EmbedRequest, Embedded};
use crate::serve::predict::{ModelSource, PredictContext};

pub fn router(state: &AppState) -> Router<AppState> {
    let limit = BodyLimit::body(&state.config).layer();
    Router::new()
        .route("/embed", post(embed_default).layer(limit))
        .route("/models/{id}/embed", post(embed_named).layer(limit))
}

/// Options, in the query string or the JSON body.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedOptions {
    /// Divide each vector by its L2 norm (default true).
    pub normalize: Option<bool>,
}

/// `{"images": ["<base64 or data URL>", …], "normalize": true}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedJson {
    pub images: Vec<String>,
    pub normalize: Option<bool>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    /// The model that answered.
    pub model: String,
    /// The length of every vector.
    pub dimensions: usize,
    /// Whether the vectors have unit L2 norm.
    pub normalized: bool,
    /// One vector per image, in request order.
    pub embeddings: Vec<Vec<f32>>,
}

/// Embed images with the default model (the `production` alias, else the
/// newest): the pooled representation its classifier reads (ViT: the
/// final-layernorm CLS token; DINOv2: CLS and mean patch token; Swin,
/// ConvNeXt, ResNet: the pooled last stage), as `transformers` gives it.
#[utoipa::path(post, path = "/embed", tag = "predict", params(EmbedOptions),
    request_body(content = EmbedJson, description = "Or multipart `image` parts, or a raw image/* body"),
    responses((status = 200, body = EmbedResponse),
        (status = 409, body = crate::error::Problem, description = "No model yet"),
        (status = 413, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "Overloaded, as /predict; see Retry-After")),
    security(("bearer" = [])))]
pub async fn embed_default(
    State(state): State<AppState>,
    Query(opts): Query<EmbedOptions>,
    req: Request,
) -> AppResult<Json<EmbedResponse>> {
    embed(state, None, opts, req).await
}

/// Embed images with a named model or alias.
#[utoipa::path(post, path = "/models/{id}/embed", tag = "predict", params(EmbedOptions,
        ("id" = String, Path, description = "A model id or an alias")),
    request_body(content = EmbedJson, description = "Or multipart `image` parts, or a raw image/* body"),
    responses((status = 200, body = EmbedResponse), (status = 404, body = crate::error::Problem),
        (status = 413, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "Overloaded, as /predict; see Retry-After")),
    security(("bearer" = [])))]
pub async fn embed_named(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(opts): Query<EmbedOptions>,
    req: Request,
) -> AppResult<Json<EmbedResponse>> {
    embed(state, Some(id), opts, req).await
}

/// Reads the images, then makes the one call to the embedding service.
async fn embed(
    state: AppState,
    selector: Option<String>,
    mut opts: EmbedOptions,
    req: Request,
) -> AppResult<Json<EmbedResponse>> {
    let images =
        read_images::<EmbedJson>(&state, &request_caps(&state.config), &mut opts, req).await?;
    let normalize = opts.normalize.unwrap_or(true);
    let cx = PredictContext {
        budget: &state.decode_budget,
        caps: request_caps(&state.config),
    };
    let request = EmbedRequest {
        model: ModelSource::Registered {
            db: &state.db,
            artifacts: &state.artifacts,
            selector,
        },
        images,
        normalize,
    };
    let Embedded { model, vectors } = state.inference.embed(cx, request).await?;
    Ok(Json(EmbedResponse {
        model,
        dimensions: vectors.first().map_or(0, Vec::len),
        normalized: normalize,
        embeddings: vectors,
    }))
}

impl JsonImages for EmbedJson {
    type Options = EmbedOptions;
    fn images_and_options(self, opts: &mut EmbedOptions) -> Vec<String> {
        opts.normalize = self.normalize.or(opts.normalize);
        self.images
    }
}
