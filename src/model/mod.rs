//! Image classifiers (ViT, DINOv2, ConvNeXt, ResNet) in tch `nn`, loaded from and saved to the
//! Hugging Face layout (`config.json`, `model.safetensors`,
//! `preprocessor_config.json`) with no renaming.
//!
//! - [`config`]: `config.json`, dispatched on `model_type`.
//! - [`vit`]: the ViT network, variable paths spelled like `transformers`.
//! - [`dinov2`]: the DINOv2 network (LayerScale, SwiGLU option), same conventions.
//! - [`convnext`], [`resnet`]: the convolutional networks, same conventions
//!   (ResNet's batch norm in `batch_norm.rs`).
//! - [`swin`]: the Swin Transformer (shifted-window attention, stages), same conventions.
//! - [`load`]: strict loading of safetensors checkpoints (HF, bare `ViTModel`, timm).
//! - [`save`]: writes a directory `transformers` loads unchanged.
//! - [`hub`]: resolves a model source (local directory or Hub id) to a directory.
//! - [`params`]: which variables belong to the backbone, a layer, the head; freezing.
//! - [`resize`]: another native input size (position embeddings resampled).
//! - [`preflight`]: what a job checks of its base model before it is queued.

mod activation;
pub mod batch_norm;
pub mod config;
pub mod convnext;
mod convnext_config;
pub mod dinov2;
mod dinov2_config;
pub mod error;
pub mod family;
mod fields;
pub mod hub;
mod layers;
pub mod load;
pub mod lora;
pub mod params;
pub mod preflight;
pub mod regularisation;
pub mod resize;
pub mod resnet;
mod resnet_config;
pub mod save;
pub mod swin;
mod swin_config;
pub mod timm;
pub mod vit;
mod vit_config;

use std::path::PathBuf;

use tch::{nn, Tensor};

pub use config::{
    Activation, ConvNextConfig, Dinov2Config, ModelConfig, ResNetConfig, ResNetLayerType,
    SwinConfig, ViTConfig,
};
pub use error::ModelError;
pub use family::{FamilyConfig, PositionTable};
pub use fields::HfFields;
pub use hub::{resolve_model_source, HubOptions};
pub use load::{load_pretrained, load_pretrained_regularised, CheckpointFormat, LoadReport};
pub use params::{ParamGroup, Trainable};
pub use regularisation::Regularisation;
pub use save::{save_pretrained, ProblemType};

/// What the trainer and the server need from a classification network.
///
/// `Tensor` is `Send` but not `Sync`: a model lives on one thread.
pub trait ImageClassifier: Send {
    /// `[B, F]`: what the classifier sees (final-layernorm CLS token for ViT,
    /// `F = hidden`; CLS and mean patch token concatenated for DINOv2, `F = 2 * hidden`;
    /// the mean final-layernorm token for Swin, `F` = the last stage's width).
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor;
    /// `[B, num_labels]` from features.
    fn head(&self, features: &Tensor) -> Tensor;
    /// `[B, num_labels]` logits from `[B, C, H, W]` pixel values.
    fn forward_t(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(pixel_values, train))
    }
    /// The network as a chain of units, for activation checkpointing
    /// (`train/recompute.rs`): the first takes the pixel values, the last
    /// gives the logits, and composed they are [`Self::forward_t`]. Only
    /// each unit's input is kept between the forward and backward passes;
    /// a unit is an encoder block (ViT, DINOv2, Swin) or a stage (ConvNeXt,
    /// ResNet). One unit (the default) checkpoints nothing.
    fn chain(&self, train: bool) -> Vec<Unit<'_>>;
    /// Encoder depth, for partial fine-tuning and layer-wise LR decay
    /// (blocks for ViT and DINOv2, stages for Swin).
    fn num_layers(&self) -> usize;
    /// For networks with batch norm (ResNet): from now on, `forward_t` with
    /// `train = true` normalises with batch statistics and updates the
    /// running ones only in the parts `which` trains (the stem with
    /// [`ParamGroup::Embeddings`], stage `s` with `Layer(s)`); the others run
    /// as in eval (running statistics, no update), as frozen layers should.
    /// Initially every part trains. [`Model::set_trainable`] calls it.
    ///
    /// Takes `&self` (the setting lives in a `Cell`) because the trainer
    /// holds its model by shared reference. A no-op for networks without
    /// batch norm, where `train` only switches dropout and stochastic depth.
    fn set_trainable_parts(&self, _which: Trainable) {}
    /// For Grad-CAM (`explain/gradcam.rs`): the network cut at the spatial
    /// map it weighs, `[B, C, h, w]`, as (pixel values -> map, map ->
    /// logits), in eval mode. `None` where there is no such map (ViT and
    /// DINOv2, which attention rollout explains).
    fn cam_cut(&self) -> Option<(Unit<'_>, Unit<'_>)> {
        None
    }
    /// For attention rollout (`explain/rollout.rs`), in eval mode: each
    /// encoder layer's attention probabilities `[B, heads, N, N]` over its
    /// tokens, and how many leading tokens are not patches (CLS and
    /// registers). `None` without global self-attention (Swin's windows,
    /// the CNNs).
    fn attention_maps(&self, _pixel_values: &Tensor) -> Option<(Vec<Tensor>, i64)> {
        None
    }
    /// The linear layers a LoRA adapter may adapt (`model/lora`), in
    /// network order; empty for a family without LoRA support.
    fn lora_sites(&self) -> Vec<&lora::LoraLinear> {
        Vec::new()
    }
}

/// [`ImageClassifier::cam_cut`] for networks whose head unit (the last of
/// [`ImageClassifier::chain`]) takes the last stage's `[B, C, h, w]` map.
fn cut_before_head(mut units: Vec<Unit<'_>>) -> Option<(Unit<'_>, Unit<'_>)> {
    let head = units.pop()?;
    let body: Unit<'_> =
        Box::new(move |x: &Tensor| units.iter().fold(x.shallow_clone(), |h, unit| unit(&h)));
    Some((body, head))
}

/// One link of [`ImageClassifier::chain`].
pub type Unit<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;

/// A loaded model: its variables, the network reading them, and the
/// configuration and preprocessing that travel with it when saved.
pub struct Model {
    /// Every variable, named as in the HF checkpoint.
    pub vs: nn::VarStore,
    pub net: Box<dyn ImageClassifier>,
    /// The architecture configuration; its `id2label` is the head's labels.
    pub config: ModelConfig,
    /// The raw `preprocessor_config.json` (or a default `ViTImageProcessor` one).
    pub preprocessor_json: serde_json::Value,
    /// The directory the model was loaded from.
    pub source_dir: PathBuf,
}

impl Model {
    /// A randomly initialised model (weights as `transformers` initialises
    /// them), for tests and experiments without a checkpoint.
    pub fn from_config(
        mut config: ModelConfig,
        labels: Vec<String>,
        device: tch::Device,
    ) -> Result<Self, ModelError> {
        // Checkpoint labels may repeat (ImageNet-1k has two `crane`s), so
        // only user-given labels are checked for duplicates (in `load`).
        if labels.is_empty() {
            return Err(ModelError::InvalidLabels("no labels".into()));
        }
        config.set_labels(labels);
        let vs = nn::VarStore::new(device);
        let net: Box<dyn ImageClassifier> = match &config {
            ModelConfig::Vit(c) => Box::new(load::build_vit(&vs, c, config.labels().len())),
            ModelConfig::Dinov2(c) => Box::new(dinov2::Dinov2ForImageClassification::new(
                &vs.root(),
                c,
                config.labels().len() as i64,
            )),
            ModelConfig::ConvNext(c) => Box::new(convnext::ConvNextForImageClassification::new(
                &vs.root(),
                c,
                config.labels().len() as i64,
            )),
            ModelConfig::ResNet(c) => Box::new(resnet::ResNetForImageClassification::new(
                &vs.root(),
                c,
                config.labels().len() as i64,
            )),
            ModelConfig::Swin(c) => Box::new(swin::SwinForImageClassification::new(
                &vs.root(),
                c,
                config.labels().len() as i64,
            )),
        };
        Ok(Self {
            vs,
            net,
            preprocessor_json: config.family().default_preprocessor(),
            config,
            source_dir: PathBuf::new(),
        })
    }

    /// Inference logits `[B, num_labels]`: checks the input, moves it to the
    /// model's device, runs in eval mode without gradients.
    pub fn logits(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(pixel_values)?;
        let x = pixel_values.to_device(self.device());
        Ok(tch::no_grad(|| self.net.forward_t(&x, false)))
    }

    /// The head's labels, index `i` for logit `i`.
    pub fn labels(&self) -> &[String] {
        self.config.labels()
    }

    pub fn num_labels(&self) -> usize {
        self.labels().len()
    }

    pub fn device(&self) -> tch::Device {
        self.vs.device()
    }

    /// Checks that `pixel_values` is a `[B, C, H, W]` float batch the network
    /// can take (channels as configured, at least one patch per side, or
    /// what a CNN's downsampling needs), so a bad request is an error rather
    /// than a libtorch panic.
    pub fn check_input(&self, pixel_values: &Tensor) -> Result<(), ModelError> {
        let size = pixel_values.size();
        let (channels, patch) = (self.config.num_channels(), self.config.patch_size());
        let min = self.config.min_input_size();
        let bad = |why: String| Err(ModelError::InvalidInput(why));
        if size.len() != 4 {
            return bad(format!(
                "pixel_values must be [batch, channels, height, width], got {size:?}"
            ));
        }
        if size[0] == 0 {
            return bad("empty batch".into());
        }
        if size[1] != channels {
            return bad(format!(
                "the model takes {channels} channel(s), got {}",
                size[1]
            ));
        }
        if min != patch && (size[2] < min || size[3] < min) {
            return bad(format!(
                "images of {}x{} are smaller than the model's minimum input of {min}x{min}",
                size[2], size[3]
            ));
        }
        if size[2] < patch || size[3] < patch {
            return bad(format!(
                "images of {}x{} are smaller than one {patch}x{patch} patch",
                size[2], size[3]
            ));
        }
        if !pixel_values.is_floating_point() {
            return bad(format!(
                "pixel_values must be floating point, got {:?}",
                pixel_values.kind()
            ));
        }
        self.config
            .family()
            .check_input_size(size[2], size[3])
            .map_err(ModelError::InvalidInput)
    }

    /// Side length of the square input the checkpoint was trained at.
    pub fn image_size(&self) -> i64 {
        self.config.image_size()
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("source_dir", &self.source_dir)
            .field("device", &self.vs.device())
            .finish_non_exhaustive()
    }
}
