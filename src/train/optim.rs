//! AdamW written on tensors rather than tch's opaque C++ optimiser, so that
//! its state (moments, step) can be checkpointed and resumed, each parameter
//! can carry its own learning-rate scale (layer-wise decay), and weight
//! decay skips biases and norms as Hugging Face's Trainer does.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use tch::{Kind, Tensor};

/// One trainable parameter and its optimiser state.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    /// Multiplies the scheduled learning rate (layer-wise decay).
    pub lr_scale: f64,
    pub decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Optimiser steps taken so far.
    pub step: i64,
}

/// Biases, norms and token/position embeddings are not decayed.
pub fn decays(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !(n.ends_with(".bias")
        || n.ends_with("bias")
        || n.contains("norm")
        || n.contains("cls_token")
        || n.contains("position_embeddings")
        || n.contains("mask_token")
        || n.contains("register_tokens")
        || n.contains("lambda1"))
}

impl AdamW {
    /// `params`: (name, tensor, lr scale). Tensors must require grad.
    pub fn new(params: Vec<(String, Tensor, f64)>, weight_decay: f64) -> Self {
        let params = params
            .into_iter()
            .map(|(name, tensor, lr_scale)| Param {
                decay: decays(&name),
                exp_avg: tensor.zeros_like(),
                exp_avg_sq: tensor.zeros_like(),
                name,
                tensor,
                lr_scale,
            })
            .collect();
        Self {
            params,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`;
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(|g| g.defined())
                .collect();
            if grads.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(
                &grads
                    .iter()
                    .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
                    .collect::<Vec<_>>(),
                0,
            )
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
            if total.is_finite() && total > max_norm {
                let scale = max_norm / (total + 1e-6);
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
            total
        })
    }

    /// One AdamW update at learning rate `lr` (before per-parameter scales).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let (wd, eps) = (self.weight_decay, self.eps);
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr_p = lr * p.lr_scale;
                if p.decay && wd > 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr_p * wd);
                }
                // In place where libtorch allows it: three temporaries per
                // parameter instead of eight (the step is memory-bound).
                let _ = p.exp_avg.lerp_(&grad, 1.0 - b1);
                let _ = p.exp_avg_sq.g_mul_scalar_(b2);
                let _ = p.exp_avg_sq.addcmul_(&(&grad * (1.0 - b2)), &grad);
                let mut denom = p.exp_avg_sq.sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt());
                let _ = denom.g_add_scalar_(eps);
                let _ = p.tensor.addcdiv_(&(&p.exp_avg * (-lr_p / bc1)), &denom);
            }
        });
    }

    /// Writes the moments and step to a safetensors file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(self.params.len() * 2 + 1);
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        for p in &self.params {
            named.push((
                format!("exp_avg.{}", p.name),
                p.exp_avg.to_device(tch::Device::Cpu),
            ));
            named.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.to_device(tch::Device::Cpu),
            ));
        }
        Tensor::write_safetensors(&named, path).context("writing optimiser state")
    }

    /// Restores what `save` wrote; every parameter must be found.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let map: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .context("reading optimiser state")?
            .into_iter()
            .collect();
        self.step = map
            .get("step")
            .context("optimiser state has no step")?
            .int64_value(&[0]);
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in &mut self.params {
                for (prefix, dst) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let src = map
                        .get(&format!("{prefix}.{}", p.name))
                        .with_context(|| format!("optimiser state lacks {prefix}.{}", p.name))?;
                    dst.copy_(src);
                }
            }
            Ok(())
        })
    }
}

/// Linear warmup to the peak, then cosine decay to zero.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if total == 0 {
        return peak;
    }
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!(lr_at(55, 100, 10, 1.0) < 0.6);
        assert!(lr_at(100, 100, 10, 1.0).abs() < 1e-12);
    }

    #[test]
    fn no_decay_for_biases_norms_and_embeddings() {
        assert!(decays(
            "vit.encoder.layer.0.attention.attention.query.weight"
        ));
        assert!(!decays(
            "vit.encoder.layer.0.attention.attention.query.bias"
        ));
        assert!(!decays("vit.encoder.layer.0.layernorm_before.weight"));
        assert!(!decays("vit.embeddings.cls_token"));
    }

    /// Matches torch.optim.AdamW's update on a known gradient.
    /// Three steps with changing gradients against the textbook AdamW
    /// (decoupled decay, bias-corrected moments) in f64.
    #[test]
    fn several_steps_match_the_textbook_update() {
        let start = [0.5f64, -1.5, 3.0];
        let w = Tensor::from_slice(&start.map(|v| v as f32)).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone(), 1.0)], 0.1);
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.05f64);
        let (mut x, mut m, mut v) = (start, [0.0f64; 3], [0.0f64; 3]);
        for t in 1..=3 {
            opt.zero_grad();
            // loss = sum(w^3 * t) -> grad = 3 t w^2
            let loss = (w.pow_tensor_scalar(3) * t as f64).sum(Kind::Float);
            loss.backward();
            opt.step(lr);
            for i in 0..3 {
                let g = 3.0 * t as f64 * x[i] * x[i];
                x[i] *= 1.0 - lr * 0.1;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                x[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        let got: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        for (g, want) in got.iter().zip(x) {
            assert!((*g as f64 - want).abs() < 1e-5, "{got:?} vs {x:?}");
        }
    }

    #[test]
    fn one_step_matches_the_closed_form() {
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone(), 1.0)], 0.1);
        let loss = (&w * &w).sum(Kind::Float); // grad = 2w
        loss.backward();
        opt.step(0.01);
        // First step: m/(1-b1) = g, v/(1-b2) = g^2 -> update = lr * sign(g).
        let got: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("o.safetensors")).unwrap();
        let w2 = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt2 = AdamW::new(vec![("w".into(), w2, 1.0)], 0.1);
        opt2.load(&dir.path().join("o.safetensors")).unwrap();
        assert_eq!(opt2.step, 1);
        assert!(opt2.params[0]
            .exp_avg
            .allclose(&opt.params[0].exp_avg, 1e-6, 1e-6, false));
    }
}
