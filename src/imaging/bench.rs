//! `vitrine bench preprocess`: images/second for vitrine's decode + resize +
//! normalise against Pillow + `transformers`' `ViTImageProcessorPil`, on the
//! same generated JPEGs and the same number of threads / processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{Pipeline, PreprocessorConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Number of JPEGs to generate.
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Threads for vitrine and processes for Python (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Directory for the generated images (default: a fresh temp dir, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Python with `transformers` and Pillow (default: $VITRINE_PYTHON, else `python3`).
    #[arg(long, env = "VITRINE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Timed passes over the files on each side; the best one counts.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the Python side.
    #[arg(long)]
    pub no_python: bool,
}

/// Writes `n` JPEGs (quality 75) of 300-800 px sides: smooth gradients and
/// waves plus sensor-like noise of up to 7 levels, roughly a photo's entropy.
pub fn generate(dir: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
            let (w, h) = (rng.gen_range(300..=800u32), rng.gen_range(300..=800u32));
            let (a, b, c) = (
                rng.gen_range(0.5..4.0f32),
                rng.gen_range(0.5..4.0f32),
                rng.gen::<f32>() * 6.0,
            );
            let img = RgbImage::from_fn(w, h, |x, y| {
                let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
                let n = f32::from(rng.gen::<u8>() >> 5); // sensor-like noise, 0-7 levels
                let r = 127.0 + 100.0 * (a * std::f32::consts::TAU * u + c).sin() + n;
                let g = 127.0 + 100.0 * (b * std::f32::consts::TAU * v).cos() + n;
                let bl = 255.0 * u * v;
                Rgb([
                    r.clamp(0.0, 255.0) as u8,
                    g.clamp(0.0, 255.0) as u8,
                    bl as u8,
                ])
            });
            let path = dir.join(format!("img_{i:05}.jpg"));
            img.save_with_format(&path, image::ImageFormat::Jpeg)?;
            Ok(path)
        })
        .collect()
}

const PYTHON_BENCH: &str = r#"
import sys, time, glob, os
from multiprocessing import Pool
from PIL import Image
from transformers import ViTImageProcessorPil
proc = ViTImageProcessorPil()
def work(paths):
    imgs = [Image.open(p).convert("RGB") for p in paths]
    return proc(images=imgs, return_tensors="np")["pixel_values"].shape[0]
if __name__ == "__main__":
    d, procs, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    paths = sorted(glob.glob(os.path.join(d, "*.jpg")))
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    with Pool(procs) as pool:
        pool.map(work, chunks[:procs])  # warm up every worker
        dt = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            n = sum(pool.map(work, chunks, chunksize=1))
            dt = min(dt, time.perf_counter() - t)
    print(f"{n} {dt}")
"#;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let threads = if args.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        args.threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDirGuard(
                std::env::temp_dir().join(format!("vitrine-bench-{}", std::process::id())),
            );
            tmp.0.clone()
        }
    };
    println!(
        "generating {} JPEGs (300-800 px) in {}",
        args.images,
        dir.display()
    );
    let paths = generate(&dir, args.images)?;
    let ours = time_vitrine(&paths, &args, threads)?;
    if args.no_python {
        return Ok(());
    }
    let theirs = time_python(&dir, &args, threads)?;
    println!("ratio vitrine / Python: {:.2}x", ours / theirs);
    Ok(())
}

/// vitrine's images/second over `paths` (best of `rounds` passes), printed
/// with the split between decoding and resizing.
fn time_vitrine(paths: &[PathBuf], args: &BenchArgs, threads: usize) -> anyhow::Result<f64> {
    let pipeline = Pipeline::from_preprocessor(&PreprocessorConfig::default(), None);
    // Warm up (page cache, thread pool).
    let _ = pipeline.load_batch(&paths[..args.batch.min(paths.len())], None)?;
    // Best of `rounds` passes over all files, for both sides: the machine
    // may be shared, and the best pass is the least disturbed one.
    let mut dt = f64::INFINITY;
    for _ in 0..args.rounds.max(1) {
        let t = Instant::now();
        for chunk in paths.chunks(args.batch.max(1)) {
            let batch = pipeline.load_batch(chunk, None)?;
            debug_assert_eq!(batch.size()[1..], [3, 224, 224]);
        }
        dt = dt.min(t.elapsed().as_secs_f64());
    }
    let ours = paths.len() as f64 / dt;
    let t = Instant::now();
    let limits = super::DecodeLimits::default();
    let decoded: Vec<RgbImage> = paths[..paths.len().min(200)]
        .par_iter()
        .map(|p| super::pipeline::load_file(p, &limits))
        .collect::<Result<_, _>>()?;
    let decode_dt = t.elapsed().as_secs_f64() / decoded.len() as f64;
    let t = Instant::now();
    decoded
        .par_iter()
        .try_for_each(|img| pipeline.process(img).map(|_| ()))?;
    let process_dt = t.elapsed().as_secs_f64() / decoded.len() as f64;
    println!(
        "  of which: read+decode {:.2} ms/image, resize+normalise {:.2} ms/image (wall, {threads} threads)",
        decode_dt * 1e3,
        process_dt * 1e3
    );
    println!(
        "vitrine (decode+resize 224+normalise, {threads} threads): {ours:.1} images/s ({dt:.2} s)"
    );
    Ok(ours)
}

/// Pillow + `transformers`' images/second over the JPEGs in `dir`, in
/// `threads` processes, printed.
fn time_python(dir: &Path, args: &BenchArgs, threads: usize) -> anyhow::Result<f64> {
    let python = args.python.clone().unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .args(["-c", PYTHON_BENCH])
        .arg(dir)
        .arg(threads.to_string())
        .arg(args.batch.to_string())
        .arg(args.rounds.max(1).to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "python benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let n: f64 = it.next().context("python output")?.parse()?;
    let pdt: f64 = it.next().context("python output")?.parse()?;
    let theirs = n / pdt;
    println!(
        "Pillow + ViTImageProcessorPil ({threads} processes): {theirs:.1} images/s ({pdt:.2} s)"
    );
    Ok(theirs)
}

struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
