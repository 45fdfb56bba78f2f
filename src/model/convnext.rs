//! ConvNeXt of `transformers` (`ConvNextModel`,
//! `ConvNextForImageClassification`), written in tch `nn`.
//!
//! Variable paths are spelled as in the Hugging Face checkpoints
//! (`convnext.embeddings.patch_embeddings.weight`,
//! `convnext.encoder.stages.1.downsampling_layer.0.weight` (its layernorm),
//! `convnext.encoder.stages.1.layers.2.pwconv1.weight`,
//! `convnext.encoder.stages.1.layers.2.layer_scale_parameter`,
//! `convnext.layernorm.bias`, `classifier.weight`).
//! Reference: `transformers/models/convnext/modeling_convnext.py`.
//!
//! Stem: a `patch_size` convolution with stride `patch_size` and a
//! channels-first layernorm. Each stage after the first starts by
//! downsampling (channels-first layernorm, 2x2 stride-2 convolution); a
//! block is a 7x7 depthwise convolution, a channels-last layernorm, a
//! 4x-wide MLP, optional layer scale and stochastic depth on the residual.
//! Features: the global average of the last stage, then a layernorm.
//!
//! Optimiser groups: embeddings 0, stage `s` `s + 1`, final layernorm
//! `S + 1`, classifier `S + 2` (`S` stages).

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::{Activation, ConvNextConfig};
use super::layers::follow_kind;
use super::layers::{self, linear, normal};
use super::{ImageClassifier, Unit};

/// Every layernorm inside the network uses this epsilon, whatever the
/// config's `layer_norm_eps` (which only the final layernorm reads).
const INNER_EPS: f64 = 1e-6;

fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvConfig, std: f64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        ws_init: normal(std),
        bs_init: nn::Init::Const(0.),
        ..cfg
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// `ConvNextLayerNorm(data_format="channels_first")`: a layernorm over the
/// channels of a `[B, C, H, W]` tensor.
#[derive(Debug)]
struct ChannelsFirstNorm(nn::LayerNorm);

impl ChannelsFirstNorm {
    fn new(p: nn::Path, channels: i64) -> Self {
        Self(layers::layer_norm(p, channels, INNER_EPS))
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        self.0
            .forward(&xs.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
    }
}

/// Patch convolution and layernorm (`convnext.embeddings`).
#[derive(Debug)]
pub struct ConvNextEmbeddings {
    patch_embeddings: nn::Conv2D,
    layernorm: ChannelsFirstNorm,
}

impl ConvNextEmbeddings {
    pub fn new(p: nn::Path, c: &ConvNextConfig) -> Self {
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            ..Default::default()
        };
        Self {
            patch_embeddings: conv2d(
                &p / "patch_embeddings",
                c.num_channels,
                c.hidden_sizes[0],
                c.patch_size,
                conv,
                c.initializer_range,
            ),
            layernorm: ChannelsFirstNorm::new(&p / "layernorm", c.hidden_sizes[0]),
        }
    }

    /// `[B, C, H, W]` -> `[B, hidden_sizes[0], H / p, W / p]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        self.layernorm
            .forward(&self.patch_embeddings.forward(pixel_values))
    }
}

/// One block (`convnext.encoder.stages.{s}.layers.{b}`).
#[derive(Debug)]
pub struct ConvNextLayer {
    dwconv: nn::Conv2D,
    layernorm: nn::LayerNorm,
    pwconv1: nn::Linear,
    pwconv2: nn::Linear,
    act: Activation,
    /// `[dim]`, absent when `layer_scale_init_value <= 0`.
    layer_scale_parameter: Option<Tensor>,
    drop_path: f64,
}

impl ConvNextLayer {
    pub fn new(p: nn::Path, c: &ConvNextConfig, dim: i64, drop_path: f64) -> Self {
        let std = c.initializer_range;
        let depthwise = nn::ConvConfig {
            padding: 3,
            groups: dim,
            ..Default::default()
        };
        let layer_scale_parameter = (c.layer_scale_init_value > 0.0).then(|| {
            p.var(
                "layer_scale_parameter",
                &[dim],
                nn::Init::Const(c.layer_scale_init_value),
            )
        });
        Self {
            dwconv: conv2d(&p / "dwconv", dim, dim, 7, depthwise, std),
            layernorm: layers::layer_norm(&p / "layernorm", dim, INNER_EPS),
            pwconv1: linear(&p / "pwconv1", dim, 4 * dim, true, std),
            pwconv2: linear(&p / "pwconv2", 4 * dim, dim, true, std),
            act: c.hidden_act,
            layer_scale_parameter,
            drop_path,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // Channels last for the layernorm and the pointwise (linear) layers.
        let h = self.dwconv.forward(xs).permute([0, 2, 3, 1]);
        let h = self.layernorm.forward(&h);
        let h = self
            .pwconv2
            .forward(&self.act.apply(&self.pwconv1.forward(&h)));
        let h = match &self.layer_scale_parameter {
            Some(gamma) => h * gamma,
            None => h,
        };
        let h = h.permute([0, 3, 1, 2]);
        xs + layers::drop_path(h, self.drop_path, train)
    }
}

/// One stage (`convnext.encoder.stages.{s}`): downsampling (all but the
/// first), then its blocks.
#[derive(Debug)]
pub struct ConvNextStage {
    downsampling: Option<(ChannelsFirstNorm, nn::Conv2D)>,
    pub layers: Vec<ConvNextLayer>,
}

impl ConvNextStage {
    /// `transformers` downsamples when the width changes or the stride is
    /// above 1; stage 0 has stride 1 and keeps `hidden_sizes[0]`, so only
    /// the later stages do.
    fn new(p: nn::Path, c: &ConvNextConfig, stage: usize, drop_paths: &[f64]) -> Self {
        let out = c.hidden_sizes[stage];
        let input = if stage == 0 {
            out
        } else {
            c.hidden_sizes[stage - 1]
        };
        let stride = if stage == 0 { 1 } else { 2 };
        let downsampling = (input != out || stride > 1).then(|| {
            let d = &p / "downsampling_layer";
            let conv = nn::ConvConfig {
                stride,
                ..Default::default()
            };
            (
                ChannelsFirstNorm::new(&d / 0, input),
                conv2d(&d / 1, input, out, 2, conv, c.initializer_range),
            )
        });
        let blocks = &p / "layers";
        let layers = drop_paths
            .iter()
            .enumerate()
            .map(|(b, &rate)| ConvNextLayer::new(&blocks / b, c, out, rate))
            .collect();
        Self {
            downsampling,
            layers,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = match &self.downsampling {
            Some((norm, conv)) => conv.forward(&norm.forward(xs)),
            None => xs.shallow_clone(),
        };
        for layer in &self.layers {
            xs = layer.forward_t(&xs, train);
        }
        xs
    }
}

/// The backbone (`convnext`): embeddings, stages, final layernorm.
#[derive(Debug)]
pub struct ConvNextModel {
    pub embeddings: ConvNextEmbeddings,
    pub stages: Vec<ConvNextStage>,
    /// Over the globally pooled features (`layer_norm_eps`).
    pub layernorm: nn::LayerNorm,
}

impl ConvNextModel {
    /// Builds `ConvNextModel` under `p` (normally `root / "convnext"`),
    /// setting the optimiser group of each part.
    pub fn new(p: nn::Path, c: &ConvNextConfig) -> Self {
        let n = c.num_stages as usize;
        let embeddings = ConvNextEmbeddings::new((&p / "embeddings").set_group(0), c);
        let enc = &p / "encoder" / "stages";
        let stages = c
            .drop_path_rates()
            .iter()
            .enumerate()
            .map(|(s, rates)| ConvNextStage::new((&enc / s).set_group(s + 1), c, s, rates))
            .collect();
        let last = *c
            .hidden_sizes
            .last()
            .expect("validated: one stage at least");
        let layernorm =
            layers::layer_norm(&p.set_group(n + 1) / "layernorm", last, c.layer_norm_eps);
        Self {
            embeddings,
            stages,
            layernorm,
        }
    }

    /// `[B, hidden_sizes[-1], H', W']`: the last stage's output.
    pub fn last_hidden_state(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let mut xs = self.embeddings.forward(pixel_values);
        for stage in &self.stages {
            xs = stage.forward_t(&xs, train);
        }
        xs
    }

    /// `[B, hidden_sizes[-1]]`: the layernorm of the spatial mean (`pooler_output`).
    pub fn pooled(&self, last_hidden_state: &Tensor) -> Tensor {
        self.layernorm
            .forward(&last_hidden_state.mean_dim([-2i64, -1].as_slice(), false, None))
    }
}

/// `ConvNextForImageClassification`: a linear classifier on the pooled features.
#[derive(Debug)]
pub struct ConvNextForImageClassification {
    pub convnext: ConvNextModel,
    pub classifier: nn::Linear,
}

impl ConvNextForImageClassification {
    /// Builds the network under `root` with a head of `num_labels` outputs,
    /// initialised like `transformers` (normal(0, initializer_range), zero bias).
    pub fn new(root: &nn::Path, c: &ConvNextConfig, num_labels: i64) -> Self {
        let convnext = ConvNextModel::new(root / "convnext", c);
        let head = root.set_group(c.num_stages as usize + 2);
        let classifier = linear(
            &head / "classifier",
            *c.hidden_sizes
                .last()
                .expect("validated: one stage at least"),
            num_labels,
            true,
            c.initializer_range,
        );
        Self {
            convnext,
            classifier,
        }
    }
}

impl ImageClassifier for ConvNextForImageClassification {
    /// `[B, hidden_sizes[-1]]`: the pooled, normalised last stage.
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        // Inputs follow the weights' dtype, as for the transformers.
        let pixel_values = follow_kind(pixel_values, &self.convnext.embeddings.patch_embeddings.ws);
        let h = self.convnext.last_hidden_state(&pixel_values, train);
        self.convnext.pooled(&h)
    }

    fn chain(&self, train: bool) -> Vec<Unit<'_>> {
        let m = &self.convnext;
        let mut units: Vec<Unit<'_>> = vec![Box::new(move |x: &Tensor| {
            m.embeddings
                .forward(&follow_kind(x, &m.embeddings.patch_embeddings.ws))
        })];
        for stage in &m.stages {
            units.push(Box::new(move |x: &Tensor| stage.forward_t(x, train)));
        }
        units.push(Box::new(move |h: &Tensor| self.head(&m.pooled(h))));
        units
    }

    fn head(&self, features: &Tensor) -> Tensor {
        self.classifier.forward(features)
    }

    fn num_layers(&self) -> usize {
        self.convnext.stages.len()
    }

    fn cam_cut(&self) -> Option<(Unit<'_>, Unit<'_>)> {
        super::cut_before_head(self.chain(false))
    }
}
