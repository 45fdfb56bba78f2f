//! Which variables belong to which part of the network, and freezing.
//!
//! The trainer uses this for `linear_probe` (only the head trains),
//! `partial` (last N encoder layers + final layernorm + head) and `full`,
//! and for layer-wise LR decay (each part is also its own optimiser group,
//! see [`super::vit`]).

use tch::Tensor;

use super::Model;

/// The part of a model a variable belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamGroup {
    /// Patch projection, CLS token, position embeddings (a CNN's stem).
    Embeddings,
    /// Encoder block `i` (0-based); a CNN's stage `i`; for Swin, stage `i`
    /// (its blocks and the patch merging after them).
    Layer(usize),
    /// Final layernorm (and pooler, when present).
    FinalNorm,
    /// The classifier.
    Head,
}

impl ParamGroup {
    /// The group of a ViT variable from its HF name, `None` if not a ViT name.
    pub fn of_vit_name(name: &str) -> Option<Self> {
        Self::of_hf_name("vit", name)
    }

    /// The group of a variable of a classification model whose backbone
    /// attribute is `prefix` (`vit`, `dinov2`, `convnext`, `resnet`), from its HF name.
    pub fn of_hf_name(prefix: &str, name: &str) -> Option<Self> {
        if name.starts_with("classifier.") {
            return Some(Self::Head);
        }
        let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
        if rest.starts_with("embeddings.") || rest.starts_with("embedder.") {
            Some(Self::Embeddings)
        } else if let Some(layer) = rest.strip_prefix("encoder.layer.") {
            layer.split('.').next()?.parse().ok().map(Self::Layer)
        } else if let Some(stage) = rest.strip_prefix("encoder.stages.") {
            stage.split('.').next()?.parse().ok().map(Self::Layer)
        } else if rest.starts_with("layernorm.") || rest.starts_with("pooler.") {
            Some(Self::FinalNorm)
        } else {
            None
        }
    }

    /// The optimiser group index set on the variable (`set_group`) for a
    /// model of `num_layers` encoder blocks.
    pub fn optimizer_group(self, num_layers: usize) -> usize {
        match self {
            Self::Embeddings => 0,
            Self::Layer(i) => i + 1,
            Self::FinalNorm => num_layers + 1,
            Self::Head => num_layers + 2,
        }
    }

    pub fn is_head(self) -> bool {
        self == Self::Head
    }
}

/// Which variables receive gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Everything.
    All,
    /// The head only (linear probe).
    HeadOnly,
    /// The last `n` encoder blocks, the final layernorm and the head.
    LastLayers(usize),
}

impl Trainable {
    /// Whether a variable of `group` trains, in a model of `num_layers` blocks.
    pub fn includes(self, group: ParamGroup, num_layers: usize) -> bool {
        match self {
            Self::All => true,
            Self::HeadOnly => group.is_head(),
            Self::LastLayers(n) => match group {
                ParamGroup::Embeddings => false,
                ParamGroup::Layer(i) => i + n >= num_layers,
                ParamGroup::FinalNorm | ParamGroup::Head => true,
            },
        }
    }
}

impl Model {
    /// The part of the network the variable `name` belongs to.
    pub fn param_group(&self, name: &str) -> Option<ParamGroup> {
        self.config.family().param_group(name)
    }

    /// Named parameters with their group, sorted by name. Buffers (batch
    /// norms' running statistics and counters: variables of the `VarStore`
    /// that are not trainable) are left out: they never take a gradient.
    pub fn grouped_variables(&self) -> Vec<(String, ParamGroup, Tensor)> {
        let buffers = self.buffer_names();
        let mut vars: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| !buffers.contains(name))
            .map(|(name, t)| {
                let group = self
                    .param_group(&name)
                    .unwrap_or_else(|| panic!("variable `{name}` has no group"));
                (name, group, t)
            })
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Names of the variables that are state rather than parameters
    /// (`running_mean`, `running_var`, `num_batches_tracked`): those the
    /// `VarStore` does not list as trainable.
    pub fn buffer_names(&self) -> std::collections::BTreeSet<String> {
        let trainable: std::collections::HashSet<usize> = self
            .vs
            .trainable_variables()
            .iter()
            .map(|t| t.data_ptr() as usize)
            .collect();
        self.vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !trainable.contains(&(t.data_ptr() as usize)))
            .map(|(name, _)| name)
            .collect()
    }

    /// The buffers ([`Self::buffer_names`]) with their tensors, by name:
    /// training state that is not a parameter, so epoch checkpoints keep it.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let names = self.buffer_names();
        let mut out: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Backbone variables (everything but the head), by name.
    pub fn backbone_variables(&self) -> Vec<(String, Tensor)> {
        self.grouped_variables()
            .into_iter()
            .filter(|(_, g, _)| !g.is_head())
            .map(|(n, _, t)| (n, t))
            .collect()
    }

    /// Head (`classifier.*`) variables, by name.
    pub fn head_variables(&self) -> Vec<(String, Tensor)> {
        self.grouped_variables()
            .into_iter()
            .filter(|(_, g, _)| g.is_head())
            .map(|(n, _, t)| (n, t))
            .collect()
    }

    /// Variables of encoder block `i`, by name.
    pub fn layer_variables(&self, i: usize) -> Vec<(String, Tensor)> {
        self.grouped_variables()
            .into_iter()
            .filter(|(_, g, _)| *g == ParamGroup::Layer(i))
            .map(|(n, _, t)| (n, t))
            .collect()
    }

    /// Sets `requires_grad` on every variable: on for those `which` includes,
    /// off for the rest. Frozen variables get no gradient, so libtorch's
    /// optimisers (AdamW included) skip them, weight decay too.
    /// Returns the number of trainable scalars.
    pub fn set_trainable(&self, which: Trainable) -> i64 {
        self.net.set_trainable_parts(which);
        let layers = self.net.num_layers();
        let mut count = 0;
        for (_, group, t) in self.grouped_variables() {
            let on = which.includes(group, layers);
            let _ = t.set_requires_grad(on);
            if on {
                count += t.numel() as i64;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_hf_names() {
        use ParamGroup::*;
        let cases = [
            ("vit.embeddings.cls_token", Some(Embeddings)),
            (
                "vit.embeddings.patch_embeddings.projection.weight",
                Some(Embeddings),
            ),
            (
                "vit.encoder.layer.11.attention.attention.query.weight",
                Some(Layer(11)),
            ),
            ("vit.encoder.layer.0.output.dense.bias", Some(Layer(0))),
            ("vit.layernorm.weight", Some(FinalNorm)),
            ("vit.pooler.dense.weight", Some(FinalNorm)),
            ("classifier.bias", Some(Head)),
            ("classifier.1.weight", Some(Head)),
            ("blocks.0.attn.qkv.weight", None),
        ];
        for (name, want) in cases {
            assert_eq!(ParamGroup::of_vit_name(name), want, "{name}");
        }
        let cnn = [
            (
                "convnext",
                "convnext.embeddings.layernorm.bias",
                Some(Embeddings),
            ),
            (
                "convnext",
                "convnext.encoder.stages.2.downsampling_layer.1.weight",
                Some(Layer(2)),
            ),
            ("convnext", "convnext.layernorm.weight", Some(FinalNorm)),
            (
                "resnet",
                "resnet.embedder.embedder.normalization.running_var",
                Some(Embeddings),
            ),
            (
                "resnet",
                "resnet.encoder.stages.3.layers.0.shortcut.convolution.weight",
                Some(Layer(3)),
            ),
        ];
        for (prefix, name, want) in cnn {
            assert_eq!(ParamGroup::of_hf_name(prefix, name), want, "{name}");
        }
        assert_eq!(Layer(3).optimizer_group(12), 4);
        assert_eq!(Head.optimizer_group(12), 14);
    }

    #[test]
    fn partial_mode_unfreezes_last_layers_norm_and_head() {
        use ParamGroup::*;
        let t = Trainable::LastLayers(2);
        assert!(!t.includes(Embeddings, 4));
        assert!(!t.includes(Layer(1), 4));
        assert!(t.includes(Layer(2), 4));
        assert!(t.includes(Layer(3), 4));
        assert!(t.includes(FinalNorm, 4));
        assert!(t.includes(Head, 4));
        assert!(!Trainable::HeadOnly.includes(FinalNorm, 4));
        assert!(Trainable::All.includes(Embeddings, 4));
    }
}
