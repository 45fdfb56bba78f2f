//! The fine-tuning job's configuration, as the client sends it. Unknown
//! fields are refused (a typo must not silently train with a default).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::imaging::RandAugment;
use crate::task::Task;

/// How much of the network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Backbone frozen; its features are computed once and cached, and only
    /// the classifier trains.
    #[default]
    LinearProbe,
    /// The last `unfreeze_last_n` encoder blocks (stages for Swin, ConvNeXt
    /// and ResNet), the final norm and the classifier train.
    Partial,
    /// Everything trains (low learning rate, optional layer-wise decay).
    Full,
    /// Low-rank adaptation (`lora` settings): the backbone frozen, a low-rank
    /// update of the attention projections and the classifier train; the
    /// model is a PEFT adapter on the base (`model/lora`, docs/lora.md).
    Lora,
}

/// The validation metric that picks a job's best epoch (the saved model)
/// and drives early stopping; a sweep ranks its candidates on it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    /// Multi-class only.
    Accuracy,
    /// Either task.
    MacroF1,
    /// Mean average precision; multi-label only.
    Map,
}

impl SelectionMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::MacroF1 => "macro_f1",
            Self::Map => "map",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accuracy" => Self::Accuracy,
            "macro_f1" => Self::MacroF1,
            "map" => Self::Map,
            _ => return None,
        })
    }

    /// What the trainer maximises for a task by default.
    pub fn default_for(task: Task) -> Self {
        match task {
            Task::MultiClass => Self::Accuracy,
            Task::MultiLabel => Self::Map,
        }
    }

    pub fn available_for(self, task: Task) -> bool {
        !matches!(
            (self, task),
            (Self::Accuracy, Task::MultiLabel) | (Self::Map, Task::MultiClass)
        )
    }

    /// The metric's value in a split's metrics object (an epoch's
    /// `validation`, a card's `test.metrics`).
    pub fn read(self, metrics: &serde_json::Value) -> Option<f64> {
        metrics
            .get(self.as_str())
            .and_then(serde_json::Value::as_f64)
    }
}

/// Numeric precision of training on a GPU (the CPU always trains in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast where the GPU supports it (compute capability 8.0 and
    /// up), else fp16 autocast with dynamic loss scaling.
    #[default]
    Auto,
    /// fp32 weights and arithmetic; matmuls may use TF32 unless
    /// `strict_fp32` is set.
    Fp32,
    /// bf16 autocast.
    Bf16,
    /// fp16 autocast with dynamic loss scaling (steps whose gradients
    /// overflow are skipped and the scale adapts).
    Fp16,
}

/// `micro_batch`: a size, or `auto` (probed: `train/micro_batch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroBatch {
    Auto,
    Size(u32),
}

impl Serialize for MicroBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MicroBatch::Auto => s.serialize_str("auto"),
            MicroBatch::Size(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for MicroBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Size(u32),
            Name(String),
        }
        let wrong =
            || serde::de::Error::custom("`micro_batch` must be a positive number or \"auto\"");
        match Raw::deserialize(d).map_err(|_| wrong())? {
            Raw::Size(n) if n > 0 => Ok(MicroBatch::Size(n)),
            Raw::Name(s) if s == "auto" => Ok(MicroBatch::Auto),
            _ => Err(wrong()),
        }
    }
}

/// `input_cache`: whether the job reads its images through the node's
/// decode-once cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputCacheMode {
    #[default]
    Auto,
    Off,
}

impl InputCacheMode {
    fn is_auto(&self) -> bool {
        *self == InputCacheMode::Auto
    }
}

/// A fine-tuning job's settings. Only `base_model` is required.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// A Hugging Face Hub id (`google/vit-base-patch16-224-in21k`, optionally
    /// `@revision`) or a local directory in the HF layout.
    pub base_model: String,
    /// `multi_class` or `multi_label`; inferred from the dataset when absent.
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub mode: Mode,
    /// For `partial`: how many of the last encoder blocks train (default 2);
    /// for Swin, ConvNeXt and ResNet, how many of the last stages. At most
    /// the model's depth.
    #[serde(default)]
    pub unfreeze_last_n: Option<usize>,
    /// For `lora`: rank, alpha, dropout, target modules, rsLoRA (defaults:
    /// r 16, alpha = r, dropout 0.1, query and value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraSpec>,
    #[serde(default = "defaults::epochs")]
    pub epochs: u32,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// Peak learning rate; by default 1e-3 (linear probe), 1e-4 (partial),
    /// 5e-5 (full), 5e-3 (lora, PEFT's image-classification guide).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// AdamW's decoupled weight decay (not on biases and norms): a number in
    /// [0, 1), or a preset: `none` 0, `light` 0.01, `medium` 0.03, `heavy`
    /// 0.1 (AugReg's two values are 0.03 and 0.1). Stored as the number.
    #[serde(
        default = "defaults::weight_decay",
        deserialize_with = "super::weight_decay::deserialize"
    )]
    #[schema(value_type = super::weight_decay::WeightDecay)]
    pub weight_decay: f64,
    /// Fraction of the optimiser steps spent warming up linearly.
    #[serde(default = "defaults::warmup_ratio")]
    pub warmup_ratio: f64,
    /// For `full`: each block's learning rate is this times the next one's
    /// (1 = no decay).
    #[serde(default)]
    pub layer_lr_decay: Option<f64>,
    /// Multi-class only. Combines with `mixup_alpha` / `cutmix_alpha` (the
    /// mixed targets are smoothed).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Micro-batches per optimiser step (the effective batch is
    /// `batch_size`; each micro-batch is `batch_size / grad_accum_steps`).
    #[serde(default = "defaults::one")]
    pub grad_accum_steps: u32,
    /// Stop after this many epochs without a better validation metric.
    #[serde(default)]
    pub early_stopping_patience: Option<u32>,
    /// The validation metric that picks the best epoch (the saved model) and
    /// drives early stopping: `accuracy` (the multi-class default), `map`
    /// (the multi-label default) or `macro_f1`. A sweep sets it to its own
    /// metric on candidates that leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_metric: Option<SelectionMetric>,
    #[serde(default = "defaults::max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Input resolution; the base model's by default. Position embeddings
    /// are interpolated when it differs.
    #[serde(default)]
    pub image_size: Option<u32>,
    /// Random resized crop, flip and colour jitter while training
    /// (never for linear probes, whose features are computed once).
    #[serde(default = "defaults::yes")]
    pub augmentation: bool,
    /// RandAugment as `torchvision.transforms.v2.RandAugment(num_ops=n,
    /// magnitude=m)` (31 magnitude bins, signed magnitudes negated with
    /// probability 0.5, nearest interpolation, black fill) on each training
    /// image as decoded, before the random resized crop. Needs
    /// `augmentation`; never for linear probes (features are computed once)
    /// nor for validation and test images. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randaugment: Option<RandAugment>,
    /// MixUp: each training batch becomes `lam * x + (1 - lam) * x_rolled`
    /// (the batch rolled by one, as torchvision pairs samples), `lam ~
    /// Beta(alpha, alpha)` per batch, with the targets mixed alike (soft
    /// targets; multi-label target vectors mix the same way). 0 is off;
    /// AugReg used 0.2 to 0.8. Not for linear probes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mixup_alpha: f64,
    /// CutMix (`torchvision.transforms.v2.CutMix`): a box of the rolled batch
    /// pasted in, `lam ~ Beta(alpha, alpha)` setting its size and the
    /// targets mixed by the box's actual area. 0 is off. With `mixup_alpha`
    /// too, each batch uses one of the two, chosen with probability 0.5.
    /// Not for linear probes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutmix_alpha: f64,
    /// Stochastic depth while training, replacing the base model's rate:
    /// DINOv2 (every block), Swin and ConvNeXt (rising linearly to this
    /// rate over the blocks). ViT (whose `transformers` class has none) and
    /// ResNet refuse it. The saved `config.json` records it. No effect for
    /// linear probes (their backbone runs in evaluation mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_path_rate: Option<f64>,
    /// Dropout while training, replacing the base model's
    /// `hidden_dropout_prob` (embeddings, attention output and MLP output)
    /// of ViT, DINOv2 and Swin; attention-probability dropout is left as the
    /// base model has it. ConvNeXt and ResNet have no dropout and refuse it.
    /// The saved `config.json` records it. No effect for linear probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    #[serde(default)]
    pub mixed_precision: Precision,
    /// Never use TF32 for fp32 matmuls and convolutions on a GPU (slower,
    /// full fp32 precision). While such a job runs, TF32 is off for the
    /// whole process, as libtorch's switch is process-wide.
    #[serde(default)]
    pub strict_fp32: bool,
    /// Keep only each block's (a stage's, for ConvNeXt and ResNet) input in
    /// the forward pass and recompute its activations in the backward pass
    /// (`train/recompute.rs`): far less memory for about one more forward
    /// pass. No effect for linear probes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// Images through the network at once: a number (at most `batch_size`),
    /// or `auto`, the largest that fits, probed once per model, mode,
    /// device, precision and size. The step still averages `batch_size`
    /// images. Absent: `batch_size / grad_accum_steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub micro_batch: Option<MicroBatch>,
    /// `auto`: decode each image once into the node's input cache and read
    /// later epochs (and other jobs on the dataset) from it; `off`: decode
    /// every epoch.
    #[serde(default, skip_serializing_if = "InputCacheMode::is_auto")]
    pub input_cache: InputCacheMode,
    /// `cpu`, `cuda` (any GPU) or `cuda:N`; any worker when absent.
    #[serde(default)]
    pub device: Option<String>,
    /// Share of the training images held out for validation when the
    /// dataset has no validation split (stratified, seeded).
    #[serde(default = "defaults::validation_fraction")]
    pub validation_fraction: f64,
    /// Data-parallel ranks on the claiming worker's node: a count, a list
    /// (`["cpu","cpu"]`, `["cuda:0","cuda:1"]`) or `"all"`; one when
    /// absent. `batch_size` stays the global batch, split over the ranks
    /// (`docs/distributed.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub devices: Option<super::devices::Devices>,
    /// Worker nodes one job spans (world size = devices × nodes); 1.
    #[serde(default = "defaults::one", skip_serializing_if = "is_one")]
    pub nodes: u32,
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

mod defaults {
    pub fn epochs() -> u32 {
        10
    }
    pub fn batch_size() -> u32 {
        32
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn warmup_ratio() -> f64 {
        0.1
    }
    pub fn one() -> u32 {
        1
    }
    pub fn max_grad_norm() -> f64 {
        1.0
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn yes() -> bool {
        true
    }
    pub fn validation_fraction() -> f64 {
        0.2
    }
}

impl JobConfig {
    /// The learning rate in effect.
    pub fn lr(&self) -> f64 {
        self.learning_rate.unwrap_or(match self.mode {
            Mode::LinearProbe => 1e-3,
            Mode::Partial => 1e-4,
            Mode::Full => 5e-5,
            Mode::Lora => 5e-3,
        })
    }

    /// The LoRA settings of a `lora` job (defaults when `lora` is absent).
    pub fn lora_spec(&self) -> crate::model::lora::LoraSpec {
        self.lora.clone().unwrap_or_default()
    }

    /// Blocks trained in `partial` mode.
    pub fn unfreeze_last_n(&self) -> usize {
        self.unfreeze_last_n.unwrap_or(2)
    }

    /// Checks ranges and combinations; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_schedule()?;
        self.validate_mode_options()?;
        self.validate_regularisation()?;
        if let Some(d) = &self.device {
            crate::torch_info::parse_device(d).map_err(|e| format!("`device`: {e}"))?;
        }
        self.validate_ranks()
    }

    /// Ranks per node as the config says (`devices: "all"`: one, as on a
    /// CPU worker).
    pub fn ranks_per_node(&self) -> usize {
        self.devices.as_ref().and_then(|d| d.count()).unwrap_or(1)
    }

    /// Every rank's share of the global batch must be whole and equal.
    fn validate_ranks(&self) -> Result<(), String> {
        check((1..=64).contains(&self.nodes), "`nodes` must be 1..=64")?;
        if let Some(super::devices::Devices::List(v)) = &self.devices {
            for d in v {
                crate::torch_info::parse_device(d).map_err(|e| format!("`devices`: {e}"))?;
            }
        }
        let world = self.ranks_per_node() * self.nodes as usize;
        if world <= 1 {
            return Ok(());
        }
        check(
            world <= super::devices::MAX_WORLD,
            "`devices` × `nodes` must be at most 64",
        )?;
        check(
            self.batch_size as usize % world == 0,
            &format!(
                "`batch_size` ({}) must be a multiple of the world size ({world} = devices × nodes): \
                 it is the global batch, split evenly over the ranks",
                self.batch_size
            ),
        )?;
        check(
            self.grad_accum_steps as usize <= self.batch_size as usize / world,
            "`grad_accum_steps` must be at most each rank's share of `batch_size`",
        )?;
        check(
            !self.gradient_checkpointing,
            "`gradient_checkpointing` with several devices is not supported yet",
        )
    }

    /// The optimisation's sizes and rates.
    fn validate_schedule(&self) -> Result<(), String> {
        check(!self.base_model.trim().is_empty(), "`base_model` is empty")?;
        check(
            (1..=1000).contains(&self.epochs),
            "`epochs` must be 1..=1000",
        )?;
        check(
            (1..=4096).contains(&self.batch_size),
            "`batch_size` must be 1..=4096",
        )?;
        check(
            (1..=self.batch_size).contains(&self.grad_accum_steps),
            "`grad_accum_steps` must be 1..=batch_size",
        )?;
        if let Some(MicroBatch::Size(n)) = self.micro_batch {
            check(
                n <= self.batch_size,
                "`micro_batch` must be at most `batch_size`",
            )?;
        }
        if let Some(lr) = self.learning_rate {
            check(lr > 0.0 && lr < 1.0, "`learning_rate` must be in (0, 1)")?;
        }
        check(
            (0.0..1.0).contains(&self.weight_decay),
            "`weight_decay` must be in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.warmup_ratio),
            "`warmup_ratio` must be in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.label_smoothing),
            "`label_smoothing` must be in [0, 1)",
        )?;
        check(self.max_grad_norm > 0.0, "`max_grad_norm` must be positive")?;
        check(
            self.validation_fraction > 0.0 && self.validation_fraction < 0.9,
            "`validation_fraction` must be in (0, 0.9)",
        )
    }

    /// Options that belong to one mode only.
    fn validate_mode_options(&self) -> Result<(), String> {
        if let Some(d) = self.layer_lr_decay {
            check(d > 0.0 && d <= 1.0, "`layer_lr_decay` must be in (0, 1]")?;
            check(
                self.mode == Mode::Full,
                "`layer_lr_decay` applies to mode `full` only",
            )?;
        }
        if self.unfreeze_last_n.is_some() {
            check(
                self.mode == Mode::Partial,
                "`unfreeze_last_n` applies to mode `partial` only",
            )?;
            check(
                self.unfreeze_last_n() >= 1,
                "`unfreeze_last_n` must be >= 1",
            )?;
        }
        if self.lora.is_some() {
            check(
                self.mode == Mode::Lora,
                "`lora` applies to mode `lora` only",
            )?;
        }
        if self.mode == Mode::Lora {
            self.lora_spec().validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Mixing, stochastic depth, dropout, augmentation and image size.
    fn validate_regularisation(&self) -> Result<(), String> {
        for (name, alpha) in [
            ("mixup_alpha", self.mixup_alpha),
            ("cutmix_alpha", self.cutmix_alpha),
        ] {
            check(
                (0.0..=10.0).contains(&alpha),
                &format!("`{name}` must be in [0, 10] (0 is off)"),
            )?;
        }
        if let Some(r) = self.drop_path_rate {
            check(
                (0.0..1.0).contains(&r),
                "`drop_path_rate` must be in [0, 1)",
            )?;
        }
        if let Some(p) = self.dropout {
            check((0.0..1.0).contains(&p), "`dropout` must be in [0, 1)")?;
        }
        if let Some(ra) = &self.randaugment {
            ra.validate()?;
            check(
                self.augmentation,
                "`randaugment` runs with the training augmentation; it needs `augmentation: true`",
            )?;
        }
        if let Some(s) = self.image_size {
            check((16..=1024).contains(&s), "`image_size` must be 16..=1024")?;
        }
        Ok(())
    }

    /// Parses and validates a JSON document. `device` is stored by its
    /// canonical name (`cuda:01` is `cuda:0`): workers claim by name.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut cfg: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        cfg.claim_device_of_ranks();
        if let Some(d) = cfg.device.as_deref().filter(|d| *d != "cuda") {
            let device =
                crate::torch_info::parse_device(d).map_err(|e| format!("`device`: {e}"))?;
            cfg.device = Some(crate::torch_info::device_name(device));
        }
        Ok(cfg)
    }
}

impl JobConfig {
    /// Several ranks on one device kind are claimed by a worker of that
    /// kind: `devices: ["cpu","cpu"]` or a count without `device` is for a
    /// CPU worker, `["cuda:0","cuda:1"]` for a GPU worker.
    fn claim_device_of_ranks(&mut self) {
        if self.device.is_some() || self.ranks_per_node() <= 1 {
            return;
        }
        self.device = Some(match &self.devices {
            Some(super::devices::Devices::List(v)) if v[0].starts_with("cuda") => "cuda".into(),
            _ => "cpu".into(),
        });
    }
}

/// `Err(msg)` unless `ok`.
fn check(ok: bool, msg: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_everything_but_the_base_model() {
        let cfg = JobConfig::from_json(r#"{"base_model":"google/vit-base-patch16-224"}"#).unwrap();
        assert_eq!(cfg.mode, Mode::LinearProbe);
        assert_eq!(cfg.epochs, 10);
        assert_eq!(cfg.lr(), 1e-3);
        assert!(cfg.task.is_none());
        assert_eq!(cfg.mixed_precision, Precision::Auto);
        assert!(!cfg.strict_fp32);
        assert!(cfg.randaugment.is_none() && cfg.drop_path_rate.is_none() && cfg.dropout.is_none());
        assert_eq!(
            (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.weight_decay),
            (0.0, 0.0, 0.01)
        );
        // Unset recipes are not written: stored configs are as before.
        let stored = serde_json::to_value(&cfg).unwrap();
        for field in [
            "randaugment",
            "mixup_alpha",
            "cutmix_alpha",
            "drop_path_rate",
            "dropout",
        ] {
            assert!(stored.get(field).is_none(), "{field}");
        }
    }

    #[test]
    fn recipes_parse_and_bad_values_are_named() {
        let cfg = JobConfig::from_json(
            r#"{"base_model":"x","mode":"full","randaugment":{"n":2,"m":9},"mixup_alpha":0.2,
                "cutmix_alpha":1.0,"drop_path_rate":0.1,"dropout":0.1,"weight_decay":"medium"}"#,
        )
        .unwrap();
        assert_eq!(cfg.randaugment, Some(RandAugment { n: 2, m: 9 }));
        assert_eq!(cfg.weight_decay, 0.03);
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["randaugment"]["m"], 9);
        assert_eq!(back["cutmix_alpha"], 1.0);
        for (json, field) in [
            (r#""randaugment":{"n":2,"m":31}"#, "randaugment.m"),
            (r#""randaugment":{"n":0,"m":3}"#, "randaugment.n"),
            (r#""randaugment":{"n":2}"#, "m"),
            (
                r#""randaugment":{"n":2,"m":3},"augmentation":false"#,
                "augmentation",
            ),
            (r#""mixup_alpha":-1"#, "mixup_alpha"),
            (r#""cutmix_alpha":11"#, "cutmix_alpha"),
            (r#""drop_path_rate":1.0"#, "drop_path_rate"),
            (r#""dropout":-0.1"#, "dropout"),
        ] {
            let err = JobConfig::from_json(&format!(r#"{{"base_model":"x",{json}}}"#)).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    /// Stored configs of earlier versions still parse, and the precision
    /// names are stable.
    #[test]
    fn precision_names_are_stable() {
        for (name, want) in [
            ("auto", Precision::Auto),
            ("fp32", Precision::Fp32),
            ("bf16", Precision::Bf16),
            ("fp16", Precision::Fp16),
        ] {
            let cfg = JobConfig::from_json(&format!(
                r#"{{"base_model":"x","mixed_precision":"{name}"}}"#
            ))
            .unwrap();
            assert_eq!(cfg.mixed_precision, want);
            let back = serde_json::to_value(&cfg).unwrap();
            assert_eq!(back["mixed_precision"], name);
        }
        let strict = JobConfig::from_json(
            r#"{"base_model":"x","mixed_precision":"fp32","strict_fp32":true}"#,
        )
        .unwrap();
        assert!(strict.strict_fp32);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = JobConfig::from_json(r#"{"base_model":"x","epoch":3}"#).unwrap_err();
        assert!(err.contains("unknown field `epoch`"), "{err}");
        let err = JobConfig::from_json(r#"{"base_model":"x","mode":"sideways"}"#).unwrap_err();
        assert!(err.contains("sideways"), "{err}");
        let err = JobConfig::from_json(r#"{"base_model":"x","batch_size":0}"#).unwrap_err();
        assert!(err.contains("batch_size"), "{err}");
        let err = JobConfig::from_json(r#"{"base_model":"x","layer_lr_decay":0.8}"#).unwrap_err();
        assert!(err.contains("full"), "{err}");
        let err = JobConfig::from_json(r#"{"base_model":"x","device":"tpu:0"}"#).unwrap_err();
        assert!(err.contains("device"), "{err}");
    }

    #[test]
    fn devices_are_checked_and_stored_by_their_canonical_name() {
        for bad in ["tpu:0", "cuda:", "cuda:x", " cpu", "auto", "gpu"] {
            let json = format!(r#"{{"base_model":"x","device":"{bad}"}}"#);
            let err = JobConfig::from_json(&json).unwrap_err();
            assert!(err.starts_with("`device`: unknown device"), "{bad}: {err}");
        }
        let device = |d: &str| {
            JobConfig::from_json(&format!(r#"{{"base_model":"x","device":"{d}"}}"#))
                .unwrap()
                .device
                .unwrap()
        };
        assert_eq!(device("cuda:01"), "cuda:1");
        assert_eq!(device("cuda"), "cuda", "any GPU");
        assert_eq!(device("cpu"), "cpu");
    }
}
