//! Embeddings: the pooled representation a model's classifier reads
//! (`ImageClassifier::features`: ViT's final-layernorm CLS token, DINOv2's
//! CLS and mean patch token concatenated, the pooled last stage of Swin,
//! ConvNeXt and ResNet), the vector `transformers` gives for the same
//! checkpoint. Images take the path of `/predict` (`serve::predict`: caps,
//! model, decoding lease, arrival ticket, decode) and the same engines and
//! dynamic batches, so an overload is the same 429; only the engine's
//! output differs (`engine::Output::Features`).

use tch::{Kind, Tensor};

use crate::error::AppResult;
use crate::serve::engine::Output;
use crate::serve::predict::{ModelSource, PredictContext, Upload};
use crate::serve::Inference;

/// A request to embed `images` with the model `model` names.
pub struct EmbedRequest<'a> {
    pub model: ModelSource<'a>,
    pub images: Vec<Upload>,
    /// Unit L2 norm (the default, as TEI does): cosine similarity is then
    /// a dot product.
    pub normalize: bool,
}

/// One vector per image, in request order.
pub struct Embedded {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
}

impl Inference {
    /// Embeds `req.images` (see the module doc).
    pub async fn embed(
        &self,
        cx: PredictContext<'_>,
        req: EmbedRequest<'_>,
    ) -> AppResult<Embedded> {
        let (model, decoded) = self.admit(cx, req.model, req.images).await?;
        let features = self.run(&model, decoded, Output::Features).await?;
        Ok(Embedded {
            model: model.id.clone(),
            vectors: rows(&finish(&features, req.normalize)),
        })
    }
}

/// The features in fp32, divided by their L2 norm when asked (a zero
/// vector stays zero).
pub fn finish(features: &Tensor, normalize: bool) -> Tensor {
    let f = features.to_kind(Kind::Float);
    if !normalize {
        return f;
    }
    let norm = f
        .square()
        .sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)
        .sqrt()
        .clamp_min(1e-12);
    f / norm
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    (0..t.size()[0])
        .map(|i| Vec::try_from(t.get(i)).unwrap_or_default())
        .collect()
}
