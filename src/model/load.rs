//! Strict loading of a model directory in the Hugging Face layout
//! (`config.json` + `model.safetensors`, or a sharded
//! `model.safetensors.index.json`), of bare `ViTModel` / `Dinov2Model` /
//! `ConvNextModel` / `ResNetModel` / `SwinModel` checkpoints (keys without
//! the `vit.` / `dinov2.` / ... prefix) and of timm checkpoints (through
//! [`super::timm`]).
//!
//! Batch-norm networks (ResNet) carry int64 `*.num_batches_tracked`
//! counters: those, and no other integer tensor, are read as int64 (Swin
//! checkpoints of older `transformers` also carry int64 index buffers, which
//! are skipped by name).
//!
//! Strict means: every model variable is found in the checkpoint with the
//! same shape, and every checkpoint tensor is used, except tensors the
//! classification model has no place for, which are skipped *by name* and
//! reported: the checkpoint's `classifier.*` when a new head is made for
//! other labels, and `vit.pooler.*` / `vit.embeddings.mask_token` /
//! `decoder.*` of a `ViTForMaskedImageModeling` checkpoint (parts of
//! `ViTModel` / `ViTForMaskedImageModeling`, the latter the pixel
//! reconstruction head of SimMIM-style pre-training, that classification
//! never uses), and the integer `relative_position_index` buffers that
//! Swin checkpoints saved by `transformers` 4 hold (recomputed from
//! `window_size`, as `transformers` 5 does).
//!
//! `pytorch_model.bin` (pickle) is refused: unpickling runs arbitrary code
//! and tch would need TorchScript archives anyway; convert it to
//! safetensors first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{nn, Device, Kind, Tensor};

use super::config::{ModelConfig, ViTConfig};
use super::error::{ModelError, Result};
use super::regularisation::Regularisation;
use super::vit::ViTForImageClassification;
use super::{swin, timm, Model};

/// Which layout the checkpoint had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `transformers` names with the `vit.` prefix (`ViTForImageClassification`).
    Transformers,
    /// `transformers` `ViTModel` saved alone: `embeddings.*`, `encoder.*`, ...
    TransformersBare,
    /// timm `vit_*` state dict names.
    Timm,
}

/// What loading did beyond copying tensors one to one.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub format: CheckpointFormat,
    /// Checkpoint tensors deliberately not loaded (HF names).
    pub skipped: Vec<String>,
    /// Whether the head was newly initialised (labels differ from the checkpoint's).
    pub new_head: bool,
    /// Storage dtypes other than F32 converted to fp32 (e.g. `"F16"`).
    pub converted_from: Vec<String>,
}

/// Loads the model in `dir` onto `device`.
///
/// With `labels`, the head has `labels.len()` outputs: the checkpoint's head
/// is reused when its labels are exactly these (as `from_pretrained` does),
/// otherwise a new one is initialised like `transformers` (normal(0,
/// initializer_range) weight, zero bias). Without, the checkpoint's own
/// `id2label` and head are used; a checkpoint without a head then is an error.
pub fn load_pretrained(dir: &Path, device: Device, labels: Option<&[String]>) -> Result<Model> {
    load_pretrained_reporting(dir, device, labels).map(|(m, _)| m)
}

/// [`load_pretrained`], also returning what was skipped or converted.
pub fn load_pretrained_reporting(
    dir: &Path,
    device: Device,
    labels: Option<&[String]>,
) -> Result<(Model, LoadReport)> {
    load_adjusted(dir, device, labels, &Regularisation::default())
}

/// [`load_pretrained`] with a job's stochastic depth and dropout written
/// into the configuration before the network is built (refused, naming the
/// field, for a family without them).
pub fn load_pretrained_regularised(
    dir: &Path,
    device: Device,
    labels: Option<&[String]>,
    regularisation: &Regularisation,
) -> Result<Model> {
    load_adjusted(dir, device, labels, regularisation).map(|(m, _)| m)
}

fn load_adjusted(
    dir: &Path,
    device: Device,
    labels: Option<&[String]>,
    regularisation: &Regularisation,
) -> Result<(Model, LoadReport)> {
    if !dir.is_dir() {
        return Err(ModelError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a model directory"),
        ));
    }
    if super::lora::is_lora_dir(dir) {
        return load_lora(dir, device);
    }
    let (tensors, converted_from) = read_checkpoint(dir)?;
    let config_path = dir.join("config.json");
    let read = interpret(&config_path, tensors)?;
    let (mut config, tensors) = (read.config, read.tensors);
    let (labels, new_head) = head_labels(dir, &config, &tensors, labels)?;
    config.set_labels(labels);
    regularisation
        .apply(&mut config)
        .map_err(|detail| ModelError::InvalidConfig {
            path: config_path.clone(),
            detail,
        })?;

    let Model { vs, net, .. } =
        Model::from_config(config.clone(), config.labels().to_vec(), device)?;
    let skipped = copy_checkpoint(&vs, &config, &tensors, new_head)?;
    for name in &skipped {
        tracing::info!(tensor = %name, dir = %dir.display(), "checkpoint tensor not loaded");
    }

    let preprocessor_json = match read_optional_json(&dir.join("preprocessor_config.json"))? {
        Some(v) => v,
        None => read
            .timm_preprocessor
            .unwrap_or_else(|| config.family().default_preprocessor()),
    };
    let report = LoadReport {
        format: read.format,
        skipped,
        new_head,
        converted_from,
    };
    let model = Model {
        vs,
        net,
        config,
        preprocessor_json,
        source_dir: dir.to_path_buf(),
    };
    Ok((model, report))
}

/// A LoRA model directory (`model/lora`): its base, resolved as any model
/// source, with the adapter merged into the weights, so serving, `vitrine
/// predict` and export see a plain model.
fn load_lora(dir: &Path, device: Device) -> Result<(Model, LoadReport)> {
    let resolve =
        |name: &str| super::hub::resolve_model_source(name, &super::hub::HubOptions::from_env());
    let (model, _) = super::lora::load_lora_dir(dir, device, true, resolve)?;
    let report = LoadReport {
        format: CheckpointFormat::Transformers,
        skipped: vec![],
        new_head: false,
        converted_from: vec![],
    };
    Ok((model, report))
}

/// A checkpoint read as one of the known layouts, its tensors renamed to
/// `transformers`' names.
struct Interpreted {
    format: CheckpointFormat,
    config: ModelConfig,
    tensors: BTreeMap<String, Tensor>,
    /// What a timm checkpoint's own configuration says about preprocessing.
    timm_preprocessor: Option<serde_json::Value>,
}

/// Tells a timm checkpoint from a `transformers` one (bare or not) and
/// brings its configuration and names to `transformers`' form.
fn interpret(config_path: &Path, tensors: BTreeMap<String, Tensor>) -> Result<Interpreted> {
    let raw_config = match read_optional_json(config_path)? {
        Some(v) => v,
        // A bare timm state dict: its shapes are the configuration.
        None if timm::is_timm(&serde_json::Value::Null, &tensors) => serde_json::json!({}),
        None => read_json(config_path)?,
    };
    if timm::is_timm(&raw_config, &tensors) {
        let (vit, tensors, pre) = timm::convert(&raw_config, tensors, config_path)?;
        return Ok(Interpreted {
            format: CheckpointFormat::Timm,
            config: ModelConfig::Vit(vit),
            tensors,
            timm_preprocessor: Some(pre),
        });
    }
    let config = ModelConfig::from_json(raw_config, config_path)?;
    let prefix = format!("{}.", config.backbone_prefix());
    let bare = !tensors.keys().any(|k| k.starts_with(&prefix))
        && tensors
            .keys()
            // ResNet's stem is `embedder`, the others' `embeddings`.
            .any(|k| k.starts_with("embeddings.") || k.starts_with("embedder."));
    if !bare {
        return Ok(Interpreted {
            format: CheckpointFormat::Transformers,
            config,
            tensors,
            timm_preprocessor: None,
        });
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| {
            if k.starts_with("classifier.") {
                (k, t)
            } else {
                (format!("{prefix}{k}"), t)
            }
        })
        .collect();
    Ok(Interpreted {
        format: CheckpointFormat::TransformersBare,
        config,
        tensors,
        timm_preprocessor: None,
    })
}

/// The labels the head will have, and whether it is a new head: the
/// checkpoint's head is kept only for exactly its own labels.
fn head_labels(
    dir: &Path,
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    labels: Option<&[String]>,
) -> Result<(Vec<String>, bool)> {
    let head_weight = config.head_weight_name();
    let has_head = tensors.contains_key(head_weight);
    let checkpoint_labels = config.labels().to_vec();
    match labels {
        Some(labels) => {
            validate_labels(labels)?;
            let same = has_head && labels == checkpoint_labels.as_slice();
            Ok((labels.to_vec(), !same))
        }
        None if has_head => {
            let rows = tensors[head_weight].size()[0] as usize;
            let labels = if checkpoint_labels.is_empty() {
                (0..rows).map(|i| format!("LABEL_{i}")).collect()
            } else {
                checkpoint_labels
            };
            Ok((labels, false))
        }
        None => Err(ModelError::UnsupportedCheckpoint(format!(
            "{}: the checkpoint has no classification head (`classifier.*`); \
             give the labels to train a new one",
            dir.display()
        ))),
    }
}

/// Copies the checkpoint into the new network strictly ([`copy_strict`]),
/// skipping by name what classification has no place for; returns what was
/// skipped.
fn copy_checkpoint(
    vs: &nn::VarStore,
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    new_head: bool,
) -> Result<Vec<String>> {
    let prefix = config.backbone_prefix();
    let mask_token = format!("{prefix}.embeddings.mask_token");
    // E.g. `decoder.*` of a ViT saved as `ViTForMaskedImageModeling`
    // (elsewhere `decoder.*` stays unexpected).
    let family = config.family();
    let skippable = |name: &str| {
        (new_head && name.starts_with("classifier."))
            || name.starts_with(&format!("{prefix}.pooler."))
            || name == mask_token
            || family.is_foreign_head(name)
            || swin::is_saved_index_buffer(name)
    };
    // A DINOv2 mask token (pre-training only) absent from the checkpoint
    // keeps its zero initialisation, as in `transformers`.
    let keep_init = |name: &str| {
        (new_head && name.starts_with("classifier."))
            || (name == mask_token && !tensors.contains_key(name))
    };
    copy_strict(vs, tensors, keep_init, skippable)
}

/// A randomly initialised ViT classifier in a new `VarStore` (no checkpoint).
pub fn build_vit(
    vs: &nn::VarStore,
    config: &ViTConfig,
    num_labels: usize,
) -> ViTForImageClassification {
    ViTForImageClassification::new(&vs.root(), config, num_labels as i64)
}

fn validate_labels(labels: &[String]) -> Result<()> {
    if labels.is_empty() {
        return Err(ModelError::InvalidLabels("no labels".into()));
    }
    let mut seen = BTreeSet::new();
    for l in labels {
        if l.trim().is_empty() {
            return Err(ModelError::InvalidLabels("an empty label".into()));
        }
        if !seen.insert(l.as_str()) {
            return Err(ModelError::InvalidLabels(format!(
                "label `{l}` appears twice"
            )));
        }
    }
    Ok(())
}

/// Copies checkpoint tensors into the variables of `vs`.
///
/// `keep_init(name)`: a variable that keeps its initialisation (a new head).
/// `skippable(name)`: a checkpoint tensor that may go unused.
/// Returns the skipped checkpoint names; errors list every missing or
/// unexpected name, or the first shape mismatch.
fn copy_strict(
    vs: &nn::VarStore,
    tensors: &BTreeMap<String, Tensor>,
    keep_init: impl Fn(&str) -> bool,
    skippable: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (name, mut var) in variables {
        if keep_init(&name) {
            continue;
        }
        let Some(src) = tensors.get(&name) else {
            missing.push(name);
            continue;
        };
        if src.size() != var.size() {
            return Err(ModelError::ShapeMismatch {
                name,
                expected: var.size(),
                found: src.size(),
            });
        }
        tch::no_grad(|| var.f_copy_(src))?;
        used.insert(name);
    }
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors(missing));
    }
    let (skipped, unexpected): (Vec<String>, Vec<String>) = tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .partition(|k| skippable(k));
    if !unexpected.is_empty() {
        return Err(ModelError::UnexpectedTensors(unexpected));
    }
    Ok(skipped)
}

/// Every tensor of the checkpoint in `dir`, as fp32 on the CPU (batch-norm
/// `num_batches_tracked` counters as int64), and the other floating-point
/// storage dtypes met.
pub fn read_checkpoint(dir: &Path) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let files = weight_files(dir)?;
    let mut tensors = BTreeMap::new();
    let mut converted = BTreeSet::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
        let invalid = |detail: String| ModelError::InvalidCheckpoint {
            path: file.clone(),
            detail,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        for (name, view) in st.tensors() {
            if view.dtype() == Dtype::I64 && swin::is_saved_index_buffer(&name) {
                // Kept as is, to be skipped by name (see `skippable`).
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Int64)?;
                tensors.insert(name, t);
                continue;
            }
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F64 => Kind::Double,
                Dtype::I64 if is_batch_counter(&name) => Kind::Int64,
                other => {
                    return Err(invalid(format!(
                        "tensor `{name}` has dtype {other:?}; only floating point weights are supported"
                    )))
                }
            };
            if kind != Kind::Float && kind != Kind::Int64 {
                converted.insert(format!("{:?}", view.dtype()));
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            let t = if kind == Kind::Int64 {
                t
            } else {
                t.to_kind(Kind::Float)
            };
            if tensors.insert(name.clone(), t).is_some() {
                return Err(invalid(format!("tensor `{name}` appears in two shards")));
            }
        }
    }
    Ok((tensors, converted.into_iter().collect()))
}

/// Whether `name` is a batch norm's `num_batches_tracked`, the one integer
/// tensor a checkpoint may hold.
pub(crate) fn is_batch_counter(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// The safetensors file(s) of the checkpoint in `dir`: `model.safetensors`,
/// or the shards of `model.safetensors.index.json`. A directory with only
/// `pytorch_model.bin` is refused with the command that converts it.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    Ok(if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_files(dir, &index)?
    } else if dir.join("pytorch_model.bin").is_file() {
        return Err(ModelError::UnsupportedCheckpoint(format!(
            "{}: only `pytorch_model.bin` was found; vitrine reads safetensors only \
             (pickle files can run code). Convert it, e.g. \
             `python -c \"import torch, safetensors.torch as s; \
             s.save_file(torch.load('pytorch_model.bin'), 'model.safetensors', {{'format': 'pt'}})\"`",
            dir.display()
        )));
    } else {
        return Err(ModelError::UnsupportedCheckpoint(format!(
            "{}: no `model.safetensors` or `model.safetensors.index.json`",
            dir.display()
        )));
    })
}

/// The shard files named by a `model.safetensors.index.json`, each once.
fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let value = read_json(index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::InvalidConfig {
            path: index.to_path_buf(),
            detail: "no `weight_map` object".into(),
        })?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::InvalidConfig {
            path: index.to_path_buf(),
            detail: format!("shard of `{tensor}` is not a string"),
        })?;
        // Shards are siblings of the index: refuse anything else.
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::InvalidConfig {
                path: index.to_path_buf(),
                detail: format!("shard name `{file}` is not a plain file name"),
            });
        }
        names.insert(file.to_string());
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    read_optional_json(path)?.ok_or_else(|| {
        ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        )
    })
}

pub(crate) fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// The processors of `microsoft/swin-*` (`ViTImageProcessor`: resize to
/// the model's size), `facebook/convnext-*-224` and `microsoft/resnet-*`
/// (`ConvNextImageProcessor`: shortest edge to size / `crop_pct`, centre
/// crop) on the Hub, at the model's size: bicubic, rescale by 1/255,
/// ImageNet mean and std.
pub(crate) fn imagenet_preprocessor(
    class: &str,
    size: serde_json::Value,
    crop_pct: Option<f64>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "image_processor_type": class,
        "do_resize": true,
        "size": size,
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225]
    });
    if let Some(pct) = crop_pct {
        v["crop_pct"] = pct.into();
    }
    v
}

/// `BitImageProcessor` as configured for every `facebook/dinov2-*`
/// checkpoint: resize the shortest edge to 256 (bicubic), centre-crop 224,
/// rescale by 1/255, ImageNet mean and std. The position embeddings are
/// interpolated from the training grid (518 px) to the 224 px input.
/// A model trained at another size than Meta's 518 (a small random one)
/// is fed that size instead, resized in the same 256:224 proportion.
pub fn dinov2_preprocessor(image_size: i64) -> serde_json::Value {
    let (resize, crop) = if image_size == 518 {
        (256, 224)
    } else {
        (
            (image_size as f64 * 256.0 / 224.0).round() as i64,
            image_size,
        )
    };
    serde_json::json!({
        "image_processor_type": "BitImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": resize},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": true
    })
}

/// The `preprocessor_config.json` `ViTImageProcessor` assumes when a
/// checkpoint has none: resize to the model's size (bilinear), rescale by
/// 1/255, normalise with mean = std = 0.5.
pub fn default_preprocessor(image_size: i64) -> serde_json::Value {
    serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5]
    })
}
