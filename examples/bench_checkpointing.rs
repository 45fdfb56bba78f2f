//! Activation checkpointing's price and gain: full fine-tuning steps of a
//! randomly initialised ViT (forward, cross-entropy, backward, clipping,
//! AdamW) on a fixed batch, with or without `gradient_checkpointing`, and
//! the process's peak resident memory (VmHWM) at the end.
//!
//! Usage: bench_checkpointing THREADS STEPS vit-base|vit-tiny BATCH 0|1
//! (one warm-up step, not timed). Prints one JSON line. Run each setting in
//! its own process (the peak is the process's): `scripts/bench/checkpointing.sh`.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use vitrine::model::load::build_vit;
use vitrine::model::{ImageClassifier, ViTConfig};
use vitrine::train::optim::AdamW;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let threads: i32 = arg(1, "2").parse().expect("THREADS");
    let steps: usize = arg(2, "2").parse().expect("STEPS");
    let model = arg(3, "vit-base");
    let batch: i64 = arg(4, "16").parse().expect("BATCH");
    let checkpointing = arg(5, "0") == "1";
    tch::set_num_threads(threads);
    vitrine::torchx::manual_seed(Device::Cpu, 0).expect("seeding");
    let shape = match model.as_str() {
        "vit-tiny" => serde_json::json!({"hidden_size": 192, "num_hidden_layers": 12,
            "num_attention_heads": 3, "intermediate_size": 768}),
        _ => serde_json::json!({"hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072}),
    };
    let mut json = shape;
    json["image_size"] = 224.into();
    json["patch_size"] = 16.into();
    let config: ViTConfig = serde_json::from_value(json).expect("a ViT config");
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build_vit(&vs, &config, 10);
    let params = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t, 1.0))
        .collect();
    let mut opt = AdamW::new(params, 0.01);
    let x = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        let started = Instant::now();
        opt.zero_grad().expect("dropping gradients");
        if checkpointing {
            let units = net.chain(true);
            let loss = |logits: &Tensor| logits.cross_entropy_for_logits(&y);
            vitrine::train::recompute::forward_backward(&units, Device::Cpu, &x, loss)
                .expect("a checkpointed step");
        } else {
            net.forward_t(&x, true)
                .cross_entropy_for_logits(&y)
                .backward();
        }
        let clipped = opt.clip_grad_norm(1.0).expect("clipping");
        opt.step(1e-4, Some(&clipped.found_inf))
            .expect("the optimiser step");
        if i >= 1 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({"model": model, "batch": batch, "checkpointing": checkpointing,
            "threads": threads, "steps": steps, "secs_per_step": mean,
            "peak_rss_mib": peak_rss_mib()})
    );
}
