//! The compute bound of the training benchmark: one full fine-tuning step
//! (forward, cross-entropy, backward, clipping, AdamW) of the ViT-Tiny-sized
//! model on a fixed random batch, no data loading at all, with vitrine's
//! model and optimiser.
//!
//! Usage: bench_step THREADS [STEPS] (batch 32 at 224 px; 2 warm-up steps
//! are not timed). Prints one JSON line. Run through
//! `scripts/bench/train_step.sh`, which times the same step in PyTorch.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use vitrine::model::load::build_vit;
use vitrine::model::{ImageClassifier, ViTConfig};
use vitrine::train::optim::AdamW;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    tch::set_num_threads(threads);
    vitrine::torchx::manual_seed(Device::Cpu, 0).expect("seeding");
    let config: ViTConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3,
        "intermediate_size": 768, "image_size": 224, "patch_size": 16
    }))
    .expect("a ViT-Tiny config");
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build_vit(&vs, &config, 4);
    let params = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t, 1.0))
        .collect();
    let mut opt = AdamW::new(params, 0.01);
    let x = Tensor::randn([32, 3, 224, 224], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(4, [32], (Kind::Int64, Device::Cpu));
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let started = Instant::now();
        opt.zero_grad().expect("dropping gradients");
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
        loss.backward();
        let _ = loss.double_value(&[]);
        let clipped = opt.clip_grad_norm(1.0).expect("clipping");
        opt.step(1e-4, Some(&clipped.found_inf))
            .expect("the optimiser step");
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{}",
        serde_json::json!({"impl": "vitrine", "threads": threads, "steps": steps,
            "secs_per_step": mean, "images_per_sec": 32.0 / mean})
    );
}
