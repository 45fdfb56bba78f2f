//! Building blocks the architectures share: normal initialisation, layer norm,
//! the HF-initialised linear layer, stochastic depth, and multi-head
//! self-attention of ViT and DINOv2 (`<layer>.attention.attention.{query,key,
//! value}` and `<layer>.attention.output.dense`, the same names in both).

use tch::nn::{self, Module};
use tch::Tensor;

use super::lora::LoraLinear;

/// N(0, std), as `transformers` initialises weights and embeddings.
/// `pixel_values` in the dtype of `weight` (as `transformers`' embeddings
/// cast their input to the weights' dtype).
pub fn follow_kind(pixel_values: &Tensor, weight: &Tensor) -> Tensor {
    if pixel_values.kind() == weight.kind() {
        pixel_values.shallow_clone()
    } else {
        pixel_values.to_kind(weight.kind())
    }
}

pub fn normal(std: f64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.,
        stdev: std,
    }
}

/// `nn.LayerNorm` over the hidden size with the config's epsilon.
pub fn layer_norm(p: nn::Path, hidden_size: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![hidden_size],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// `nn.Linear` initialised as `transformers` does: weights N(0, std), bias 0.
pub fn linear(p: nn::Path, i: i64, o: i64, bias: bool, std: f64) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: normal(std),
            bs_init: Some(nn::Init::Const(0.)),
            bias,
        },
    )
}

/// Stochastic depth (`DropPath` of `transformers`): in training, drops a
/// sample's whole residual branch with probability `rate` and scales the
/// kept ones by `1 / (1 - rate)`; the identity otherwise. `xs` is
/// `[B, ...]` of any rank.
pub fn drop_path(xs: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return xs;
    }
    let keep = 1.0 - rate;
    let mut shape = vec![1; xs.dim()];
    shape[0] = xs.size()[0];
    let mask = (Tensor::rand(shape, (xs.kind(), xs.device())) + keep).floor();
    xs / keep * mask
}

/// A square `d -> d` projection LoRA can adapt, initialised as [`linear`].
pub fn lora_linear(p: nn::Path, d: i64, bias: bool, std: f64) -> LoraLinear {
    let path = p.components().collect::<Vec<_>>().join(".");
    LoraLinear::new(linear(p, d, d, bias, std), path)
}

/// Multi-head self-attention of one encoder layer.
#[derive(Debug)]
pub struct SelfAttention {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    output: nn::Linear,
    num_heads: i64,
    dropout: f64,
}

impl SelfAttention {
    /// `attn` is the layer's `attention` path; `d` the hidden size.
    pub fn new(
        attn: nn::Path,
        d: i64,
        num_heads: i64,
        qkv_bias: bool,
        dropout: f64,
        std: f64,
    ) -> Self {
        let qkv = &attn / "attention";
        Self {
            query: lora_linear(&qkv / "query", d, qkv_bias, std),
            key: lora_linear(&qkv / "key", d, qkv_bias, std),
            value: lora_linear(&qkv / "value", d, qkv_bias, std),
            output: linear(&attn / "output" / "dense", d, d, true, std),
            num_heads,
            dropout,
        }
    }

    /// The projections LoRA can adapt: query, key, value.
    pub fn lora_sites(&self) -> Vec<&LoraLinear> {
        vec![&self.query, &self.key, &self.value]
    }

    /// Through libtorch's fused `scaled_dot_product_attention` (scale
    /// `head_dim^-0.5`, no mask).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (b, n, d) = xs.size3().expect("[B, N, D]");
        let heads = |t: Tensor| {
            t.view([b, n, self.num_heads, d / self.num_heads])
                .transpose(1, 2)
        };
        let q = heads(self.query.forward_t(xs, train));
        let k = heads(self.key.forward_t(xs, train));
        let v = heads(self.value.forward_t(xs, train));
        let dropout = if train { self.dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            dropout,
            false,
            None,
            false,
        );
        let ctx = ctx.transpose(1, 2).reshape([b, n, d]);
        self.output.forward(&ctx)
    }

    /// `[B, heads, N, N]`: the softmax probabilities the fused kernel of
    /// [`Self::forward_t`] uses without returning them (eval mode), for
    /// attention rollout.
    pub fn probs(&self, xs: &Tensor) -> Tensor {
        let (b, n, d) = xs.size3().expect("[B, N, D]");
        let head_dim = d / self.num_heads;
        let heads = |t: Tensor| t.view([b, n, self.num_heads, head_dim]).transpose(1, 2);
        let q = heads(self.query.forward_t(xs, false));
        let k = heads(self.key.forward_t(xs, false));
        let scores = q.matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5);
        scores.softmax(-1, scores.kind())
    }
}
