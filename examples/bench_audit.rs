//! The dataset audit on Fashion-MNIST with a known fraction of labels
//! flipped: precision and recall of the label-issue finder, and the
//! audit's wall time with features computed and cached.
//!
//! Usage: bench_audit BASE_MODEL_DIR [PER_CLASS] [NOISE,NOISE,...]
//! (Debian's /usr/share/datasets/fashion-mnist; default 100 per class,
//! noise 0.02,0.05,0.10). Prints one JSON line per noise level.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use vitrine::audit::probe::ProbeConfig;
use vitrine::audit::run::{run_audit, AuditInput};
use vitrine::data::manifest::{Manifest, Sample};
use vitrine::task::Task;

const CLASSES: [&str; 10] = [
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

fn gunzip(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `per_class` images of each class from the training set, as PNGs under
/// `dir/files/train/<class>/`; their classes.
fn write_images(dir: &Path, per_class: usize) -> Vec<(PathBuf, usize)> {
    let root = "/usr/share/datasets/fashion-mnist";
    let images = gunzip(&format!("{root}/train-images-idx3-ubyte.gz"));
    let labels = gunzip(&format!("{root}/train-labels-idx1-ubyte.gz"));
    let mut taken = [0usize; 10];
    let mut out = Vec::new();
    for (i, &label) in labels[8..].iter().enumerate() {
        let c = label as usize;
        if taken[c] == per_class {
            continue;
        }
        taken[c] += 1;
        let pixels = images[16 + i * 784..16 + (i + 1) * 784].to_vec();
        let img = image::GrayImage::from_raw(28, 28, pixels).unwrap();
        let rel = PathBuf::from(format!("files/train/{}/{i}.png", CLASSES[c]));
        std::fs::create_dir_all(dir.join(&rel).parent().unwrap()).unwrap();
        image::DynamicImage::ImageLuma8(img)
            .to_rgb8()
            .save(dir.join(&rel))
            .unwrap();
        out.push((rel, c));
        if taken.iter().all(|&t| t == per_class) {
            break;
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(&args[1]);
    let per_class: usize = args.get(2).map_or(100, |a| a.parse().unwrap());
    let noises: Vec<f64> = args
        .get(3)
        .map_or("0.02,0.05,0.10", String::as_str)
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path(), per_class);
    let work = dir.path().join("work");
    for (run, &noise) in noises.iter().enumerate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31 + run as u64);
        let mut flipped = std::collections::HashSet::new();
        let train: Vec<Sample> = images
            .iter()
            .map(|(path, c)| {
                let mut label = *c;
                if rng.gen_bool(noise) {
                    label = (c + rng.gen_range(1..10)) % 10;
                    flipped.insert(
                        path.to_string_lossy()
                            .trim_start_matches("files/")
                            .to_string(),
                    );
                }
                Sample {
                    path: path.clone(),
                    labels: vec![label],
                }
            })
            .collect();
        let manifest = Manifest {
            labels: CLASSES.iter().map(|s| s.to_string()).collect(),
            task: Task::MultiClass,
            train,
            validation: None,
            test: None,
        };
        manifest.save(dir.path()).unwrap();
        let input = AuditInput {
            dataset_dir: dir.path().to_path_buf(),
            base_model_dir: base.clone(),
            work_dir: work.clone(),
            device: tch::Device::Cpu,
            probe: ProbeConfig::default(),
            near_duplicate_threshold: 0.95,
        };
        let cached = work.join("features.safetensors").exists();
        let started = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let out = run_audit(&input, &mut |_| {}, &stop).unwrap().unwrap();
        let wall = started.elapsed().as_secs_f64();
        let found: std::collections::HashSet<String> = out
            .findings
            .label_issues
            .iter()
            .map(|i| i.image.path.clone())
            .collect();
        let hits = found.intersection(&flipped).count();
        println!(
            "{}",
            serde_json::json!({
                "images": images.len(), "noise": noise, "flipped": flipped.len(),
                "flagged": found.len(), "true_positives": hits,
                "precision": hits as f64 / found.len().max(1) as f64,
                "recall": hits as f64 / flipped.len().max(1) as f64,
                "probe_accuracy": out.findings.probe_accuracy,
                "near_duplicate_groups": out.findings.near_duplicates.len(),
                "features_cached": cached, "feature_seconds": out.findings.feature_seconds,
                "wall_seconds": wall,
            })
        );
    }
}
