//! The Swin Transformer of `transformers` (`SwinModel`,
//! `SwinForImageClassification`), written in tch `nn`.
//!
//! Variable paths are spelled as in the Hugging Face checkpoints
//! (`swin.embeddings.patch_embeddings.projection.weight`,
//! `swin.encoder.layers.1.blocks.0.attention.self.query.weight`,
//! `swin.encoder.layers.1.blocks.0.attention.self.relative_position_bias_table`,
//! `swin.encoder.layers.0.downsample.reduction.weight`, `swin.layernorm.bias`,
//! `classifier.weight`, ...). `transformers` 5 renames some modules in
//! memory (`q_proj`, `mlp.fc1`, `relative_position_bias`) but reads and
//! writes these names on disk. The relative position index is a
//! non-persistent buffer there, absent from checkpoints; here it is a plain
//! tensor outside the `VarStore`, so it is neither loaded nor saved.
//! Reference: `transformers/models/swin/modeling_swin.py`.
//!
//! The network: patch embedding (the input padded to whole patches) and
//! layer norm, then stages of blocks at one resolution each. A block is
//! pre-norm window attention with a relative position bias, odd blocks on
//! windows shifted by half a window (cyclic roll plus a mask keeping
//! attention inside each original region), then an MLP. Between stages,
//! patch merging halves the resolution (padding an odd side) and doubles
//! the width. The classifier reads the mean token of the final layer norm.
//!
//! Input sizes: any size `transformers` runs is computed as it does, from
//! the input itself (feature maps padded to whole windows; a window as
//! large as the whole map is not shifted). `transformers` keeps that
//! unshifting in the block after a forward pass at a small size; here each
//! pass decides afresh. A feature map smaller than a window fails in
//! `transformers`; [`SwinConfig::check_input_size`] says so, and
//! `Model::check_input` refuses such inputs (the network itself would use a
//! smaller window with the bias of its offsets). Absolute position
//! embeddings at another grid than the stored one are interpolated as
//! `transformers` does with `interpolate_pos_encoding=True` (bicubic), to
//! the padded patch grid.
//!
//! Optimiser groups (`nn::Path::set_group`): embeddings 0, stage `s`
//! (its blocks and the patch merging after it) `s + 1`, final layernorm
//! `S + 1`, classifier `S + 2`. Partial fine-tuning and layer-wise LR decay
//! therefore count stages, not blocks: `unfreeze_last_n: 1` trains the last
//! stage.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::config::{Activation, SwinConfig};
use super::error::{ModelError, Result};
use super::layers::follow_kind;
use super::layers::{linear, lora_linear, normal};
use super::lora::LoraLinear;
use super::params::ParamGroup;
use super::{ImageClassifier, Model, Unit};

/// `nn.LayerNorm(dim)` with PyTorch's default epsilon, as `transformers`
/// builds the embeddings' and patch merging's norms.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;

/// Added to the attention scores of token pairs from different regions of a
/// shifted window, as `transformers` does (not -inf: every row keeps its
/// own region, so the softmax stays finite).
const SHIFT_MASK_VALUE: f64 = -100.0;

fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    super::layers::layer_norm(p, dim, eps)
}

/// Stochastic depth: in training, drops the whole branch of a sample with
/// probability `rate` and rescales the kept ones (`SwinDropPath`).
fn drop_path(xs: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return xs;
    }
    let keep = 1.0 - rate;
    let mut shape = vec![1; xs.dim()];
    shape[0] = xs.size()[0];
    let mask = (Tensor::rand(shape.as_slice(), (xs.kind(), xs.device())) + keep).floor();
    xs / keep * mask
}

/// Patch projection, its layer norm, optional absolute position embeddings
/// (`swin.embeddings`).
#[derive(Debug)]
pub struct SwinEmbeddings {
    pub(super) projection: nn::Conv2D,
    norm: nn::LayerNorm,
    /// `[1, grid * grid, embed_dim]` at the configured `image_size`.
    position_embeddings: Option<Tensor>,
    patch_size: i64,
    dropout: f64,
}

impl SwinEmbeddings {
    pub fn new(p: nn::Path, c: &SwinConfig) -> Self {
        let std = c.initializer_range;
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            ws_init: normal(std),
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        };
        let projection = nn::conv2d(
            &p / "patch_embeddings" / "projection",
            c.num_channels,
            c.embed_dim,
            c.patch_size,
            conv,
        );
        let grid = c.image_size / c.patch_size;
        // Zeros, as `SwinPreTrainedModel._init_weights`.
        let position_embeddings = c.use_absolute_embeddings.then(|| {
            p.var(
                "position_embeddings",
                &[1, grid * grid, c.embed_dim],
                nn::Init::Const(0.),
            )
        });
        Self {
            projection,
            norm: layer_norm(&p / "norm", c.embed_dim, TORCH_LAYER_NORM_EPS),
            position_embeddings,
            patch_size: c.patch_size,
            dropout: c.hidden_dropout_prob,
        }
    }

    /// `[B, C, H, W]` -> (`[B, h * w, embed_dim]`, `(h, w)`), the input
    /// zero-padded on the bottom and right to whole patches first.
    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> (Tensor, (i64, i64)) {
        let (_, _, height, width) = pixel_values.size4().expect("pixel_values is [B, C, H, W]");
        let p = self.patch_size;
        let (pad_h, pad_w) = ((p - height % p) % p, (p - width % p) % p);
        let projected = if pad_h > 0 || pad_w > 0 {
            self.projection
                .forward(&pixel_values.constant_pad_nd([0, pad_w, 0, pad_h]))
        } else {
            self.projection.forward(pixel_values)
        };
        let (_, _, h, w) = projected.size4().expect("[B, D, h, w]");
        let xs = self.norm.forward(&projected.flatten(2, -1).transpose(1, 2));
        let xs = match &self.position_embeddings {
            Some(pos) => xs + self.position_encoding(pos, h, w),
            None => xs,
        };
        (xs.dropout(self.dropout, train), (h, w))
    }

    /// The stored position embeddings at their own square grid, else
    /// resized bicubically (align_corners false) to `h` x `w`, as
    /// `SwinEmbeddings.interpolate_pos_encoding`.
    fn position_encoding(&self, pos: &Tensor, h: i64, w: i64) -> Tensor {
        let n = pos.size()[1];
        let side = (n as f64).sqrt().round() as i64;
        if h == side && w == side {
            return pos.shallow_clone();
        }
        resample_positions(pos, side, (h, w))
    }
}

/// `[1, side * side, D]` position embeddings resized bicubically
/// (align_corners false) to `[1, h * w, D]`.
pub(super) fn resample_positions(pos: &Tensor, side: i64, (h, w): (i64, i64)) -> Tensor {
    let dim = pos.size()[2];
    pos.reshape([1, side, side, dim])
        .permute([0, 3, 1, 2])
        .upsample_bicubic2d([h, w], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, h * w, dim])
}

/// `[B, H, W, C]` (H, W multiples of `window`) -> `[B * nW, window², C]`,
/// windows in row-major order.
pub fn window_partition(xs: &Tensor, window: i64) -> Tensor {
    let (b, h, w, c) = xs.size4().expect("[B, H, W, C]");
    xs.view([b, h / window, window, w / window, window, c])
        .transpose(2, 3)
        .reshape([-1, window * window, c])
}

/// The inverse of [`window_partition`]: `[B * nW, window², C]` -> `[B, H, W, C]`.
pub fn window_reverse(windows: &Tensor, window: i64, h: i64, w: i64) -> Tensor {
    let c = windows.size()[2];
    windows
        .view([-1, h / window, w / window, window, window, c])
        .transpose(2, 3)
        .reshape([-1, h, w, c])
}

/// The additive mask of shifted-window attention for an `h` x `w` map
/// (multiples of `window`) rolled by `shift`: `[nW, window², window²]`, 0
/// between tokens of the same region before the roll, -100 otherwise.
/// Along each axis, the last `window` positions split into the `window -
/// shift` that stayed and the `shift` that wrapped around.
pub fn shifted_window_mask(h: i64, w: i64, window: i64, shift: i64, device: Device) -> Tensor {
    let opts = (Kind::Int64, device);
    let region = |n: i64| {
        let idx = Tensor::arange(n, opts);
        idx.ge(n - window).to_kind(Kind::Int64) + idx.ge(n - shift).to_kind(Kind::Int64)
    };
    let ids =
        (region(h).view([1, h, 1, 1]) * 3 + region(w).view([1, 1, w, 1])).to_kind(Kind::Float);
    let ids = window_partition(&ids, window).squeeze_dim(-1);
    let diff = ids.unsqueeze(1) - ids.unsqueeze(2);
    diff.ne(0.0).to_kind(Kind::Float) * SHIFT_MASK_VALUE
}

/// For each pair of the `window²` tokens of a window, the row of its
/// offset `(dy, dx)` in a bias table of side `2 * table_window - 1`
/// (`window <= table_window`): `[window², window²]`.
pub fn relative_position_index(window: i64, table_window: i64, device: Device) -> Tensor {
    let coords = Tensor::arange(window, (Kind::Int64, device));
    let ys = coords.repeat_interleave_self_int(window, 0, None);
    let xs = coords.repeat([window]);
    let dy = ys.unsqueeze(1) - ys.unsqueeze(0);
    let dx = xs.unsqueeze(1) - xs.unsqueeze(0);
    (dy + (table_window - 1)) * (2 * table_window - 1) + dx + (table_window - 1)
}

/// Multi-head self-attention within windows, with the learned relative
/// position bias (`<block>.attention`).
#[derive(Debug)]
struct WindowAttention {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    output: nn::Linear,
    /// `[(2 * window - 1)², heads]`.
    bias_table: Tensor,
    /// `relative_position_index` for the configured window, flattened.
    index: Tensor,
    window_size: i64,
    num_heads: i64,
    dropout: f64,
}

impl WindowAttention {
    fn new(p: nn::Path, c: &SwinConfig, dim: i64, num_heads: i64) -> Self {
        let std = c.initializer_range;
        let own = &p / "self";
        let ws = c.window_size;
        let bias_table = own.var(
            "relative_position_bias_table",
            &[(2 * ws - 1) * (2 * ws - 1), num_heads],
            nn::Init::Const(0.),
        );
        Self {
            query: lora_linear(&own / "query", dim, c.qkv_bias, std),
            key: lora_linear(&own / "key", dim, c.qkv_bias, std),
            value: lora_linear(&own / "value", dim, c.qkv_bias, std),
            output: linear(&p / "output" / "dense", dim, dim, true, std),
            index: relative_position_index(ws, ws, p.device()).view([-1]),
            bias_table,
            window_size: ws,
            num_heads,
            dropout: c.attention_probs_dropout_prob,
        }
    }

    /// `[1, heads, window², window²]`: the bias of every token pair.
    fn position_bias(&self, window: i64) -> Tensor {
        let device = self.bias_table.device();
        let index = if window == self.window_size {
            self.index.to_device(device)
        } else {
            relative_position_index(window, self.window_size, device).view([-1])
        };
        let n = window * window;
        self.bias_table
            .index_select(0, &index)
            .view([n, n, self.num_heads])
            .permute([2, 0, 1])
            .unsqueeze(0)
    }

    /// `windows`: `[B * nW, window², C]`; `mask`: `[nW, window², window²]`
    /// for shifted windows.
    fn forward_t(
        &self,
        windows: &Tensor,
        window: i64,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (bw, n, c) = windows.size3().expect("[B * nW, N, C]");
        let head_dim = c / self.num_heads;
        let heads = |t: Tensor| t.view([bw, n, self.num_heads, head_dim]).transpose(1, 2);
        let q = heads(self.query.forward_t(windows, train));
        let k = heads(self.key.forward_t(windows, train));
        let v = heads(self.value.forward_t(windows, train));
        let bias = self.position_bias(window).to_kind(q.kind());
        let attn_mask = match mask {
            Some(mask) => {
                let nw = mask.size()[0];
                let mask = mask.to_kind(q.kind()).unsqueeze(1).unsqueeze(0);
                (mask + bias.unsqueeze(1))
                    .expand([bw / nw, nw, self.num_heads, n, n], false)
                    .reshape([bw, self.num_heads, n, n])
            }
            None => bias,
        };
        let dropout = if train { self.dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attn_mask),
            dropout,
            false,
            None,
            false,
        );
        self.output
            .forward(&ctx.transpose(1, 2).reshape([bw, n, c]))
    }
}

/// One Swin block (`swin.encoder.layers.{s}.blocks.{b}`).
#[derive(Debug)]
struct SwinBlock {
    layernorm_before: nn::LayerNorm,
    attention: WindowAttention,
    layernorm_after: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    act: Activation,
    window_size: i64,
    /// Half a window on odd blocks, 0 on even ones.
    shift_size: i64,
    drop_path: f64,
    hidden_dropout: f64,
}

impl SwinBlock {
    fn new(p: nn::Path, c: &SwinConfig, stage: usize, shifted: bool, drop_path: f64) -> Self {
        let (dim, std) = (c.stage_dim(stage), c.initializer_range);
        let hidden = c.mlp_hidden_size(stage);
        Self {
            layernorm_before: layer_norm(&p / "layernorm_before", dim, c.layer_norm_eps),
            attention: WindowAttention::new(&p / "attention", c, dim, c.num_heads[stage]),
            layernorm_after: layer_norm(&p / "layernorm_after", dim, c.layer_norm_eps),
            intermediate: linear(&p / "intermediate" / "dense", dim, hidden, true, std),
            output: linear(&p / "output" / "dense", hidden, dim, true, std),
            act: c.hidden_act,
            window_size: c.window_size,
            shift_size: if shifted { c.window_size / 2 } else { 0 },
            drop_path,
            hidden_dropout: c.hidden_dropout_prob,
        }
    }

    /// The window and shift at an `h` x `w` map: a map no larger than a
    /// window on its shorter side is one unshifted window of that side
    /// (`SwinLayer.set_shift_and_window_size`).
    fn window_and_shift(&self, h: i64, w: i64) -> (i64, i64) {
        if h.min(w) <= self.window_size {
            (h.min(w), 0)
        } else {
            (self.window_size, self.shift_size)
        }
    }

    /// `[B, h * w, C]` -> `[B, h * w, C]`.
    fn forward_t(&self, xs: &Tensor, (h, w): (i64, i64), train: bool) -> Tensor {
        let (b, _, c) = xs.size3().expect("[B, L, C]");
        let (window, shift) = self.window_and_shift(h, w);
        let normed = self.layernorm_before.forward(xs).view([b, h, w, c]);
        // Zero-pad the bottom and right to whole windows (after the norm, as
        // `maybe_pad`: padded tokens take part in unshifted attention).
        let (pad_h, pad_w) = (
            (window - h % window) % window,
            (window - w % window) % window,
        );
        let padded = if pad_h > 0 || pad_w > 0 {
            normed.constant_pad_nd([0, 0, 0, pad_w, 0, pad_h])
        } else {
            normed
        };
        let (hp, wp) = (h + pad_h, w + pad_w);
        let (rolled, mask) = if shift > 0 {
            let mask = shifted_window_mask(hp, wp, window, shift, xs.device());
            (padded.roll([-shift, -shift], [1, 2]), Some(mask))
        } else {
            (padded, None)
        };
        let windows = window_partition(&rolled, window);
        let attended = self
            .attention
            .forward_t(&windows, window, mask.as_ref(), train)
            .dropout(self.hidden_dropout, train);
        let mut map = window_reverse(&attended, window, hp, wp);
        if shift > 0 {
            map = map.roll([shift, shift], [1, 2]);
        }
        if pad_h > 0 || pad_w > 0 {
            map = map.narrow(1, 0, h).narrow(2, 0, w);
        }
        let attended = map.reshape([b, h * w, c]);
        // `transformers` applies stochastic depth to the attention branch only.
        let xs = drop_path(attended, self.drop_path, train) + xs;
        let h = self.act.apply(
            &self
                .intermediate
                .forward(&self.layernorm_after.forward(&xs)),
        );
        self.output.forward(&h).dropout(self.hidden_dropout, train) + xs
    }
}

/// `SwinPatchMerging` (`swin.encoder.layers.{s}.downsample`): each 2x2
/// neighbourhood concatenated (an odd side zero-padded first), normed and
/// projected from `4 * dim` to `2 * dim`.
#[derive(Debug)]
struct PatchMerging {
    norm: nn::LayerNorm,
    reduction: nn::Linear,
}

impl PatchMerging {
    fn new(p: nn::Path, dim: i64, std: f64) -> Self {
        Self {
            norm: layer_norm(&p / "norm", 4 * dim, TORCH_LAYER_NORM_EPS),
            reduction: linear(&p / "reduction", 4 * dim, 2 * dim, false, std),
        }
    }

    /// `[B, h * w, C]` -> `[B, ceil(h/2) * ceil(w/2), 2C]`.
    fn forward(&self, xs: &Tensor, (h, w): (i64, i64)) -> Tensor {
        let (b, _, c) = xs.size3().expect("[B, L, C]");
        let mut map = xs.view([b, h, w, c]);
        if h % 2 == 1 || w % 2 == 1 {
            map = map.constant_pad_nd([0, 0, 0, w % 2, 0, h % 2]);
        }
        // Order of `transformers`: (0, 0), (1, 0), (0, 1), (1, 1) as (row, col).
        let parts: Vec<Tensor> = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .iter()
            .map(|&(row, col)| map.slice(1, row, None, 2).slice(2, col, None, 2))
            .collect();
        let merged = Tensor::cat(&parts, -1).reshape([b, -1, 4 * c]);
        self.reduction.forward(&self.norm.forward(&merged))
    }
}

/// One stage (`swin.encoder.layers.{s}`): its blocks, then patch merging
/// unless it is the last.
#[derive(Debug)]
struct SwinStage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
}

impl SwinStage {
    fn forward_t(&self, xs: Tensor, hw: (i64, i64), train: bool) -> (Tensor, (i64, i64)) {
        let mut xs = xs;
        for block in &self.blocks {
            xs = block.forward_t(&xs, hw, train);
        }
        match &self.downsample {
            Some(merge) => (merge.forward(&xs, hw), ((hw.0 + 1) / 2, (hw.1 + 1) / 2)),
            None => (xs, hw),
        }
    }
}

/// The backbone (`swin`): embeddings, stages, final layernorm. Its pooler
/// (an average over tokens) has no variables.
#[derive(Debug)]
pub struct SwinModel {
    pub embeddings: SwinEmbeddings,
    stages: Vec<SwinStage>,
    pub layernorm: nn::LayerNorm,
}

impl SwinModel {
    /// Builds `SwinModel` under `p` (normally `root / "swin"`), setting the
    /// optimiser group of each part.
    pub fn new(p: nn::Path, c: &SwinConfig) -> Self {
        let stages_n = c.num_stages();
        let std = c.initializer_range;
        let embeddings = SwinEmbeddings::new((&p / "embeddings").set_group(0), c);
        let total: i64 = c.depths.iter().sum();
        // Linearly spaced stochastic depth over all blocks of all stages.
        let rate = |i: i64| c.drop_path_rate * i as f64 / (total - 1).max(1) as f64;
        let mut first = 0;
        let stages = (0..stages_n)
            .map(|s| {
                let sp = (&p / "encoder" / "layers" / s).set_group(s + 1);
                let blocks = (0..c.depths[s])
                    .map(|i| SwinBlock::new(&sp / "blocks" / i, c, s, i % 2 == 1, rate(first + i)))
                    .collect();
                first += c.depths[s];
                let downsample = (s + 1 < stages_n)
                    .then(|| PatchMerging::new(&sp / "downsample", c.stage_dim(s), std));
                SwinStage { blocks, downsample }
            })
            .collect();
        let layernorm = layer_norm(
            &p.set_group(stages_n + 1) / "layernorm",
            c.num_features(),
            c.layer_norm_eps,
        );
        Self {
            embeddings,
            stages,
            layernorm,
        }
    }

    /// `[B, tokens, num_features]`: the final-layernorm hidden states of the
    /// last stage.
    pub fn last_hidden_state(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let (mut xs, mut hw) = self.embeddings.forward_t(pixel_values, train);
        for stage in &self.stages {
            (xs, hw) = stage.forward_t(xs, hw, train);
        }
        self.layernorm.forward(&xs)
    }

    /// `[B, num_features, h, w]`: the final-layernorm tokens of the last
    /// stage laid out on their grid (Grad-CAM's map).
    pub fn final_map(&self, pixel_values: &Tensor) -> Tensor {
        let (mut xs, mut hw) = self.embeddings.forward_t(pixel_values, false);
        for stage in &self.stages {
            (xs, hw) = stage.forward_t(xs, hw, false);
        }
        let tokens = self.layernorm.forward(&xs);
        let (b, _, c) = tokens.size3().expect("[B, tokens, C]");
        tokens.transpose(1, 2).reshape([b, c, hw.0, hw.1])
    }

    /// `[B, num_features]`: the mean of the final-layernorm tokens (the
    /// `pooler_output` of `transformers`).
    pub fn pooled(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        self.last_hidden_state(pixel_values, train)
            .mean_dim(1, false, None)
    }
}

/// `SwinForImageClassification`: a linear classifier on the pooled output.
#[derive(Debug)]
pub struct SwinForImageClassification {
    pub swin: SwinModel,
    pub classifier: nn::Linear,
    num_stages: usize,
}

impl SwinForImageClassification {
    /// Builds the network under `root` with a head of `num_labels` outputs,
    /// initialised like `transformers` (normal(0, initializer_range)
    /// weights, zero biases, unit layer norms, zero bias tables and
    /// absolute position embeddings).
    pub fn new(root: &nn::Path, c: &SwinConfig, num_labels: i64) -> Self {
        let swin = SwinModel::new(root / "swin", c);
        let head = root.set_group(c.num_stages() + 2);
        let classifier = linear(
            &head / "classifier",
            c.num_features(),
            num_labels,
            true,
            c.initializer_range,
        );
        Self {
            swin,
            classifier,
            num_stages: c.num_stages(),
        }
    }
}

impl ImageClassifier for SwinForImageClassification {
    /// `[B, num_features]`: the pooled output.
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        // Inputs follow the weights' dtype.
        let pixel_values = follow_kind(pixel_values, &self.swin.embeddings.projection.ws);
        self.swin.pooled(&pixel_values, train)
    }

    /// Units of one block each (a stage's patch merging rides with its
    /// last block). A block needs its token grid, which the embeddings unit
    /// records when it runs (it runs first in the forward pass).
    fn chain(&self, train: bool) -> Vec<Unit<'_>> {
        let m = &self.swin;
        let grid = std::rc::Rc::new(std::cell::Cell::new((0i64, 0i64)));
        let g = grid.clone();
        let mut units: Vec<Unit<'_>> = vec![Box::new(move |x: &Tensor| {
            let (xs, hw) = m
                .embeddings
                .forward_t(&follow_kind(x, &m.embeddings.projection.ws), train);
            g.set(hw);
            xs
        })];
        for (s, stage) in m.stages.iter().enumerate() {
            for (b, block) in stage.blocks.iter().enumerate() {
                let last = b + 1 == stage.blocks.len();
                let grid = grid.clone();
                units.push(Box::new(move |x: &Tensor| {
                    let hw = (0..s).fold(grid.get(), |(h, w), _| ((h + 1) / 2, (w + 1) / 2));
                    let xs = block.forward_t(x, hw, train);
                    match (&stage.downsample, last) {
                        (Some(merge), true) => merge.forward(&xs, hw),
                        _ => xs,
                    }
                }));
            }
        }
        units.push(Box::new(move |h: &Tensor| {
            self.head(&m.layernorm.forward(h).mean_dim(1, false, None))
        }));
        units
    }

    fn head(&self, features: &Tensor) -> Tensor {
        self.classifier.forward(features)
    }

    /// The number of stages.
    fn num_layers(&self) -> usize {
        self.num_stages
    }

    /// The final layernorm's tokens on their grid, as Grad-CAM on
    /// `transformers`' Swin reads them (`swin.layernorm` with a reshape).
    fn cam_cut(&self) -> Option<(Unit<'_>, Unit<'_>)> {
        let m = &self.swin;
        let body: Unit<'_> =
            Box::new(move |x: &Tensor| m.final_map(&follow_kind(x, &m.embeddings.projection.ws)));
        let head: Unit<'_> =
            Box::new(move |map: &Tensor| self.head(&map.flatten(2, -1).mean_dim(-1, false, None)));
        Some((body, head))
    }

    fn lora_sites(&self) -> Vec<&LoraLinear> {
        let blocks = self.swin.stages.iter().flat_map(|s| &s.blocks);
        blocks
            .flat_map(|b| [&b.attention.query, &b.attention.key, &b.attention.value])
            .collect()
    }
}

/// [`Model::set_image_size`] for Swin's absolute position embeddings
/// (`size` already checked; the caller then sets `image_size`): they are
/// resampled once to the new grid as `transformers` interpolates them
/// (bicubic, align_corners false). Without them the network takes any size.
pub(super) fn resample_absolute_positions(model: &mut Model, size: i64) -> Result<()> {
    let (image_size, patch_size) = (model.config.image_size(), model.config.patch_size());
    let name = "swin.embeddings.position_embeddings";
    let mut var =
        model.vs.variables().remove(name).ok_or_else(|| {
            ModelError::UnsupportedCheckpoint(format!("the model has no `{name}`"))
        })?;
    let (old, new) = (image_size / patch_size, size / patch_size);
    let resampled = tch::no_grad(|| {
        let kind = var.kind();
        resample_positions(&var.to_kind(Kind::Float), old, (new, new)).to_kind(kind)
    });
    var.set_data(&resampled);
    tracing::info!(tensor = %name, from = old, to = new, "position embeddings resampled");
    Ok(())
}

/// Whether `name` is a `relative_position_index` buffer, which
/// `transformers` 4 saved with the weights of Swin checkpoints (integers,
/// determined by `window_size`). Like `transformers` 5, loading skips them.
pub fn is_saved_index_buffer(name: &str) -> bool {
    name.ends_with(".attention.self.relative_position_index")
}

/// The part of a Swin classifier the variable `name` belongs to: stage `s`
/// (its blocks and its patch merging) is [`ParamGroup::Layer`]`(s)`.
pub fn param_group(name: &str) -> Option<ParamGroup> {
    if name.starts_with("classifier.") {
        return Some(ParamGroup::Head);
    }
    let rest = name.strip_prefix("swin.")?;
    if rest.starts_with("embeddings.") {
        Some(ParamGroup::Embeddings)
    } else if let Some(stage) = rest.strip_prefix("encoder.layers.") {
        stage.split('.').next()?.parse().ok().map(ParamGroup::Layer)
    } else if rest.starts_with("layernorm.") {
        Some(ParamGroup::FinalNorm)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_partition_and_reverse_round_trip() {
        let x = Tensor::arange(2 * 4 * 6 * 3, (Kind::Float, Device::Cpu)).view([2, 4, 6, 3]);
        let windows = window_partition(&x, 2);
        assert_eq!(windows.size(), [2 * 2 * 3, 4, 3]);
        // The second window of the first image: rows 0-1, columns 2-3.
        let want = x.get(0).narrow(0, 0, 2).narrow(1, 2, 2).reshape([4, 3]);
        assert!(windows.get(1).equal(&want));
        assert!(window_reverse(&windows, 2, 4, 6).equal(&x));
    }

    #[test]
    fn shifted_mask_separates_wrapped_regions() {
        // 4x4 map, window 2, shift 1: windows 0, 1, 2 mix regions, 3 too.
        let mask = shifted_window_mask(4, 4, 2, 1, Device::Cpu);
        assert_eq!(mask.size(), [4, 4, 4]);
        // Window 0 (rows 0-1, cols 0-1) is one region: no masking.
        assert_eq!(mask.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // The last window holds 4 regions: each token sees only itself.
        let last = mask.get(3);
        let allowed = last.eq(0.0).to_kind(Kind::Float);
        assert!(allowed.equal(&Tensor::eye(4, (Kind::Float, Device::Cpu))));
        assert_eq!(last.min().double_value(&[]), SHIFT_MASK_VALUE);
    }

    #[test]
    fn relative_index_matches_the_table_layout() {
        // Window 2, table of window 2 (3x3 offsets): (dy, dx) -> (dy+1)*3 + dx+1.
        let idx = relative_position_index(2, 2, Device::Cpu);
        let want =
            Tensor::from_slice(&[4i64, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]).view([4, 4]);
        assert!(idx.equal(&want), "{idx}");
        // A smaller window reads the offsets it has from the larger table.
        let small = relative_position_index(1, 3, Device::Cpu);
        assert_eq!(small.int64_value(&[0, 0]), 12);
    }

    #[test]
    fn drop_path_only_in_training() {
        let x = Tensor::ones([64, 3, 2], (Kind::Float, Device::Cpu));
        assert!(drop_path(x.shallow_clone(), 0.5, false).equal(&x));
        let dropped = drop_path(x.shallow_clone(), 0.5, true);
        // Whole samples are either zero or scaled by 1 / keep.
        let per_sample = dropped.sum_dim_intlist(&[1i64, 2][..], false, Kind::Float);
        for v in Vec::<f64>::try_from(per_sample).unwrap() {
            assert!(v == 0.0 || (v - 12.0).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn groups_follow_hf_names() {
        use ParamGroup::*;
        for (name, want) in [
            ("swin.embeddings.norm.weight", Some(Embeddings)),
            ("swin.embeddings.position_embeddings", Some(Embeddings)),
            (
                "swin.encoder.layers.2.blocks.5.attention.self.relative_position_bias_table",
                Some(Layer(2)),
            ),
            (
                "swin.encoder.layers.0.downsample.reduction.weight",
                Some(Layer(0)),
            ),
            ("swin.layernorm.bias", Some(FinalNorm)),
            ("classifier.weight", Some(Head)),
            ("swin.pooler.weight", None),
            ("vit.layernorm.bias", None),
        ] {
            assert_eq!(param_group(name), want, "{name}");
        }
    }
}
