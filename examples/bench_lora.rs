//! LoRA serving figures (docs/benchmarks.md, "LoRA adapters on one base"):
//!
//! 1. Memory: 100 LoRA models (r=16, query+value, a 10-label head) of one
//!    base made resident in one engine's adapter cache: the growth of the
//!    process's resident memory against the sum of the adapter files.
//! 2. Throughput: batches of 32 images spread evenly over 8 adapters, one
//!    mixed forward pass of the shared base each, against the same batches
//!    through one merged model (what serving one fully fine-tuned model
//!    costs). This is the engine's compute, without HTTP.
//!
//! Usage: cargo run --example bench_lora -- [BASE_DIR] [ROUNDS]
//! (BASE_DIR defaults to data/cache/dinov2-small, made by
//! scripts/fetch-dinov2-small.sh; ROUNDS to 5). Prints one JSON line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vitrine::model::lora::{self, Adapter, LoraSpec};
use vitrine::model::{load_pretrained, ProblemType};
use vitrine::serve::adapters::AdapterCache;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `n` LoRA model directories on `base`, B drawn at random.
fn make_adapters(base: &Path, out: &Path, n: usize) -> Vec<PathBuf> {
    let labels: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let model = load_pretrained(base, Device::Cpu, Some(&labels)).unwrap();
    let spec = LoraSpec {
        r: 16,
        alpha: Some(16.0),
        ..LoraSpec::default()
    };
    (0..n)
        .map(|i| {
            let adapter = Adapter::init(&model, &spec).unwrap();
            for m in &adapter.modules {
                let _ = m.b.detach().uniform_(-0.01, 0.01);
            }
            let dir = out.join(format!("m{i:03}"));
            let base = base.to_str().unwrap();
            lora::save_adapter(&model, &adapter, &dir, base, ProblemType::SingleLabel).unwrap();
            dir
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or("data/cache/dinov2-small".into()),
    );
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = make_adapters(&base, tmp.path(), 100);
    let file_bytes: u64 = dirs
        .iter()
        .map(|d| {
            std::fs::metadata(d.join("adapter_model.safetensors"))
                .unwrap()
                .len()
        })
        .sum();
    let per_file = file_bytes / dirs.len() as u64;
    let ids: Vec<String> = (0..dirs.len()).map(|i| format!("m{i:03}")).collect();
    let mut cache = AdapterCache::new(Device::Cpu, u64::MAX, None);
    let one = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    // The base and the first adapter, and the allocator warmed by a few passes.
    for _ in 0..3 {
        cache.forward(&base, &[(&ids[0], &dirs[0], &one)]).unwrap();
    }
    let before = rss_bytes();
    for (id, dir) in ids.iter().zip(&dirs).skip(1) {
        cache.forward(&base, &[(id, dir, &one)]).unwrap();
    }
    let growth = rss_bytes().saturating_sub(before);
    let loaded_files = per_file * (dirs.len() as u64 - 1);

    // Throughput: 32 images over 8 adapters (4 each) vs one merged model.
    let batch = Tensor::randn([32, 3, 224, 224], (Kind::Float, Device::Cpu));
    let parts: Vec<Tensor> = batch.split(4, 0);
    let requests: Vec<(&str, &Path, &Tensor)> = parts
        .iter()
        .enumerate()
        .map(|(i, x)| (ids[i].as_str(), dirs[i].as_path(), x))
        .collect();
    let merged = load_pretrained(&dirs[0], Device::Cpu, None).unwrap();
    cache.forward(&base, &requests).unwrap();
    let _ = merged.logits(&batch).unwrap();
    let (mut t_mixed, mut t_merged) = (0.0, 0.0);
    for _ in 0..rounds {
        let t = Instant::now();
        cache.forward(&base, &requests).unwrap();
        t_mixed += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = merged.logits(&batch).unwrap();
        t_merged += t.elapsed().as_secs_f64();
    }
    let images = (32 * rounds) as f64;
    println!(
        "{}",
        serde_json::json!({
            "adapters": dirs.len(),
            "adapter_file_bytes": per_file,
            "rss_growth_bytes_99_adapters": growth,
            "files_bytes_99_adapters": loaded_files,
            "memory_ratio": growth as f64 / loaded_files as f64,
            "mixed_images_per_s": images / t_mixed,
            "merged_images_per_s": images / t_merged,
            "throughput_ratio": t_merged / t_mixed,
            "torch_threads": tch::get_num_threads(),
        })
    );
}
