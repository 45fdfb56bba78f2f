//! `SwinConfig` of `transformers` (`model_type: "swin"`).
//!
//! Reference: `transformers/models/swin/configuration_swin.py`. Fields the
//! classifier does not use (`encoder_stride`, `out_features`, ...) are kept
//! in `extra` and written back on save; the fields `transformers` derives
//! from `depths` and `embed_dim` (`num_layers`, `hidden_size`,
//! `stage_names`) are recomputed when written.

use serde::{Deserialize, Serialize};

use super::activation::Activation;
use super::family::{FamilyConfig, PositionTable};
use super::fields::{square_size, HfFields};
use super::params::ParamGroup;

/// `SwinConfig`; defaults are those of `transformers`
/// (`microsoft/swin-tiny-patch4-window7-224`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// The input side the checkpoint was trained at. Without absolute
    /// position embeddings the network takes any size (feature maps are
    /// padded to the patch and window sizes).
    #[serde(default = "d::image_size", deserialize_with = "square_size")]
    pub image_size: i64,
    #[serde(default = "d::patch_size", deserialize_with = "square_size")]
    pub patch_size: i64,
    #[serde(default = "d::num_channels")]
    pub num_channels: i64,
    /// Width of the first stage; stage `s` is `embed_dim * 2^s` wide.
    #[serde(default = "d::embed_dim")]
    pub embed_dim: i64,
    /// Blocks per stage.
    #[serde(default = "d::depths")]
    pub depths: Vec<i64>,
    /// Attention heads per stage.
    #[serde(default = "d::num_heads")]
    pub num_heads: Vec<i64>,
    /// Side of the square attention windows (in patches).
    #[serde(default = "d::window_size")]
    pub window_size: i64,
    /// MLP width over the stage width (`int(mlp_ratio * dim)` units).
    #[serde(default = "d::mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "d::yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    /// Stochastic depth: block `i` of `n` drops its attention branch with
    /// probability `drop_path_rate * i / max(n - 1, 1)` in training.
    #[serde(default = "d::drop_path_rate")]
    pub drop_path_rate: f64,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    /// A learned `[1, patches, embed_dim]` table added to the patch
    /// embeddings (off in every Microsoft checkpoint).
    #[serde(default)]
    pub use_absolute_embeddings: bool,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    /// Epsilon of the blocks' and the final layer norms (the embeddings'
    /// and patch merging's norms use PyTorch's 1e-5, as in `transformers`).
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Used by masked image modeling only; kept so the config round-trips.
    #[serde(default = "d::encoder_stride")]
    pub encoder_stride: i64,
    /// `id2label`, `problem_type` and the keys kept verbatim.
    #[serde(flatten)]
    pub hf: HfFields,
}

mod d {
    use super::Activation;
    pub fn image_size() -> i64 {
        224
    }
    pub fn patch_size() -> i64 {
        4
    }
    pub fn num_channels() -> i64 {
        3
    }
    pub fn embed_dim() -> i64 {
        96
    }
    pub fn depths() -> Vec<i64> {
        vec![2, 2, 6, 2]
    }
    pub fn num_heads() -> Vec<i64> {
        vec![3, 6, 12, 24]
    }
    pub fn window_size() -> i64 {
        7
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn drop_path_rate() -> f64 {
        0.1
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn encoder_stride() -> i64 {
        32
    }
}

/// Keys of `config.json` that `transformers` derives from the others; they
/// are dropped when read and recomputed when written.
pub(crate) const DERIVED: [&str; 3] = ["num_layers", "hidden_size", "stage_names"];

impl Default for SwinConfig {
    /// The configuration of `microsoft/swin-tiny-patch4-window7-224`, without labels.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialise")
    }
}

impl SwinConfig {
    /// Checks the relations the network relies on, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
            ("embed_dim", self.embed_dim),
            ("window_size", self.window_size),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("`{name}` must be positive, got {v}"));
        }
        if self.depths.is_empty() {
            return Err("`depths` is empty: a Swin model needs at least one stage".into());
        }
        if self.depths.len() > 16 {
            return Err(format!(
                "`depths` has {} stages; each doubles the width, at most 16 are supported",
                self.depths.len()
            ));
        }
        if let Some(d) = self.depths.iter().find(|d| **d < 0) {
            return Err(format!("`depths` must not be negative, got {d}"));
        }
        if self.num_heads.len() != self.depths.len() {
            return Err(format!(
                "`num_heads` has {} entries but `depths` has {} stages",
                self.num_heads.len(),
                self.depths.len()
            ));
        }
        for (stage, &heads) in self.num_heads.iter().enumerate() {
            let dim = self.stage_dim(stage);
            if heads <= 0 || dim % heads != 0 {
                return Err(format!(
                    "`num_heads` {heads} of stage {stage} does not divide its width {dim} \
                     (`embed_dim` {} * 2^{stage})",
                    self.embed_dim
                ));
            }
            if self.mlp_ratio.is_nan() || self.mlp_hidden_size(stage) <= 0 {
                return Err(format!(
                    "`mlp_ratio` {} gives no MLP units at stage {stage}",
                    self.mlp_ratio
                ));
            }
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!(
                "`drop_path_rate` must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("`{name}` must be in [0, 1], got {p}"));
            }
        }
        if self.use_absolute_embeddings && self.image_size % self.patch_size != 0 {
            return Err(format!(
                "`image_size` {} is not a multiple of `patch_size` {}, which absolute \
                 position embeddings (`use_absolute_embeddings`) need",
                self.image_size, self.patch_size
            ));
        }
        self.check_input_size(self.image_size, self.image_size)
            .map_err(|e| format!("at `image_size` {}: {e}", self.image_size))
    }

    /// Number of stages (`len(depths)`): the "layers" of partial fine-tuning
    /// and layer-wise LR decay.
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// Width of stage `stage`: `embed_dim * 2^stage`.
    pub fn stage_dim(&self, stage: usize) -> i64 {
        self.embed_dim << stage
    }

    /// Width of the last stage: what the classifier sees (`hidden_size` in
    /// `transformers`).
    pub fn num_features(&self) -> i64 {
        self.stage_dim(self.num_stages() - 1)
    }

    /// `int(mlp_ratio * dim)` of stage `stage` (Python truncates).
    pub fn mlp_hidden_size(&self, stage: usize) -> i64 {
        (self.mlp_ratio * self.stage_dim(stage) as f64) as i64
    }

    /// The feature-map size `(h, w)` of every stage for an `height` x
    /// `width` input: the patch grid rounded up (the input is padded to
    /// whole patches), then halved rounding up at each patch merging.
    pub fn stage_resolutions(&self, height: i64, width: i64) -> Vec<(i64, i64)> {
        let p = self.patch_size;
        let mut hw = ((height + p - 1) / p, (width + p - 1) / p);
        let mut out = Vec::with_capacity(self.num_stages());
        for _ in 0..self.num_stages() {
            out.push(hw);
            hw = ((hw.0 + 1) / 2, (hw.1 + 1) / 2);
        }
        out
    }

    /// Whether the network can take an `height` x `width` input as
    /// `transformers` does: every stage's feature map must be at least one
    /// window on its shorter side. (`transformers` then shrinks the window
    /// to that side and fails on the relative position bias, built for the
    /// configured window.)
    pub fn check_input_size(&self, height: i64, width: i64) -> Result<(), String> {
        for (stage, (h, w)) in self
            .stage_resolutions(height, width)
            .into_iter()
            .enumerate()
        {
            if h.min(w) < self.window_size {
                return Err(format!(
                    "a {height}x{width} input gives stage {stage} a {h}x{w} feature map, \
                     smaller than the {ws}x{ws} attention window (`window_size` {ws}); \
                     `transformers` cannot run it either. The smallest square input on \
                     the patch grid is {min} px",
                    ws = self.window_size,
                    min = self.min_input_size()
                ));
            }
        }
        Ok(())
    }

    /// The smallest square input side, a multiple of the patch size, at
    /// which every stage's feature map holds a whole window.
    pub fn min_input_size(&self) -> i64 {
        let last = self.num_stages() as u32 - 1;
        // Stage `last` has ceil(grid / 2^last) >= window iff grid > (window - 1) * 2^last.
        let grid = (self.window_size - 1) * (1i64 << last) + 1;
        grid * self.patch_size
    }

    /// The `config.json` fields (without the derived `label2id`/`model_type`),
    /// with `num_layers`, `hidden_size` and `stage_names` as `transformers`
    /// writes them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a SwinConfig serialises");
        let obj = value.as_object_mut().expect("config is an object");
        obj.insert("num_layers".into(), self.num_stages().into());
        obj.insert("hidden_size".into(), self.num_features().into());
        let stages: Vec<String> = std::iter::once("stem".to_string())
            .chain((1..=self.num_stages()).map(|i| format!("stage{i}")))
            .collect();
        obj.insert("stage_names".into(), stages.into());
        value
    }
}

impl FamilyConfig for SwinConfig {
    fn model_type(&self) -> &'static str {
        "swin"
    }

    fn architecture(&self) -> &'static str {
        "SwinForImageClassification"
    }

    super::family::hf_fields!();

    fn derived_keys(&self) -> &'static [&'static str] {
        &DERIVED
    }

    fn validate(&self) -> Result<(), String> {
        SwinConfig::validate(self)
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

    fn check_input_size(&self, height: i64, width: i64) -> Result<(), String> {
        SwinConfig::check_input_size(self, height, width)
    }

    /// A Swin "layer" is a stage (blocks at one resolution).
    fn depth(&self) -> usize {
        self.num_stages()
    }

    fn depth_unit(&self) -> &'static str {
        "stages"
    }

    /// The encoder is `encoder.layers.{stage}`: a group per stage.
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        super::swin::param_group(name)
    }

    fn default_preprocessor(&self) -> serde_json::Value {
        super::load::imagenet_preprocessor(
            "ViTImageProcessor",
            serde_json::json!({"height": self.image_size, "width": self.image_size}),
            None,
        )
    }

    fn position_table(&self) -> PositionTable {
        if self.use_absolute_embeddings {
            PositionTable::Grid
        } else {
            PositionTable::None
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
    fn parses_swin_tiny_and_writes_derived_fields() {
        let c = parse(serde_json::json!({
            "model_type": "swin", "architectures": ["SwinForImageClassification"],
            "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "embed_dim": 96,
            "window_size": 7, "image_size": 224, "patch_size": 4, "hidden_size": 768,
            "num_layers": 4, "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
            "out_features": ["stage4"], "out_indices": [4],
            "id2label": {"0": "tench", "1": "goldfish"}
        }))
        .unwrap();
        assert_eq!(c.model_type(), "swin");
        assert_eq!(c.backbone_prefix(), "swin");
        assert_eq!(c.num_hidden_layers(), 4);
        assert_eq!(
            (c.image_size(), c.patch_size(), c.num_channels()),
            (224, 4, 3)
        );
        let ModelConfig::Swin(s) = &c else {
            panic!("a swin config")
        };
        assert_eq!(s.num_features(), 768);
        assert_eq!(s.mlp_hidden_size(3), 3072);
        assert_eq!(
            s.stage_resolutions(224, 224),
            [(56, 56), (28, 28), (14, 14), (7, 7)]
        );
        assert!(!s.hf.extra.contains_key("hidden_size"));
        let back = c.to_json();
        assert_eq!(back["model_type"], "swin");
        assert_eq!(back["hidden_size"], 768);
        assert_eq!(back["num_layers"], 4);
        assert_eq!(back["stage_names"][4], "stage4");
        assert_eq!(back["out_features"][0], "stage4");
        assert_eq!(back["label2id"]["goldfish"], 1);
        assert_eq!(back["mlp_ratio"], 4.0);
        assert_eq!(back["drop_path_rate"], 0.1);
    }

    #[test]
    fn defaults_are_swin_tiny() {
        let c = SwinConfig::default();
        assert_eq!((c.embed_dim, c.window_size, c.patch_size), (96, 7, 4));
        assert_eq!(c.layer_norm_eps, 1e-5);
        assert!(c.validate().is_ok());
        // 7 * 8 patches of 4 px: the last stage is exactly one window.
        assert_eq!(c.min_input_size(), 196);
        assert!(c.check_input_size(196, 196).is_ok());
        assert!(c.check_input_size(192, 300).is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |v: serde_json::Value| parse(v).unwrap_err().to_string();
        let e = err(serde_json::json!({"model_type": "swin", "num_heads": [3, 6]}));
        assert!(e.contains("`num_heads` has 2 entries"), "{e}");
        let e = err(serde_json::json!({"model_type": "swin", "num_heads": [3, 6, 12, 5]}));
        assert!(e.contains("`num_heads` 5 of stage 3"), "{e}");
        let e = err(serde_json::json!({"model_type": "swin", "depths": []}));
        assert!(e.contains("`depths` is empty"), "{e}");
        let e = err(serde_json::json!({"model_type": "swin", "window_size": 0}));
        assert!(e.contains("`window_size` must be positive"), "{e}");
        let e = err(serde_json::json!({"model_type": "swin", "image_size": 64}));
        assert!(
            e.contains("stage 2") && e.contains("`window_size` 7"),
            "{e}"
        );
        let e = err(serde_json::json!({
            "model_type": "swin", "image_size": 226, "use_absolute_embeddings": true
        }));
        assert!(e.contains("use_absolute_embeddings"), "{e}");
        let e = err(serde_json::json!({"model_type": "swin", "drop_path_rate": 1.0}));
        assert!(e.contains("`drop_path_rate`"), "{e}");
    }
}
