//! Low-rank adaptation (LoRA) of the attention projections, in PEFT's
//! format.
//!
//! - [`tap`]: [`LoraLinear`], a base linear layer plus the low-rank terms
//!   of the next forward passes (one adapter, or several over row ranges
//!   of a mixed batch).
//! - [`names`]: PEFT's key names, as the pinned `transformers` (5.x) names
//!   the modules in memory (`vit.layers.0.attention.q_proj`), and the
//!   `transformers` 4 names (`vit.encoder.layer.0.attention.attention.query`)
//!   adapters made before still carry.
//! - [`adapter`]: an adapter's tensors: initialised as PEFT does, attached
//!   to a network's taps, merged into the base weights.
//! - [`mixed`]: one forward pass of a shared base over a batch that mixes
//!   adapters (base matmuls once, low-rank terms and heads per group).
//! - [`files`]: `adapter_config.json` + `adapter_model.safetensors` written
//!   and read, and a LoRA model directory loaded (base + adapter).
//!
//! The base stays frozen; A (`[r, in]`, Kaiming-uniform with `a = sqrt(5)`,
//! i.e. U(-1/sqrt(in), 1/sqrt(in))), B (`[out, r]`, zeros) and the
//! classifier head train. The term is `scale · B · A · x` with
//! `scale = alpha / r`, or `alpha / sqrt(r)` with rsLoRA.

pub mod adapter;
pub mod files;
pub mod mixed;
pub mod names;
pub mod tap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use adapter::Adapter;
pub use files::{is_lora_dir, load_lora_dir, read_adapter, save_adapter, save_merged, AdapterFile};
pub use tap::{LoraLinear, LoraPlan, LoraTerm};

use super::error::{ModelError, Result};

/// The projections LoRA adapts, by their checkpoint names.
pub const TARGETS: [&str; 3] = ["query", "key", "value"];

/// A job's `lora` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank of the update (default 16).
    #[serde(default = "defaults::r")]
    pub r: i64,
    /// Scale numerator (default: `r`, so the scale is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on the low-rank branch's input, in training (default 0.1,
    /// PEFT's image-classification guide).
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    /// Projections to adapt: `query`, `key`, `value` (or PEFT's `q_proj`,
    /// `k_proj`, `v_proj`). Default: query and value, for ViT, DINOv2 and
    /// Swin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<Vec<String>>,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_rslora: bool,
}

mod defaults {
    pub fn r() -> i64 {
        16
    }
    pub fn dropout() -> f64 {
        0.1
    }
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            r: defaults::r(),
            alpha: None,
            dropout: defaults::dropout(),
            target_modules: None,
            use_rslora: false,
        }
    }
}

impl LoraSpec {
    /// `alpha`, defaulting to `r`.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.r as f64)
    }

    /// The factor of `B · A · x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha() / (self.r as f64).sqrt()
        } else {
            self.alpha() / self.r as f64
        }
    }

    /// The targeted projections by checkpoint name (`query`, `value`),
    /// in [`TARGETS`] order.
    pub fn targets(&self) -> Result<Vec<&'static str>> {
        let names = match &self.target_modules {
            Some(t) => t.clone(),
            None => vec!["query".into(), "value".into()],
        };
        if names.is_empty() {
            return Err(refusal(
                "lora_unknown_target",
                "`lora.target_modules` is empty".into(),
            ));
        }
        let mut out = Vec::new();
        for n in &names {
            let canonical = names::canonical_target(n).ok_or_else(|| {
                refusal(
                    "lora_unknown_target",
                    format!(
                        "unknown LoRA target module `{n}`: ViT, DINOv2 and Swin adapt `query`, \
                         `key` and `value` (also spelt `q_proj`, `k_proj`, `v_proj`)"
                    ),
                )
            })?;
            if !out.contains(&canonical) {
                out.push(canonical);
            }
        }
        out.sort_by_key(|t| TARGETS.iter().position(|x| x == t));
        Ok(out)
    }

    /// Checks ranges and names; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.r) {
            return Err(refusal(
                "lora_invalid_rank",
                format!("`lora.r` must be 1..=1024, got {}", self.r),
            ));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(refusal(
                    "invalid_lora",
                    "`lora.alpha` must be positive".into(),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(refusal(
                "invalid_lora",
                "`lora.dropout` must be in [0, 1)".into(),
            ));
        }
        self.targets().map(|_| ())
    }
}

/// Families with LoRA taps (`ImageClassifier::lora_sites`): a job on
/// another is refused before it is queued.
pub fn check_family(model_type: &str) -> Result<()> {
    match model_type {
        "vit" | "dinov2" | "dinov2_with_registers" | "swin" => Ok(()),
        other => Err(refusal(
            "lora_unsupported_family",
            format!(
                "LoRA is available for ViT, DINOv2 and Swin, not for `{other}`: train it with \
                 `linear_probe`, `partial` or `full`"
            ),
        )),
    }
}

/// A [`ModelError::Lora`].
pub(crate) fn refusal(code: &'static str, detail: String) -> ModelError {
    ModelError::Lora { code, detail }
}
