//! `ConvNextConfig` of `transformers` (`model_type: "convnext"`).
//!
//! Reference: `transformers/models/convnext/configuration_convnext.py`.
//! Fields the classifier does not use (`stage_names`, `out_features`,
//! `architectures`, ...) are kept in `extra` and written back on save.
//! `convnextv2` (global response normalisation) is another `model_type`
//! and is refused as such.

use serde::{Deserialize, Serialize};

use super::activation::Activation;
use super::family::FamilyConfig;
use super::fields::{square_size, HfFields};

/// `ConvNextConfig`; defaults are those of `transformers` (`facebook/convnext-tiny-224`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvNextConfig {
    #[serde(default = "d::num_channels")]
    pub num_channels: i64,
    /// Side of the stem's non-overlapping patch convolution (stride = kernel).
    #[serde(default = "d::patch_size", deserialize_with = "square_size")]
    pub patch_size: i64,
    /// Stages; `num_hidden_layers` in `transformers` is an alias of it.
    #[serde(default = "d::num_stages", alias = "num_hidden_layers")]
    pub num_stages: i64,
    /// Channels of each stage.
    #[serde(default = "d::hidden_sizes")]
    pub hidden_sizes: Vec<i64>,
    /// Blocks in each stage.
    #[serde(default = "d::depths")]
    pub depths: Vec<i64>,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    /// Epsilon of the final layernorm only: the stem, block and
    /// downsampling layernorms use 1e-6 whatever this says, as in `transformers`.
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Initial value of each block's `layer_scale_parameter`; `<= 0` means
    /// the blocks have none.
    #[serde(default = "d::layer_scale_init_value")]
    pub layer_scale_init_value: f64,
    /// Stochastic depth of the last block; block `i` of `n` gets
    /// `i / (n - 1)` of it (linearly spaced over all blocks).
    #[serde(default)]
    pub drop_path_rate: f64,
    /// The size the checkpoint was trained at: a convolutional network takes
    /// any size, this only sets the default preprocessing.
    #[serde(default = "d::image_size", deserialize_with = "square_size")]
    pub image_size: i64,
    /// `id2label`, `problem_type` and the keys kept verbatim.
    #[serde(flatten)]
    pub hf: HfFields,
}

mod d {
    use super::Activation;
    pub fn num_channels() -> i64 {
        3
    }
    pub fn patch_size() -> i64 {
        4
    }
    pub fn num_stages() -> i64 {
        4
    }
    pub fn hidden_sizes() -> Vec<i64> {
        vec![96, 192, 384, 768]
    }
    pub fn depths() -> Vec<i64> {
        vec![3, 3, 9, 3]
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
    pub fn layer_scale_init_value() -> f64 {
        1e-6
    }
    pub fn image_size() -> i64 {
        224
    }
}

impl Default for ConvNextConfig {
    /// The configuration of `facebook/convnext-tiny-224`, without labels.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialise")
    }
}

impl ConvNextConfig {
    /// Checks the relations the network relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("num_channels", self.num_channels),
            ("patch_size", self.patch_size),
            ("num_stages", self.num_stages),
            ("image_size", self.image_size),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("`{name}` must be positive, got {v}"));
        }
        for (name, list) in [
            ("hidden_sizes", &self.hidden_sizes),
            ("depths", &self.depths),
        ] {
            if list.len() != self.num_stages as usize {
                return Err(format!(
                    "`{name}` has {} entries but `num_stages` is {}",
                    list.len(),
                    self.num_stages
                ));
            }
            if let Some(v) = list.iter().find(|v| **v <= 0) {
                return Err(format!("`{name}` entries must be positive, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!(
                "`drop_path_rate` must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        if self.image_size < self.min_input_size() {
            return Err(format!(
                "`image_size` {} is below the smallest input the network takes ({})",
                self.image_size,
                self.min_input_size()
            ));
        }
        Ok(())
    }

    /// The smallest input side the network takes: the stem divides by
    /// `patch_size`, and each later stage's 2x2 stride-2 downsampling
    /// convolution needs at least 2 pixels.
    pub fn min_input_size(&self) -> i64 {
        self.patch_size << (self.num_stages.clamp(1, 32) - 1)
    }

    /// Stochastic depth rate of every block, stage by stage: as
    /// `torch.linspace(0, drop_path_rate, sum(depths)).split(depths)`.
    pub fn drop_path_rates(&self) -> Vec<Vec<f64>> {
        let total: i64 = self.depths.iter().sum();
        let rate = |i: i64| {
            if total <= 1 {
                0.0
            } else {
                self.drop_path_rate * i as f64 / (total - 1) as f64
            }
        };
        let mut start = 0;
        self.depths
            .iter()
            .map(|&d| {
                let rates = (start..start + d).map(rate).collect();
                start += d;
                rates
            })
            .collect()
    }
}

impl FamilyConfig for ConvNextConfig {
    fn model_type(&self) -> &'static str {
        "convnext"
    }

    fn architecture(&self) -> &'static str {
        "ConvNextForImageClassification"
    }

    super::family::hf_fields!();

    fn validate(&self) -> Result<(), String> {
        ConvNextConfig::validate(self)
    }

    fn fields_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a ConvNextConfig serialises")
    }

    /// A convolutional network takes any size: this sets the preprocessing.
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

    fn min_input_size(&self) -> i64 {
        ConvNextConfig::min_input_size(self)
    }

    fn depth(&self) -> usize {
        self.num_stages as usize
    }

    fn depth_unit(&self) -> &'static str {
        "stages"
    }

    fn default_preprocessor(&self) -> serde_json::Value {
        super::load::imagenet_preprocessor(
            "ConvNextImageProcessor",
            serde_json::json!({"shortest_edge": self.image_size}),
            Some(0.875),
        )
    }

    fn drop_path_rate_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.drop_path_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse;
    use crate::model::ModelConfig;

    #[test]
    fn parses_convnext_tiny_and_keeps_unknown_fields() {
        let c = parse(serde_json::json!({
            "model_type": "convnext", "architectures": ["ConvNextForImageClassification"],
            "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768], "num_stages": 4,
            "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
            "id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}
        }))
        .unwrap();
        let ModelConfig::ConvNext(cfg) = &c else {
            panic!("a convnext config")
        };
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.min_input_size(), 32);
        assert_eq!(
            (c.model_type(), c.backbone_prefix(), c.num_hidden_layers()),
            ("convnext", "convnext", 4)
        );
        assert_eq!((c.patch_size(), c.image_size()), (4, 224));
        let back = c.to_json();
        assert_eq!(back["stage_names"][4], "stage4");
        assert_eq!(back["model_type"], "convnext");
        assert_eq!(back["label2id"]["b"], 1);
        assert_eq!(back["num_stages"], 4);
    }

    #[test]
    fn num_hidden_layers_is_an_alias_of_num_stages() {
        let c = parse(serde_json::json!({
            "model_type": "convnext", "num_hidden_layers": 2,
            "depths": [1, 1], "hidden_sizes": [8, 16]
        }))
        .unwrap();
        assert_eq!(c.num_hidden_layers(), 2);
    }

    #[test]
    fn inconsistent_stage_lists_are_refused_naming_the_field() {
        let err = parse(serde_json::json!({"model_type": "convnext", "depths": [1, 1]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`depths` has 2 entries"), "{err}");
        let err = parse(serde_json::json!({"model_type": "convnext", "drop_path_rate": 1.5}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`drop_path_rate`"), "{err}");
        let err = parse(serde_json::json!({"model_type": "convnextv2"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`convnextv2`"), "{err}");
    }

    #[test]
    fn drop_path_rates_are_linearly_spaced_over_all_blocks() {
        let c = ConvNextConfig {
            depths: vec![2, 3],
            drop_path_rate: 0.4,
            ..ConvNextConfig::default()
        };
        let rates = c.drop_path_rates();
        assert_eq!(rates.len(), 2);
        assert_eq!(rates[0], [0.0, 0.1]);
        assert!((rates[1][2] - 0.4).abs() < 1e-12);
    }
}
