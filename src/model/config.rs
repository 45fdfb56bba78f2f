//! `config.json` of a Hugging Face checkpoint, deserialised with serde and
//! dispatched on `model_type`. Each family's facts live in its own
//! `*_config.rs` behind [`FamilyConfig`]; this enum only picks the family
//! when a document is read, and [`ModelConfig::family`] is the one place
//! that turns it into the trait.

use std::path::Path;

pub use super::activation::Activation;
pub use super::convnext_config::ConvNextConfig;
pub use super::dinov2_config::Dinov2Config;
use super::error::{ModelError, Result};
pub use super::family::{FamilyConfig, PositionTable};
pub use super::resnet_config::{ResNetConfig, ResNetLayerType};
pub use super::swin_config::SwinConfig;
pub use super::vit_config::ViTConfig;

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
    /// The family behind this configuration: the one match on the enum
    /// that every per-family fact goes through.
    pub fn family(&self) -> &dyn FamilyConfig {
        match self {
            Self::Vit(c) => c,
            Self::Dinov2(c) => c,
            Self::ConvNext(c) => c,
            Self::ResNet(c) => c,
            Self::Swin(c) => c,
        }
    }

    /// [`Self::family`], to change it.
    pub fn family_mut(&mut self) -> &mut dyn FamilyConfig {
        match self {
            Self::Vit(c) => c,
            Self::Dinov2(c) => c,
            Self::ConvNext(c) => c,
            Self::ResNet(c) => c,
            Self::Swin(c) => c,
        }
    }

    /// Parses a `config.json` document, refusing an unknown `model_type` by
    /// name. Keys derived from the others are dropped (a stale copy would
    /// contradict them), then the family validates itself.
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
        fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        let parsed = match model_type.as_str() {
            "vit" => de(value).map(Self::Vit),
            "dinov2" => de(value).map(Self::Dinov2),
            "dinov2_with_registers" => Dinov2Config::with_registers_from(value).map(Self::Dinov2),
            "convnext" => de(value).map(Self::ConvNext),
            "resnet" => de(value).map(Self::ResNet),
            "swin" => de(value).map(Self::Swin),
            _ => return Err(ModelError::UnknownModelType(model_type)),
        };
        let mut config = parsed.map_err(invalid)?;
        let family = config.family_mut();
        let derived = family.derived_keys();
        family.hf_mut().drop_derived(derived);
        family.validate().map_err(invalid)?;
        Ok(config)
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
        self.family().model_type()
    }

    /// The attribute name of the backbone in the classification model, the
    /// prefix of its variable names (`vit.`, `dinov2.`, `dinov2_with_registers.`).
    pub fn backbone_prefix(&self) -> &'static str {
        self.family().backbone_prefix()
    }

    /// The labels of the head (`id2label`, index order).
    pub fn labels(&self) -> &[String] {
        &self.family().hf().id2label
    }

    /// The task its `problem_type` names (see [`super::HfFields::task`]).
    pub fn task(&self) -> crate::task::Task {
        self.family().hf().task()
    }

    pub fn set_labels(&mut self, labels: Vec<String>) {
        self.family_mut().hf_mut().id2label = labels;
    }

    /// Encoder blocks; for the CNNs and Swin, stages (each one unit of
    /// partial fine-tuning and layer-wise decay).
    pub fn num_hidden_layers(&self) -> usize {
        self.family().depth()
    }

    pub fn image_size(&self) -> i64 {
        self.family().image_size()
    }

    /// The side an input size must be a multiple of (see
    /// [`FamilyConfig::patch_size`]).
    pub fn patch_size(&self) -> i64 {
        self.family().patch_size()
    }

    pub fn num_channels(&self) -> i64 {
        self.family().num_channels()
    }

    /// The checkpoint name of the classifier's weight: `classifier.1.weight`
    /// for ResNet, whose head is `Sequential(Flatten, Linear)`.
    pub fn head_weight_name(&self) -> &'static str {
        self.family().head_weight_name()
    }

    /// The smallest input side the network takes: one patch for the
    /// transformers; ConvNeXt's downsampling needs `patch_size * 2^(stages - 1)`.
    pub fn min_input_size(&self) -> i64 {
        self.family().min_input_size()
    }

    /// The `config.json` document for this configuration, `transformers` style.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = self.family().fields_json();
        let label2id: serde_json::Map<String, serde_json::Value> = self
            .labels()
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

/// A config from JSON, named `config.json` in errors: the tests' shorthand.
#[cfg(test)]
pub(crate) fn parse(v: serde_json::Value) -> Result<ModelConfig> {
    ModelConfig::from_json(v, Path::new("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(v.hf.extra["encoder_stride"], 16);
        assert!(!v.hf.extra.contains_key("label2id"));
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
