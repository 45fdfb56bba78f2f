//! Integrated gradients (Sundararajan et al., 2017) from a baseline image
//! ([`Baseline`]; by default zeros in the model's normalised input, the
//! dataset's mean colour, as `captum` defaults to): the gradient of the label's
//! logit is averaged along the straight path from the baseline to the
//! image with the trapezoid rule over `steps` points, and multiplied by
//! `input - baseline`, as `captum`'s `IntegratedGradients` does with
//! `method="riemann_trapezoid"`. The attributions then add up to the
//! score difference between the image and the baseline (completeness).

use tch::{Kind, Tensor};

use super::Completeness;
use crate::imaging::Normalisation;
use crate::model::ImageClassifier;

/// Where the path from the baseline to the image starts.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Zeros of the normalised input: the normalisation's mean colour
    /// (`captum`'s default).
    #[default]
    Mean,
    /// Pixel value 0 in every channel.
    Black,
    /// Pixel value 255 in every channel.
    White,
}

impl Baseline {
    pub const ALL: [Baseline; 3] = [Baseline::Mean, Baseline::Black, Baseline::White];

    pub fn name(self) -> &'static str {
        match self {
            Baseline::Mean => "mean",
            Baseline::Black => "black",
            Baseline::White => "white",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The baseline `[C, H, W]` shaped like `x`, normalised as the model's
    /// input is.
    pub fn tensor(self, x: &Tensor, norm: &Normalisation) -> Tensor {
        let value = match self {
            Baseline::Mean => return x.zeros_like(),
            Baseline::Black => 0.0,
            Baseline::White => 255.0,
        };
        let channels: Vec<f32> = (0..3)
            .map(|c| (value * norm.scale - norm.mean[c]) / norm.std[c])
            .collect();
        Tensor::from_slice(&channels)
            .to_device(x.device())
            .view([3, 1, 1])
            .expand_as(x)
            .contiguous()
    }
}

/// Path points whose gradients are computed in one pass.
const CHUNK: i64 = 16;

/// Attributions `[C, H, W]` for one label, and how complete they are.
pub struct Attribution {
    pub attributions: Tensor,
    pub completeness: Completeness,
}

/// The trapezoid rule's points on `[0, 1]` and their weights, exactly as
/// `captum` has them (`steps` >= 2): the points are evenly spaced, but each
/// weight is `1/steps` (halved at both ends) where the textbook rule has
/// `1/(steps-1)`, so the weights sum to `1 - 1/steps` and the attributions
/// fall short of the score difference by about that fraction. vitrine
/// keeps captum's weights, so its maps equal the reference users compare
/// with; the default of 128 steps keeps the shortfall under 1%.
pub fn trapezoid(steps: usize) -> (Vec<f64>, Vec<f64>) {
    let n = steps.max(2);
    let alphas = (0..n).map(|i| i as f64 / (n - 1) as f64).collect();
    let inner = 1.0 / n as f64;
    let weights = (0..n)
        .map(|i| {
            if i == 0 || i == n - 1 {
                inner / 2.0
            } else {
                inner
            }
        })
        .collect();
    (alphas, weights)
}

/// Integrated gradients of logit `target` at `pixels` (`[1, C, H, W]`)
/// from `baseline` (`[C, H, W]`).
pub fn integrated_gradients(
    net: &dyn ImageClassifier,
    pixels: &Tensor,
    target: i64,
    steps: usize,
    baseline: &Tensor,
) -> Attribution {
    let x = pixels.to_kind(Kind::Float).select(0, 0);
    let baseline = baseline.to_kind(Kind::Float).to_device(x.device());
    let (alphas, weights) = trapezoid(steps);
    let mut total = x.zeros_like();
    for (a, w) in alphas
        .chunks(CHUNK as usize)
        .zip(weights.chunks(CHUNK as usize))
    {
        let alpha = Tensor::from_slice(a)
            .to_kind(Kind::Float)
            .to_device(x.device());
        let weight = Tensor::from_slice(w)
            .to_kind(Kind::Float)
            .to_device(x.device());
        let path = (&baseline + alpha.view([-1, 1, 1, 1]) * (&x - &baseline))
            .detach()
            .set_requires_grad(true);
        let score = net
            .forward_t(&path, false)
            .select(1, target)
            .sum(Kind::Float);
        let grad = Tensor::run_backward(&[&score], &[&path], false, false)
            .pop()
            .expect("one gradient per input");
        total += (grad * weight.view([-1, 1, 1, 1])).sum_dim_intlist(0, false, None);
    }
    tch::no_grad(|| {
        let attributions = total * (&x - &baseline);
        let ends = Tensor::stack(&[&x, &baseline], 0);
        let logits = net
            .forward_t(&ends, false)
            .select(1, target)
            .to_kind(Kind::Float);
        let completeness = Completeness {
            attribution_sum: attributions.sum(Kind::Double).double_value(&[]),
            score_difference: logits.double_value(&[0]) - logits.double_value(&[1]),
        };
        Attribution {
            attributions,
            completeness,
        }
    })
}

/// The per-pixel heat map `[H, W]`: absolute attributions summed over
/// channels, divided by their maximum.
pub fn heat_map(attributions: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let map = attributions.abs().sum_dim_intlist(0, false, None);
        &map / (map.max() + 1e-12)
    })
}
