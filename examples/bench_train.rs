//! One training run through vitrine's trainer (`vitrine::train::run`, what a
//! job's worker thread calls), timed.
//!
//! Usage: bench_train DATASET.zip MODEL_DIR WORK_DIR THREADS CONFIG_JSON [SKIP_STEPS]
//!
//! The archive is ingested as `POST /datasets` would (extraction, checks,
//! manifest); `CONFIG_JSON` is a job config without `base_model`. Prints one
//! JSON line: training images/s over the steps after the first `SKIP_STEPS`
//! (default 2: warm-up), the run's wall time (features, epochs, evaluation,
//! saving; not the ingest), each epoch's seconds and time shares, and the
//! best epoch's validation metrics. With `BENCH_INPUT_CACHE=DIR` the run
//! reads through a decode-once input cache in `DIR` (shared by runs that
//! name the same one). Driven by `scripts/bench/train.sh`,
//! `scripts/bench/linear_probe.sh` and `scripts/bench/input_cache.sh`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use vitrine::data::IngestLimits;
use vitrine::train::config::JobConfig;
use vitrine::train::{TrainEvent, TrainSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (zip, model, work, threads, config, skip) = match args.as_slice() {
        [_, z, m, w, t, c] => (z, m, w, t, c, 2usize),
        [_, z, m, w, t, c, s] => (z, m, w, t, c, s.parse()?),
        _ => anyhow::bail!(
            "usage: bench_train DATASET.zip MODEL_DIR WORK_DIR THREADS CONFIG_JSON [SKIP_STEPS]"
        ),
    };
    let threads: i32 = threads.parse()?;
    tch::set_num_threads(threads);
    let work = PathBuf::from(work);
    let _ = std::fs::remove_dir_all(&work);
    // With an input cache the dataset is ingested once beside it and kept,
    // as the service keeps one copy of a dataset for all its jobs (the
    // cache's key includes the files' modification times).
    let cache = std::env::var_os("BENCH_INPUT_CACHE").map(PathBuf::from);
    let dataset_dir = match &cache {
        Some(dir) => dir.with_extension("dataset"),
        None => work.join("dataset"),
    };
    let limits = IngestLimits {
        max_entries: 1_000_000,
        max_uncompressed_bytes: 1 << 40,
        max_image_pixels: 100_000_000,
        max_undecodable_fraction: 0.0,
        max_image_file_bytes: 1 << 30,
        decode_budget: vitrine::budget::DecodeBudget::new(vitrine::budget::default_budget_bytes()),
    };
    if cache.is_none() || !dataset_dir.join("manifest.json").exists() {
        let _ = std::fs::remove_dir_all(&dataset_dir);
        vitrine::data::ingest::ingest_archive(
            zip.as_ref(),
            &dataset_dir,
            &limits,
            &Default::default(),
        )?;
    }

    let mut config: serde_json::Value = serde_json::from_str(config)?;
    config["base_model"] = model.as_str().into();
    let config = JobConfig::from_json(&config.to_string()).map_err(anyhow::Error::msg)?;
    let batch = config.batch_size as f64;
    let spec = TrainSpec {
        job_id: "bench".into(),
        config,
        dataset_dir,
        base_model_dir: PathBuf::from(model),
        work_dir: work.join("work"),
        device: tch::Device::Cpu,
        artifacts: None,
        decode_budget: None,
        input_cache: cache.map(|dir| vitrine::imaging::input_cache::InputCache::new(dir, 1 << 40)),
        oom_above_micro_batch: None,
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Timestamps are taken as the events arrive, on a thread of their own.
    // The trainer reports every few steps (when it reads the loss back).
    let steps = std::thread::spawn(move || {
        let mut at = Vec::new();
        while let Some(event) = rx.blocking_recv() {
            if let TrainEvent::Step { step, .. } = event {
                at.push((step, Instant::now()));
            }
        }
        at
    });
    let started = Instant::now();
    let outcome = vitrine::train::run(spec, tx, Arc::new(AtomicBool::new(false)))?;
    let wall = started.elapsed().as_secs_f64();
    let steps = steps.join().expect("the event thread");

    // From the first report after the warm-up steps to the last report.
    let first = steps.iter().find(|(step, _)| *step as usize > skip);
    let last = steps.last();
    let (timed, images_per_sec) = match (first, last) {
        (Some(&(s0, t0)), Some(&(s1, t1))) if s1 > s0 => {
            let timed = (s1 - s0) as usize;
            (timed, Some(timed as f64 * batch / (t1 - t0).as_secs_f64()))
        }
        _ => (0, None),
    };
    let card = outcome
        .card
        .ok_or_else(|| anyhow::anyhow!("no epoch completed"))?;
    let validation = card
        .validation
        .as_ref()
        .map(|m| serde_json::to_value(&m.validation))
        .transpose()?
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "impl": "vitrine",
            "threads": threads,
            "steps": steps.last().map(|s| s.0).unwrap_or(0),
            "timed_steps": timed,
            "images_per_sec": images_per_sec,
            "wall_secs": wall,
            "best_epoch": card.best_epoch,
            "epochs": card.history.iter().map(|m| serde_json::json!({
                "seconds": m.seconds, "time_shares": m.time_shares,
            })).collect::<Vec<_>>(),
            "accuracy": validation.get("accuracy"),
            "validation": validation,
        })
    );
    Ok(())
}
