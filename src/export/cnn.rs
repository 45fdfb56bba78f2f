//! ConvNeXt and ResNet as ONNX graphs, op for op as `model::convnext` and
//! `model::resnet` run in eval mode: batch norm is `BatchNormalization`
//! with the running statistics (torch's eps 1e-5), stochastic depth the
//! identity.

use super::error::ExportError;
use super::graph::{attr_float, attr_int, attr_ints, Graph};
use super::ops::{self, Weights};
use crate::model::{Activation, ConvNextConfig, ResNetConfig, ResNetLayerType};

/// ConvNeXt's inner layer norms (blocks, stem, downsampling): as `transformers`.
const CONVNEXT_INNER_EPS: f64 = 1e-6;
/// `nn.BatchNorm2d`'s default, which `model::batch_norm` uses.
const BATCH_NORM_EPS: f64 = 1e-5;

fn to_nhwc(g: &mut Graph, x: &str) -> String {
    g.node("Transpose", &[x], vec![attr_ints("perm", &[0, 2, 3, 1])])
}

fn to_nchw(g: &mut Graph, x: &str) -> String {
    g.node("Transpose", &[x], vec![attr_ints("perm", &[0, 3, 1, 2])])
}

/// ConvNeXt's channels-first layer norm: over the channels of NCHW.
fn channels_first_norm(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    let h = to_nhwc(g, x);
    let h = ops::layer_norm(g, w, &h, prefix, CONVNEXT_INNER_EPS)?;
    Ok(to_nchw(g, &h))
}

/// `ConvNextForImageClassification`: logits of the final-layernorm mean of
/// the last feature map.
pub fn convnext(
    g: &mut Graph,
    w: &Weights,
    c: &ConvNextConfig,
    pixels: &str,
) -> Result<String, ExportError> {
    let p = "convnext";
    let x = ops::conv2d(
        g,
        w,
        pixels,
        &format!("{p}.embeddings.patch_embeddings"),
        c.patch_size,
        0,
        1,
    )?;
    let mut x = channels_first_norm(g, w, &x, &format!("{p}.embeddings.layernorm"))?;
    for (s, &depth) in c.depths.iter().enumerate() {
        let stage = format!("{p}.encoder.stages.{s}");
        let down = format!("{stage}.downsampling_layer");
        if w.has(&format!("{down}.1.weight")) {
            let h = channels_first_norm(g, w, &x, &format!("{down}.0"))?;
            x = ops::conv2d(g, w, &h, &format!("{down}.1"), 2, 0, 1)?;
        }
        let dim = c.hidden_sizes[s];
        for b in 0..depth {
            let l = format!("{stage}.layers.{b}");
            let h = ops::conv2d(g, w, &x, &format!("{l}.dwconv"), 1, 3, dim)?;
            let h = to_nhwc(g, &h);
            let h = ops::layer_norm(g, w, &h, &format!("{l}.layernorm"), CONVNEXT_INNER_EPS)?;
            let h = ops::linear(g, w, &h, &format!("{l}.pwconv1"))?;
            let h = ops::activation(g, &h, c.hidden_act);
            let mut h = ops::linear(g, w, &h, &format!("{l}.pwconv2"))?;
            let gamma = format!("{l}.layer_scale_parameter");
            if w.has(&gamma) {
                let gm = g.weight(&gamma, w.get(&gamma)?)?;
                h = g.node("Mul", &[&h, &gm], vec![]);
            }
            let h = to_nchw(g, &h);
            x = g.node("Add", &[&x, &h], vec![]);
        }
    }
    let pooled = ops::reduce_mean(g, &x, &[2, 3], false);
    let pooled = ops::layer_norm(g, w, &pooled, &format!("{p}.layernorm"), c.layer_norm_eps)?;
    ops::linear(g, w, &pooled, "classifier")
}

/// Convolution (no bias), batch norm in eval, optional activation
/// (`ResNetConvLayer`).
fn conv_bn(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    prefix: &str,
    stride: i64,
    act: Option<Activation>,
) -> Result<String, ExportError> {
    let k = w.get(&format!("{prefix}.convolution.weight"))?.size()[2];
    let h = ops::conv2d(g, w, x, &format!("{prefix}.convolution"), stride, k / 2, 1)?;
    let bn = format!("{prefix}.normalization");
    let mut inputs = Vec::new();
    for part in ["weight", "bias", "running_mean", "running_var"] {
        let name = format!("{bn}.{part}");
        inputs.push(g.weight(&name, w.get(&name)?)?);
    }
    let h = g.node(
        "BatchNormalization",
        &[&h, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
        vec![attr_float("epsilon", BATCH_NORM_EPS as f32)],
    );
    Ok(match act {
        Some(a) => ops::activation(g, &h, a),
        None => h,
    })
}

/// `ResNetForImageClassification`: logits of the average-pooled last map.
pub fn resnet(
    g: &mut Graph,
    w: &Weights,
    c: &ResNetConfig,
    pixels: &str,
) -> Result<String, ExportError> {
    let p = "resnet";
    let x = conv_bn(
        g,
        w,
        pixels,
        &format!("{p}.embedder.embedder"),
        2,
        Some(c.hidden_act),
    )?;
    let mut x = g.node(
        "MaxPool",
        &[&x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let relu = Some(Activation::Relu);
    for (s, &depth) in c.depths.iter().enumerate() {
        let first_stride = if s > 0 || c.downsample_in_first_stage {
            2
        } else {
            1
        };
        for b in 0..depth {
            let l = format!("{p}.encoder.stages.{s}.layers.{b}");
            let stride = if b == 0 { first_stride } else { 1 };
            let mut h = x.clone();
            let convs: Vec<(i64, Option<Activation>)> = match c.layer_type {
                ResNetLayerType::Basic => vec![(stride, relu), (1, None)],
                ResNetLayerType::Bottleneck => {
                    let (s1, s2) = if c.downsample_in_bottleneck {
                        (stride, 1)
                    } else {
                        (1, stride)
                    };
                    vec![(s1, relu), (s2, relu), (1, None)]
                }
            };
            for (i, (st, act)) in convs.into_iter().enumerate() {
                h = conv_bn(g, w, &h, &format!("{l}.layer.{i}"), st, act)?;
            }
            let shortcut = format!("{l}.shortcut");
            let residual = if w.has(&format!("{shortcut}.convolution.weight")) {
                conv_bn(g, w, &x, &shortcut, stride, None)?
            } else {
                x.clone()
            };
            let sum = g.node("Add", &[&h, &residual], vec![]);
            x = ops::activation(g, &sum, c.hidden_act);
        }
    }
    let pooled = g.node("GlobalAveragePool", &[&x], vec![]);
    let pooled = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
    ops::linear(g, w, &pooled, "classifier.1")
}
