//! `Dinov2Config` of `transformers` (`model_type: "dinov2"`).
//!
//! Reference: `transformers/models/dinov2/configuration_dinov2.py`. Fields
//! the classifier does not use (`apply_layernorm`, `out_features`, ...) are
//! kept in `extra` and written back on save.

use serde::{Deserialize, Serialize, Serializer};

use super::activation::Activation;
use super::family::{FamilyConfig, PositionTable};
use super::fields::{check_sizes, square_size, HfFields};

/// `Dinov2Config`; defaults are those of `transformers` (`facebook/dinov2-base`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    /// MLP width over `hidden_size`; the MLP has `int(hidden_size * mlp_ratio)`
    /// units (two thirds of that, rounded up to a multiple of 8, with SwiGLU).
    #[serde(default = "d::mlp_ratio", serialize_with = "ratio_ser")]
    pub mlp_ratio: f64,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The size the position embeddings were trained at (518 for the Meta
    /// checkpoints); other input sizes interpolate them.
    #[serde(default = "d::image_size", deserialize_with = "square_size")]
    pub image_size: i64,
    #[serde(default = "d::patch_size", deserialize_with = "square_size")]
    pub patch_size: i64,
    #[serde(default = "d::num_channels")]
    pub num_channels: i64,
    #[serde(default = "d::yes")]
    pub qkv_bias: bool,
    /// Initial value of the LayerScale vectors (`layer_scale{1,2}.lambda1`).
    #[serde(default = "d::layerscale_value")]
    pub layerscale_value: f64,
    /// Stochastic depth probability, applied to both residual branches in training.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// SwiGLU feed-forward (`mlp.weights_in`, `mlp.weights_out`) instead of fc1/fc2.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    /// Whether the embeddings carry a `mask_token` (unused by classification,
    /// kept so a saved model has every tensor `transformers` expects).
    #[serde(default = "d::yes")]
    pub use_mask_token: bool,
    /// Register tokens (`dinov2_with_registers` only): learned tokens
    /// inserted after CLS, seen by attention, left out of the classifier input.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_register_tokens: i64,
    /// `model_type: "dinov2_with_registers"` (`Dinov2WithRegistersModel`):
    /// register tokens, backbone attribute `dinov2_with_registers`, and
    /// antialiased position-embedding interpolation.
    #[serde(skip)]
    pub with_registers: bool,
    /// `id2label`, `problem_type` and the keys kept verbatim.
    #[serde(flatten)]
    pub hf: HfFields,
}

mod d {
    use super::Activation;
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn num_hidden_layers() -> i64 {
        12
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
    pub fn image_size() -> i64 {
        224
    }
    pub fn patch_size() -> i64 {
        14
    }
    pub fn num_channels() -> i64 {
        3
    }
    pub fn yes() -> bool {
        true
    }
    pub fn layerscale_value() -> f64 {
        1.0
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `mlp_ratio` is an `int` in `transformers`' strict config: a whole ratio
/// is written as an integer so the saved config validates there.
fn ratio_ser<S: Serializer>(ratio: &f64, s: S) -> Result<S::Ok, S::Error> {
    if ratio.fract() == 0.0 && ratio.abs() < 1e15 {
        s.serialize_i64(*ratio as i64)
    } else {
        s.serialize_f64(*ratio)
    }
}

impl Default for Dinov2Config {
    /// The configuration of `facebook/dinov2-base`, without labels.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialise")
    }
}

impl Dinov2Config {
    /// Reads a `dinov2_with_registers` document: 4 register tokens unless
    /// it says otherwise (`Dinov2WithRegistersConfig`'s default), and a
    /// mask token always (its embeddings carry one).
    pub(crate) fn with_registers_from(mut value: serde_json::Value) -> Result<Self, String> {
        if let Some(obj) = value.as_object_mut() {
            obj.entry("num_register_tokens").or_insert(4.into());
        }
        let mut config: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        config.with_registers = true;
        config.use_mask_token = true;
        Ok(config)
    }

    /// Checks the relations the network relies on; refuses register tokens.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        check_sizes(&positive, self.hidden_size, self.num_attention_heads)?;
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || self.mlp_hidden_size() <= 0 {
            return Err(format!("`mlp_ratio` {} gives no MLP units", self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!(
                "`drop_path_rate` must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        if self.num_register_tokens < 0 {
            return Err(format!(
                "`num_register_tokens` must not be negative, got {}",
                self.num_register_tokens
            ));
        }
        if self.num_register_tokens > 0 && !self.with_registers {
            return Err(format!(
                "register tokens (`num_register_tokens` {}) need `model_type` \
                 `dinov2_with_registers`; a `dinov2` model has none",
                self.num_register_tokens
            ));
        }
        Ok(())
    }

    /// `dinov2` or `dinov2_with_registers`.
    pub fn model_type(&self) -> &'static str {
        if self.with_registers {
            "dinov2_with_registers"
        } else {
            "dinov2"
        }
    }

    /// The backbone attribute of the classification model, the prefix of
    /// its variable names: the `base_model_prefix` of `transformers`.
    pub fn backbone_prefix(&self) -> &'static str {
        self.model_type()
    }

    /// The `config.json` fields (without the derived `label2id`/`model_type`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a Dinov2Config serialises");
        if self.with_registers {
            let obj = value.as_object_mut().expect("config is an object");
            // Always explicit: absent would mean the default of 4.
            obj.insert(
                "num_register_tokens".into(),
                self.num_register_tokens.into(),
            );
            // Not a field of `Dinov2WithRegistersConfig` (the token always exists).
            obj.remove("use_mask_token");
        }
        value
    }

    /// `int(hidden_size * mlp_ratio)`, the fc1 width (Python truncates).
    pub fn mlp_hidden_size(&self) -> i64 {
        (self.hidden_size as f64 * self.mlp_ratio) as i64
    }

    /// The SwiGLU hidden width: two thirds of the MLP width, rounded up to a
    /// multiple of 8 (`weights_in` has twice this many rows).
    pub fn swiglu_hidden_size(&self) -> i64 {
        ((self.mlp_hidden_size() as f64 * 2.0 / 3.0) as i64 + 7) / 8 * 8
    }

    /// Patches along one side at `image_size`.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

impl FamilyConfig for Dinov2Config {
    fn model_type(&self) -> &'static str {
        Dinov2Config::model_type(self)
    }

    fn backbone_prefix(&self) -> &'static str {
        Dinov2Config::backbone_prefix(self)
    }

    fn architecture(&self) -> &'static str {
        if self.with_registers {
            "Dinov2WithRegistersForImageClassification"
        } else {
            "Dinov2ForImageClassification"
        }
    }

    super::family::hf_fields!();

    fn validate(&self) -> Result<(), String> {
        Dinov2Config::validate(self)
    }

    fn fields_json(&self) -> serde_json::Value {
        self.to_json()
    }

    fn image_size(&self) -> i64 {
        self.image_size
    }

    fn set_image_size(&mut self, size: i64) {
        self.image_size = size;
    }

    fn patch_size(&self) -> i64 {
        self.patch_size
    }

    fn num_channels(&self) -> i64 {
        self.num_channels
    }

    fn depth(&self) -> usize {
        self.num_hidden_layers as usize
    }

    fn default_preprocessor(&self) -> serde_json::Value {
        super::load::dinov2_preprocessor(self.image_size)
    }

    fn position_table(&self) -> PositionTable {
        PositionTable::ClassTokenGrid {
            antialias: self.with_registers,
        }
    }

    fn drop_path_rate_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.drop_path_rate)
    }

    fn dropout_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.hidden_dropout_prob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse;
    use crate::model::ModelConfig;

    #[test]
    fn parses_dinov2_small_and_writes_an_integer_ratio() {
        let c = parse(serde_json::json!({
            "model_type": "dinov2", "architectures": ["Dinov2Model"],
            "hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12,
            "mlp_ratio": 4, "image_size": 518, "patch_size": 14,
            "layerscale_value": 1.0, "apply_layernorm": true
        }))
        .unwrap();
        let ModelConfig::Dinov2(d) = &c else {
            panic!("a dinov2 config")
        };
        assert_eq!((d.mlp_hidden_size(), d.grid_size()), (1536, 37));
        assert_eq!(d.layer_norm_eps, 1e-6);
        let back = c.to_json();
        assert_eq!(back["mlp_ratio"], serde_json::json!(4));
        assert!(back["mlp_ratio"].is_i64());
        assert_eq!(back["model_type"], "dinov2");
        assert_eq!(back["apply_layernorm"], true);
    }

    #[test]
    fn swiglu_width_follows_transformers() {
        // dinov2-giant: hidden 1536, ratio 4 -> 4096 SwiGLU units.
        let c = Dinov2Config {
            hidden_size: 1536,
            ..Dinov2Config::default()
        };
        assert_eq!(c.swiglu_hidden_size(), 4096);
        let c = Dinov2Config {
            hidden_size: 32,
            mlp_ratio: 2.5,
            ..Dinov2Config::default()
        };
        assert_eq!((c.mlp_hidden_size(), c.swiglu_hidden_size()), (80, 56));
    }

    #[test]
    fn register_tokens_belong_to_dinov2_with_registers() {
        let c = parse(serde_json::json!({"model_type": "dinov2_with_registers"})).unwrap();
        assert_eq!(c.model_type(), "dinov2_with_registers");
        assert_eq!(c.backbone_prefix(), "dinov2_with_registers");
        let ModelConfig::Dinov2(d) = &c else {
            panic!("a dinov2 config")
        };
        assert_eq!(d.num_register_tokens, 4);
        let back = c.to_json();
        assert_eq!(back["num_register_tokens"], 4);
        assert_eq!(back["model_type"], "dinov2_with_registers");
        assert!(back.get("use_mask_token").is_none());
        let err = parse(serde_json::json!({"model_type": "dinov2", "num_register_tokens": 4}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_register_tokens") && err.contains("dinov2_with_registers"),
            "{err}"
        );
    }
}
