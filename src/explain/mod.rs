//! Explanations of a classification as heat maps over the model's input:
//! which pixels the score of a label rests on. Three methods, each checked
//! against the library people use for it (`tests/model/explain_parity.rs`):
//!
//! - [`gradcam`]: Grad-CAM on the last stage's map (ConvNeXt, ResNet,
//!   Swin), as `pytorch-grad-cam` computes it;
//! - [`rollout`]: attention rollout (Abnar & Zuidema) through every layer
//!   (ViT, DINOv2), head mean with the residual added;
//! - [`integrated`]: integrated gradients from a black baseline (every
//!   family), as `captum` computes them with the trapezoid rule.
//!
//! Every map is `[H, W]` at the model's input size (the image after
//! resize and crop, as the model sees it), scaled to `[0, 1]`.
//! Explanations need gradients, so they never run in the inference
//! engines' batches (`serve/explain.rs` gives them their own queue).

pub mod gradcam;
pub mod integrated;
pub mod render;
pub mod rollout;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::ImageClassifier;

/// How a heat map is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Gradcam,
    AttentionRollout,
    IntegratedGradients,
}

impl Method {
    pub const ALL: [Method; 3] = [
        Method::Gradcam,
        Method::AttentionRollout,
        Method::IntegratedGradients,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Gradcam => "gradcam",
            Method::AttentionRollout => "attention_rollout",
            Method::IntegratedGradients => "integrated_gradients",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The methods a family (`config.json`'s `model_type`) can do.
    pub fn for_family(model_type: &str) -> Vec<Method> {
        let first = match model_type {
            "vit" | "dinov2" | "dinov2_with_registers" => Method::AttentionRollout,
            _ => Method::Gradcam,
        };
        vec![first, Method::IntegratedGradients]
    }

    /// Whether the heat map depends on the label explained (attention
    /// rollout follows the CLS token, whatever the label).
    pub fn per_label(self) -> bool {
        self != Method::AttentionRollout
    }
}

/// What an explanation found beyond its maps.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Completeness {
    /// For integrated gradients: the sum of the attributions, and the
    /// score difference between the input and the baseline they should
    /// add up to (the method's completeness axiom).
    pub attribution_sum: f64,
    pub score_difference: f64,
}

/// Integrated gradients' settings.
#[derive(Debug, Clone, Copy)]
pub struct PathOptions {
    /// Points on the path (at least 2).
    pub steps: usize,
    pub baseline: integrated::Baseline,
    /// The model's input normalisation, to make the baseline image.
    pub normalisation: crate::imaging::Normalisation,
}

/// One heat map per target label, `[H, W]` in `[0, 1]`.
pub struct Maps {
    pub maps: Vec<Tensor>,
    /// Integrated gradients only, per target.
    pub completeness: Vec<Completeness>,
}

/// Explains `pixels` (`[1, C, H, W]`, preprocessed) for each label index
/// in `targets`; `path` says how integrated gradients run. `None`
/// when the network cannot do `method` (see [`Method::for_family`]).
pub fn explain(
    net: &dyn ImageClassifier,
    pixels: &Tensor,
    method: Method,
    targets: &[i64],
    path: &PathOptions,
) -> Option<Maps> {
    let (h, w) = spatial(pixels);
    match method {
        Method::Gradcam => Some(Maps {
            maps: gradcam::gradcam(net, pixels, targets)?,
            completeness: Vec::new(),
        }),
        Method::AttentionRollout => {
            let map = rollout::heat_map(&rollout::rollout(net, pixels)?, h, w);
            Some(Maps {
                maps: targets.iter().map(|_| map.shallow_clone()).collect(),
                completeness: Vec::new(),
            })
        }
        Method::IntegratedGradients => {
            let mut out = Maps {
                maps: Vec::new(),
                completeness: Vec::new(),
            };
            let baseline = path
                .baseline
                .tensor(&pixels.select(0, 0), &path.normalisation);
            for &t in targets {
                let ig = integrated::integrated_gradients(net, pixels, t, path.steps, &baseline);
                out.maps.push(integrated::heat_map(&ig.attributions));
                out.completeness.push(ig.completeness);
            }
            Some(out)
        }
    }
}

/// `(H, W)` of `[B, C, H, W]` pixel values.
fn spatial(pixels: &Tensor) -> (i64, i64) {
    let size = pixels.size();
    (size[size.len() - 2], size[size.len() - 1])
}

/// Bilinear resize of `[h, w]` to `[height, width]` (half-pixel centres,
/// as OpenCV's `INTER_LINEAR` and `align_corners=False`).
fn resize(map: &Tensor, height: i64, width: i64) -> Tensor {
    map.unsqueeze(0)
        .unsqueeze(0)
        .upsample_bilinear2d([height, width], false, None, None)
        .squeeze_dim(0)
        .squeeze_dim(0)
}

/// `(x - min) / (1e-7 + max)` of the shifted values, as `pytorch-grad-cam`
/// scales a map.
fn min_max(map: &Tensor) -> Tensor {
    let shifted = map - map.min();
    &shifted / (shifted.max() + 1e-7)
}

#[cfg(test)]
mod tests;
