//! What a fine-tuning job checks of its base model when it is submitted,
//! so that a checkpoint vitrine cannot train is refused then, naming the
//! problem, rather than failing the job later: the weights are safetensors
//! (not only `pytorch_model.bin`) of floating-point tensors (and int64
//! batch-norm counters), the
//! configuration is supported (HF `model_type`, or a timm checkpoint), the
//! model takes RGB images, and a requested `image_size` fits its patches.
//!
//! Only `config.json` and the safetensors headers are read, never the
//! tensor data, so a large checkpoint is checked in milliseconds.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};
use super::{load, timm, ModelConfig};

/// What a job needs to know of its base model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModelInfo {
    /// `vit`, `dinov2`, `dinov2_with_registers`, `swin`, `convnext`, `resnet`, or `timm`.
    pub model_type: String,
    pub patch_size: i64,
    pub num_channels: i64,
    /// What `partial` mode counts: encoder blocks (ViT, DINOv2, timm) or
    /// stages (Swin, ConvNeXt, ResNet).
    pub num_layers: usize,
    /// What one of [`Self::num_layers`] is called ([`super::FamilyConfig::depth_unit`]).
    pub layer_unit: &'static str,
}

impl BaseModelInfo {
    /// What one of [`Self::num_layers`] is called for this architecture.
    pub fn layer_unit(&self) -> &'static str {
        self.layer_unit
    }
}

/// Checks the model directory `dir` for a job that trains at `image_size`
/// (the model's own when `None`).
pub fn check_base_model(dir: &Path, image_size: Option<u32>) -> Result<BaseModelInfo> {
    let tensors = tensor_headers(dir)?;
    let config_path = dir.join("config.json");
    let raw = load::read_optional_json(&config_path)?;
    let timm_names = tensors
        .iter()
        .any(|(n, _)| n == "patch_embed.proj.weight" || n == "blocks.0.attn.qkv.weight");
    let is_timm = match &raw {
        Some(v) => {
            timm::is_timm(v, &Default::default()) || (v.get("model_type").is_none() && timm_names)
        }
        None => timm_names,
    };
    let info = if is_timm {
        // A timm state dict: its patch projection tells channels and patch size.
        let (_, shape) = tensors
            .iter()
            .find(|(n, _)| n == "patch_embed.proj.weight")
            .ok_or_else(|| {
                ModelError::UnsupportedCheckpoint(format!(
                    "{}: a timm checkpoint without `patch_embed.proj.weight`",
                    dir.display()
                ))
            })?;
        if shape.len() != 4 {
            return Err(ModelError::UnsupportedCheckpoint(format!(
                "{}: `patch_embed.proj.weight` has shape {shape:?}, not a 2-D convolution",
                dir.display()
            )));
        }
        let blocks: std::collections::BTreeSet<&str> = tensors
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("blocks.")?.split('.').next())
            .collect();
        BaseModelInfo {
            model_type: "timm".into(),
            num_channels: shape[1],
            patch_size: shape[2],
            num_layers: blocks.len(),
            layer_unit: "encoder blocks",
        }
    } else {
        let raw = raw.ok_or_else(|| {
            ModelError::io(
                &config_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            )
        })?;
        hf_info(raw, &config_path, image_size)?
    };
    check_fit(&info, image_size)?;
    Ok(info)
}

/// The checks [`check_base_model`] can make from `config.json` alone (a Hub
/// model whose weights are not downloaded yet). A timm config says too
/// little to check without the weights: `None`.
pub fn check_config(config_path: &Path, image_size: Option<u32>) -> Result<Option<BaseModelInfo>> {
    let raw = load::read_optional_json(config_path)?.ok_or_else(|| {
        ModelError::io(
            config_path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        )
    })?;
    if timm::is_timm(&raw, &Default::default()) {
        return Ok(None);
    }
    let info = hf_info(raw, config_path, image_size)?;
    check_fit(&info, image_size)?;
    Ok(Some(info))
}

fn hf_info(
    raw: serde_json::Value,
    config_path: &Path,
    image_size: Option<u32>,
) -> Result<BaseModelInfo> {
    let config = ModelConfig::from_json(raw, config_path)?;
    let family = config.family();
    if let Some(size) = image_size.map(i64::from) {
        if family.min_input_size() != family.patch_size() {
            // A downsampling (ConvNeXt's) that needs more than one patch per side.
            super::resize::check_image_size(&config, size)?;
        }
        // E.g. Swin: every stage must hold a whole attention window.
        family
            .check_input_size(size, size)
            .map_err(ModelError::InvalidInput)?;
    }
    Ok(BaseModelInfo {
        model_type: family.model_type().into(),
        patch_size: family.patch_size(),
        num_channels: family.num_channels(),
        num_layers: family.depth(),
        layer_unit: family.depth_unit(),
    })
}

/// RGB input, and `image_size` on the patch grid.
fn check_fit(info: &BaseModelInfo, image_size: Option<u32>) -> Result<()> {
    if info.num_channels != 3 {
        return Err(ModelError::UnsupportedCheckpoint(format!(
            "the model takes {} input channel(s) (`num_channels`); vitrine trains \
             on RGB images, so only 3-channel models are supported",
            info.num_channels
        )));
    }
    match image_size {
        Some(size) => super::resize::check_patch_grid(i64::from(size), info.patch_size),
        None => Ok(()),
    }
}

/// Name and shape of every tensor of the checkpoint, from the safetensors
/// headers; refuses dtypes other than floating point, as loading would
/// (int64 only for batch norms' `*.num_batches_tracked`).
fn tensor_headers(dir: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    let mut out = Vec::new();
    for file in load::weight_files(dir)? {
        let invalid = |detail: String| ModelError::InvalidCheckpoint {
            path: file.clone(),
            detail,
        };
        let header = read_header(&file)?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| invalid(format!("unreadable header: {e}")))?;
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap_or("?");
            let allowed_int = dtype == "I64"
                && (load::is_batch_counter(&name) || super::swin::is_saved_index_buffer(&name));
            if !matches!(dtype, "F32" | "F16" | "BF16" | "F64") && !allowed_int {
                return Err(invalid(format!(
                    "tensor `{name}` has dtype {dtype}; only floating point weights are supported"
                )));
            }
            let shape = info["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
                .unwrap_or_default();
            out.push((name, shape));
        }
    }
    Ok(out)
}

/// The JSON header of a safetensors file (8-byte little-endian length, then JSON).
fn read_header(file: &PathBuf) -> Result<Vec<u8>> {
    let invalid = |detail: String| ModelError::InvalidCheckpoint {
        path: file.clone(),
        detail,
    };
    let mut f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
    let file_len = f.metadata().map_err(|e| ModelError::io(file, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| invalid("shorter than a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 || len + 8 > file_len {
        return Err(invalid(format!(
            "header length {len} does not fit the file"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| ModelError::io(file, e))?;
    Ok(header)
}
