//! Forward time of ViT-B/16 (random init, the configuration of
//! `google/vit-base-patch16-224`, 1000 labels) in vitrine.
//!
//! Usage: bench_vit_forward INPUT.safetensors THREADS ITERATIONS
//! (`pixel_values` in INPUT, e.g. `[8, 3, 224, 224]`). Prints one JSON line
//! with the median and min milliseconds per forward. Run through
//! `scripts/bench/vit_forward.sh`, which times `transformers` on the same
//! input with the same thread count.

use std::time::Instant;

use tch::{nn, Device, Tensor};
use vitrine::model::load::build_vit;
use vitrine::model::{ImageClassifier, ViTConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, threads, iters] = args.as_slice() else {
        eprintln!("usage: bench_vit_forward INPUT.safetensors THREADS ITERATIONS");
        std::process::exit(2);
    };
    let threads: i32 = threads.parse().expect("THREADS is a number");
    let iters: usize = iters.parse().expect("ITERATIONS is a number");
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let x = Tensor::read_safetensors(input)
        .expect("read input")
        .into_iter()
        .find(|(n, _)| n == "pixel_values")
        .expect("pixel_values in input")
        .1;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build_vit(&vs, &ViTConfig::default(), 1000);
    let mut times = Vec::with_capacity(iters);
    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = net.forward_t(&x, false);
        }
        for _ in 0..iters {
            let t = Instant::now();
            let logits = net.forward_t(&x, false);
            assert_eq!(logits.size(), [x.size()[0], 1000]);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    });
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\":\"vitrine\",\"threads\":{threads},\"batch\":{},\"median_ms\":{:.1},\"min_ms\":{:.1}}}",
        x.size()[0],
        times[times.len() / 2],
        times[0]
    );
}
