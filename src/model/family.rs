//! What sets one model family apart, written once per family: each
//! `*_config.rs` implements [`FamilyConfig`], and [`super::ModelConfig`]
//! turns itself into a `&dyn FamilyConfig` in one place
//! ([`super::ModelConfig::family`]). Loading, saving, resizing, preflight,
//! regularisation and parameter grouping ask the trait; only building the
//! network ([`super::Model::from_config`]) and writing its ONNX graph
//! (`export`) still match on the family, because those are different code,
//! not different data.

use super::fields::HfFields;
use super::params::ParamGroup;

/// How a family's network takes a new native input size
/// ([`super::Model::set_image_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionTable {
    /// No learned positions (convolutions, relative bias): only
    /// `image_size` changes.
    None,
    /// `{prefix}.embeddings.position_embeddings`, a class token then a
    /// square grid (ViT, DINOv2), resampled bicubically (antialiased for
    /// `dinov2_with_registers`, as `transformers` interpolates it).
    ClassTokenGrid { antialias: bool },
    /// A grid without class token (Swin's absolute position embeddings).
    Grid,
}

/// The accessors of the shared Hugging Face fields, written the same way
/// by every family (its `hf` field): `hf_fields!();` in the impl.
macro_rules! hf_fields {
    () => {
        fn hf(&self) -> &$crate::model::HfFields {
            &self.hf
        }

        fn hf_mut(&mut self) -> &mut $crate::model::HfFields {
            &mut self.hf
        }
    };
}
pub(crate) use hf_fields;

/// The per-family facts of a `config.json`. Defaults fit the plain vision
/// transformer; a family overrides what differs.
pub trait FamilyConfig: std::fmt::Debug + Send + Sync {
    /// `model_type` of `config.json`.
    fn model_type(&self) -> &'static str;

    /// The attribute name of the backbone in the classification model, the
    /// prefix of its variable names (`vit.`, `dinov2_with_registers.`): the
    /// `base_model_prefix` of `transformers`.
    fn backbone_prefix(&self) -> &'static str {
        self.model_type()
    }

    /// The `transformers` class written to `architectures` on save.
    fn architecture(&self) -> &'static str;

    /// The shared Hugging Face fields (labels, problem type, kept keys).
    fn hf(&self) -> &HfFields;

    fn hf_mut(&mut self) -> &mut HfFields;

    /// Keys of `config.json` that `transformers` derives from this family's
    /// fields: dropped when read (besides [`super::fields::DERIVED_KEYS`]),
    /// recomputed by [`Self::fields_json`].
    fn derived_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks the relations the network relies on, naming the field.
    fn validate(&self) -> Result<(), String>;

    /// The family's `config.json` fields (without the derived `label2id`
    /// and `model_type`, which [`super::ModelConfig::to_json`] adds).
    fn fields_json(&self) -> serde_json::Value;

    /// The side of the square input the checkpoint was trained at.
    fn image_size(&self) -> i64;

    /// Records a new native input side (after any position resampling).
    fn set_image_size(&mut self, size: i64);

    /// The side an input size must be a multiple of: the patch size of the
    /// transformers and of ConvNeXt's stem; 1 for a network that takes any
    /// size.
    fn patch_size(&self) -> i64;

    fn num_channels(&self) -> i64;

    /// The smallest input side the network takes (one patch by default).
    fn min_input_size(&self) -> i64 {
        self.patch_size()
    }

    /// Further limits on a `height` x `width` input than its minimum side
    /// (Swin's attention windows); the error says why.
    fn check_input_size(&self, _height: i64, _width: i64) -> Result<(), String> {
        Ok(())
    }

    /// Units of partial fine-tuning and layer-wise decay: encoder blocks,
    /// or stages for the CNNs and Swin.
    fn depth(&self) -> usize;

    /// What one unit of [`Self::depth`] is called, in messages.
    fn depth_unit(&self) -> &'static str {
        "encoder blocks"
    }

    /// The part of the network the variable `name` belongs to.
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        ParamGroup::of_hf_name(self.backbone_prefix(), name)
    }

    /// The checkpoint name of the classifier's weight.
    fn head_weight_name(&self) -> &'static str {
        "classifier.weight"
    }

    /// Checkpoint tensors of another head this family's checkpoints may
    /// carry and loading may leave unused (besides pooler and mask token).
    fn is_foreign_head(&self, _name: &str) -> bool {
        false
    }

    /// The `preprocessor_config.json` a checkpoint without one gets: the
    /// defaults of the image processor the family uses on the Hub.
    fn default_preprocessor(&self) -> serde_json::Value;

    /// How a new native input size reaches the weights.
    fn position_table(&self) -> PositionTable {
        PositionTable::None
    }

    /// The stochastic depth rate, where the family has one.
    fn drop_path_rate_mut(&mut self) -> Option<&mut f64> {
        None
    }

    /// The dropout probability (`hidden_dropout_prob`), where the family has one.
    fn dropout_mut(&mut self) -> Option<&mut f64> {
        None
    }
}
