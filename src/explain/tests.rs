//! Every family explains by the methods it has, maps are `[H, W]` in
//! `[0, 1]`, and integrated gradients add up to the score difference.
//! Agreement with `pytorch-grad-cam`, `captum` and a Python rollout is in
//! `tests/model/explain_parity.rs`.

use tch::{Device, Kind, Tensor};

use super::integrated::Baseline;
use super::*;
use crate::imaging::Normalisation;
use crate::model::{Model, ModelConfig};

const IMAGENET: Normalisation = Normalisation {
    scale: 1.0 / 255.0,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

fn path(steps: usize) -> PathOptions {
    PathOptions {
        steps,
        baseline: Baseline::Mean,
        normalisation: IMAGENET,
    }
}

fn tiny() -> Vec<Model> {
    let configs = [
        serde_json::json!({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}),
        serde_json::json!({"model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 32, "patch_size": 8,
            "num_register_tokens": 2}),
        serde_json::json!({"model_type": "swin", "embed_dim": 16, "depths": [2, 2],
            "num_heads": [2, 2], "window_size": 4, "image_size": 32, "patch_size": 4}),
        serde_json::json!({"model_type": "convnext", "hidden_sizes": [8, 16],
            "depths": [2, 1], "num_stages": 2, "image_size": 32, "patch_size": 4}),
        serde_json::json!({"model_type": "resnet", "embedding_size": 8,
            "hidden_sizes": [8, 16], "depths": [1, 2], "layer_type": "basic"}),
    ];
    tch::manual_seed(7);
    configs
        .into_iter()
        .map(|json| {
            let config = ModelConfig::from_json(json, std::path::Path::new("config.json")).unwrap();
            let labels = (0..4).map(|i| format!("c{i}")).collect();
            Model::from_config(config, labels, Device::Cpu).unwrap()
        })
        .collect()
}

#[test]
fn each_family_explains_with_its_methods_only() {
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    for model in tiny() {
        let family = model.config.model_type();
        let can = Method::for_family(family);
        for method in Method::ALL {
            let out = explain(model.net.as_ref(), &x, method, &[0, 2], &path(8));
            assert_eq!(out.is_some(), can.contains(&method), "{family} {method:?}");
            let Some(out) = out else { continue };
            assert_eq!(out.maps.len(), 2);
            for map in &out.maps {
                assert_eq!(map.size(), [32, 32], "{family} {method:?}");
                let (lo, hi) = (map.min().double_value(&[]), map.max().double_value(&[]));
                assert!(
                    lo >= -1e-6 && hi <= 1.0 + 1e-6,
                    "{family} {method:?}: {lo}..{hi}"
                );
                assert!(hi > 0.5, "{family} {method:?}: a map has a peak ({hi})");
            }
        }
    }
}

#[test]
fn integrated_gradients_add_up_to_the_score_difference() {
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    for model in tiny() {
        // As after training, no bias is zero: from a black image, random
        // init's zero biases give all-zero tokens, where layer norm's
        // gradient is 1/sqrt(eps) and the path integral is not smooth.
        tch::no_grad(|| {
            for (name, mut var) in model.vs.variables() {
                if name.ends_with(".bias") {
                    var.copy_(&(var.randn_like() * 0.1));
                }
            }
        });
        let zeros = x.select(0, 0).zeros_like();
        let ig = integrated::integrated_gradients(model.net.as_ref(), &x, 1, 256, &zeros);
        let c = ig.completeness;
        let gap = (c.attribution_sum - c.score_difference).abs();
        assert!(
            gap <= 0.01 * c.score_difference.abs().max(1e-3),
            "{}: {c:?}",
            model.config.model_type()
        );
    }
}

#[test]
fn the_trapezoid_rule_has_captums_weights() {
    let (alphas, weights) = integrated::trapezoid(5);
    assert_eq!(alphas, [0.0, 0.25, 0.5, 0.75, 1.0]);
    assert_eq!(weights, [0.1, 0.2, 0.2, 0.2, 0.1]);
    assert!((weights.iter().sum::<f64>() - 0.8).abs() < 1e-12);
}

#[test]
fn rollout_of_uniform_attention_is_flat() {
    // A ViT whose queries and keys are zero attends uniformly: every patch
    // flows into CLS alike.
    let model = tiny().remove(0);
    tch::no_grad(|| {
        for (name, mut var) in model.vs.variables() {
            if name.contains(".query.") || name.contains(".key.") {
                let _ = var.zero_();
            }
        }
    });
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let map = rollout::rollout(model.net.as_ref(), &x).unwrap();
    assert_eq!(map.size(), [4, 4]);
    let spread = (map.max() - map.min()).double_value(&[]);
    assert!(spread < 1e-6, "{map}");
}

#[test]
fn baselines_are_the_normalised_mean_black_and_white() {
    let x = Tensor::randn([3, 4, 4], (Kind::Float, Device::Cpu));
    let at = |b: Baseline, c: i64| b.tensor(&x, &IMAGENET).double_value(&[c, 1, 2]);
    assert_eq!(at(Baseline::Mean, 0), 0.0);
    assert!((at(Baseline::Black, 0) - (-0.485 / 0.229)).abs() < 1e-6);
    assert!((at(Baseline::White, 2) - ((1.0 - 0.406) / 0.225)).abs() < 1e-6);
    assert_eq!(Baseline::parse("black"), Some(Baseline::Black));
    assert_eq!(Baseline::parse("grey"), None);
}
