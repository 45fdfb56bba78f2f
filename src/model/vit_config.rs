//! `ViTConfig` of `transformers` (`model_type: "vit"`), also what a timm
//! ViT checkpoint converts to.
//!
//! Reference: `transformers/models/vit/configuration_vit.py`.

use serde::{Deserialize, Serialize};

use super::activation::Activation;
use super::family::{FamilyConfig, PositionTable};
use super::fields::{check_sizes, square_size, HfFields};

/// `ViTConfig` of `transformers`. Fields it does not use (`encoder_stride`,
/// `architectures`, `transformers_version`, ...) are kept in `extra` and
/// written back on save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTConfig {
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: i64,
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
    #[serde(default = "d::image_size", deserialize_with = "square_size")]
    pub image_size: i64,
    #[serde(default = "d::patch_size", deserialize_with = "square_size")]
    pub patch_size: i64,
    #[serde(default = "d::num_channels")]
    pub num_channels: i64,
    #[serde(default = "d::qkv_bias")]
    pub qkv_bias: bool,
    /// Width of the (unused by classification) pooler; `hidden_size` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_output_size: Option<i64>,
    #[serde(default = "d::pooler_act")]
    pub pooler_act: String,
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
    pub fn intermediate_size() -> i64 {
        3072
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn image_size() -> i64 {
        224
    }
    pub fn patch_size() -> i64 {
        16
    }
    pub fn num_channels() -> i64 {
        3
    }
    pub fn qkv_bias() -> bool {
        true
    }
    pub fn pooler_act() -> String {
        "tanh".into()
    }
}

impl Default for ViTConfig {
    /// The configuration of `google/vit-base-patch16-224`, without labels.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialise")
    }
}

impl ViTConfig {
    /// Checks the relations the network relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        check_sizes(&positive, self.hidden_size, self.num_attention_heads)?;
        if self.image_size % self.patch_size != 0 {
            return Err(format!(
                "`image_size` {} is not a multiple of `patch_size` {}",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }

    /// Patches along one side at `image_size`.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// The class names of `architectures` (e.g. `ViTForMaskedImageModeling`).
    pub fn architectures(&self) -> Vec<&str> {
        self.hf
            .extra
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default()
    }
}

impl FamilyConfig for ViTConfig {
    fn model_type(&self) -> &'static str {
        "vit"
    }

    fn architecture(&self) -> &'static str {
        "ViTForImageClassification"
    }

    super::family::hf_fields!();

    fn validate(&self) -> Result<(), String> {
        ViTConfig::validate(self)
    }

    fn fields_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a ViTConfig serialises")
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

    /// `decoder.*`: the reconstruction head of a checkpoint saved as
    /// `ViTForMaskedImageModeling`.
    fn is_foreign_head(&self, name: &str) -> bool {
        name.starts_with("decoder.") && self.architectures().contains(&"ViTForMaskedImageModeling")
    }

    fn default_preprocessor(&self) -> serde_json::Value {
        super::load::default_preprocessor(self.image_size)
    }

    fn position_table(&self) -> PositionTable {
        PositionTable::ClassTokenGrid { antialias: false }
    }

    fn dropout_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.hidden_dropout_prob)
    }
}
