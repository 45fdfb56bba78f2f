//! The input side alone: how fast training batches (augmented, batch 32)
//! come out of the pipeline from the JPEG files, and from the decode-once
//! input cache, on the same images in the same process. The ceiling the
//! input puts on a training job that could compute faster (a GPU).
//!
//! Usage: bench_input IMAGE_DIR PREPROCESSOR_CONFIG.json [EPOCHS]
//! (every `.jpg`/`.png` below IMAGE_DIR). Prints one JSON line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vitrine::imaging::input_cache::{CacheForm, InputCache};
use vitrine::imaging::{AugmentConfig, Pipeline, PreprocessorConfig};

fn images(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("the image directory")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            images(&p, out);
        } else if p.extension().is_some_and(|x| x == "jpg" || x == "png") {
            out.push(p);
        }
    }
}

/// Images per second over `epochs` passes of augmented batches of 32.
fn passes(
    pipeline: &Pipeline,
    paths: &[PathBuf],
    cache: Option<&vitrine::imaging::input_cache::CachedImages>,
    epochs: u64,
) -> f64 {
    let started = Instant::now();
    for epoch in 0..epochs {
        for (i, chunk) in paths.chunks(32).enumerate() {
            let seed = epoch * 1_000_003 + i as u64;
            let _batch = pipeline
                .load_batch_u8_from(cache, chunk, Some(seed))
                .expect("a batch");
        }
    }
    (paths.len() as u64 * epochs) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("IMAGE_DIR"));
    let cfg: PreprocessorConfig =
        serde_json::from_slice(&std::fs::read(args.get(2).expect("PREPROCESSOR_CONFIG")).unwrap())
            .expect("a preprocessor config");
    let epochs: u64 = args.get(3).and_then(|e| e.parse().ok()).unwrap_or(2);
    let mut paths = Vec::new();
    images(&dir, &mut paths);
    paths.sort();
    let pipeline =
        Pipeline::from_preprocessor(&cfg, None).with_augmentation(AugmentConfig::default());
    let from_files = passes(&pipeline, &paths, None, epochs);
    let root = tempfile::tempdir().unwrap();
    let cache = InputCache::new(root.path(), 1 << 40);
    let started = Instant::now();
    let built = cache
        .prepare(
            &pipeline,
            &[CacheForm::train_for(&pipeline)],
            &paths,
            &mut |_, _| true,
        )
        .remove(0)
        .expect("built");
    let build_secs = started.elapsed().as_secs_f64();
    let from_cache = passes(&pipeline, &paths, Some(&built), epochs);
    println!(
        "{}",
        serde_json::json!({"images": paths.len(), "epochs": epochs, "threads": rayon::current_num_threads(),
            "files_images_per_sec": from_files, "cache_build_secs": build_secs,
            "cache_bytes": cache.bytes(), "cache_images_per_sec": from_cache,
            "ratio": from_cache / from_files})
    );
}
