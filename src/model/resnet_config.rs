//! `ResNetConfig` of `transformers` (`model_type: "resnet"`).
//!
//! Reference: `transformers/models/resnet/configuration_resnet.py`. Fields
//! the classifier does not use (`stage_names`, `out_features`, ...) are kept
//! in `extra` and written back on save.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::activation::Activation;
use super::family::FamilyConfig;
use super::fields::HfFields;

/// The residual block of every stage (`layer_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetLayerType {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1 reduce to a quarter, 3x3, 1x1 expand (ResNet-50 and deeper).
    Bottleneck,
}

impl ResNetLayerType {
    fn name(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Bottleneck => "bottleneck",
        }
    }
}

impl<'de> Deserialize<'de> for ResNetLayerType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "basic" => Ok(Self::Basic),
            "bottleneck" => Ok(Self::Bottleneck),
            other => Err(serde::de::Error::custom(format!(
                "unsupported layer_type `{other}` (supported: basic, bottleneck)"
            ))),
        }
    }
}

impl Serialize for ResNetLayerType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `ResNetConfig`; defaults are those of `transformers` (`microsoft/resnet-50`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    #[serde(default = "d::num_channels")]
    pub num_channels: i64,
    /// Channels of the stem (7x7 stride-2 convolution, then 3x3 stride-2 max pool).
    #[serde(default = "d::embedding_size")]
    pub embedding_size: i64,
    /// Output channels of each stage.
    #[serde(default = "d::hidden_sizes")]
    pub hidden_sizes: Vec<i64>,
    /// Residual blocks in each stage.
    #[serde(default = "d::depths")]
    pub depths: Vec<i64>,
    #[serde(default = "d::layer_type")]
    pub layer_type: ResNetLayerType,
    /// Activation of the stem and of each block's output (the convolutions
    /// inside a block always use ReLU, as in `transformers`).
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    /// Whether the first stage's first block has stride 2.
    #[serde(default)]
    pub downsample_in_first_stage: bool,
    /// Bottleneck blocks stride in their first 1x1 convolution instead of the 3x3.
    #[serde(default)]
    pub downsample_in_bottleneck: bool,
    /// Not a `ResNetConfig` field: the input side vitrine trains and serves
    /// at (224 when absent). Written back only once set; `transformers`
    /// keeps unknown keys as plain attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// `id2label`, `problem_type` and the keys kept verbatim.
    #[serde(flatten)]
    pub hf: HfFields,
}

mod d {
    use super::{Activation, ResNetLayerType};
    pub fn num_channels() -> i64 {
        3
    }
    pub fn embedding_size() -> i64 {
        64
    }
    pub fn hidden_sizes() -> Vec<i64> {
        vec![256, 512, 1024, 2048]
    }
    pub fn depths() -> Vec<i64> {
        vec![3, 4, 6, 3]
    }
    pub fn layer_type() -> ResNetLayerType {
        ResNetLayerType::Bottleneck
    }
    pub fn hidden_act() -> Activation {
        Activation::Relu
    }
}

/// The input side assumed when `config.json` names none.
pub const DEFAULT_IMAGE_SIZE: i64 = 224;

impl Default for ResNetConfig {
    /// The configuration of `microsoft/resnet-50`, without labels.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialise")
    }
}

impl ResNetConfig {
    /// Checks the relations the network relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("num_channels", self.num_channels),
            ("embedding_size", self.embedding_size),
            ("image_size", self.image_size()),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("`{name}` must be positive, got {v}"));
        }
        if self.depths.is_empty() {
            return Err("`depths` is empty: the network has no stage".into());
        }
        if self.hidden_sizes.len() != self.depths.len() {
            return Err(format!(
                "`hidden_sizes` has {} entries but `depths` has {}",
                self.hidden_sizes.len(),
                self.depths.len()
            ));
        }
        for (name, list) in [
            ("hidden_sizes", &self.hidden_sizes),
            ("depths", &self.depths),
        ] {
            if let Some(v) = list.iter().find(|v| **v <= 0) {
                return Err(format!("`{name}` entries must be positive, got {v}"));
            }
        }
        if self.layer_type == ResNetLayerType::Bottleneck {
            if let Some(v) = self.hidden_sizes.iter().find(|v| **v < 4) {
                return Err(format!(
                    "`hidden_sizes` entry {v} leaves a bottleneck block no channels (it reduces by 4)"
                ));
            }
        }
        Ok(())
    }

    /// The configured input side, or 224.
    pub fn image_size(&self) -> i64 {
        self.image_size.unwrap_or(DEFAULT_IMAGE_SIZE)
    }
}

impl FamilyConfig for ResNetConfig {
    fn model_type(&self) -> &'static str {
        "resnet"
    }

    fn architecture(&self) -> &'static str {
        "ResNetForImageClassification"
    }

    super::family::hf_fields!();

    fn validate(&self) -> Result<(), String> {
        ResNetConfig::validate(self)
    }

    fn fields_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a ResNetConfig serialises")
    }

    fn image_size(&self) -> i64 {
        ResNetConfig::image_size(self)
    }

    fn set_image_size(&mut self, size: i64) {
        self.image_size = Some(size);
    }

    /// 1: padded convolutions and pooling take any size.
    fn patch_size(&self) -> i64 {
        1
    }

    fn num_channels(&self) -> i64 {
        self.num_channels
    }

    fn depth(&self) -> usize {
        self.depths.len()
    }

    fn depth_unit(&self) -> &'static str {
        "stages"
    }

    /// The head is `Sequential(Flatten, Linear)`.
    fn head_weight_name(&self) -> &'static str {
        "classifier.1.weight"
    }

    fn default_preprocessor(&self) -> serde_json::Value {
        super::load::imagenet_preprocessor(
            "ConvNextImageProcessor",
            serde_json::json!({"shortest_edge": ResNetConfig::image_size(self)}),
            Some(0.875),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse;
    use crate::model::ModelConfig;

    #[test]
    fn parses_resnet_50_without_writing_an_image_size_back() {
        let c = parse(serde_json::json!({
            "model_type": "resnet", "architectures": ["ResNetForImageClassification"],
            "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048],
            "embedding_size": 64, "layer_type": "bottleneck", "hidden_act": "relu",
            "downsample_in_first_stage": false, "out_features": ["stage4"]
        }))
        .unwrap();
        let ModelConfig::ResNet(r) = &c else {
            panic!("a resnet config")
        };
        assert_eq!(r.layer_type, ResNetLayerType::Bottleneck);
        assert_eq!(
            (c.model_type(), c.backbone_prefix(), c.num_hidden_layers()),
            ("resnet", "resnet", 4)
        );
        assert_eq!((c.image_size(), c.patch_size()), (224, 1));
        let back = c.to_json();
        assert!(back.get("image_size").is_none());
        assert_eq!(back["layer_type"], "bottleneck");
        assert_eq!(back["out_features"][0], "stage4");
        assert_eq!(back["model_type"], "resnet");
    }

    #[test]
    fn unsupported_layer_types_are_refused_by_name() {
        let err = parse(serde_json::json!({"model_type": "resnet", "layer_type": "preact"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported layer_type `preact`") && err.contains("basic, bottleneck"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_stage_lists_are_refused_naming_the_field() {
        let err = parse(serde_json::json!({"model_type": "resnet", "depths": [1, 1]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hidden_sizes` has 4 entries"), "{err}");
        let err = parse(serde_json::json!({
            "model_type": "resnet", "depths": [1], "hidden_sizes": [2]
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("bottleneck"), "{err}");
    }
}
