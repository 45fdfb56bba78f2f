//! Swin as an ONNX graph, op for op as `model::swin` in eval mode.
//!
//! With the input size fixed, every rearrangement of the tokens (padding to
//! whole windows, the cyclic shift, the window partition and its inverse,
//! the crop back, the 2x2 patch merging) is a fixed permutation with zero
//! padding: each is one `Gather` along the token axis over the tokens plus
//! one appended zero token, its indices computed here by running the
//! model's own tch functions on token numbers. The shifted-window mask and
//! the relative position bias are constants too, summed per window.

use tch::{Device, Kind, Tensor};

use super::error::ExportError;
use super::graph::{attr_int, attr_ints, Graph};
use super::ops::{self, Weights};
use crate::model::swin::{
    relative_position_index, shifted_window_mask, window_partition, window_reverse,
};
use crate::model::SwinConfig;

/// `nn.LayerNorm`'s default (patch embedding and merging norms).
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;

/// `x` `[B, L, C]` with a zero token appended (`[B, L + 1, C]`), so a
/// gather can read zeros at index `L`.
fn with_zero_token(g: &mut Graph, x: &str) -> String {
    let pads = g.ints(&[0, 0, 0, 0, 1, 0]);
    g.node("Pad", &[x, &pads], vec![])
}

/// Gathers tokens of `x` (`[B, L, C]`) at `index` (values in `0..=L`, `L`
/// reading zeros).
fn gather_tokens(g: &mut Graph, x: &str, index: &Tensor) -> String {
    let x = with_zero_token(g, x);
    let values =
        Vec::<i64>::try_from(index.to_kind(Kind::Int64).flatten(0, -1)).expect("an int64 index");
    let idx = g.ints(&values);
    g.node("Gather", &[&x, &idx], vec![attr_int("axis", 1)])
}

/// Token numbers of an `h` x `w` map as `[1, h, w, 1]` int64.
fn token_numbers(h: i64, w: i64) -> Tensor {
    Tensor::arange(h * w, (Kind::Int64, Device::Cpu)).view([1, h, w, 1])
}

/// `map` (token numbers `[1, h, w, 1]`) padded as `constant_pad_nd(pad)`
/// would, the new places holding the zero token's number `h * w`.
fn pad_with_zero_token(map: &Tensor, pad: [i64; 6]) -> Tensor {
    let zero_token = map.numel() as i64;
    (map - zero_token).constant_pad_nd(pad) + zero_token
}

/// One block's window layout: where each window slot reads from (`into`,
/// `[nW * N]`) and where each token reads back from (`back`, `[h * w]`).
struct Layout {
    into: Tensor,
    back: Tensor,
    windows: i64,
}

fn layout(h: i64, w: i64, window: i64, shift: i64) -> Layout {
    let (pad_h, pad_w) = (
        (window - h % window) % window,
        (window - w % window) % window,
    );
    let (hp, wp) = (h + pad_h, w + pad_w);
    // Forward: pad with the zero token's number, roll, partition.
    let map = pad_with_zero_token(&token_numbers(h, w), [0, 0, 0, pad_w, 0, pad_h]);
    let map = if shift > 0 {
        map.roll([-shift, -shift], [1, 2])
    } else {
        map
    };
    let into = window_partition(&map, window).flatten(0, -1);
    // Back: slot numbers through the inverse path.
    let slots = Tensor::arange(hp * wp, (Kind::Int64, Device::Cpu)).view([-1, window * window, 1]);
    let map = window_reverse(&slots, window, hp, wp);
    let map = if shift > 0 {
        map.roll([shift, shift], [1, 2])
    } else {
        map
    };
    let back = map.narrow(1, 0, h).narrow(2, 0, w).flatten(0, -1);
    Layout {
        into,
        back,
        windows: (hp / window) * (wp / window),
    }
}

/// The constant added to the attention scores of each window:
/// relative position bias (`[heads, N, N]`) plus, when shifted, the mask
/// (`[nW, N, N]`); `[nW or 1, heads, N, N]`.
fn score_bias(
    w: &Weights,
    prefix: &str,
    heads: i64,
    window: i64,
    table_window: i64,
    mask: Option<(i64, i64, i64)>,
) -> Result<Tensor, ExportError> {
    let table = w
        .get(&format!("{prefix}.relative_position_bias_table"))?
        .to_kind(Kind::Float);
    let index = relative_position_index(window, table_window, Device::Cpu).view([-1]);
    let n = window * window;
    let bias = table
        .index_select(0, &index)
        .view([n, n, heads])
        .permute([2, 0, 1])
        .unsqueeze(0);
    Ok(match mask {
        Some((hp, wp, shift)) => {
            let m = shifted_window_mask(hp, wp, window, shift, Device::Cpu);
            m.unsqueeze(1) + bias
        }
        None => bias,
    })
}

/// `SwinForImageClassification`: logits of the mean final-layernorm token.
pub fn swin(
    g: &mut Graph,
    w: &Weights,
    c: &SwinConfig,
    pixels: &str,
    size: (i64, i64),
) -> Result<String, ExportError> {
    let (mut x, (mut h, mut wd)) = embeddings(g, w, c, pixels, size)?;
    let stages = c.num_stages();
    for s in 0..stages {
        for b in 0..c.depths[s] {
            x = block(g, w, c, &x, (s, b), (h, wd))?;
        }
        if s + 1 < stages {
            let down = format!("swin.encoder.layers.{s}.downsample");
            (x, (h, wd)) = patch_merging(g, w, &x, &down, (h, wd), c.stage_dim(s))?;
        }
    }
    let x = ops::layer_norm(g, w, &x, "swin.layernorm", c.layer_norm_eps)?;
    let pooled = ops::reduce_mean(g, &x, &[1], false);
    ops::linear(g, w, &pooled, "classifier")
}

/// Patch embedding (the pixels padded to whole patches), its norm and, when
/// the checkpoint has them, position embeddings (resized bicubically to
/// the token map): the tokens `[B, h * w, C]` and the map's `(h, w)`.
fn embeddings(
    g: &mut Graph,
    w: &Weights,
    c: &SwinConfig,
    pixels: &str,
    (height, width): (i64, i64),
) -> Result<(String, (i64, i64)), ExportError> {
    let p = "swin";
    let ps = c.patch_size;
    let (pad_h, pad_w) = ((ps - height % ps) % ps, (ps - width % ps) % ps);
    let mut x = pixels.to_string();
    if pad_h > 0 || pad_w > 0 {
        let pads = g.ints(&[0, 0, 0, 0, 0, 0, pad_h, pad_w]);
        x = g.node("Pad", &[&x, &pads], vec![]);
    }
    let x = ops::conv2d(
        g,
        w,
        &x,
        &format!("{p}.embeddings.patch_embeddings.projection"),
        ps,
        0,
        1,
    )?;
    let (h, wd) = ((height + pad_h) / ps, (width + pad_w) / ps);
    let flat = g.ints(&[0, c.embed_dim, -1]);
    let x = g.node("Reshape", &[&x, &flat], vec![]);
    let x = g.node("Transpose", &[&x], vec![attr_ints("perm", &[0, 2, 1])]);
    let mut x = ops::layer_norm(
        g,
        w,
        &x,
        &format!("{p}.embeddings.norm"),
        TORCH_LAYER_NORM_EPS,
    )?;
    let pos_name = format!("{p}.embeddings.position_embeddings");
    if w.has(&pos_name) {
        let pos = w.get(&pos_name)?.to_kind(Kind::Float);
        let (_, n, dim) = pos.size3().expect("[1, N, D]");
        let side = (n as f64).sqrt().round() as i64;
        let pos = if h == side && wd == side {
            pos
        } else {
            pos.reshape([1, side, side, dim])
                .permute([0, 3, 1, 2])
                .upsample_bicubic2d([h, wd], false, None, None)
                .permute([0, 2, 3, 1])
                .reshape([1, h * wd, dim])
        };
        let pos = g.constant("swin_pos", &pos)?;
        x = g.node("Add", &[&x, &pos], vec![]);
    }
    Ok((x, (h, wd)))
}

/// Block `b` of stage `s` on the `h` x `wd` token map `x`: (shifted)
/// window attention, then the MLP, each with its residual.
fn block(
    g: &mut Graph,
    w: &Weights,
    c: &SwinConfig,
    x: &str,
    (s, b): (usize, i64),
    (h, wd): (i64, i64),
) -> Result<String, ExportError> {
    let (dim, heads) = (c.stage_dim(s), c.num_heads[s]);
    let l = format!("swin.encoder.layers.{s}.blocks.{b}");
    let shifted = b % 2 == 1;
    let (window, shift) = if h.min(wd) <= c.window_size {
        (h.min(wd), 0)
    } else {
        (c.window_size, if shifted { c.window_size / 2 } else { 0 })
    };
    let lay = layout(h, wd, window, shift);
    let n = window * window;
    let y = ops::layer_norm(g, w, x, &format!("{l}.layernorm_before"), c.layer_norm_eps)?;
    let y = gather_tokens(g, &y, &lay.into);
    let to_windows = g.ints(&[-1, n, dim]);
    let y = g.node("Reshape", &[&y, &to_windows], vec![]);
    let (hp, wp) = (
        h + (window - h % window) % window,
        wd + (window - wd % window) % window,
    );
    let mask = (shift > 0).then_some((hp, wp, shift));
    let bias = score_bias(
        w,
        &format!("{l}.attention.self"),
        heads,
        window,
        c.window_size,
        mask,
    )?;
    let y = window_attention(
        g,
        w,
        &y,
        &format!("{l}.attention"),
        heads,
        n,
        dim,
        &bias,
        lay.windows,
    )?;
    // [B * nW, N, C] -> [B, nW * N, C] -> the map's tokens.
    let to_tokens = g.ints(&[-1, lay.windows * n, dim]);
    let y = g.node("Reshape", &[&y, &to_tokens], vec![]);
    let y = gather_tokens(g, &y, &lay.back);
    let x = g.node("Add", &[&y, x], vec![]);
    let y = ops::layer_norm(g, w, &x, &format!("{l}.layernorm_after"), c.layer_norm_eps)?;
    let y = ops::linear(g, w, &y, &format!("{l}.intermediate.dense"))?;
    let y = ops::activation(g, &y, c.hidden_act);
    let y = ops::linear(g, w, &y, &format!("{l}.output.dense"))?;
    Ok(g.node("Add", &[&y, &x], vec![]))
}

/// Patch merging (`down`) between stages: each 2x2 group of tokens (the
/// map padded to even sides) concatenated, normed and reduced; the tokens
/// and the halved map's `(h, w)`.
fn patch_merging(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    down: &str,
    (h, wd): (i64, i64),
    dim: i64,
) -> Result<(String, (i64, i64)), ExportError> {
    let (h2, w2) = ((h + 1) / 2, (wd + 1) / 2);
    let map = pad_with_zero_token(&token_numbers(h, wd), [0, 0, 0, wd % 2, 0, h % 2]);
    let parts: Vec<Tensor> = [(0, 0), (1, 0), (0, 1), (1, 1)]
        .iter()
        .map(|&(row, col)| {
            map.slice(1, row, None, 2)
                .slice(2, col, None, 2)
                .reshape([-1, 1])
        })
        .collect();
    let index = Tensor::cat(&parts, 1);
    let y = gather_tokens(g, x, &index);
    let merged = g.ints(&[0, h2 * w2, 4 * dim]);
    let y = g.node("Reshape", &[&y, &merged], vec![]);
    let y = ops::layer_norm(g, w, &y, &format!("{down}.norm"), TORCH_LAYER_NORM_EPS)?;
    Ok((
        ops::linear(g, w, &y, &format!("{down}.reduction"))?,
        (h2, w2),
    ))
}

/// Attention within windows `x` `[B * nW, N, C]`, `bias` `[nW or 1, heads, N, N]`.
#[allow(clippy::too_many_arguments)]
fn window_attention(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    attn: &str,
    heads: i64,
    n: i64,
    dim: i64,
    bias: &Tensor,
    windows: i64,
) -> Result<String, ExportError> {
    let hd = dim / heads;
    let (q, kt, v) = ops::heads_qkv(g, w, x, &format!("{attn}.self"), n, heads, hd)?;
    let scale = g.scalar((hd as f64).powf(-0.5));
    let scores = g.node("MatMul", &[&q, &kt], vec![]);
    let scores = g.node("Mul", &[&scores, &scale], vec![]);
    let bias_c = g.constant(&format!("{attn}.score_bias"), bias)?;
    let scores = if bias.size()[0] > 1 {
        let per_window = g.ints(&[-1, windows, heads, n, n]);
        let s5 = g.node("Reshape", &[&scores, &per_window], vec![]);
        let s5 = g.node("Add", &[&s5, &bias_c], vec![]);
        let back = g.ints(&[-1, heads, n, n]);
        g.node("Reshape", &[&s5, &back], vec![])
    } else {
        g.node("Add", &[&scores, &bias_c], vec![])
    };
    let probs = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    let ctx = g.node("MatMul", &[&probs, &v], vec![]);
    let ctx = g.node("Transpose", &[&ctx], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let merge = g.ints(&[0, n, dim]);
    let ctx = g.node("Reshape", &[&ctx, &merge], vec![]);
    ops::linear(g, w, &ctx, &format!("{attn}.output.dense"))
}
