//! An adapter's tensors: initialised as PEFT initialises them, attached to
//! a network's taps, merged into the base weights.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::names;
use super::tap::{LoraLinear, LoraPlan, LoraTerm};
use super::{refusal, LoraSpec};
use crate::model::error::Result;
use crate::model::Model;

/// One adapted linear layer.
#[derive(Debug)]
pub struct AdaptedModule {
    /// The tap's checkpoint path (`vit.encoder.layer.0.attention.attention.query`).
    pub path: String,
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
}

/// One LoRA adapter: its settings, its low-rank pairs and its head.
#[derive(Debug)]
pub struct Adapter {
    pub spec: LoraSpec,
    pub modules: Vec<AdaptedModule>,
    /// The classifier's variables by checkpoint name (`classifier.weight`).
    pub head: Vec<(String, Tensor)>,
}

/// The network's taps by checkpoint path; a family without any is refused.
pub(crate) fn sites(model: &Model) -> Result<HashMap<String, &LoraLinear>> {
    let sites = model.net.lora_sites();
    if sites.is_empty() {
        return Err(refusal(
            "lora_unsupported_family",
            format!(
                "LoRA is available for ViT, DINOv2 and Swin, not for `{}`: train it with \
                 `linear_probe`, `partial` or `full`",
                model.config.family().model_type()
            ),
        ));
    }
    Ok(sites.into_iter().map(|s| (s.path.clone(), s)).collect())
}

impl Adapter {
    /// A new adapter for `model`: A drawn like PEFT's (Kaiming-uniform with
    /// `a = sqrt(5)`: U(-1/sqrt(in), 1/sqrt(in)), from the device's seeded
    /// generator, in network order), B zeros; the head is the model's own
    /// head variables (shared, so they train in place). Every tensor
    /// requires grad.
    pub fn init(model: &Model, spec: &LoraSpec) -> Result<Self> {
        spec.validate()?;
        let targets = spec.targets()?;
        sites(model)?;
        let device = model.device();
        let mut modules = Vec::new();
        for site in model.net.lora_sites() {
            if !targets.contains(&site.short_name()) {
                continue;
            }
            let (fan_in, fan_out) = site.shape();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a = Tensor::empty([spec.r, fan_in], (Kind::Float, device))
                .uniform_(-bound, bound)
                .set_requires_grad(true);
            let b = Tensor::zeros([fan_out, spec.r], (Kind::Float, device)).set_requires_grad(true);
            modules.push(AdaptedModule {
                path: site.path.clone(),
                a,
                b,
            });
        }
        let head = model
            .head_variables()
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(true)))
            .collect();
        Ok(Self {
            spec: spec.clone(),
            modules,
            head,
        })
    }

    /// The trainable tensors under their PEFT keys (A, B, then the head).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for m in &self.modules {
            let module = names::module_path(&m.path);
            out.push((names::lora_key(&module, 'A'), m.a.shallow_clone()));
            out.push((names::lora_key(&module, 'B'), m.b.shallow_clone()));
        }
        for (n, t) in &self.head {
            out.push((names::head_key(n), t.shallow_clone()));
        }
        out
    }

    /// Parameters the adapter trains (A, B and the head).
    pub fn num_parameters(&self) -> i64 {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// The term of module `m` over `rows` of a batch.
    pub fn term(&self, m: &AdaptedModule, rows: Option<(i64, i64)>) -> LoraTerm {
        LoraTerm {
            a: m.a.shallow_clone(),
            b: m.b.shallow_clone(),
            scale: self.spec.scale(),
            dropout: self.spec.dropout,
            rows,
        }
    }

    /// Makes every forward pass of `model` add this adapter (the whole
    /// batch), and gives the model this adapter's head (copied, unless it
    /// already is the model's own).
    pub fn attach(&self, model: &Model) -> Result<()> {
        let sites = sites(model)?;
        for s in sites.values() {
            s.clear();
        }
        for m in &self.modules {
            let site = sites.get(&m.path).ok_or_else(|| missing_site(&m.path))?;
            site.set_plan(LoraPlan {
                terms: vec![self.term(m, None)],
                images: 0,
            });
        }
        self.copy_head_into(model)
    }

    /// Folds `scale · B · A` into each base weight, gives the model the
    /// head, and removes the taps' terms: a plain model with the adapter's
    /// outputs.
    pub fn merge_into(&self, model: &Model) -> Result<()> {
        let sites = sites(model)?;
        let scale = self.spec.scale();
        tch::no_grad(|| -> Result<()> {
            for m in &self.modules {
                let site = sites.get(&m.path).ok_or_else(|| missing_site(&m.path))?;
                let delta = m.b.matmul(&m.a) * scale;
                let mut w = site.linear.ws.shallow_clone();
                let _ = w.f_add_(&delta.to_device(w.device()).to_kind(w.kind()))?;
            }
            Ok(())
        })?;
        for s in sites.values() {
            s.clear();
        }
        self.copy_head_into(model)
    }

    fn copy_head_into(&self, model: &Model) -> Result<()> {
        let vars = model.vs.variables();
        for (name, t) in &self.head {
            let mut dst = vars
                .get(name)
                .ok_or_else(|| missing_site(name))?
                .shallow_clone();
            if dst.data_ptr() == t.data_ptr() {
                continue;
            }
            if dst.size() != t.size() {
                return Err(refusal(
                    "adapter_base_mismatch",
                    format!(
                        "the adapter's `{name}` has shape {:?}, the model's {:?}",
                        t.size(),
                        dst.size()
                    ),
                ));
            }
            tch::no_grad(|| dst.f_copy_(t))?;
        }
        Ok(())
    }
}

fn missing_site(path: &str) -> crate::model::ModelError {
    refusal(
        "adapter_base_mismatch",
        format!("the base model has no module `{path}` for this adapter"),
    )
}
