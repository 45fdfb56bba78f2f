//! Writes a model as a directory `transformers` loads unchanged:
//! `config.json` (`ViTForImageClassification`, `Dinov2ForImageClassification`,
//! `SwinForImageClassification`, ..., the new `id2label`/`label2id`),
//! `model.safetensors` (contiguous fp32, HF names; batch norms'
//! `num_batches_tracked` as int64, as torch stores them) and
//! `preprocessor_config.json`.
//!
//! Files go to a temporary sibling directory first, which is then renamed
//! into place: a crash leaves the old directory or the new one, never half
//! of either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use super::error::{ModelError, Result};
use super::{Model, ModelConfig};

/// `problem_type` of the saved config: which loss `transformers` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// Softmax + cross-entropy (`single_label_classification`).
    SingleLabel,
    /// Sigmoid + BCE (`multi_label_classification`).
    MultiLabel,
}

impl ProblemType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SingleLabel => "single_label_classification",
            Self::MultiLabel => "multi_label_classification",
        }
    }
}

/// Saves `model` into `dir` (created, or replaced as a whole).
pub fn save_pretrained(model: &Model, dir: &Path, problem_type: ProblemType) -> Result<()> {
    save_dir_with(dir, |tmp| write_files(model, tmp, problem_type))
}

/// Writes a directory aside with `write` (which creates it), then puts it
/// at `dir` as a whole; nothing half-written stays behind.
pub(crate) fn save_dir_with(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| ModelError::io(dir, std::io::Error::other("no directory name")))?
        .to_string_lossy()
        .into_owned();
    let unique = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    let result = write(&tmp).and_then(|()| replace_dir(&tmp, dir, &unique));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_files(model: &Model, tmp: &Path, problem_type: ProblemType) -> Result<()> {
    std::fs::create_dir(tmp).map_err(|e| ModelError::io(tmp, e))?;
    let mut config = config_json(&model.config);
    config["problem_type"] = problem_type.as_str().into();
    write_json(&tmp.join("config.json"), &config)?;
    write_json(
        &tmp.join("preprocessor_config.json"),
        &model.preprocessor_json,
    )?;
    let path = tmp.join("model.safetensors");
    let bytes = safetensors_bytes(model)?;
    write_synced(&path, &bytes)
}

/// `config.json` for the architecture, naming the classification class.
pub(crate) fn config_json(config: &ModelConfig) -> serde_json::Value {
    let mut value = config.to_json();
    value["architectures"] = serde_json::json!([config.family().architecture()]);
    // The weights are written in fp32 whatever the source stored.
    value["dtype"] = "float32".into();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("torch_dtype");
    }
    value
}

/// All variables, contiguous little-endian fp32 (int64 counters as I64) on
/// the CPU, in one safetensors buffer.
fn safetensors_bytes(model: &Model) -> Result<Vec<u8>> {
    tensors_bytes(model.vs.variables())
}

/// Named tensors as one safetensors buffer (fp32, int64 kept), on the CPU.
pub(crate) fn tensors_bytes(named: impl IntoIterator<Item = (String, Tensor)>) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in named {
        let (kind, dtype, width) = if t.kind() == Kind::Int64 {
            (Kind::Int64, Dtype::I64, 8)
        } else {
            (Kind::Float, Dtype::F32, 4)
        };
        let t = t.detach().to_device(Device::Cpu).to_kind(kind).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let numel = t.numel();
        let mut buf = vec![0u8; numel * width];
        t.f_copy_data_u8(&mut buf, numel)?;
        data.push((name, dtype, shape, buf));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, buf)| {
            TensorView::new(*dtype, shape.clone(), buf)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::UnsupportedCheckpoint(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| ModelError::UnsupportedCheckpoint(format!("serialising safetensors: {e}")))
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    write_synced(path, text.as_bytes())
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ModelError::io(path, e))
}

/// Puts `tmp` at `dir`; an existing `dir` is moved aside first and removed after.
pub(crate) fn replace_dir(tmp: &Path, dir: &Path, unique: &str) -> Result<()> {
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old-{unique}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
        if let Err(e) = std::fs::rename(tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            return Err(ModelError::io(dir, e));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    } else {
        std::fs::rename(tmp, dir).map_err(|e| ModelError::io(dir, e))
    }
}
