//! Calibrated scores over real HTTP: temperature scaling fitted after
//! training and reported in the card (before and after: ECE, Brier, NLL,
//! reliability bins), served by default, raw with `calibrated=false`,
//! multi-label thresholds tuned on the served scores, and a model without
//! calibration (a plain checkpoint) serving raw scores and saying so.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::e2e::{fixtures, hf_scores, max_score_diff, TestServer};

const TIMEOUT: Duration = Duration::from_secs(300);

async fn train(server: &TestServer, archive: &std::path::Path, base: &std::path::Path) -> String {
    let cfg =
        json!({"base_model": base, "mode": "linear_probe", "epochs": 3, "learning_rate": 0.01});
    let job = server.run_job(archive, cfg, TIMEOUT).await;
    job["model_id"].as_str().expect("a model").to_string()
}

async fn predict(server: &TestServer, path: &str, image: &std::path::Path) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("content-type", "image/png")
        .body(std::fs::read(image).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The card's calibration: its measures are whole and the fit did its job
/// (no higher NLL than the raw scores on the split it was fitted on).
fn check_card(cal: &Value, labels: usize, validation_images: u64) {
    assert_eq!(cal["method"], "temperature", "{cal}");
    assert_eq!(cal["temperatures"].as_array().unwrap().len(), labels);
    for when in ["before", "after"] {
        let m = &cal["validation"][when];
        let bins = m["bins"].as_array().unwrap();
        assert_eq!(bins.len(), 15);
        let total: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        let per_image = if labels > 1 && cal["thresholds"].is_array() {
            labels as u64
        } else {
            1
        };
        assert_eq!(total, validation_images * per_image, "{when}: {m}");
        let ece = m["ece"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ece), "{when}: {m}");
        assert!(m["brier"].as_f64().unwrap() >= 0.0 && m["nll"].as_f64().unwrap() >= 0.0);
    }
    let nll = |w: &str| cal["validation"][w]["nll"].as_f64().unwrap();
    assert!(nll("after") <= nll("before") + 1e-9, "{cal}");
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn score_of(result: &Value, label: &Value) -> f64 {
    result["scores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == *label)
        .unwrap()["score"]
        .as_f64()
        .unwrap()
}

fn labels_of(result: &Value) -> Vec<String> {
    let mut out: Vec<String> = result["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrated_scores_are_reported_and_served_raw_on_request_or_without_calibration() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;

    // Multi-class: one temperature; served scores are softmax(z / T).
    let id = train(&server, &fx.tints_zip, &fx.base_model).await;
    let view = server.get_json(&format!("/models/{id}")).await;
    let card = &view["metrics"];
    let cal = &card["calibration"];
    check_card(cal, 1, card["dataset"]["validation"].as_u64().unwrap());
    let t = cal["temperatures"][0].as_f64().unwrap();
    let dir = server.dir.path().join("models").join(&id);
    let reference = hf_scores(&dir, &fx.red_png);
    let raw = predict(
        &server,
        &format!("/models/{id}/predict?all_scores=true&calibrated=false"),
        &fx.red_png,
    )
    .await;
    assert_eq!(
        (raw["calibrated"].clone(), raw["calibration"].clone()),
        (json!(false), json!("off"))
    );
    assert!(
        max_score_diff(&raw["results"][0], &reference) <= 1e-4,
        "{raw}"
    );
    let served = predict(
        &server,
        &format!("/models/{id}/predict?all_scores=true"),
        &fx.red_png,
    )
    .await;
    assert_eq!(
        (served["calibrated"].clone(), served["calibration"].clone()),
        (json!(true), json!("temperature"))
    );
    let p: Vec<f64> = serde_json::from_value(reference["scores"][0].clone()).unwrap();
    let powered: Vec<f64> = p.iter().map(|p| (p.ln() / t).exp()).collect();
    let sum: f64 = powered.iter().sum();
    let mut worst = 0f64;
    for (i, label) in reference["labels"].as_array().unwrap().iter().enumerate() {
        worst = worst.max((score_of(&served["results"][0], label) - powered[i] / sum).abs());
    }
    println!("T = {t}: max |served - softmax(z / T)| = {worst:e}");
    let ece = |w: &str| cal["validation"][w]["ece"].as_f64().unwrap();
    println!("validation ECE {} -> {}", ece("before"), ece("after"));
    assert!(worst <= 1e-4, "{served}");
    assert_eq!(
        served["predictions"][0]["label"],
        raw["predictions"][0]["label"]
    );

    // Multi-label: a temperature and a threshold per label, tuned on the
    // calibrated scores; the card's raw thresholds make the same decisions.
    let ml = train(&server, &fx.mosaic_zip, &fx.base_model).await;
    let view = server.get_json(&format!("/models/{ml}")).await;
    let card = &view["metrics"];
    let labels = view["labels"].as_array().unwrap().len();
    let cal = &card["calibration"];
    check_card(cal, labels, card["dataset"]["validation"].as_u64().unwrap());
    let temps: Vec<f64> = serde_json::from_value(cal["temperatures"].clone()).unwrap();
    println!("multi-label temperatures {temps:?}");
    let tuned: Vec<f64> = serde_json::from_value(cal["thresholds"].clone()).unwrap();
    let raw_thresholds: Vec<f64> = serde_json::from_value(card["thresholds"].clone()).unwrap();
    for c in 0..labels {
        let want = sigmoid(temps[c] * logit(tuned[c]));
        assert!(
            (raw_thresholds[c] - want).abs() < 1e-9,
            "label {c}: {} vs {want}",
            raw_thresholds[c]
        );
    }
    let served = predict(
        &server,
        &format!("/models/{ml}/predict?all_scores=true"),
        &fx.red_png,
    )
    .await;
    let raw = predict(
        &server,
        &format!("/models/{ml}/predict?all_scores=true&calibrated=false"),
        &fx.red_png,
    )
    .await;
    assert_eq!(served["calibration"], "temperature");
    for (c, label) in view["labels"].as_array().unwrap().iter().enumerate() {
        let (s, r) = (
            score_of(&served["results"][0], label),
            score_of(&raw["results"][0], label),
        );
        assert!(
            (s - sigmoid(logit(r) / temps[c])).abs() < 1e-4,
            "{label}: {s} vs raw {r}"
        );
    }
    let above: Vec<String> = view["labels"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(c, l)| score_of(&served["results"][0], l) >= tuned[*c])
        .map(|(_, l)| l.as_str().unwrap().to_string())
        .collect();
    let mut above = above;
    above.sort();
    assert_eq!(labels_of(&served["results"][0]), above, "{served}");
    assert_eq!(
        labels_of(&raw["results"][0]),
        above,
        "the same decisions raw: {raw}"
    );

    // A model without calibration (a plain Hugging Face checkpoint, as an
    // imported one): raw scores, and the answer says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["predict", "--top-k", "1", "--model"])
        .arg(&fx.base_model)
        .arg(&fx.red_png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["calibration"], "none", "{cli}");
    server.stop().await;
}
