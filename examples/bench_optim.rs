//! The optimiser's share of a training step on a ViT-B/16-sized parameter
//! list (200 tensors, 86 M values, layer-wise learning rates, decay and
//! no-decay groups): gradient clipping plus the AdamW update, vitrine's
//! fused step against the per-parameter step it replaced (kept here as the
//! baseline), on the same gradients.
//!
//! Usage: bench_optim [THREADS] [STEPS] [cpu|cuda]  (defaults: all cores, 10,
//! cpu). Prints one JSON line: seconds per step of each, the speed-up, and
//! the kernels each launches per step (counted from the code: the former
//! issued about 13 per parameter, the fused one a few per group).

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vitrine::train::optim::reference::{self, RefParam};
use vitrine::train::optim::AdamW;

/// (name, shape) of ViT-B/16 with a 10-class head, as `transformers` names
/// them.
fn vit_b_shapes() -> Vec<(String, Vec<i64>)> {
    let (d, mlp) = (768i64, 3072i64);
    let mut v: Vec<(String, Vec<i64>)> = vec![
        ("vit.embeddings.cls_token".into(), vec![1, 1, d]),
        ("vit.embeddings.position_embeddings".into(), vec![1, 197, d]),
        (
            "vit.embeddings.patch_embeddings.projection.weight".into(),
            vec![d, 3, 16, 16],
        ),
        (
            "vit.embeddings.patch_embeddings.projection.bias".into(),
            vec![d],
        ),
    ];
    for i in 0..12 {
        let l = format!("vit.encoder.layer.{i}");
        for (n, s) in [
            ("attention.attention.query.weight", vec![d, d]),
            ("attention.attention.query.bias", vec![d]),
            ("attention.attention.key.weight", vec![d, d]),
            ("attention.attention.key.bias", vec![d]),
            ("attention.attention.value.weight", vec![d, d]),
            ("attention.attention.value.bias", vec![d]),
            ("attention.output.dense.weight", vec![d, d]),
            ("attention.output.dense.bias", vec![d]),
            ("layernorm_before.weight", vec![d]),
            ("layernorm_before.bias", vec![d]),
            ("layernorm_after.weight", vec![d]),
            ("layernorm_after.bias", vec![d]),
            ("intermediate.dense.weight", vec![mlp, d]),
            ("intermediate.dense.bias", vec![mlp]),
            ("output.dense.weight", vec![d, mlp]),
            ("output.dense.bias", vec![d]),
        ] {
            v.push((format!("{l}.{n}"), s));
        }
    }
    v.push(("vit.layernorm.weight".into(), vec![d]));
    v.push(("vit.layernorm.bias".into(), vec![d]));
    v.push(("classifier.weight".into(), vec![10, d]));
    v.push(("classifier.bias".into(), vec![10]));
    v
}

fn lr_scale(name: &str) -> f64 {
    let depth = 12;
    let distance = if name.starts_with("vit.embeddings") {
        depth + 1
    } else if let Some(rest) = name.strip_prefix("vit.encoder.layer.") {
        depth - rest.split('.').next().unwrap().parse::<usize>().unwrap()
    } else {
        0
    };
    0.75f64.powi(distance as i32)
}

/// Gives every tensor a gradient (outside the timed region).
fn fill_grads(tensors: &[Tensor]) {
    let loss = tensors
        .iter()
        .map(|t| (t * 0.001).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .unwrap();
    loss.backward();
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    let steps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let device = match args.get(3).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    tch::set_num_threads(threads);
    vitrine::torchx::manual_seed(device, 0).expect("seeding");
    let shapes = vit_b_shapes();
    let make = || -> Vec<Tensor> {
        shapes
            .iter()
            .map(|(_, s)| {
                (Tensor::randn(s.as_slice(), (Kind::Float, device)) * 0.02).set_requires_grad(true)
            })
            .collect()
    };
    let (fused_tensors, former_tensors) = (make(), make());
    let values: i64 = fused_tensors.iter().map(|t| t.numel() as i64).sum();

    let mut fused = AdamW::new(
        shapes
            .iter()
            .zip(&fused_tensors)
            .map(|((n, _), t)| (n.clone(), t.shallow_clone(), lr_scale(n)))
            .collect(),
        0.05,
    );
    let mut former: Vec<RefParam> = shapes
        .iter()
        .zip(&former_tensors)
        .map(|((n, _), t)| RefParam {
            tensor: t.shallow_clone(),
            lr_scale: lr_scale(n),
            decay: vitrine::train::optim::decays(n),
            exp_avg: t.zeros_like(),
            exp_avg_sq: t.zeros_like(),
        })
        .collect();
    let mut former_step = 0;
    fill_grads(&fused_tensors);
    fill_grads(&former_tensors);

    let time = |f: &mut dyn FnMut()| -> f64 {
        f(); // warm-up
        sync(device);
        let started = Instant::now();
        for _ in 0..steps {
            f();
        }
        sync(device);
        started.elapsed().as_secs_f64() / steps as f64
    };
    let former_secs = time(&mut || {
        former_step += 1;
        reference::clip_grad_norm(&former, 1.0);
        reference::step(&mut former, former_step, 1e-4, 0.05);
    });
    let fused_secs = time(&mut || {
        let clipped = fused.clip_grad_norm(1.0).expect("clipping");
        fused.step(1e-4, Some(&clipped.found_inf)).expect("step");
    });
    let decay_groups = 2 * 14; // 14 learning-rate scales, decay and not
    println!(
        "{}",
        serde_json::json!({
            "device": format!("{device:?}"), "threads": threads, "steps": steps,
            "tensors": shapes.len(), "values": values,
            "former_secs_per_step": former_secs, "fused_secs_per_step": fused_secs,
            "speedup": former_secs / fused_secs,
            "former_kernels_per_step": 13 * shapes.len() + 4,
            "fused_groups": decay_groups,
        })
    );
}
