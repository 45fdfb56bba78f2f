//! timm `vit_*` checkpoints: an explicit key map to the `transformers`
//! names, and a [`ViTConfig`] built from the tensor shapes and timm's
//! `config.json` (`architecture`, `model_args`, `pretrained_cfg`).
//!
//! | timm                         | transformers                                              |
//! |------------------------------|-----------------------------------------------------------|
//! | `cls_token`                  | `vit.embeddings.cls_token`                                |
//! | `pos_embed`                  | `vit.embeddings.position_embeddings`                      |
//! | `patch_embed.proj.*`         | `vit.embeddings.patch_embeddings.projection.*`            |
//! | `blocks.{i}.norm1.*`         | `vit.encoder.layer.{i}.layernorm_before.*`                |
//! | `blocks.{i}.attn.qkv.*`      | `...attention.attention.{query,key,value}.*` (split in 3) |
//! | `blocks.{i}.attn.proj.*`     | `...attention.output.dense.*`                             |
//! | `blocks.{i}.norm2.*`         | `vit.encoder.layer.{i}.layernorm_after.*`                 |
//! | `blocks.{i}.mlp.fc1.*`       | `vit.encoder.layer.{i}.intermediate.dense.*`              |
//! | `blocks.{i}.mlp.fc2.*`       | `vit.encoder.layer.{i}.output.dense.*`                    |
//! | `norm.*`                     | `vit.layernorm.*`                                         |
//! | `head.*`                     | `classifier.*`                                            |
//!
//! Keys outside this map (layer scale `ls1.gamma`, `fc_norm`, register
//! tokens, ...) keep their timm name and so fail strict loading by name:
//! those variants compute something else.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tch::Tensor;

use super::config::{Activation, ViTConfig};
use super::error::{ModelError, Result};
use super::fields::HfFields;

/// Whether a checkpoint is timm's: a timm `config.json` (`architecture`, no
/// `model_type`) or timm tensor names.
pub fn is_timm(config: &Value, tensors: &BTreeMap<String, Tensor>) -> bool {
    let timm_config = config.get("architecture").is_some() && config.get("model_type").is_none();
    timm_config
        || (config.get("model_type").is_none()
            && (tensors.contains_key("patch_embed.proj.weight")
                || tensors.contains_key("blocks.0.attn.qkv.weight")))
}

/// The HF name(s) of a timm tensor; `None` when outside the map.
fn map_name(name: &str) -> Option<String> {
    let direct = match name {
        "cls_token" => Some("vit.embeddings.cls_token"),
        "pos_embed" => Some("vit.embeddings.position_embeddings"),
        "patch_embed.proj.weight" => Some("vit.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias" => Some("vit.embeddings.patch_embeddings.projection.bias"),
        "norm.weight" => Some("vit.layernorm.weight"),
        "norm.bias" => Some("vit.layernorm.bias"),
        "head.weight" => Some("classifier.weight"),
        "head.bias" => Some("classifier.bias"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = name.strip_prefix("blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let hf = match module {
        "norm1" => "layernorm_before",
        "norm2" => "layernorm_after",
        "attn.proj" => "attention.output.dense",
        "mlp.fc1" => "intermediate.dense",
        "mlp.fc2" => "output.dense",
        _ => return None,
    };
    Some(format!("vit.encoder.layer.{i}.{hf}.{param}"))
}

/// Renames a timm state dict to HF names and derives the ViT configuration.
/// Returns the config, the renamed tensors and a `preprocessor_config.json`
/// derived from timm's `pretrained_cfg`.
pub fn convert(
    config: &Value,
    tensors: BTreeMap<String, Tensor>,
    config_path: &Path,
) -> Result<(ViTConfig, BTreeMap<String, Tensor>, Value)> {
    let arch = supported_architecture(config)?;
    let vit = vit_config(config, arch, &tensors, config_path)?;
    let out = rename(tensors);
    let pre = preprocessor(config, vit.image_size);
    Ok((vit, out, pre))
}

/// timm's `model_args` (`Null` when absent).
fn model_args(config: &Value) -> &Value {
    config.get("model_args").unwrap_or(&Value::Null)
}

/// The timm architecture (`vit` when unnamed), refused unless it is a ViT
/// whose head reads the CLS token.
fn supported_architecture(config: &Value) -> Result<&str> {
    let arch = config
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("vit");
    if !arch.starts_with("vit_") && arch != "vit" {
        return Err(ModelError::UnsupportedCheckpoint(format!(
            "timm architecture `{arch}` is not supported (only `vit_*`)"
        )));
    }
    if let Some(pool) = config
        .get("global_pool")
        .or_else(|| model_args(config).get("global_pool"))
        .and_then(Value::as_str)
    {
        if pool != "token" {
            return Err(ModelError::UnsupportedCheckpoint(format!(
                "timm `{arch}` with global_pool `{pool}` is not supported (only `token`: the CLS token feeds the head)"
            )));
        }
    }
    Ok(arch)
}

/// The ViT configuration a timm checkpoint's tensor shapes and config say.
fn vit_config(
    config: &Value,
    arch: &str,
    tensors: &BTreeMap<String, Tensor>,
    config_path: &Path,
) -> Result<ViTConfig> {
    let invalid = |detail: String| ModelError::InvalidConfig {
        path: config_path.to_path_buf(),
        detail: format!("timm checkpoint: {detail}"),
    };
    let shape = |name: &str| -> Result<Vec<i64>> {
        tensors
            .get(name)
            .map(Tensor::size)
            .ok_or_else(|| ModelError::MissingTensors(vec![name.to_string()]))
    };
    let cls = shape("cls_token")?;
    let pos = shape("pos_embed")?;
    let proj = shape("patch_embed.proj.weight")?;
    let fc1 = shape("blocks.0.mlp.fc1.weight")?;
    let hidden = cls[2];
    let patch = proj[2];
    if proj[2] != proj[3] {
        return Err(invalid(format!("non-square patches {:?}", &proj[2..])));
    }
    let num_patches = pos[1] - 1;
    let side = (num_patches as f64).sqrt().round() as i64;
    if side * side != num_patches {
        return Err(ModelError::UnsupportedCheckpoint(format!(
            "timm `{arch}`: pos_embed of {} positions is not a square grid plus a class token \
             (no_embed_class / non-square inputs are not supported)",
            pos[1]
        )));
    }
    let heads = model_args(config)
        .get("num_heads")
        .and_then(Value::as_i64)
        .or_else(|| heads_for_arch(arch))
        // timm's standard widths use 64-wide heads.
        .or_else(|| (hidden % 64 == 0).then_some(hidden / 64))
        .ok_or_else(|| {
            invalid(format!(
                "cannot tell the number of attention heads of a {hidden}-wide `{arch}`: \
                 give `model_args.num_heads` in config.json"
            ))
        })?;
    let labels = label_names(config).unwrap_or_else(|| match tensors.get("head.weight") {
        Some(w) => (0..w.size()[0]).map(|i| format!("LABEL_{i}")).collect(),
        None => Vec::new(),
    });
    let vit = ViTConfig {
        hidden_size: hidden,
        num_hidden_layers: depth(tensors),
        num_attention_heads: heads,
        intermediate_size: fc1[0],
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-6,
        image_size: side * patch,
        patch_size: patch,
        num_channels: proj[1],
        qkv_bias: tensors.contains_key("blocks.0.attn.qkv.bias"),
        hf: HfFields {
            id2label: labels,
            ..HfFields::default()
        },
        ..ViTConfig::default()
    };
    vit.validate().map_err(invalid)?;
    Ok(vit)
}

/// The number of blocks: one past the highest `blocks.{i}`.
fn depth(tensors: &BTreeMap<String, Tensor>) -> i64 {
    tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// The tensors under HF names ([`map_name`]), each fused `qkv` split in
/// three; names outside the map are kept (and fail strict loading).
fn rename(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        if let Some(rest) = name.strip_prefix("blocks.") {
            if let Some((i, param)) = rest.split_once(".attn.qkv.") {
                let parts = t.chunk(3, 0);
                for (part, which) in parts.into_iter().zip(["query", "key", "value"]) {
                    out.insert(
                        format!("vit.encoder.layer.{i}.attention.attention.{which}.{param}"),
                        part.contiguous(),
                    );
                }
                continue;
            }
        }
        let key = map_name(&name).unwrap_or(name);
        out.insert(key, t);
    }
    out
}

/// Heads of the standard timm sizes, from the architecture name.
fn heads_for_arch(arch: &str) -> Option<i64> {
    let size = arch.strip_prefix("vit_")?.split('_').next()?;
    Some(match size {
        "tiny" => 3,
        "small" => 6,
        "base" => 12,
        "large" | "huge" | "giant" | "gigantic" => 16,
        _ => return None,
    })
}

fn label_names(config: &Value) -> Option<Vec<String>> {
    let names = config
        .get("label_names")
        .or_else(|| config.get("pretrained_cfg")?.get("label_names"))?
        .as_array()?;
    names
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// A `ViTImageProcessor` config from timm's `pretrained_cfg` (input size,
/// mean, std, interpolation). timm's eval transform also centre-crops by
/// `crop_pct`, which `ViTImageProcessor` cannot express; it is kept as
/// `crop_pct` for whoever preprocesses.
fn preprocessor(config: &Value, image_size: i64) -> Value {
    let cfg = config.get("pretrained_cfg").cloned().unwrap_or(Value::Null);
    let size = cfg
        .get("input_size")
        .and_then(Value::as_array)
        .and_then(|s| Some((s.get(1)?.as_i64()?, s.get(2)?.as_i64()?)))
        .unwrap_or((image_size, image_size));
    let triple = |key: &str, default: f64| {
        cfg.get(key)
            .cloned()
            .unwrap_or_else(|| serde_json::json!([default, default, default]))
    };
    let resample = match cfg.get("interpolation").and_then(Value::as_str) {
        Some("bilinear") => 2,
        Some("nearest") => 0,
        _ => 3,
    };
    let mut v = serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": size.0, "width": size.1},
        "resample": resample,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": triple("mean", 0.5),
        "image_std": triple("std", 0.5),
    });
    if let Some(crop) = cfg.get("crop_pct") {
        v["crop_pct"] = crop.clone();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_block_names() {
        assert_eq!(
            map_name("blocks.7.mlp.fc2.bias").unwrap(),
            "vit.encoder.layer.7.output.dense.bias"
        );
        assert_eq!(
            map_name("blocks.0.norm1.weight").unwrap(),
            "vit.encoder.layer.0.layernorm_before.weight"
        );
        assert_eq!(map_name("head.weight").unwrap(), "classifier.weight");
        assert_eq!(map_name("blocks.0.ls1.gamma"), None);
        assert_eq!(map_name("fc_norm.weight"), None);
    }

    #[test]
    fn heads_from_arch_names() {
        assert_eq!(heads_for_arch("vit_tiny_patch16_224"), Some(3));
        assert_eq!(heads_for_arch("vit_base_patch32_clip_224"), Some(12));
        assert_eq!(heads_for_arch("vit_medium_patch16"), None);
    }
}
