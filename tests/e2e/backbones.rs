//! Swin, ConvNeXt and ResNet through the real HTTP API (issue 15): for each
//! family, a tiny random-init checkpoint made by `transformers`
//! (`random_backbone.py`) is fine-tuned in `linear_probe`, `partial` and
//! `full` mode on the tints fixture; each saved model freezes exactly what
//! its mode says (weights, and ResNet's batch-norm statistics, equal to the
//! base model's), and `/models/{id}/predict` answers with `transformers`'
//! scores (PIL processor) within 1e-4; the `full` models also answer alike
//! through `vitrine predict` and download whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common::e2e::{fixtures, hf_scores, max_score_diff, TestServer};
use serde_json::{json, Value};
use tch::Tensor;

const TIMEOUT: Duration = Duration::from_secs(600);

/// A family's variable prefixes: the stem, the first and the last stage.
struct Family {
    name: &'static str,
    stem: &'static str,
    first_stage: &'static str,
    last_stage: &'static str,
}

const FAMILIES: [Family; 3] = [
    Family {
        name: "swin",
        stem: "swin.embeddings.",
        first_stage: "swin.encoder.layers.0.",
        last_stage: "swin.encoder.layers.1.",
    },
    Family {
        name: "convnext",
        stem: "convnext.embeddings.",
        first_stage: "convnext.encoder.stages.0.",
        last_stage: "convnext.encoder.stages.1.",
    },
    Family {
        name: "resnet",
        stem: "resnet.embedder.",
        first_stage: "resnet.encoder.stages.0.",
        last_stage: "resnet.encoder.stages.1.",
    },
];

fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Names under `prefix` whose tensor differs between the two checkpoints,
/// and how many names there are under it.
fn changed(
    base: &BTreeMap<String, Tensor>,
    tuned: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> (Vec<String>, usize) {
    let names: Vec<&String> = base.keys().filter(|k| k.starts_with(prefix)).collect();
    assert!(!names.is_empty(), "no variable under {prefix}");
    let differ = names
        .iter()
        .filter(|k| {
            let t = tuned
                .get(**k)
                .unwrap_or_else(|| panic!("{k} missing from the saved model"));
            !t.to_kind(tch::Kind::Double)
                .equal(&base[**k].to_kind(tch::Kind::Double))
        })
        .map(|k| k.to_string())
        .collect();
    (differ, names.len())
}

/// `vitrine predict` on the saved directory ranks the same top label with the
/// same score as `/predict`, and the model downloads with its weights.
async fn cli_and_download_agree(
    server: &TestServer,
    model_id: &str,
    dir: &Path,
    image: &Path,
    answer: &Value,
) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["predict", "--uncalibrated", "--top-k", "1", "--model"])
        .arg(dir)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ours, served) = (
        &cli["results"][0]["predictions"][0],
        &answer["predictions"][0],
    );
    assert_eq!(ours["label"], served["label"], "{cli} vs {answer}");
    let gap = (ours["score"].as_f64().unwrap() - served["score"].as_f64().unwrap()).abs();
    assert!(gap < 1e-6, "{cli} vs {answer}");
    let names = crate::common::e2e::downloaded_names(&server.url, model_id).await;
    assert!(
        names.iter().any(|n| n.ends_with("model.safetensors")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_trains_in_every_mode_and_serves_transformers_scores() {
    let fx = fixtures();
    let models = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/random_backbone.py");
    let server = TestServer::start(|_| {}).await;
    let mut report = Vec::new();
    for family in &FAMILIES {
        let base_dir = models.path().join(family.name);
        crate::common::run_python(
            script,
            &[family.name, base_dir.to_str().unwrap()],
            models.path(),
        );
        let base = weights(&base_dir);
        let modes = [
            json!({"base_model": base_dir, "mode": "linear_probe", "epochs": 3, "learning_rate": 0.01}),
            json!({"base_model": base_dir, "mode": "partial", "unfreeze_last_n": 1, "epochs": 2, "learning_rate": 0.002}),
            json!({"base_model": base_dir, "mode": "full", "epochs": 2, "learning_rate": 0.001, "layer_lr_decay": 0.8}),
        ];
        for cfg in modes {
            let mode = cfg["mode"].as_str().unwrap().to_string();
            let what = format!("{} {mode}", family.name);
            let job = server.run_job(&fx.tints_zip, cfg, TIMEOUT).await;
            let epochs = job["metrics"].as_array().unwrap();
            assert!(!epochs.is_empty(), "{what}: {job}");
            assert!(
                epochs
                    .iter()
                    .all(|e| e["train_loss"].as_f64().is_some_and(f64::is_finite)),
                "{what}: {job}"
            );
            let model_id = job["model_id"].as_str().unwrap();
            let dir = server.dir.path().join("models").join(model_id);
            let tuned = weights(&dir);

            // What trained: the stem and first stage only in `full`, the last
            // stage in `partial` and `full`, nothing of the backbone in a probe.
            let (stem, _) = changed(&base, &tuned, family.stem);
            let (first, _) = changed(&base, &tuned, family.first_stage);
            let (last, n_last) = changed(&base, &tuned, family.last_stage);
            match mode.as_str() {
                "linear_probe" => {
                    assert!(
                        stem.is_empty() && first.is_empty() && last.is_empty(),
                        "{what}: {stem:?} {first:?} {last:?}"
                    );
                }
                "partial" => {
                    assert!(
                        stem.is_empty() && first.is_empty(),
                        "{what}: frozen parts changed: {stem:?} {first:?}"
                    );
                    assert!(
                        last.len() * 2 >= n_last,
                        "{what}: only {last:?} of {n_last} changed in the last stage"
                    );
                }
                _ => {
                    assert!(
                        !stem.is_empty() && !first.is_empty() && !last.is_empty(),
                        "{what}: {stem:?} {first:?} {last:?}"
                    );
                }
            }
            if family.name == "resnet" {
                // Batch-norm statistics follow the same rule: frozen stages
                // keep them, trained stages update them.
                let stats =
                    |names: &[String]| names.iter().filter(|n| n.ends_with("running_mean")).count();
                match mode.as_str() {
                    "linear_probe" => assert_eq!(stats(&last), 0, "{what}"),
                    "partial" => {
                        assert!(stats(&last) > 0 && stats(&first) == 0, "{what}: {last:?}")
                    }
                    _ => assert!(
                        stats(&stem) > 0 && stats(&first) > 0,
                        "{what}: {stem:?} {first:?}"
                    ),
                }
            }

            let reference = hf_scores(&dir, &fx.red_png);
            let answer: Value = reqwest::Client::new()
                .post(format!(
                    "{}/models/{model_id}/predict?all_scores=true&calibrated=false",
                    server.url
                ))
                .header("content-type", "image/png")
                .body(std::fs::read(&fx.red_png).unwrap())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let worst = max_score_diff(&answer["results"][0], &reference);
            if mode == "full" {
                cli_and_download_agree(&server, model_id, &dir, &fx.red_png, &answer).await;
            }
            report.push(format!(
                "{what}: {} epochs, max |score - transformers| {worst:.1e}",
                epochs.len()
            ));
            assert!(worst <= 1e-4, "{what}: {worst} ({answer} vs {reference})");
        }
    }
    println!("{}", report.join("\n"));
    server.stop().await;
}
