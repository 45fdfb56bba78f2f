//! The Vision Transformer of `transformers` (`ViTModel`,
//! `ViTForImageClassification`), written in tch `nn`.
//!
//! Every variable path is spelled as in the Hugging Face checkpoints
//! (`vit.embeddings.patch_embeddings.projection.weight`,
//! `vit.encoder.layer.3.attention.attention.query.bias`, `classifier.weight`,
//! ...), so a `model.safetensors` loads with no renaming.
//! Reference: `transformers/models/vit/modeling_vit.py`.
//!
//! Optimiser groups (`nn::Path::set_group`), used for layer-wise LR decay and
//! freezing: embeddings 0, encoder layer `i` `i + 1`, final layernorm (and
//! pooler) `L + 1`, classifier `L + 2`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::{Activation, ViTConfig};
use super::layers::follow_kind;
use super::layers::{self, linear, normal, SelfAttention};
use super::{ImageClassifier, Unit};

/// Patch projection, CLS token and position embeddings (`vit.embeddings`).
#[derive(Debug)]
pub struct ViTEmbeddings {
    cls_token: Tensor,
    position_embeddings: Tensor,
    projection: nn::Conv2D,
    patch_size: i64,
    dropout: f64,
}

impl ViTEmbeddings {
    pub fn new(p: nn::Path, c: &ViTConfig) -> Self {
        let std = c.initializer_range;
        let num_positions = c.grid_size() * c.grid_size() + 1;
        let cls_token = p.var("cls_token", &[1, 1, c.hidden_size], normal(std));
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
            p / "patch_embeddings" / "projection",
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            conv,
        );
        Self {
            cls_token,
            position_embeddings,
            projection,
            patch_size: c.patch_size,
            dropout: c.hidden_dropout_prob,
        }
    }

    /// `[B, C, H, W]` -> `[B, 1 + (H/p)(W/p), hidden]`.
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
        let pos = self.position_encoding(h / self.patch_size, w / self.patch_size);
        (xs + pos).dropout(self.dropout, train)
    }

    /// Position embeddings for a `grid_h` x `grid_w` patch grid: the stored
    /// ones at the training grid, else bicubically interpolated as
    /// `ViTEmbeddings.interpolate_pos_encoding` does.
    pub fn position_encoding(&self, grid_h: i64, grid_w: i64) -> Tensor {
        let (_, n, dim) = self.position_embeddings.size3().expect("[1, N + 1, D]");
        let num_positions = n - 1;
        if grid_h * grid_w == num_positions && grid_h == grid_w {
            return self.position_embeddings.shallow_clone();
        }
        let side = (num_positions as f64).sqrt().round() as i64;
        let class_pos = self.position_embeddings.narrow(1, 0, 1);
        let patch_pos = self
            .position_embeddings
            .narrow(1, 1, num_positions)
            .reshape([1, side, side, dim])
            .permute([0, 3, 1, 2])
            .upsample_bicubic2d([grid_h, grid_w], false, None, None)
            .permute([0, 2, 3, 1])
            .reshape([1, -1, dim]);
        Tensor::cat(&[class_pos, patch_pos], 1)
    }
}

/// One pre-norm transformer block (`vit.encoder.layer.{i}`).
#[derive(Debug)]
pub struct ViTLayer {
    attention: SelfAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    layernorm_before: nn::LayerNorm,
    layernorm_after: nn::LayerNorm,
    act: Activation,
    hidden_dropout: f64,
}

fn layer_norm(p: nn::Path, c: &ViTConfig) -> nn::LayerNorm {
    layers::layer_norm(p, c.hidden_size, c.layer_norm_eps)
}

impl ViTLayer {
    pub fn new(p: nn::Path, c: &ViTConfig) -> Self {
        let (d, std) = (c.hidden_size, c.initializer_range);
        let attn = &p / "attention";
        Self {
            attention: SelfAttention::new(
                attn,
                d,
                c.num_attention_heads,
                c.qkv_bias,
                c.attention_probs_dropout_prob,
                std,
            ),
            intermediate: linear(
                &p / "intermediate" / "dense",
                d,
                c.intermediate_size,
                true,
                std,
            ),
            output: linear(&p / "output" / "dense", c.intermediate_size, d, true, std),
            layernorm_before: layer_norm(&p / "layernorm_before", c),
            layernorm_after: layer_norm(&p / "layernorm_after", c),
            act: c.hidden_act,
            hidden_dropout: c.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self
            .attention
            .forward_t(&self.layernorm_before.forward(xs), train)
            .dropout(self.hidden_dropout, train);
        let xs = h + xs;
        let h = self.act.apply(
            &self
                .intermediate
                .forward(&self.layernorm_after.forward(&xs)),
        );
        let h = self.output.forward(&h).dropout(self.hidden_dropout, train);
        h + xs
    }

    /// `[B, heads, N, N]`: this layer's attention probabilities on `xs`.
    pub fn attention_probs(&self, xs: &Tensor) -> Tensor {
        self.attention.probs(&self.layernorm_before.forward(xs))
    }
}

/// The backbone (`vit`): embeddings, encoder, final layernorm, optional pooler.
#[derive(Debug)]
pub struct ViTModel {
    pub embeddings: ViTEmbeddings,
    pub layers: Vec<ViTLayer>,
    pub layernorm: nn::LayerNorm,
    /// `vit.pooler.dense` + tanh: part of `ViTModel`, never of `ViTForImageClassification`.
    pub pooler: Option<nn::Linear>,
}

impl ViTModel {
    /// Builds `ViTModel` under `p` (normally `root / "vit"`), setting the
    /// optimiser group of each part.
    pub fn new(p: nn::Path, c: &ViTConfig, add_pooling_layer: bool) -> Self {
        let layers_n = c.num_hidden_layers as usize;
        let embeddings = ViTEmbeddings::new((&p / "embeddings").set_group(0), c);
        let enc = &p / "encoder" / "layer";
        let layers = (0..layers_n)
            .map(|i| ViTLayer::new((&enc / i).set_group(i + 1), c))
            .collect();
        let top = p.set_group(layers_n + 1);
        let layernorm = layer_norm(&top / "layernorm", c);
        let pooler = add_pooling_layer.then(|| {
            let out = c.pooler_output_size.unwrap_or(c.hidden_size);
            linear(
                &top / "pooler" / "dense",
                c.hidden_size,
                out,
                true,
                c.initializer_range,
            )
        });
        Self {
            embeddings,
            layers,
            layernorm,
            pooler,
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

    /// `tanh(dense(CLS))`, when the model has a pooler.
    pub fn pooled(&self, last_hidden_state: &Tensor) -> Option<Tensor> {
        self.pooler
            .as_ref()
            .map(|p| p.forward(&last_hidden_state.select(1, 0)).tanh())
    }
}

/// `ViTForImageClassification`: a linear classifier on the final-layernorm CLS token.
#[derive(Debug)]
pub struct ViTForImageClassification {
    pub vit: ViTModel,
    pub classifier: nn::Linear,
}

impl ViTForImageClassification {
    /// Builds the network under `root` with a head of `num_labels` outputs,
    /// initialised like `transformers` (normal(0, initializer_range), zero bias).
    pub fn new(root: &nn::Path, c: &ViTConfig, num_labels: i64) -> Self {
        let vit = ViTModel::new(root / "vit", c, false);
        let head = root.set_group(c.num_hidden_layers as usize + 2);
        let classifier = linear(
            &head / "classifier",
            c.hidden_size,
            num_labels,
            true,
            c.initializer_range,
        );
        Self { vit, classifier }
    }
}

impl ImageClassifier for ViTForImageClassification {
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        // As `ViTModel.forward`: inputs follow the weights' dtype.
        let pixel_values = follow_kind(pixel_values, &self.vit.embeddings.projection.ws);
        self.vit
            .last_hidden_state(&pixel_values, train)
            .select(1, 0)
    }

    fn chain(&self, train: bool) -> Vec<Unit<'_>> {
        let vit = &self.vit;
        let mut units: Vec<Unit<'_>> = vec![Box::new(move |x: &Tensor| {
            vit.embeddings
                .forward_t(&follow_kind(x, &vit.embeddings.projection.ws), train)
        })];
        for layer in &vit.layers {
            units.push(Box::new(move |x: &Tensor| layer.forward_t(x, train)));
        }
        units.push(Box::new(move |h: &Tensor| {
            self.head(&vit.layernorm.forward(h).select(1, 0))
        }));
        units
    }

    fn head(&self, features: &Tensor) -> Tensor {
        self.classifier.forward(features)
    }

    fn num_layers(&self) -> usize {
        self.vit.layers.len()
    }

    fn attention_maps(&self, pixel_values: &Tensor) -> Option<(Vec<Tensor>, i64)> {
        let vit = &self.vit;
        let x = follow_kind(pixel_values, &vit.embeddings.projection.ws);
        let mut xs = vit.embeddings.forward_t(&x, false);
        let mut maps = Vec::with_capacity(vit.layers.len());
        for layer in &vit.layers {
            maps.push(layer.attention_probs(&xs));
            xs = layer.forward_t(&xs, false);
        }
        Some((maps, 1))
    }

    fn lora_sites(&self) -> Vec<&super::lora::LoraLinear> {
        self.vit
            .layers
            .iter()
            .flat_map(|l| l.attention.lora_sites())
            .collect()
    }
}
