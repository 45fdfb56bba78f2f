//! Activation checkpointing (`gradient_checkpointing: true`): a training
//! forward pass that keeps only the input of each unit of the network (an
//! encoder block, or a stage of a CNN: [`ImageClassifier::chain`]), and a
//! backward pass that recomputes one unit at a time from its input.
//!
//! Peak memory is then the units' inputs plus one unit's activations,
//! instead of every activation of the network, for one more forward pass.
//!
//! It runs on the trainer's own thread, unit by unit, instead of through a
//! custom autograd function, so the autocast state, the batch-norm mode
//! and the model's borrows stay where they are. The gradient reaching a
//! unit's output `g` is pushed through it as the backward of `sum(out * g)`,
//! whose gradient with respect to `out` is `g` exactly. Dropout and drop
//! path replay the same masks: each unit's recomputation starts from the
//! generator state its forward pass started from, and the state after the
//! whole forward pass is put back at the end, so the run draws the same
//! numbers as one without checkpointing.

use tch::{Device, Tensor};

use crate::model::batch_norm::recomputing;
use crate::model::Unit;
use crate::torchx;

/// Runs `units` forward on `x` keeping only their inputs, calls `backward`
/// on what `loss` makes of the logits (the loss to differentiate, scaled as
/// the caller needs), then back-propagates through every unit. Gradients
/// accumulate into the parameters as a plain backward pass's would.
pub fn forward_backward(
    units: &[Unit<'_>],
    device: Device,
    x: &Tensor,
    loss: impl FnOnce(&Tensor) -> Tensor,
) -> Result<(), String> {
    let err = |e: torchx::TorchError| e.0;
    let Some((last, body)) = units.split_last() else {
        return Err("a network without units".into());
    };
    // Forward without a graph: each unit's input and starting generator state.
    let mut inputs = Vec::with_capacity(body.len());
    let mut states = Vec::with_capacity(body.len());
    let mut h = x.shallow_clone();
    for unit in body {
        states.push(torchx::rng_state(device).map_err(err)?);
        let next = tch::no_grad(|| unit(&h));
        inputs.push(std::mem::replace(&mut h, next));
    }
    let top = leaf(&h);
    let logits = last(&top);
    loss(&logits).backward();
    let after = torchx::rng_state(device).map_err(err)?;
    let mut grad = top.grad();
    for (k, unit) in body.iter().enumerate().rev() {
        if !grad.defined() {
            break; // nothing below receives a gradient: all frozen
        }
        torchx::set_rng_state(device, &states[k]).map_err(err)?;
        // The pixel values need no gradient; a unit's input does.
        let input = if k == 0 {
            inputs[0].shallow_clone()
        } else {
            leaf(&inputs[k])
        };
        let out = recomputing(|| unit(&input));
        if out.requires_grad() {
            (out * &grad).sum(tch::Kind::Float).backward();
        }
        grad = if k > 0 { input.grad() } else { Tensor::new() };
    }
    torchx::set_rng_state(device, &after).map_err(err)
}

/// A graph leaf holding `t`'s values, whose gradient the backward pass fills.
fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig};
    use tch::{Kind, Reduction};

    /// Tiny random networks of every family; `noise` turns on dropout and
    /// stochastic depth where the family has them.
    fn tiny(noise: f64) -> Vec<(&'static str, Model)> {
        let configs = [
            (
                "vit",
                serde_json::json!({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 3,
                "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8,
                "hidden_dropout_prob": noise}),
            ),
            (
                "dinov2",
                serde_json::json!({"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 3,
                "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 32, "patch_size": 8,
                "hidden_dropout_prob": noise, "drop_path_rate": noise}),
            ),
            (
                "swin",
                serde_json::json!({"model_type": "swin", "embed_dim": 16, "depths": [2, 2],
                "num_heads": [2, 2], "window_size": 4, "image_size": 32, "patch_size": 4,
                "hidden_dropout_prob": noise, "drop_path_rate": noise}),
            ),
            (
                "convnext",
                serde_json::json!({"model_type": "convnext", "hidden_sizes": [8, 16],
                "depths": [2, 1], "num_stages": 2, "image_size": 32, "patch_size": 4, "drop_path_rate": noise}),
            ),
            (
                "resnet",
                serde_json::json!({"model_type": "resnet", "embedding_size": 8,
                "hidden_sizes": [8, 16], "depths": [1, 2], "layer_type": "basic"}),
            ),
        ];
        configs
            .into_iter()
            .map(|(name, json)| {
                let config =
                    ModelConfig::from_json(json, std::path::Path::new("config.json")).unwrap();
                let labels = (0..5).map(|i| format!("c{i}")).collect();
                (
                    name,
                    Model::from_config(config, labels, Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    fn loss(logits: &Tensor, y: &Tensor) -> Tensor {
        logits.cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
    }

    /// Every parameter's gradient after one backward pass, plain or
    /// checkpointed, from the same generator state.
    fn gradients(
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        checkpointed: bool,
    ) -> Vec<(String, Tensor)> {
        let vars = model.vs.trainable_variables();
        for v in &vars {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        torchx::manual_seed(Device::Cpu, 11).unwrap();
        if checkpointed {
            let units = model.net.chain(true);
            assert!(units.len() >= 4, "a chain of units");
            forward_backward(&units, Device::Cpu, x, |l| loss(l, y)).unwrap();
        } else {
            loss(&model.net.forward_t(x, true), y).backward();
        }
        let mut named: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(n, v)| {
                let g = v.grad();
                (n, if g.defined() { g.copy() } else { g })
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|((n, x), (_, y))| {
                // Unused variables (DINOv2's mask token) have none either way.
                assert_eq!(x.defined(), y.defined(), "{n}: a gradient one way only");
                if x.defined() {
                    (x - y).abs().max().double_value(&[])
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn checkpointed_gradients_equal_plain_ones_for_every_family() {
        let x = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 4]);
        for (name, model) in tiny(0.0) {
            let plain = gradients(&model, &x, &y, false);
            let checkpointed = gradients(&model, &x, &y, true);
            let d = max_difference(&plain, &checkpointed);
            assert!(d <= 1e-6, "{name}: gradients differ by {d}");
        }
    }

    /// Dropout and stochastic depth draw the same masks in the recomputation.
    #[test]
    fn recomputation_replays_dropout() {
        let x = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 4]);
        for (name, model) in tiny(0.2) {
            if name == "resnet" {
                continue; // no dropout
            }
            // The generator is the process's: a test drawing from it in
            // between spoils one try, never five.
            let same = (0..5).any(|_| {
                let plain = gradients(&model, &x, &y, false);
                let checkpointed = gradients(&model, &x, &y, true);
                max_difference(&plain, &checkpointed) <= 1e-6
            });
            assert!(same, "{name}: dropout masks differ");
        }
    }

    /// Batch norm counts and moves its running statistics once per step.
    #[test]
    fn batch_norm_statistics_move_once() {
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let state = |m: &Model| {
            let mut v =
                m.vs.variables()
                    .into_iter()
                    .filter(|(n, _)| n.contains("running") || n.contains("num_batches"))
                    .collect::<Vec<_>>();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.into_iter().map(|(_, t)| t.copy()).collect::<Vec<_>>()
        };
        let [(_, a), (_, mut b)] = [tiny(0.0).pop().unwrap(), tiny(0.0).pop().unwrap()];
        b.vs.copy(&a.vs).unwrap();
        gradients(&a, &x, &y, false);
        gradients(&b, &x, &y, true);
        for (s, t) in state(&a).iter().zip(state(&b)) {
            assert!(s.equal(&t), "running statistics differ");
        }
    }
}
