//! `config.json` of a Hugging Face checkpoint, deserialised with serde and
//! dispatched on `model_type`, so a second architecture is one more variant.
//!
//! Reference: `transformers/models/vit/configuration_vit.py`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::activation::Activation;
pub use super::convnext_config::ConvNextConfig;
pub use super::dinov2_config::Dinov2Config;
use super::error::{ModelError, Result};
use super::fields::{check_sizes, id2label_de, id2label_ser, square_size};
pub use super::resnet_config::{ResNetConfig, ResNetLayerType};
pub use super::swin_config::SwinConfig;

/// The configuration of one supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type: "vit"` (`ViTModel`, `ViTForImageClassification`).
    Vit(ViTConfig),
    /// `model_type: "dinov2"` (`Dinov2Model`, `Dinov2ForImageClassification`)
    /// and `"dinov2_with_registers"` (`Dinov2WithRegisters*`, register tokens).
    Dinov2(Dinov2Config),
    /// `model_type: "convnext"` (`ConvNextModel`, `ConvNextForImageClassification`).
    ConvNext(ConvNextConfig),
    /// `model_type: "resnet"` (`ResNetModel`, `ResNetForImageClassification`).
    ResNet(ResNetConfig),
    /// `model_type: "swin"` (`SwinModel`, `SwinForImageClassification`).
    Swin(SwinConfig),
}

impl ModelConfig {
    /// Parses a `config.json` document, refusing an unknown `model_type` by name.
    pub fn from_json(value: serde_json::Value, path: &Path) -> Result<Self> {
        let invalid = |detail: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            detail,
        };
        let model_type = match value.get("model_type") {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(other) => return Err(invalid(format!("`model_type` is not a string: {other}"))),
            None => return Err(invalid("no `model_type` field".into())),
        };
        match model_type.as_str() {
            "vit" => {
                let mut config: ViTConfig =
                    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
                // Derived from `id2label` when saved; a stale copy would contradict it.
                for derived in ["label2id", "num_labels", "_num_labels", "model_type"] {
                    config.extra.remove(derived);
                }
                config.validate().map_err(invalid)?;
                Ok(Self::Vit(config))
            }
            "dinov2" | "dinov2_with_registers" => {
                let with_registers = model_type == "dinov2_with_registers";
                let mut value = value;
                if with_registers {
                    // `Dinov2WithRegistersConfig` defaults to 4 registers.
                    if let Some(obj) = value.as_object_mut() {
                        obj.entry("num_register_tokens").or_insert(4.into());
                    }
                }
                let mut config: Dinov2Config =
                    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
                for derived in ["label2id", "num_labels", "_num_labels", "model_type"] {
                    config.extra.remove(derived);
                }
                config.with_registers = with_registers;
                if with_registers {
                    // Its embeddings always carry a mask token.
                    config.use_mask_token = true;
                }
                config.validate().map_err(invalid)?;
                Ok(Self::Dinov2(config))
            }
            "convnext" => ConvNextConfig::parse(value)
                .map(Self::ConvNext)
                .map_err(invalid),
            "resnet" => ResNetConfig::parse(value)
                .map(Self::ResNet)
                .map_err(invalid),
            "swin" => {
                let mut config: SwinConfig =
                    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
                for derived in ["label2id", "num_labels", "_num_labels", "model_type"]
                    .into_iter()
                    .chain(super::swin_config::DERIVED)
                {
                    config.extra.remove(derived);
                }
                config.validate().map_err(invalid)?;
                Ok(Self::Swin(config))
            }
            _ => Err(ModelError::UnknownModelType(model_type)),
        }
    }

    /// Reads and parses `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Self::from_json(value, path)
    }

    /// The `model_type` string of this configuration.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Vit(_) => "vit",
            Self::Dinov2(c) => c.model_type(),
            Self::ConvNext(_) => "convnext",
            Self::ResNet(_) => "resnet",
            Self::Swin(_) => "swin",
        }
    }

    /// The attribute name of the backbone in the classification model, the
    /// prefix of its variable names (`vit.`, `dinov2.`, `dinov2_with_registers.`).
    pub fn backbone_prefix(&self) -> &'static str {
        match self {
            Self::Vit(_) => "vit",
            Self::Dinov2(c) => c.backbone_prefix(),
            Self::ConvNext(_) => "convnext",
            Self::ResNet(_) => "resnet",
            Self::Swin(_) => "swin",
        }
    }

    /// The labels of the head (`id2label`, index order).
    pub fn labels(&self) -> &[String] {
        match self {
            Self::Vit(c) => &c.id2label,
            Self::Dinov2(c) => &c.id2label,
            Self::ConvNext(c) => &c.id2label,
            Self::ResNet(c) => &c.id2label,
            Self::Swin(c) => &c.id2label,
        }
    }

    /// The task its `problem_type` names: `multi_label_classification` is
    /// multi-label, anything else (or nothing) multi-class, as in `transformers`
    /// (which only infers otherwise from the labels it is given in training).
    pub fn task(&self) -> crate::task::Task {
        let problem_type = match self {
            Self::Vit(c) => c.problem_type.as_deref(),
            Self::Dinov2(c) => c.problem_type.as_deref(),
            Self::ConvNext(c) => c.problem_type.as_deref(),
            Self::ResNet(c) => c.problem_type.as_deref(),
            Self::Swin(c) => c.problem_type.as_deref(),
        };
        match problem_type {
            Some("multi_label_classification") => crate::task::Task::MultiLabel,
            _ => crate::task::Task::MultiClass,
        }
    }

    pub fn set_labels(&mut self, labels: Vec<String>) {
        match self {
            Self::Vit(c) => c.id2label = labels,
            Self::Dinov2(c) => c.id2label = labels,
            Self::ConvNext(c) => c.id2label = labels,
            Self::ResNet(c) => c.id2label = labels,
            Self::Swin(c) => c.id2label = labels,
        }
    }

    /// Encoder blocks; for the CNNs, stages (each one unit of partial
    /// fine-tuning and layer-wise decay).
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            Self::Vit(c) => c.num_hidden_layers as usize,
            Self::Dinov2(c) => c.num_hidden_layers as usize,
            Self::ConvNext(c) => c.num_stages as usize,
            Self::ResNet(c) => c.depths.len(),
            // A Swin "layer" is a stage (blocks at one resolution).
            Self::Swin(c) => c.num_stages(),
        }
    }

    pub fn image_size(&self) -> i64 {
        match self {
            Self::Vit(c) => c.image_size,
            Self::Dinov2(c) => c.image_size,
            Self::ConvNext(c) => c.image_size,
            Self::ResNet(c) => c.image_size(),
            Self::Swin(c) => c.image_size,
        }
    }

    /// The side an input size must be a multiple of: the patch size of the
    /// transformers and of ConvNeXt's stem; 1 for ResNet, whose padded
    /// convolutions and pooling take any size.
    pub fn patch_size(&self) -> i64 {
        match self {
            Self::Vit(c) => c.patch_size,
            Self::Dinov2(c) => c.patch_size,
            Self::ConvNext(c) => c.patch_size,
            Self::ResNet(_) => 1,
            Self::Swin(c) => c.patch_size,
        }
    }

    pub fn num_channels(&self) -> i64 {
        match self {
            Self::Vit(c) => c.num_channels,
            Self::Dinov2(c) => c.num_channels,
            Self::ConvNext(c) => c.num_channels,
            Self::ResNet(c) => c.num_channels,
            Self::Swin(c) => c.num_channels,
        }
    }

    /// The checkpoint name of the classifier's weight: `classifier.1.weight`
    /// for ResNet, whose head is `Sequential(Flatten, Linear)`.
    pub fn head_weight_name(&self) -> &'static str {
        match self {
            Self::ResNet(_) => "classifier.1.weight",
            _ => "classifier.weight",
        }
    }

    /// The smallest input side the network takes: one patch for the
    /// transformers; ConvNeXt's downsampling needs `patch_size * 2^(stages - 1)`.
    pub fn min_input_size(&self) -> i64 {
        match self {
            Self::ConvNext(c) => c.min_input_size(),
            _ => self.patch_size(),
        }
    }

    /// The `config.json` document for this configuration, `transformers` style.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = match self {
            Self::Vit(c) => serde_json::to_value(c).expect("a ViTConfig serialises"),
            Self::Dinov2(c) => c.to_json(),
            Self::ConvNext(c) => serde_json::to_value(c).expect("a ConvNextConfig serialises"),
            Self::ResNet(c) => serde_json::to_value(c).expect("a ResNetConfig serialises"),
            Self::Swin(c) => c.to_json(),
        };
        let labels = self.labels();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        let obj = value.as_object_mut().expect("config is an object");
        obj.insert("label2id".into(), label2id.into());
        obj.insert("model_type".into(), self.model_type().into());
        value
    }
}

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
    /// `id2label` as a list: index `i` is label `i`. In JSON the keys are strings.
    #[serde(
        default,
        deserialize_with = "id2label_de",
        serialize_with = "id2label_ser"
    )]
    pub id2label: Vec<String>,
    /// `single_label_classification` / `multi_label_classification`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    /// Everything else in `config.json`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
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
        self.extra
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ModelConfig> {
        ModelConfig::from_json(v, Path::new("config.json"))
    }

    #[test]
    fn parses_a_hub_config_with_string_label_keys() {
        let c = parse(serde_json::json!({
            "model_type": "vit", "architectures": ["ViTForImageClassification"],
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 128, "image_size": 32, "patch_size": 8,
            "hidden_act": "gelu_new", "encoder_stride": 16,
            "id2label": {"1": "dog", "0": "cat", "2": "fox"},
            "label2id": {"cat": 0, "dog": 1, "fox": 2}
        }))
        .unwrap();
        let ModelConfig::Vit(v) = &c else {
            panic!("a vit config")
        };
        assert_eq!(v.hidden_act, Activation::GeluTanh);
        assert_eq!(c.labels(), ["cat", "dog", "fox"]);
        assert_eq!(v.extra["encoder_stride"], 16);
        assert!(!v.extra.contains_key("label2id"));
        let back = c.to_json();
        assert_eq!(back["id2label"]["2"], "fox");
        assert_eq!(back["label2id"]["dog"], 1);
        assert_eq!(back["model_type"], "vit");
        assert_eq!(back["encoder_stride"], 16);
    }

    #[test]
    fn refuses_unknown_model_type_by_name() {
        let err = parse(serde_json::json!({"model_type": "swinv2"})).unwrap_err();
        assert!(matches!(&err, ModelError::UnknownModelType(t) if t == "swinv2"));
        assert!(err.to_string().contains("`swinv2`"), "{err}");
    }

    #[test]
    fn refuses_unknown_activation_naming_it() {
        let err = parse(serde_json::json!({"model_type": "vit", "hidden_act": "prelu"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported hidden_act `prelu`"), "{err}");
    }

    #[test]
    fn refuses_label_ids_with_gaps() {
        let err = parse(serde_json::json!({"model_type": "vit", "id2label": {"0": "a", "2": "b"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without gaps"), "{err}");
    }

    #[test]
    fn refuses_inconsistent_sizes() {
        let err = parse(
            serde_json::json!({"model_type": "vit", "hidden_size": 100, "num_attention_heads": 3}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not a multiple of `num_attention_heads`"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_vit_base() {
        let c = ViTConfig::default();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.image_size),
            (768, 12, 224)
        );
    }
}
