//! The layers the architectures share, as ONNX nodes reading checkpoint
//! weights: linear, layer norm, convolution, the activations of
//! [`Activation`], multi-head self-attention, and a few shape helpers.
//! Each reproduces the tch forward pass of `crate::model` in eval mode.

use std::collections::HashMap;

use tch::Tensor;

use super::error::ExportError;
use super::graph::{attr_float, attr_int, attr_ints, Graph};
use crate::model::Activation;

/// The checkpoint's variables by name (as `VarStore::variables`).
pub struct Weights {
    vars: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(vars: HashMap<String, Tensor>) -> Self {
        Self { vars }
    }

    pub fn get(&self, name: &str) -> Result<&Tensor, ExportError> {
        self.vars
            .get(name)
            .ok_or_else(|| ExportError::MissingWeight(name.to_string()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }
}

/// `x @ W^T + b` over the last axis of `x` (any rank), `W` of
/// `{prefix}.weight` stored transposed, the bias if the checkpoint has one.
pub fn linear(g: &mut Graph, w: &Weights, x: &str, prefix: &str) -> Result<String, ExportError> {
    let weight = w.get(&format!("{prefix}.weight"))?.tr();
    linear_with(g, w, x, prefix, &weight, None)
}

/// [`linear`] with an explicit `[out, in]` weight and optional bias rows
/// (a slice of a fused projection), the bias read from `{prefix}.bias`
/// narrowed to `rows` when given.
pub fn linear_with(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    weight_t: &Tensor,
    rows: Option<(i64, i64)>,
) -> Result<String, ExportError> {
    let suffix = rows.map_or(String::new(), |(s, n)| format!("[{s}:{}]", s + n));
    let wt = g.weight(&format!("{prefix}.weight{suffix}.T"), weight_t)?;
    let y = g.node("MatMul", &[x, &wt], vec![]);
    let bias_name = format!("{prefix}.bias");
    if !w.has(&bias_name) {
        return Ok(y);
    }
    let bias = w.get(&bias_name)?;
    let bias = match rows {
        Some((s, n)) => bias.narrow(0, s, n),
        None => bias.shallow_clone(),
    };
    let b = g.weight(&format!("{bias_name}{suffix}"), &bias)?;
    Ok(g.node("Add", &[&y, &b], vec![]))
}

/// `LayerNormalization` over the last axis (`{prefix}.weight`, `.bias`).
pub fn layer_norm(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    eps: f64,
) -> Result<String, ExportError> {
    let scale = g.weight(
        &format!("{prefix}.weight"),
        w.get(&format!("{prefix}.weight"))?,
    )?;
    let bias = g.weight(&format!("{prefix}.bias"), w.get(&format!("{prefix}.bias"))?)?;
    Ok(g.node(
        "LayerNormalization",
        &[x, &scale, &bias],
        vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
    ))
}

/// A 2-d convolution `{prefix}.weight` (`[out, in / groups, kh, kw]`),
/// bias when present, symmetric `padding`.
pub fn conv2d(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    stride: i64,
    padding: i64,
    groups: i64,
) -> Result<String, ExportError> {
    let weight_name = format!("{prefix}.weight");
    let weight = w.get(&weight_name)?;
    let (kh, kw) = (weight.size()[2], weight.size()[3]);
    let wt = g.weight(&weight_name, weight)?;
    let bias_name = format!("{prefix}.bias");
    let mut inputs = vec![x.to_string(), wt];
    if w.has(&bias_name) {
        inputs.push(g.weight(&bias_name, w.get(&bias_name)?)?);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    Ok(g.node(
        "Conv",
        &inputs,
        vec![
            attr_ints("kernel_shape", &[kh, kw]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[padding, padding, padding, padding]),
            attr_int("group", groups),
        ],
    ))
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, decomposed with `Erf` (the
/// `Gelu` operator only exists from opset 20).
pub fn gelu(g: &mut Graph, x: &str) -> String {
    let inv_sqrt2 = g.scalar(std::f64::consts::FRAC_1_SQRT_2);
    let one = g.scalar(1.0);
    let half = g.scalar(0.5);
    let t = g.node("Mul", &[x, &inv_sqrt2], vec![]);
    let t = g.node("Erf", &[&t], vec![]);
    let t = g.node("Add", &[&t, &one], vec![]);
    let t = g.node("Mul", &[x, &t], vec![]);
    g.node("Mul", &[&t, &half], vec![])
}

fn sigmoid_times(g: &mut Graph, x: &str, k: f64) -> String {
    let s = if k == 1.0 {
        g.node("Sigmoid", &[x], vec![])
    } else {
        let kc = g.scalar(k);
        let kx = g.node("Mul", &[x, &kc], vec![]);
        g.node("Sigmoid", &[&kx], vec![])
    };
    g.node("Mul", &[x, &s], vec![])
}

fn clip(g: &mut Graph, x: &str, lo: f64, hi: f64) -> String {
    let (lo, hi) = (g.scalar(lo), g.scalar(hi));
    g.node("Clip", &[x, &lo, &hi], vec![])
}

/// The activation `act` of `x`, as [`Activation::apply`] computes it.
pub fn activation(g: &mut Graph, x: &str, act: Activation) -> String {
    match act {
        Activation::Gelu => gelu(g, x),
        Activation::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), torch's tanh form.
            let c = g.scalar((2.0 / std::f64::consts::PI).sqrt());
            let k = g.scalar(0.044715);
            let (one, half) = (g.scalar(1.0), g.scalar(0.5));
            let x2 = g.node("Mul", &[x, x], vec![]);
            let x3 = g.node("Mul", &[&x2, x], vec![]);
            let t = g.node("Mul", &[&x3, &k], vec![]);
            let t = g.node("Add", &[x, &t], vec![]);
            let t = g.node("Mul", &[&t, &c], vec![]);
            let t = g.node("Tanh", &[&t], vec![]);
            let t = g.node("Add", &[&t, &one], vec![]);
            let t = g.node("Mul", &[x, &t], vec![]);
            g.node("Mul", &[&t, &half], vec![])
        }
        Activation::Gelu10 => {
            let y = gelu(g, x);
            clip(g, &y, -10.0, 10.0)
        }
        Activation::QuickGelu => sigmoid_times(g, x, 1.702),
        Activation::Relu => g.node("Relu", &[x], vec![]),
        Activation::Relu2 => {
            let r = g.node("Relu", &[x], vec![]);
            g.node("Mul", &[&r, &r], vec![])
        }
        Activation::Relu6 => clip(g, x, 0.0, 6.0),
        Activation::LeakyRelu => g.node("LeakyRelu", &[x], vec![attr_float("alpha", 0.01)]),
        Activation::Silu => sigmoid_times(g, x, 1.0),
        Activation::Mish => {
            let sp = g.node("Softplus", &[x], vec![]);
            let t = g.node("Tanh", &[&sp], vec![]);
            g.node("Mul", &[x, &t], vec![])
        }
        Activation::Hardswish => g.node("HardSwish", &[x], vec![]),
        Activation::Tanh => g.node("Tanh", &[x], vec![]),
        Activation::Sigmoid => g.node("Sigmoid", &[x], vec![]),
        Activation::SqrtSoftplus => {
            let sp = g.node("Softplus", &[x], vec![]);
            g.node("Sqrt", &[&sp], vec![])
        }
        Activation::Laplace => {
            #[allow(clippy::approx_constant)]
            let (mu, sigma) = (0.707107, 0.282095);
            let mu = g.scalar(mu);
            let k = g.scalar(1.0 / (sigma * std::f64::consts::SQRT_2));
            let (half, one) = (g.scalar(0.5), g.scalar(1.0));
            let t = g.node("Sub", &[x, &mu], vec![]);
            let t = g.node("Mul", &[&t, &k], vec![]);
            let t = g.node("Erf", &[&t], vec![]);
            let t = g.node("Add", &[&t, &one], vec![]);
            g.node("Mul", &[&t, &half], vec![])
        }
        Activation::Linear => g.node("Identity", &[x], vec![]),
    }
}

/// The query, transposed key and value of `x` `[B, n, d]` split into heads
/// (`[B, heads, n, hd]`, the key `[B, heads, hd, n]`), from the linear
/// layers `{prefix}.{query,key,value}`.
pub fn heads_qkv(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    n: i64,
    heads: i64,
    hd: i64,
) -> Result<(String, String, String), ExportError> {
    let split = g.ints(&[0, n, heads, hd]);
    let mut qkv = Vec::new();
    for part in ["query", "key", "value"] {
        let y = linear(g, w, x, &format!("{prefix}.{part}"))?;
        qkv.push(g.node("Reshape", &[&y, &split], vec![]));
    }
    let perm =
        |g: &mut Graph, t: &str, p: &[i64]| g.node("Transpose", &[t], vec![attr_ints("perm", p)]);
    let q = perm(g, &qkv[0], &[0, 2, 1, 3]);
    let kt = perm(g, &qkv[1], &[0, 2, 3, 1]);
    let v = perm(g, &qkv[2], &[0, 2, 1, 3]);
    Ok((q, kt, v))
}

/// Multi-head self-attention of ViT and DINOv2 (`layers::SelfAttention`)
/// over `x` `[B, n, d]`: `{attn}.attention.{query,key,value}` and
/// `{attn}.output.dense`, scale `head_dim^-0.5`, no mask.
pub fn self_attention(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    attn: &str,
    heads: i64,
    n: i64,
    d: i64,
) -> Result<String, ExportError> {
    let hd = d / heads;
    let (q, kt, v) = heads_qkv(g, w, x, &format!("{attn}.attention"), n, heads, hd)?;
    let ctx = attention_core(g, &q, &kt, &v, hd, None);
    let ctx = g.node("Transpose", &[&ctx], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let merge = g.ints(&[0, n, d]);
    let ctx = g.node("Reshape", &[&ctx, &merge], vec![]);
    linear(g, w, &ctx, &format!("{attn}.output.dense"))
}

/// `softmax(q k^T * hd^-0.5 + bias) v` for `q`, `v` `[.., n, hd]` and
/// `kt` `[.., hd, n]`; `bias` (a name) is added to the scores when given.
pub fn attention_core(
    g: &mut Graph,
    q: &str,
    kt: &str,
    v: &str,
    hd: i64,
    bias: Option<&str>,
) -> String {
    let scale = g.scalar((hd as f64).powf(-0.5));
    let scores = g.node("MatMul", &[q, kt], vec![]);
    let mut scores = g.node("Mul", &[&scores, &scale], vec![]);
    if let Some(b) = bias {
        scores = g.node("Add", &[&scores, b], vec![]);
    }
    let probs = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    g.node("MatMul", &[&probs, v], vec![])
}

/// `ReduceMean` over `axes` (an attribute before opset 18, an input from it).
pub fn reduce_mean(g: &mut Graph, x: &str, axes: &[i64], keepdims: bool) -> String {
    let keep = attr_int("keepdims", keepdims as i64);
    if g.opset >= 18 {
        let axes = g.ints(axes);
        g.node("ReduceMean", &[x, &axes], vec![keep])
    } else {
        g.node("ReduceMean", &[x], vec![attr_ints("axes", axes), keep])
    }
}

/// `x[:, index]` along `axis` (the axis dropped).
pub fn select(g: &mut Graph, x: &str, axis: i64, index: i64) -> String {
    let i = g.int_scalar(index);
    g.node("Gather", &[x, &i], vec![attr_int("axis", axis)])
}

/// `x[start..end]` along `axis`.
pub fn slice(g: &mut Graph, x: &str, axis: i64, start: i64, end: i64) -> String {
    let (s, e, a) = (g.ints(&[start]), g.ints(&[end]), g.ints(&[axis]));
    g.node("Slice", &[x, &s, &e, &a], vec![])
}

/// The constant `t` (`[1, rest..]`) repeated over the batch of `like`
/// (whose first axis is the batch).
pub fn expand_to_batch(g: &mut Graph, t: &str, like: &str, rest: &[i64]) -> String {
    let batch = g.node(
        "Shape",
        &[like],
        vec![attr_int("start", 0), attr_int("end", 1)],
    );
    let rest = g.ints(rest);
    let shape = g.node("Concat", &[&batch, &rest], vec![attr_int("axis", 0)]);
    g.node("Expand", &[t, &shape], vec![])
}
