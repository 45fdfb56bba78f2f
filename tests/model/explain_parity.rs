//! Explanations of vitrine against the libraries people use for them, on
//! the same tiny random `transformers` checkpoints and input
//! (tests/python/make_explain_fixtures.py, one Python run): Grad-CAM
//! equals `pytorch-grad-cam` within 1e-4, attention rollout a Python
//! rollout of `output_attentions` within 1e-5, and integrated gradients
//! `captum` within 1e-4.

use std::collections::HashMap;
use std::path::Path;

use crate::support::{self, assert_close_tol};
use tch::{Device, Tensor};
use vitrine::explain::{gradcam, integrated, rollout};
use vitrine::model::{load_pretrained, Model};

fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_explain_fixtures.py")
}

fn load(name: &str) -> (Model, HashMap<String, Tensor>) {
    let model =
        load_pretrained(&support::model_dir_of(fixtures(), name), Device::Cpu, None).unwrap();
    (model, support::io_of(fixtures(), name))
}

#[test]
fn gradcam_equals_pytorch_grad_cam() {
    for name in ["convnext", "resnet", "swin"] {
        let (model, io) = load(name);
        let maps = gradcam::gradcam(model.net.as_ref(), &io["pixel_values"], &[0, 2]).unwrap();
        assert_close_tol(
            &format!("{name} gradcam"),
            &Tensor::stack(&maps, 0),
            &io["gradcam"],
            1e-4,
        );
    }
}

#[test]
fn attention_rollout_equals_a_python_rollout() {
    for name in ["vit", "dinov2_reg"] {
        let (model, io) = load(name);
        let grid = rollout::rollout(model.net.as_ref(), &io["pixel_values"]).unwrap();
        assert_close_tol(&format!("{name} rollout"), &grid, &io["rollout"], 1e-5);
    }
}

#[test]
fn integrated_gradients_equal_captum() {
    for name in ["vit", "dinov2_reg", "swin", "convnext", "resnet"] {
        let (model, io) = load(name);
        let x = &io["pixel_values"];
        let ig = integrated::integrated_gradients(
            model.net.as_ref(),
            x,
            1,
            16,
            &x.select(0, 0).zeros_like(),
        );
        assert_close_tol(
            &format!("{name} integrated gradients"),
            &ig.attributions.unsqueeze(0),
            &io["ig"],
            1e-4,
        );
        // captum's convergence delta is sum(attributions) - (f(x) - f(0)).
        // At 16 steps both fall short by about 1/16 (captum's weights; see
        // `integrated::trapezoid`): completeness within 1% is checked at
        // 256 steps in the unit tests.
        let c = ig.completeness;
        let delta = c.attribution_sum - c.score_difference;
        let want = io["ig_delta"].double_value(&[0]);
        println!(
            "{name}: delta {delta:.3e}, captum {want:.3e}, score difference {:.3e}",
            c.score_difference
        );
        assert!(
            (delta - want).abs() < 1e-5,
            "{name}: delta {delta} vs captum {want}"
        );
    }
}
