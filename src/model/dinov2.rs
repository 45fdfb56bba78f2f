//! DINOv2 of `transformers` (`Dinov2Model`, `Dinov2ForImageClassification`),
//! written in tch `nn`.
//!
//! Variable paths are spelled as in the Hugging Face checkpoints
//! (`dinov2.embeddings.patch_embeddings.projection.weight`,
//! `dinov2.encoder.layer.3.attention.attention.query.weight`,
//! `dinov2.encoder.layer.3.layer_scale1.lambda1`, `dinov2.layernorm.bias`,
//! `classifier.weight`, ...). `transformers` 5 renames some modules in
//! memory (`q_proj`, `gate_proj`) but reads and writes these names on disk.
//! Reference: `transformers/models/dinov2/modeling_dinov2.py`.
//!
//! Differences from ViT: LayerScale on both residual branches, optional
//! SwiGLU feed-forward, stochastic depth, and a classifier on
//! `concat(CLS, mean(patch tokens))` (width `2 * hidden_size`).
//!
//! `Dinov2WithRegisters*` (`model_type: "dinov2_with_registers"`) is the
//! same network under `dinov2_with_registers.`, with learned register tokens
//! inserted after CLS (after the position embeddings are added), left out of
//! the patch mean, and antialiased position-embedding interpolation.
//!
//! Optimiser groups as in [`super::vit`]: embeddings 0, layer `i` `i + 1`,
//! final layernorm `L + 1`, classifier `L + 2`.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{Activation, Dinov2Config};
use super::layers::follow_kind;
use super::layers::{self, linear, normal, SelfAttention};
use super::{ImageClassifier, Unit};

fn layer_norm(p: nn::Path, c: &Dinov2Config) -> nn::LayerNorm {
    layers::layer_norm(p, c.hidden_size, c.layer_norm_eps)
}

/// Patch projection, CLS token, mask token and position embeddings (`dinov2.embeddings`).
#[derive(Debug)]
pub struct Dinov2Embeddings {
    cls_token: Tensor,
    /// Only used for masked-image pre-training; kept so checkpoints round-trip.
    _mask_token: Option<Tensor>,
    position_embeddings: Tensor,
    /// `[1, R, hidden]` register tokens (`dinov2_with_registers` only).
    register_tokens: Option<Tensor>,
    pub(super) projection: nn::Conv2D,
    patch_size: i64,
    dropout: f64,
    /// Antialiased bicubic interpolation (`dinov2_with_registers`).
    antialias: bool,
}

impl Dinov2Embeddings {
    pub fn new(p: nn::Path, c: &Dinov2Config) -> Self {
        let std = c.initializer_range;
        let num_positions = c.grid_size() * c.grid_size() + 1;
        let cls_token = p.var("cls_token", &[1, 1, c.hidden_size], normal(std));
        let mask_token = c
            .use_mask_token
            .then(|| p.var("mask_token", &[1, c.hidden_size], nn::Init::Const(0.)));
        let position_embeddings = p.var(
            "position_embeddings",
            &[1, num_positions, c.hidden_size],
            normal(std),
        );
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            ws_init: normal(std),
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        };
        let projection = nn::conv2d(
            &p / "patch_embeddings" / "projection",
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            conv,
        );
        let register_tokens = c.with_registers.then(|| {
            p.var(
                "register_tokens",
                &[1, c.num_register_tokens, c.hidden_size],
                nn::Init::Const(0.),
            )
        });
        Self {
            cls_token,
            _mask_token: mask_token,
            position_embeddings,
            register_tokens,
            projection,
            patch_size: c.patch_size,
            dropout: c.hidden_dropout_prob,
            antialias: c.with_registers,
        }
    }

    /// `[B, C, H, W]` -> `[B, 1 + R + (H/p)(W/p), hidden]` (`R` registers).
    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let (b, _c, h, w) = pixel_values.size4().expect("pixel_values is [B, C, H, W]");
        let patches = self
            .projection
            .forward(pixel_values)
            .flatten(2, -1)
            .transpose(1, 2);
        let dim = self.cls_token.size()[2];
        let cls = self.cls_token.expand([b, 1, dim], false);
        let xs = Tensor::cat(&[cls, patches], 1);
        let pos = self.position_encoding(h, w);
        let xs = xs + pos;
        let xs = match &self.register_tokens {
            Some(r) => {
                let (_, n, _) = xs.size3().expect("[B, N, D]");
                let regs = r.expand([b, r.size()[1], dim], false);
                Tensor::cat(&[xs.narrow(1, 0, 1), regs, xs.narrow(1, 1, n - 1)], 1)
            }
            None => xs,
        };
        xs.dropout(self.dropout, train)
    }

    /// Register tokens between CLS and the patch tokens.
    pub fn num_register_tokens(&self) -> i64 {
        self.register_tokens.as_ref().map_or(0, |r| r.size()[1])
    }

    /// Position embeddings for an `height` x `width` pixel input, exactly as
    /// `Dinov2Embeddings.interpolate_pos_encoding`: the stored ones when the
    /// input is square with as many patches as stored, else the patch part
    /// resized bicubically (align_corners false, no antialiasing, fp32) to
    /// the `height / p` x `width / p` grid (antialiased for
    /// `dinov2_with_registers`, as `transformers` does there).
    pub fn position_encoding(&self, height: i64, width: i64) -> Tensor {
        let (_, n, dim) = self.position_embeddings.size3().expect("[1, N + 1, D]");
        let num_positions = n - 1;
        let (grid_h, grid_w) = (height / self.patch_size, width / self.patch_size);
        if grid_h * grid_w == num_positions && height == width {
            return self.position_embeddings.shallow_clone();
        }
        let side = (num_positions as f64).sqrt() as i64;
        let kind = self.position_embeddings.kind();
        let class_pos = self.position_embeddings.narrow(1, 0, 1);
        let grid = self
            .position_embeddings
            .narrow(1, 1, num_positions)
            .reshape([1, side, side, dim])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let resized = if self.antialias {
            grid.internal_upsample_bicubic2d_aa([grid_h, grid_w], false, None, None)
        } else {
            grid.upsample_bicubic2d([grid_h, grid_w], false, None, None)
        };
        let patch_pos = resized
            .to_kind(kind)
            .permute([0, 2, 3, 1])
            .reshape([1, -1, dim]);
        Tensor::cat(&[class_pos, patch_pos], 1)
    }
}

/// The feed-forward block: fc1 -> act -> fc2, or SwiGLU.
#[derive(Debug)]
enum Ffn {
    Mlp {
        fc1: nn::Linear,
        fc2: nn::Linear,
        act: Activation,
    },
    /// `weights_in` holds the gate rows then the value rows:
    /// `weights_out(silu(x1) * x2)` with `x1, x2 = weights_in(x).chunk(2)`.
    SwiGlu {
        weights_in: nn::Linear,
        weights_out: nn::Linear,
    },
}

impl Ffn {
    fn new(p: nn::Path, c: &Dinov2Config) -> Self {
        let (d, std) = (c.hidden_size, c.initializer_range);
        if c.use_swiglu_ffn {
            let h = c.swiglu_hidden_size();
            Self::SwiGlu {
                weights_in: linear(&p / "weights_in", d, 2 * h, true, std),
                weights_out: linear(&p / "weights_out", h, d, true, std),
            }
        } else {
            let h = c.mlp_hidden_size();
            Self::Mlp {
                fc1: linear(&p / "fc1", d, h, true, std),
                fc2: linear(&p / "fc2", h, d, true, std),
                act: c.hidden_act,
            }
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            Self::Mlp { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(xs))),
            Self::SwiGlu {
                weights_in,
                weights_out,
            } => {
                let h = weights_in.forward(xs).chunk(2, -1);
                weights_out.forward(&(h[0].silu() * &h[1]))
            }
        }
    }
}

/// One pre-norm block with LayerScale (`dinov2.encoder.layer.{i}`).
#[derive(Debug)]
pub struct Dinov2Layer {
    norm1: nn::LayerNorm,
    attention: SelfAttention,
    layer_scale1: Tensor,
    norm2: nn::LayerNorm,
    mlp: Ffn,
    layer_scale2: Tensor,
    drop_path: f64,
}

impl Dinov2Layer {
    pub fn new(p: nn::Path, c: &Dinov2Config) -> Self {
        let (d, std) = (c.hidden_size, c.initializer_range);
        let attn = &p / "attention";
        let scale =
            |name: &str| (&p / name).var("lambda1", &[d], nn::Init::Const(c.layerscale_value));
        Self {
            norm1: layer_norm(&p / "norm1", c),
            attention: SelfAttention::new(
                attn,
                d,
                c.num_attention_heads,
                c.qkv_bias,
                c.attention_probs_dropout_prob,
                std,
            ),
            layer_scale1: scale("layer_scale1"),
            norm2: layer_norm(&p / "norm2", c),
            mlp: Ffn::new(&p / "mlp", c),
            layer_scale2: scale("layer_scale2"),
            drop_path: c.drop_path_rate,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.attention.forward_t(&self.norm1.forward(xs), train) * &self.layer_scale1;
        let xs = layers::drop_path(h, self.drop_path, train) + xs;
        let h = self.mlp.forward(&self.norm2.forward(&xs)) * &self.layer_scale2;
        layers::drop_path(h, self.drop_path, train) + xs
    }

    /// `[B, heads, N, N]`: this layer's attention probabilities on `xs`.
    pub fn attention_probs(&self, xs: &Tensor) -> Tensor {
        self.attention.probs(&self.norm1.forward(xs))
    }
}

/// The backbone (`dinov2`): embeddings, encoder, final layernorm.
#[derive(Debug)]
pub struct Dinov2Model {
    pub embeddings: Dinov2Embeddings,
    pub layers: Vec<Dinov2Layer>,
    pub layernorm: nn::LayerNorm,
}

impl Dinov2Model {
    /// Builds `Dinov2Model` under `p` (normally `root / "dinov2"`, or
    /// `root / "dinov2_with_registers"`), setting
    /// the optimiser group of each part.
    pub fn new(p: nn::Path, c: &Dinov2Config) -> Self {
        let n = c.num_hidden_layers as usize;
        let embeddings = Dinov2Embeddings::new((&p / "embeddings").set_group(0), c);
        let enc = &p / "encoder" / "layer";
        let layers = (0..n)
            .map(|i| Dinov2Layer::new((&enc / i).set_group(i + 1), c))
            .collect();
        let layernorm = layer_norm(&p.set_group(n + 1) / "layernorm", c);
        Self {
            embeddings,
            layers,
            layernorm,
        }
    }

    /// `[B, 1 + patches, hidden]`: the final-layernorm hidden states.
    pub fn last_hidden_state(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let mut xs = self.embeddings.forward_t(pixel_values, train);
        for layer in &self.layers {
            xs = layer.forward_t(&xs, train);
        }
        self.layernorm.forward(&xs)
    }
}

/// `Dinov2ForImageClassification`: a linear classifier on
/// `concat(CLS, mean of the patch tokens)` of the final-layernorm states.
#[derive(Debug)]
pub struct Dinov2ForImageClassification {
    pub dinov2: Dinov2Model,
    pub classifier: nn::Linear,
}

impl Dinov2ForImageClassification {
    /// `concat(CLS, mean of the patch tokens)` of the final-layernorm
    /// states `h` (registers left out).
    fn pool(&self, h: &Tensor) -> Tensor {
        let n = h.size()[1];
        let skip = 1 + self.dinov2.embeddings.num_register_tokens();
        let cls = h.select(1, 0);
        let patches = h.narrow(1, skip, n - skip).mean_dim(1, false, None);
        Tensor::cat(&[cls, patches], 1)
    }

    /// Builds the network under `root` with a head of `num_labels` outputs,
    /// initialised like `transformers` (normal(0, initializer_range), zero bias).
    pub fn new(root: &nn::Path, c: &Dinov2Config, num_labels: i64) -> Self {
        let dinov2 = Dinov2Model::new(root / c.backbone_prefix(), c);
        let head = root.set_group(c.num_hidden_layers as usize + 2);
        let classifier = linear(
            &head / "classifier",
            2 * c.hidden_size,
            num_labels,
            true,
            c.initializer_range,
        );
        Self { dinov2, classifier }
    }
}

impl ImageClassifier for Dinov2ForImageClassification {
    /// `[B, 2 * hidden]`: CLS token and mean patch token (registers
    /// excluded), concatenated.
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        // As `Dinov2PatchEmbeddings.forward`: inputs follow the weights' dtype.
        let pixel_values = follow_kind(pixel_values, &self.dinov2.embeddings.projection.ws);
        self.pool(&self.dinov2.last_hidden_state(&pixel_values, train))
    }

    fn chain(&self, train: bool) -> Vec<Unit<'_>> {
        let m = &self.dinov2;
        let mut units: Vec<Unit<'_>> = vec![Box::new(move |x: &Tensor| {
            m.embeddings
                .forward_t(&follow_kind(x, &m.embeddings.projection.ws), train)
        })];
        for layer in &m.layers {
            units.push(Box::new(move |x: &Tensor| layer.forward_t(x, train)));
        }
        units.push(Box::new(move |h: &Tensor| {
            self.head(&self.pool(&m.layernorm.forward(h)))
        }));
        units
    }

    fn head(&self, features: &Tensor) -> Tensor {
        self.classifier.forward(features)
    }

    fn num_layers(&self) -> usize {
        self.dinov2.layers.len()
    }

    fn attention_maps(&self, pixel_values: &Tensor) -> Option<(Vec<Tensor>, i64)> {
        let m = &self.dinov2;
        let x = follow_kind(pixel_values, &m.embeddings.projection.ws);
        let mut xs = m.embeddings.forward_t(&x, false);
        let mut maps = Vec::with_capacity(m.layers.len());
        for layer in &m.layers {
            maps.push(layer.attention_probs(&xs));
            xs = layer.forward_t(&xs, false);
        }
        Some((maps, 1 + m.embeddings.num_register_tokens()))
    }

    fn lora_sites(&self) -> Vec<&super::lora::LoraLinear> {
        self.dinov2
            .layers
            .iter()
            .flat_map(|l| l.attention.lora_sites())
            .collect()
    }
}
