//! AdamW on tensors rather than tch's opaque C++ optimiser, so that its
//! state (moments, step) can be checkpointed and resumed, each parameter can
//! carry its own learning-rate scale (layer-wise decay), and weight decay
//! skips biases and norms as Hugging Face's Trainer does.
//!
//! A step is a handful of kernels whatever the number of parameters:
//! libtorch's fused AdamW (`_fused_adamw_`) once per group of parameters
//! sharing a learning-rate scale and decay, gradient clipping with
//! `_foreach_norm` and `_foreach_mul_` whose factor stays on the device, and
//! `zero_grad` that drops the gradients instead of zeroing them. Nothing
//! reads a value back to the host during a step.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use crate::torchx::{self, AdamWGroup, AdamWHyper, TorchError};

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

/// Parameters updated by one fused call: same learning-rate scale, same
/// decay.
struct Group {
    lr_scale: f64,
    decay: bool,
    members: Vec<usize>,
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Steps taken, as the float32 scalar on the parameters' device that
    /// the fused kernel reads for its bias correction.
    step: Tensor,
    groups: Vec<Group>,
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

/// The gradient-norm clipping of one step, all on the device.
pub struct Clipped {
    /// The global L2 norm of the gradients before clipping (f32 scalar).
    pub total_norm: Tensor,
    /// 1 when that norm is inf or NaN (f32 scalar): the step must be
    /// skipped, which [`AdamW::step`] does when given this flag.
    pub found_inf: Tensor,
}

impl AdamW {
    /// `params`: (name, tensor, lr scale). Tensors must require grad and
    /// live on one device.
    pub fn new(params: Vec<(String, Tensor, f64)>, weight_decay: f64) -> Self {
        let device = params
            .first()
            .map(|(_, t, _)| t.device())
            .unwrap_or(Device::Cpu);
        let params: Vec<Param> = params
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
        let mut groups: Vec<Group> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| g.lr_scale.to_bits() == p.lr_scale.to_bits() && g.decay == p.decay)
            {
                Some(g) => g.members.push(i),
                None => groups.push(Group {
                    lr_scale: p.lr_scale,
                    decay: p.decay,
                    members: vec![i],
                }),
            }
        }
        Self {
            params,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            step: Tensor::zeros(Vec::<i64>::new(), (Kind::Float, device)),
            groups,
        }
    }

    /// Steps taken so far (reads the device: not for the training loop).
    pub fn steps_taken(&self) -> i64 {
        self.step.double_value(&[]) as i64
    }

    /// Drops every gradient (no kernel runs); the next backward allocates
    /// fresh ones.
    pub fn zero_grad(&mut self) -> Result<(), TorchError> {
        let tensors: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect();
        torchx::set_grads_none(&tensors)
    }

    /// The defined gradients, in parameter order.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`,
    /// without a host synchronisation: the factor is
    /// `max_norm / (norm + 1e-6)` when the norm is finite and above
    /// `max_norm`, else exactly 1.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Clipped, TorchError> {
        tch::no_grad(|| {
            let grads = self.grads();
            let device = self.step.device();
            if grads.is_empty() {
                let zero = Tensor::zeros(Vec::<i64>::new(), (Kind::Float, device));
                return Ok(Clipped {
                    total_norm: zero.shallow_clone(),
                    found_inf: zero,
                });
            }
            let norms = torchx::foreach_norm(&grads)?;
            let total = Tensor::stack(&norms, 0)
                .to_kind(Kind::Float)
                .square()
                .sum(Kind::Float)
                .sqrt();
            let finite = total.isfinite();
            let clip = total.gt(max_norm).logical_and(&finite);
            let factor = (max_norm / (&total + 1e-6)).where_self(&clip, &total.ones_like());
            torchx::foreach_mul_(&grads, &factor)?;
            Ok(Clipped {
                found_inf: finite.logical_not().to_kind(Kind::Float),
                total_norm: total,
            })
        })
    }

    /// One AdamW update at learning rate `lr` (before per-parameter scales).
    /// With `found_inf` (an f32 scalar, 1 = skip) the step is skipped on the
    /// device when it is set, and the step count does not advance.
    pub fn step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<(), TorchError> {
        let (beta1, beta2) = self.betas;
        tch::no_grad(|| {
            let _ = self.step.g_add_scalar_(1.0);
            for group in &self.groups {
                let mut params = Vec::with_capacity(group.members.len());
                let mut grads = Vec::with_capacity(group.members.len());
                let mut exp_avgs = Vec::with_capacity(group.members.len());
                let mut exp_avg_sqs = Vec::with_capacity(group.members.len());
                for &i in &group.members {
                    let p = &self.params[i];
                    let grad = p.tensor.grad();
                    if !grad.defined() {
                        continue;
                    }
                    params.push(p.tensor.shallow_clone());
                    grads.push(grad);
                    exp_avgs.push(p.exp_avg.shallow_clone());
                    exp_avg_sqs.push(p.exp_avg_sq.shallow_clone());
                }
                let steps: Vec<Tensor> = params.iter().map(|_| self.step.shallow_clone()).collect();
                torchx::fused_adamw(
                    &AdamWGroup {
                        params: &params,
                        grads: &grads,
                        exp_avgs: &exp_avgs,
                        exp_avg_sqs: &exp_avg_sqs,
                        steps: &steps,
                    },
                    AdamWHyper {
                        lr: lr * group.lr_scale,
                        beta1,
                        beta2,
                        weight_decay: if group.decay { self.weight_decay } else { 0.0 },
                        eps: self.eps,
                    },
                    None,
                    found_inf,
                )?;
            }
            if let Some(found_inf) = found_inf {
                let _ = self.step.g_sub_(found_inf);
            }
            Ok(())
        })
    }

    /// Writes the moments and step to a safetensors file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(self.params.len() * 2 + 1);
        named.push(("step".into(), Tensor::from_slice(&[self.steps_taken()])));
        for p in &self.params {
            named.push((
                format!("exp_avg.{}", p.name),
                p.exp_avg.to_device(Device::Cpu),
            ));
            named.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.to_device(Device::Cpu),
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
        let step = map
            .get("step")
            .context("optimiser state has no step")?
            .int64_value(&[0]);
        tch::no_grad(|| -> anyhow::Result<()> {
            let _ = self.step.fill_(step as f64);
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

/// The AdamW and clipping vitrine used before the fused kernels, one
/// parameter at a time, kept as the reference the fused step must match.
/// The per-parameter AdamW and clipping vitrine used before the fused
/// kernels (about 13 kernels per parameter and a host sync in clipping):
/// the reference the fused step is tested against, and the baseline of
/// `examples/bench_optim.rs`. Not for training.
#[doc(hidden)]
pub mod reference {
    use tch::{Kind, Tensor};

    pub struct RefParam {
        pub tensor: Tensor,
        pub lr_scale: f64,
        pub decay: bool,
        pub exp_avg: Tensor,
        pub exp_avg_sq: Tensor,
    }

    pub fn clip_grad_norm(params: &[RefParam], max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(|g| g.defined())
                .collect();
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

    pub fn step(params: &mut [RefParam], step: i64, lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        tch::no_grad(|| {
            for p in params {
                let grad = p.tensor.grad();
                let lr_p = lr * p.lr_scale;
                if p.decay && wd > 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr_p * wd);
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a small "network": three layer-wise learning-rate
    /// scales, weights that decay and biases/norms that do not.
    fn named_params(seed: i64) -> Vec<(String, Tensor, f64)> {
        let shapes: [(&str, &[i64], f64); 6] = [
            ("vit.embeddings.cls_token", &[1, 1, 8], 0.25),
            ("vit.encoder.layer.0.dense.weight", &[8, 8], 0.5),
            ("vit.encoder.layer.0.dense.bias", &[8], 0.5),
            ("vit.encoder.layer.1.layernorm.weight", &[8], 1.0),
            ("classifier.weight", &[3, 8], 1.0),
            ("classifier.bias", &[3], 1.0),
        ];
        shapes
            .iter()
            .enumerate()
            .map(|(i, (name, shape, scale))| {
                let n: i64 = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|j| (((seed + i as i64 * 31 + j * 7) % 23) as f32 - 11.0) / 10.0)
                    .collect();
                let t = Tensor::from_slice(&values)
                    .view(*shape)
                    .set_requires_grad(true);
                (name.to_string(), t, *scale)
            })
            .collect()
    }

    /// A loss whose gradients change with the step and the values.
    fn backward(params: &[Tensor], t: i64) {
        let loss = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (p.pow_tensor_scalar(2) * (0.3 * (t + i as i64) as f64) + p.sin() * (t as f64))
                    .sum(Kind::Float)
            })
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
    }

    fn assert_close(a: &[Tensor], b: &[Tensor], tol: f64, what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let diff = (x.detach() - y.detach()).abs().max().double_value(&[]);
            assert!(diff <= tol, "{what} {i}: max difference {diff}");
        }
    }

    /// Five steps of the fused AdamW (clipping included) equal the former
    /// per-parameter update within 1e-6, across layer-wise scales, decay
    /// and no-decay groups, with a checkpoint save and load after step 2
    /// into a fresh optimiser.
    #[test]
    fn fused_steps_match_the_reference_across_a_checkpoint() {
        let (lr, wd, max_norm) = (0.05, 0.1, 2.0);
        let mut fused = AdamW::new(named_params(3), wd);
        assert_eq!(fused.groups.len(), 5);
        let mut reference = reference_params(3);
        let dir = tempfile::tempdir().unwrap();
        let mut clipped_some = false;
        for t in 1..=5i64 {
            if t == 3 {
                fused = through_checkpoint(&fused, dir.path(), wd);
                assert_eq!(fused.steps_taken(), 2);
            }
            fused.zero_grad().unwrap();
            let fused_tensors: Vec<Tensor> = fused
                .params
                .iter()
                .map(|p| p.tensor.shallow_clone())
                .collect();
            backward(&fused_tensors, t);
            for p in &reference {
                let _ = p.tensor.grad().f_zero_();
            }
            let ref_tensors: Vec<Tensor> =
                reference.iter().map(|p| p.tensor.shallow_clone()).collect();
            backward(&ref_tensors, t);

            let clipped = fused.clip_grad_norm(max_norm).unwrap();
            let want_norm = reference::clip_grad_norm(&reference, max_norm);
            let got_norm = clipped.total_norm.double_value(&[]);
            assert!(
                (got_norm - want_norm).abs() <= 1e-6 * want_norm.max(1.0),
                "{got_norm} vs {want_norm}"
            );
            clipped_some |= want_norm > max_norm;
            assert_close(
                &fused.grads(),
                &reference
                    .iter()
                    .map(|p| p.tensor.grad())
                    .collect::<Vec<_>>(),
                1e-6,
                "clipped grad",
            );

            fused.step(lr, Some(&clipped.found_inf)).unwrap();
            reference::step(&mut reference, t, lr, wd);
            assert_close(&fused_tensors, &ref_tensors, 1e-6, "parameter");
            assert_close(
                &fused
                    .params
                    .iter()
                    .map(|p| p.exp_avg_sq.shallow_clone())
                    .collect::<Vec<_>>(),
                &reference
                    .iter()
                    .map(|p| p.exp_avg_sq.shallow_clone())
                    .collect::<Vec<_>>(),
                1e-6,
                "second moment",
            );
        }
        assert!(clipped_some, "the test should exercise clipping");
        assert_eq!(fused.steps_taken(), 5);
    }

    /// The reference optimiser's copy of `named_params(seed)`, moments zero.
    fn reference_params(seed: i64) -> Vec<reference::RefParam> {
        named_params(seed)
            .into_iter()
            .map(|(name, tensor, lr_scale)| reference::RefParam {
                decay: decays(&name),
                exp_avg: tensor.zeros_like(),
                exp_avg_sq: tensor.zeros_like(),
                tensor,
                lr_scale,
            })
            .collect()
    }

    /// `opt` saved in `dir` and loaded into a fresh optimiser over the same
    /// tensors, as a resumed job does.
    fn through_checkpoint(opt: &AdamW, dir: &std::path::Path, wd: f64) -> AdamW {
        let file = dir.join("optimizer.safetensors");
        opt.save(&file).unwrap();
        let params: Vec<(String, Tensor, f64)> = opt
            .params
            .iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone(), p.lr_scale))
            .collect();
        let mut fresh = AdamW::new(params, wd);
        fresh.load(&file).unwrap();
        fresh
    }

    /// Clipping leaves small gradients bit-for-bit alone and scales large
    /// ones exactly as before; a non-finite norm clips nothing and flags
    /// the step for skipping.
    #[test]
    fn clipping_on_the_device_equals_the_former_clipping() {
        for (scale, max_norm) in [(0.01, 1.0), (10.0, 1.0), (1.0, 1e-3)] {
            let params = named_params(5);
            let tensors: Vec<Tensor> = params.iter().map(|p| p.1.shallow_clone()).collect();
            let mut opt = AdamW::new(params, 0.0);
            backward(&tensors, 2);
            for g in opt.grads() {
                let _ = g.detach().g_mul_scalar_(scale);
            }
            let before: Vec<Tensor> = opt.grads().iter().map(|g| g.copy()).collect();
            let reference: Vec<reference::RefParam> = tensors
                .iter()
                .zip(&before)
                .map(|(t, g)| {
                    let r = t.detach().copy().set_requires_grad(true);
                    (&r * g).sum(Kind::Float).backward();
                    reference::RefParam {
                        tensor: r,
                        lr_scale: 1.0,
                        decay: false,
                        exp_avg: t.zeros_like(),
                        exp_avg_sq: t.zeros_like(),
                    }
                })
                .collect();
            let want = reference::clip_grad_norm(&reference, max_norm);
            let got = opt.clip_grad_norm(max_norm).unwrap();
            assert_eq!(got.found_inf.double_value(&[]), 0.0);
            let total = got.total_norm.double_value(&[]);
            assert!((total - want).abs() <= 1e-6 * want, "{total} vs {want}");
            let ref_grads: Vec<Tensor> = reference.iter().map(|p| p.tensor.grad()).collect();
            if want <= max_norm {
                for (a, b) in opt.grads().iter().zip(&before) {
                    assert!(a.equal(b), "unclipped gradients must not change");
                }
            }
            assert_close(
                &opt.grads(),
                &ref_grads,
                1e-6 * scale.max(1.0),
                "clipped grad",
            );
        }

        let w = Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone(), 1.0)], 0.0);
        (&w * Tensor::from_slice(&[f32::NAN, 1.0]))
            .sum(Kind::Float)
            .backward();
        let clipped = opt.clip_grad_norm(1.0).unwrap();
        assert_eq!(clipped.found_inf.double_value(&[]), 1.0);
        opt.step(0.1, Some(&clipped.found_inf)).unwrap();
        assert_eq!(Vec::<f32>::try_from(&w.detach()).unwrap(), vec![1.0, 1.0]);
        assert_eq!(opt.steps_taken(), 0);
    }

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
            opt.zero_grad().unwrap();
            // loss = sum(w^3 * t) -> grad = 3 t w^2
            let loss = (w.pow_tensor_scalar(3) * t as f64).sum(Kind::Float);
            loss.backward();
            opt.step(lr, None).unwrap();
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
        opt.step(0.01, None).unwrap();
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
        assert_eq!(opt2.steps_taken(), 1);
        assert!(opt2.params[0]
            .exp_avg
            .allclose(&opt.params[0].exp_avg, 1e-6, 1e-6, false));
    }
}
