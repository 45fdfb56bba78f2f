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
//! Usage: cargo run --example bench_lora -- [BASE_DIR] [ROUNDS] (0: memory only)
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

/// The memory phase, in a process of its own (`--load BASE DIR`): the
/// adapters were written by the parent, so nothing freed by making them
/// hides the growth. Prints the RSS growth over the last 99 adapters, the
/// bytes of their files and the cache's own count of resident bytes.
fn load_phase(base: &Path, root: &Path) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let ids: Vec<String> = (0..dirs.len()).map(|i| format!("m{i:03}")).collect();
    let mut cache = AdapterCache::new(Device::Cpu, u64::MAX, None);
    let one = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    for _ in 0..3 {
        cache.forward(base, &[(&ids[0], &dirs[0], &one)]).unwrap();
    }
    let before = rss_bytes();
    for (id, dir) in ids.iter().zip(&dirs).skip(1) {
        cache.forward(base, &[(id, dir, &one)]).unwrap();
    }
    let growth = rss_bytes().saturating_sub(before);
    let files: u64 = dirs[1..]
        .iter()
        .map(|d| {
            std::fs::metadata(d.join("adapter_model.safetensors"))
                .unwrap()
                .len()
        })
        .sum();
    println!("{growth} {files} {}", cache.resident_bytes());
}

fn memory(base: &Path, root: &Path, adapters: usize) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--load", base.to_str().unwrap(), root.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "adapters": adapters,
            "rss_growth_bytes_99_adapters": nums[0],
            "files_bytes_99_adapters": nums[1],
            "resident_tensor_bytes_100_adapters": nums[2],
            "memory_ratio": nums[0] as f64 / nums[1] as f64,
        })
    );
}

/// Batches of 32 images over 8 adapters (4 each) vs one merged model.
fn throughput(base: &Path, dirs: &[PathBuf], rounds: usize) {
    let ids: Vec<String> = (0..8).map(|i| format!("m{i:03}")).collect();
    let mut cache = AdapterCache::new(Device::Cpu, u64::MAX, None);
    let _guard = tch::no_grad_guard();
    let batch = Tensor::randn([32, 3, 224, 224], (Kind::Float, Device::Cpu));
    let parts: Vec<Tensor> = batch.split(4, 0);
    let requests: Vec<(&str, &Path, &Tensor)> = parts
        .iter()
        .enumerate()
        .map(|(i, x)| (ids[i].as_str(), dirs[i].as_path(), x))
        .collect();
    let merged = load_pretrained(&dirs[0], Device::Cpu, None).unwrap();
    cache.forward(base, &requests).unwrap();
    let _ = merged.logits(&batch).unwrap();
    let (mut t_mixed, mut t_merged) = (0.0, 0.0);
    for _ in 0..rounds {
        let t = Instant::now();
        cache.forward(base, &requests).unwrap();
        t_mixed += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = merged.logits(&batch).unwrap();
        t_merged += t.elapsed().as_secs_f64();
    }
    let images = (32 * rounds) as f64;
    println!(
        "{}",
        serde_json::json!({
            "mixed_images_per_s": images / t_mixed,
            "merged_images_per_s": images / t_merged,
            "throughput_ratio": t_merged / t_mixed,
            "torch_threads": tch::get_num_threads(),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load_phase(Path::new(&args[2]), Path::new(&args[3]));
    }
    let base = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or("data/cache/dinov2-small".into()),
    );
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = make_adapters(&base, tmp.path(), 100);
    memory(&base, tmp.path(), dirs.len());
    if rounds > 0 {
        throughput(&base, &dirs, rounds);
    }
}
