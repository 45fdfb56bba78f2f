//! ViT and DINOv2 (with or without registers) as ONNX graphs, op for op as
//! `model::vit` and `model::dinov2` run in eval mode (dropout and
//! stochastic depth are the identity there, so they have no node).
//!
//! The input size is fixed, so the position embeddings (resampled as the
//! model would for that size) are constants, added to the CLS token and to
//! the patch tokens at export time.

use tch::{Kind, Tensor};

use super::error::ExportError;
use super::graph::{attr_int, attr_ints, Graph};
use super::ops::{self, Weights};
use crate::model::{Activation, Dinov2Config, ViTConfig};

/// The patch embedding plus position embeddings: `[B, 1 + n, d]` tokens,
/// the CLS token first; `registers` (`[1, R, d]`) go between CLS and the
/// patches after the position embeddings are added, as DINOv2 does.
fn embeddings(
    g: &mut Graph,
    w: &Weights,
    pixels: &str,
    prefix: &str,
    patch: i64,
    pos: &Tensor,
    registers: Option<&Tensor>,
) -> Result<(String, i64), ExportError> {
    let d = pos.size()[2];
    let x = ops::conv2d(
        g,
        w,
        pixels,
        &format!("{prefix}.patch_embeddings.projection"),
        patch,
        0,
        1,
    )?;
    let flat = g.ints(&[0, d, -1]);
    let x = g.node("Reshape", &[&x, &flat], vec![]);
    let patches = g.node("Transpose", &[&x], vec![attr_ints("perm", &[0, 2, 1])]);
    let n = pos.size()[1] - 1;
    let patch_pos = g.constant("patch_pos", &pos.narrow(1, 1, n))?;
    let patches = g.node("Add", &[&patches, &patch_pos], vec![]);
    let cls = w.get(&format!("{prefix}.cls_token"))?.to_kind(Kind::Float) + pos.narrow(1, 0, 1);
    let cls = g.constant("cls_plus_pos", &cls)?;
    let cls = ops::expand_to_batch(g, &cls, pixels, &[1, d]);
    let mut parts = vec![cls];
    let mut tokens = 1 + n;
    if let Some(r) = registers {
        let count = r.size()[1];
        let regs = g.weight(&format!("{prefix}.register_tokens"), r)?;
        parts.push(ops::expand_to_batch(g, &regs, pixels, &[count, d]));
        tokens += count;
    }
    parts.push(patches);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok((g.node("Concat", &parts, vec![attr_int("axis", 1)]), tokens))
}

/// Bicubic resampling of the patch position embeddings `[1, 1 + s*s, d]`
/// to a `gh` x `gw` grid, as `ViTEmbeddings.interpolate_pos_encoding` and
/// its DINOv2 variants do (fp32, align_corners false).
fn resample_positions(pos: &Tensor, gh: i64, gw: i64, antialias: bool) -> Tensor {
    let (_, n, d) = pos.size3().expect("[1, N + 1, D]");
    let side = ((n - 1) as f64).sqrt().round() as i64;
    let grid = pos
        .narrow(1, 1, n - 1)
        .reshape([1, side, side, d])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float);
    let resized = if antialias {
        grid.internal_upsample_bicubic2d_aa([gh, gw], false, None, None)
    } else {
        grid.upsample_bicubic2d([gh, gw], false, None, None)
    };
    let patch = resized.permute([0, 2, 3, 1]).reshape([1, -1, d]);
    Tensor::cat(&[pos.narrow(1, 0, 1).to_kind(Kind::Float), patch], 1)
}

/// `ViTForImageClassification`: logits `[B, labels]` of `pixels` `[B, C, h, w]`.
pub fn vit(
    g: &mut Graph,
    w: &Weights,
    c: &ViTConfig,
    pixels: &str,
    (h, wd): (i64, i64),
) -> Result<String, ExportError> {
    let p = "vit";
    let stored = w.get(&format!("{p}.embeddings.position_embeddings"))?;
    let (gh, gw) = (h / c.patch_size, wd / c.patch_size);
    let pos = if gh * gw == stored.size()[1] - 1 && gh == gw {
        stored.to_kind(Kind::Float)
    } else {
        tch::no_grad(|| resample_positions(stored, gh, gw, false))
    };
    let (mut x, n) = embeddings(
        g,
        w,
        pixels,
        &format!("{p}.embeddings"),
        c.patch_size,
        &pos,
        None,
    )?;
    let (d, eps) = (c.hidden_size, c.layer_norm_eps);
    for i in 0..c.num_hidden_layers {
        let l = format!("{p}.encoder.layer.{i}");
        let y = ops::layer_norm(g, w, &x, &format!("{l}.layernorm_before"), eps)?;
        let y = ops::self_attention(
            g,
            w,
            &y,
            &format!("{l}.attention"),
            c.num_attention_heads,
            n,
            d,
        )?;
        x = g.node("Add", &[&y, &x], vec![]);
        let y = ops::layer_norm(g, w, &x, &format!("{l}.layernorm_after"), eps)?;
        let y = ops::linear(g, w, &y, &format!("{l}.intermediate.dense"))?;
        let y = ops::activation(g, &y, c.hidden_act);
        let y = ops::linear(g, w, &y, &format!("{l}.output.dense"))?;
        x = g.node("Add", &[&y, &x], vec![]);
    }
    let x = ops::layer_norm(g, w, &x, &format!("{p}.layernorm"), eps)?;
    let cls = ops::select(g, &x, 1, 0);
    ops::linear(g, w, &cls, "classifier")
}

/// `Dinov2ForImageClassification` (and `Dinov2WithRegisters…`): logits of
/// `concat(CLS, mean of the patch tokens)`.
pub fn dinov2(
    g: &mut Graph,
    w: &Weights,
    c: &Dinov2Config,
    pixels: &str,
    (h, wd): (i64, i64),
) -> Result<String, ExportError> {
    let p = c.backbone_prefix();
    let stored = w.get(&format!("{p}.embeddings.position_embeddings"))?;
    let (gh, gw) = (h / c.patch_size, wd / c.patch_size);
    let pos = if gh * gw == stored.size()[1] - 1 && h == wd {
        stored.to_kind(Kind::Float)
    } else {
        tch::no_grad(|| resample_positions(stored, gh, gw, c.with_registers))
    };
    let registers = if c.with_registers {
        Some(w.get(&format!("{p}.embeddings.register_tokens"))?)
    } else {
        None
    };
    let (mut x, n) = embeddings(
        g,
        w,
        pixels,
        &format!("{p}.embeddings"),
        c.patch_size,
        &pos,
        registers,
    )?;
    let (d, eps) = (c.hidden_size, c.layer_norm_eps);
    for i in 0..c.num_hidden_layers {
        let l = format!("{p}.encoder.layer.{i}");
        let y = ops::layer_norm(g, w, &x, &format!("{l}.norm1"), eps)?;
        let y = ops::self_attention(
            g,
            w,
            &y,
            &format!("{l}.attention"),
            c.num_attention_heads,
            n,
            d,
        )?;
        let y = layer_scale(g, w, &y, &format!("{l}.layer_scale1"))?;
        x = g.node("Add", &[&y, &x], vec![]);
        let y = ops::layer_norm(g, w, &x, &format!("{l}.norm2"), eps)?;
        let y = ffn(g, w, &y, &format!("{l}.mlp"), c)?;
        let y = layer_scale(g, w, &y, &format!("{l}.layer_scale2"))?;
        x = g.node("Add", &[&y, &x], vec![]);
    }
    let x = ops::layer_norm(g, w, &x, &format!("{p}.layernorm"), eps)?;
    let skip = 1 + registers.map_or(0, |r| r.size()[1]);
    let cls = ops::select(g, &x, 1, 0);
    let patches = ops::slice(g, &x, 1, skip, n);
    let mean = ops::reduce_mean(g, &patches, &[1], false);
    let features = g.node("Concat", &[&cls, &mean], vec![attr_int("axis", 1)]);
    ops::linear(g, w, &features, "classifier")
}

fn layer_scale(g: &mut Graph, w: &Weights, x: &str, prefix: &str) -> Result<String, ExportError> {
    let name = format!("{prefix}.lambda1");
    let lambda = g.weight(&name, w.get(&name)?)?;
    Ok(g.node("Mul", &[x, &lambda], vec![]))
}

/// fc1 -> act -> fc2, or SwiGLU: `weights_in` holds the gate rows then the
/// value rows, exported as two projections.
fn ffn(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    c: &Dinov2Config,
) -> Result<String, ExportError> {
    if !c.use_swiglu_ffn {
        let y = ops::linear(g, w, x, &format!("{prefix}.fc1"))?;
        let y = ops::activation(g, &y, c.hidden_act);
        return ops::linear(g, w, &y, &format!("{prefix}.fc2"));
    }
    let win = format!("{prefix}.weights_in");
    let weight = w.get(&format!("{win}.weight"))?;
    let hidden = weight.size()[0] / 2;
    let gate = ops::linear_with(
        g,
        w,
        x,
        &win,
        &weight.narrow(0, 0, hidden).tr(),
        Some((0, hidden)),
    )?;
    let value = ops::linear_with(
        g,
        w,
        x,
        &win,
        &weight.narrow(0, hidden, hidden).tr(),
        Some((hidden, hidden)),
    )?;
    let gate = ops::activation(g, &gate, Activation::Silu);
    let y = g.node("Mul", &[&gate, &value], vec![]);
    ops::linear(g, w, &y, &format!("{prefix}.weights_out"))
}
