//! PEFT's files: `adapter_config.json` and `adapter_model.safetensors`.
//!
//! A LoRA model directory of vitrine holds those two (which
//! `peft.PeftModel.from_pretrained(base, dir)` loads as they are), plus the
//! `config.json` of the adapted model (its labels and `problem_type`; the
//! base architecture) and its `preprocessor_config.json`, so everything
//! that reads a model directory reads this one too. `base_model_name_or_path`
//! names the base (a Hub id or a directory); loading resolves it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::adapter::{sites, AdaptedModule, Adapter};
use super::{names, refusal, LoraSpec};
use crate::model::error::{ModelError, Result};
use crate::model::save::{self, ProblemType};
use crate::model::{Model, ModelConfig};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Whether `dir` holds a PEFT adapter.
pub fn is_lora_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// A PEFT adapter as read from its directory.
#[derive(Debug)]
pub struct AdapterFile {
    pub dir: PathBuf,
    pub spec: LoraSpec,
    /// `base_model_name_or_path`, when the adapter names its base.
    pub base: Option<String>,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Writes `adapter` of `model` into `dir` (replaced as a whole), naming
/// `base` as its base model.
pub fn save_adapter(
    model: &Model,
    adapter: &Adapter,
    dir: &Path,
    base: &str,
    problem_type: ProblemType,
) -> Result<()> {
    save::save_dir_with(dir, |tmp| {
        std::fs::create_dir(tmp).map_err(|e| ModelError::io(tmp, e))?;
        save::write_json(&tmp.join(CONFIG_FILE), &adapter_config(adapter, base)?)?;
        let bytes = save::tensors_bytes(adapter.named_tensors())?;
        save::write_synced(&tmp.join(WEIGHTS_FILE), &bytes)?;
        let mut config = save::config_json(&model.config);
        config["problem_type"] = problem_type.as_str().into();
        save::write_json(&tmp.join("config.json"), &config)?;
        save::write_json(
            &tmp.join("preprocessor_config.json"),
            &model.preprocessor_json,
        )
    })
}

/// `adapter_config.json` as PEFT 0.21 reads it. No `task_type`: PEFT has
/// none for image classification (the guide leaves it out), and the head
/// is kept through `modules_to_save`.
fn adapter_config(adapter: &Adapter, base: &str) -> Result<Value> {
    let spec = &adapter.spec;
    let targets: Vec<&str> = spec
        .targets()?
        .iter()
        .map(|t| names::peft_target(t))
        .collect();
    Ok(json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base,
        "r": spec.r,
        "lora_alpha": spec.alpha(),
        "lora_dropout": spec.dropout,
        "use_rslora": spec.use_rslora,
        "target_modules": targets,
        "modules_to_save": ["classifier"],
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
    }))
}

/// Reads and checks a PEFT adapter directory: a LoRA adapter (not another
/// PEFT method, not DoRA, no per-layer ranks), with a positive rank and
/// known targets.
pub fn read_adapter(dir: &Path) -> Result<AdapterFile> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
    let config: Value = serde_json::from_slice(&text).map_err(|e| ModelError::InvalidConfig {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let spec = spec_of(&config)?;
    let base = config["base_model_name_or_path"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(ModelError::io(
            &weights,
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let tensors = Tensor::read_safetensors(&weights)
        .map_err(|e| ModelError::InvalidCheckpoint {
            path: weights.clone(),
            detail: e.to_string(),
        })?
        .into_iter()
        .collect();
    Ok(AdapterFile {
        dir: dir.to_path_buf(),
        spec,
        base,
        tensors,
    })
}

/// The [`LoraSpec`] of an `adapter_config.json`, refusing what vitrine
/// cannot apply.
fn spec_of(config: &Value) -> Result<LoraSpec> {
    let peft_type = config["peft_type"].as_str().unwrap_or("(none)");
    if peft_type != "LORA" {
        return Err(refusal(
            "unsupported_peft_type",
            format!("adapter_config.json: peft_type `{peft_type}` is not supported; vitrine takes LoRA adapters (`LORA`)"),
        ));
    }
    if config["use_dora"].as_bool() == Some(true) {
        return Err(refusal(
            "unsupported_peft_type",
            "adapter_config.json: DoRA (`use_dora: true`) is not supported; plain LoRA only".into(),
        ));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if config[key].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(refusal(
                "invalid_lora",
                format!(
                    "adapter_config.json: `{key}` (per-layer ranks or scales) is not supported"
                ),
            ));
        }
    }
    let r = config["r"].as_i64().unwrap_or(0);
    let targets = match &config["target_modules"] {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        other => {
            return Err(refusal(
                "lora_unknown_target",
                format!(
                    "adapter_config.json: `target_modules` must be a list of names, got {other}"
                ),
            ))
        }
    };
    let spec = LoraSpec {
        r,
        alpha: config["lora_alpha"].as_f64(),
        dropout: config["lora_dropout"].as_f64().unwrap_or(0.0),
        target_modules: Some(targets),
        use_rslora: config["use_rslora"].as_bool().unwrap_or(false),
    };
    spec.validate()?;
    Ok(spec)
}

impl Adapter {
    /// The adapter in `file`, fitted to `model`: every LoRA key names one of
    /// the model's taps (in the `transformers` 5 or 4 naming) with shapes
    /// that fit, and the head fits the model's.
    pub fn from_file(file: &AdapterFile, model: &Model) -> Result<Self> {
        let sites = sites(model)?;
        let mut by_name = BTreeMap::new();
        for path in sites.keys() {
            by_name.insert(names::module_path(path), path.clone());
            by_name.insert(path.clone(), path.clone());
        }
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut head = Vec::new();
        for (key, t) in &file.tensors {
            if let Some(var) = names::head_variable(key) {
                head.push((var, t.to_device(model.device())));
                continue;
            }
            let (module, which) = lora_parts(key).ok_or_else(|| foreign_key(key))?;
            let path = by_name.get(module).ok_or_else(|| foreign_key(key))?;
            let slot = pairs.entry(path.clone()).or_default();
            let t = t.to_device(model.device()).to_kind(tch::Kind::Float);
            if which == 'A' {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut modules = Vec::new();
        for (path, pair) in pairs {
            let (Some(a), Some(b)) = pair else {
                return Err(refusal(
                    "invalid_lora",
                    format!("the adapter has only one of lora_A and lora_B for `{path}`"),
                ));
            };
            check_pair(&path, &a, &b, sites[&path].shape(), file.spec.r)?;
            modules.push(AdaptedModule { path, a, b });
        }
        Ok(Self {
            spec: file.spec.clone(),
            modules,
            head,
        })
    }
}

/// `(module, 'A' | 'B')` of `base_model.model.<module>.lora_A.weight` (or
/// with an adapter name, `.lora_A.default.weight`).
fn lora_parts(key: &str) -> Option<(&str, char)> {
    let rest = key.strip_prefix(names::PREFIX)?;
    for which in ['A', 'B'] {
        for suffix in [
            format!(".lora_{which}.weight"),
            format!(".lora_{which}.default.weight"),
        ] {
            if let Some(module) = rest.strip_suffix(suffix.as_str()) {
                return Some((module, which));
            }
        }
    }
    None
}

fn foreign_key(key: &str) -> ModelError {
    refusal(
        "adapter_base_mismatch",
        format!("the adapter's tensor `{key}` has no place in this base model (another architecture or depth?)"),
    )
}

fn check_pair(
    path: &str,
    a: &Tensor,
    b: &Tensor,
    (fan_in, fan_out): (i64, i64),
    r: i64,
) -> Result<()> {
    if a.size() != [r, fan_in] || b.size() != [fan_out, r] {
        return Err(refusal(
            "adapter_base_mismatch",
            format!(
                "the adapter's `{path}` has A {:?} and B {:?}; this base needs A [{r}, {fan_in}] and B [{fan_out}, {r}]",
                a.size(),
                b.size()
            ),
        ));
    }
    Ok(())
}

/// Loads a LoRA model directory: its base (`base_model_name_or_path`,
/// resolved by `resolve`) with the directory's labels, and the adapter,
/// either merged into the base weights (`merge`: a plain model, as fast as
/// any other) or attached to the taps.
pub fn load_lora_dir(
    dir: &Path,
    device: Device,
    merge: bool,
    resolve: impl Fn(&str) -> Result<PathBuf>,
) -> Result<(Model, Adapter)> {
    let file = read_adapter(dir)?;
    let base = file.base.as_deref().ok_or_else(|| {
        refusal(
            "adapter_base_mismatch",
            format!(
                "{}: `base_model_name_or_path` names no base model",
                dir.join(CONFIG_FILE).display()
            ),
        )
    })?;
    let base_dir = resolve(base)?;
    let labels = adapted_config_with(dir, &file, &base_dir)?
        .labels()
        .to_vec();
    let mut model = crate::model::load_pretrained(&base_dir, device, Some(&labels))?;
    let adapter = Adapter::from_file(&file, &model)?;
    if merge {
        adapter.merge_into(&model)?;
    } else {
        adapter.attach(&model)?;
    }
    if let Ok(text) = std::fs::read(dir.join("preprocessor_config.json")) {
        if let Ok(v) = serde_json::from_slice(&text) {
            model.preprocessor_json = v;
        }
    }
    model.source_dir = dir.to_path_buf();
    Ok((model, adapter))
}

/// Writes the LoRA model in `dir` merged into its base as a plain Hugging
/// Face checkpoint in `out` (what `transformers` loads without `peft`),
/// with the directory's preprocessing and card files.
pub fn save_merged(dir: &Path, out: &Path) -> Result<()> {
    let model = crate::model::load_pretrained(dir, Device::Cpu, None)?;
    let problem = match ModelConfig::from_file(&dir.join("config.json")).map(|c| c.task()) {
        Ok(crate::task::Task::MultiLabel) => ProblemType::MultiLabel,
        _ => ProblemType::SingleLabel,
    };
    crate::model::save_pretrained(&model, out, problem)?;
    for extra in ["metrics.json", "training_config.json"] {
        let src = dir.join(extra);
        if src.is_file() {
            std::fs::copy(&src, out.join(extra)).map_err(|e| ModelError::io(&src, e))?;
        }
    }
    Ok(())
}

/// The base directory a LoRA directory names, resolved as any model source.
pub fn base_dir_of(dir: &Path) -> Result<PathBuf> {
    let file = read_adapter(dir)?;
    let base = file.base.as_deref().ok_or_else(|| no_base(dir))?;
    crate::model::resolve_model_source(base, &crate::model::HubOptions::from_env())
}

fn no_base(dir: &Path) -> ModelError {
    refusal(
        "adapter_base_mismatch",
        format!(
            "{}: `base_model_name_or_path` names no base model",
            dir.join(CONFIG_FILE).display()
        ),
    )
}

/// The configuration of the model a LoRA directory holds: its own
/// `config.json` (vitrine writes one), or, for an adapter `peft` made
/// alone, the base's with labels for the adapter's head: the base's
/// `id2label` when the sizes agree, else `LABEL_0`, `LABEL_1`, ... (as
/// `transformers` names unnamed labels).
pub fn adapted_config(dir: &Path) -> Result<ModelConfig> {
    if dir.join("config.json").is_file() {
        return ModelConfig::from_file(&dir.join("config.json"));
    }
    let file = read_adapter(dir)?;
    adapted_config_with(dir, &file, &base_dir_of(dir)?)
}

fn adapted_config_with(dir: &Path, file: &AdapterFile, base_dir: &Path) -> Result<ModelConfig> {
    if dir.join("config.json").is_file() {
        return ModelConfig::from_file(&dir.join("config.json"));
    }
    let mut config = ModelConfig::from_file(&base_dir.join("config.json"))?;
    let head_rows = file
        .tensors
        .iter()
        .find(|(k, _)| names::head_variable(k).is_some_and(|v| v.ends_with(".weight")))
        .map(|(_, t)| t.size()[0] as usize);
    if let Some(n) = head_rows.filter(|n| *n != config.labels().len()) {
        config.set_labels((0..n).map(|i| format!("LABEL_{i}")).collect());
    }
    Ok(config)
}
