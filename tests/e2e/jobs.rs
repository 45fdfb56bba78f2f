//! Fine-tuning through the real HTTP API on a real SQLite file: a tiny ViT
//! pre-trained by the test fixtures on one task is fine-tuned on another.

use std::time::Duration;

use crate::common::e2e::{fixtures, TestServer};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

fn accuracy(job: &Value) -> f64 {
    job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["validation"]["accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max)
}

/// Three modes on one CPU worker (so also: several jobs queued on one
/// worker run one after another), each reaching a stated accuracy, then a
/// prediction with the newest model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_learns_the_new_task_and_the_newest_model_answers() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let base = fx.base_model.to_str().unwrap();
    let modes = [
        json!({"base_model": base, "mode": "linear_probe", "epochs": 15, "batch_size": 32, "learning_rate": 0.01}),
        json!({"base_model": base, "mode": "partial", "unfreeze_last_n": 1, "epochs": 4, "batch_size": 32, "learning_rate": 0.002}),
        json!({"base_model": base, "mode": "full", "epochs": 4, "batch_size": 32, "learning_rate": 0.001, "layer_lr_decay": 0.8}),
    ];
    let mut ids = Vec::new();
    for cfg in &modes {
        let resp = server.submit(&fx.tints_zip, cfg.clone()).await;
        assert_eq!(resp.status(), 202);
        let job: Value = resp.json().await.unwrap();
        assert_eq!(job["status"], "queued");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    // The same archive three times is stored once.
    let datasets: Vec<String> = {
        let mut d = Vec::new();
        for id in &ids {
            d.push(
                server.get_json(&format!("/jobs/{id}")).await["dataset_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        d
    };
    assert!(datasets.iter().all(|d| *d == datasets[0]));

    let mut finished = Vec::new();
    for id in &ids {
        let job = server.wait_for_job(id, TIMEOUT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        finished.push(job);
    }
    // One worker: each job started after the previous one finished.
    for pair in finished.windows(2) {
        assert!(pair[1]["started_at"].as_str() >= pair[0]["finished_at"].as_str());
    }
    let floors = [0.75, 0.75, 0.75];
    for ((job, floor), cfg) in finished.iter().zip(floors).zip(&modes) {
        let acc = accuracy(job);
        println!("{}: best validation accuracy {acc:.3}", cfg["mode"]);
        assert!(
            acc >= floor,
            "{} reached only {acc}: {}",
            cfg["mode"],
            job["metrics"]
        );
        let epochs = job["metrics"].as_array().unwrap();
        assert_eq!(epochs.len() as u64, cfg["epochs"].as_u64().unwrap());
        let first = &epochs[0]["validation"];
        assert!(first["confusion_matrix"].is_array() && first["per_class"].is_array());
        assert!(first["macro_f1"].as_f64().is_some());
        assert_eq!(job["attempts"], 1);
        assert_eq!(
            job["dataset"]["labels"],
            json!(["blue", "green", "red", "yellow"])
        );
        assert_eq!(job["dataset"]["images"], 280);
    }

    // The model directory is in the Hugging Face layout.
    let model_id = finished[2]["model_id"].as_str().unwrap().to_string();
    let model = server.get_json(&format!("/models/{model_id}")).await;
    assert_eq!(model["labels"], json!(["blue", "green", "red", "yellow"]));
    let dir = server.dir.path().join("models").join(&model_id);
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "metrics.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in {}", dir.display());
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"]["2"], "red");

    // /predict uses the newest model.
    let resp = reqwest::Client::new()
        .post(format!("{}/predict?top_k=2", server.url))
        .header("content-type", "image/png")
        .body(std::fs::read(&fx.red_png).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], model_id.as_str());
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(answer["predictions"][0]["label"], "red", "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_label_job_reaches_a_stated_micro_f1() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "full", "epochs": 6,
                     "batch_size": 32, "learning_rate": 0.002});
    let job = server.run_job(&fx.mosaic_zip, cfg, TIMEOUT).await;
    let best = job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["validation"]["micro_f1"].as_f64().unwrap())
        .fold(0.0, f64::max);
    println!("multi-label best micro-F1 {best:.3}");
    assert!(best >= 0.7, "micro-F1 {best}: {}", job["metrics"]);
    let model = server
        .get_json(&format!("/models/{}", job["model_id"].as_str().unwrap()))
        .await;
    assert_eq!(model["task"], "multi_label");
    assert_eq!(model["metrics"]["thresholds"].as_array().unwrap().len(), 4);
    server.stop().await;
}

/// SSE: a snapshot, progress and epoch events, then the terminal status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_job_to_its_end() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 3});
    let id = server
        .submit(&fx.tints_zip, cfg)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = reqwest::get(format!("{}/jobs/{id}/events", server.url))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(TIMEOUT, resp.text())
        .await
        .expect("the stream ends with the job")
        .unwrap();
    let kinds: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"snapshot"));
    // An epoch that ended before the stream opened is in the snapshot's
    // metrics instead (this job takes a fraction of a second).
    let snapshot: Value = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .and_then(|d| serde_json::from_str(d).ok())
        .expect("the snapshot's data");
    let before = snapshot["metrics"].as_array().map_or(0, Vec::len);
    assert_eq!(
        before + kinds.iter().filter(|k| **k == "epoch").count(),
        3,
        "{kinds:?}, {before} epochs in the snapshot"
    );
    assert!(kinds.contains(&"progress"));
    assert_eq!(kinds.last(), Some(&"status"));
    assert!(body.contains("\"succeeded\""));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_keeps_its_best_epoch() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "full", "epochs": 200, "batch_size": 16});
    let id = server
        .submit(&fx.tints_zip, cfg)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Wait for one completed epoch.
    let started = std::time::Instant::now();
    loop {
        let job = server.get_json(&format!("/jobs/{id}")).await;
        if job["metrics"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "no epoch finished: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let asked = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/jobs/{id}/cancel", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job = server.wait_for_job(&id, Duration::from_secs(30)).await;
    println!("cancelled after {:?}", asked.elapsed());
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(job["status"], "cancelled");
    assert!(
        job["model_id"].is_string(),
        "the best epoch so far is kept: {job}"
    );
    // Cancelling again: the job already ended.
    let again = reqwest::Client::new()
        .post(format!("{}/jobs/{id}/cancel", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    server.stop().await;
}

#[tokio::test]
async fn bad_configs_and_unknown_models_are_refused_before_queueing() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cases = [
        (
            json!({"base_model": fx.base_model, "epochz": 3}),
            "invalid_config",
            "epochz",
        ),
        (
            json!({"base_model": fx.base_model, "batch_size": 0}),
            "invalid_config",
            "batch_size",
        ),
        (
            json!({"base_model": "/no/such/model/dir"}),
            "unknown_base_model",
            "/no/such/model/dir",
        ),
        (
            json!({"base_model": fx.base_model, "device": "cuda:3"}),
            "no_such_device",
            "cuda:3",
        ),
        (
            json!({"base_model": fx.base_model, "selection_metric": "map"}),
            "invalid_config",
            "`selection_metric`: `map` is not a metric of a multi_class task",
        ),
        (
            // Deeper than the model: the detail says how deep it is.
            json!({"base_model": fx.base_model, "mode": "partial", "unfreeze_last_n": 40}),
            "invalid_config",
            "`unfreeze_last_n` is 40, but the base model (vit) has",
        ),
        (
            json!({"base_model": fx.base_model, "task": "multi_class", "epochs": 1}),
            "",
            "",
        ),
    ];
    for (cfg, code, named) in cases.iter().take(6) {
        let resp = server.submit(&fx.tints_zip, cfg.clone()).await;
        assert_eq!(resp.status(), 422, "{cfg}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], *code, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }
    // A multi-label dataset cannot be forced to multi-class.
    let resp = server.submit(&fx.mosaic_zip, cases[6].0.clone()).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "task_mismatch");
    let jobs = server.get_json("/jobs").await;
    assert_eq!(
        jobs.as_array().unwrap().len(),
        0,
        "nothing was queued: {jobs}"
    );

    // Idempotency: the same key twice gives the same job.
    let cfg = json!({"base_model": fx.base_model, "epochs": 1});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp =
            crate::common::e2e::submit(&server.url, &fx.tints_zip, cfg.clone(), Some("abc-123"))
                .await;
        assert_eq!(resp.status(), 202);
        ids.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(ids[0], ids[1]);
    // JSON naming the stored dataset works too.
    let dataset_id = server.get_json(&format!("/jobs/{}", ids[0])).await["dataset_id"].clone();
    let resp = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .json(&json!({"dataset_id": dataset_id, "config": cfg}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .json(&json!({"dataset_id": "nope", "config": cfg}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    server.stop().await;
}

/// Fine-tuning at another resolution than the base model's saves a model
/// that runs natively at that size, in vitrine and in `transformers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_at_another_resolution_saves_a_native_model() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "full", "epochs": 2,
                     "image_size": 48, "learning_rate": 0.001});
    let id = server
        .submit(&fx.tints_zip, cfg)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = server.wait_for_job(&id, TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["model_id"].as_str().unwrap();
    let dir = server.dir.path().join("models").join(model_id);
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["image_size"], 48);
    let pre: Value =
        serde_json::from_slice(&std::fs::read(dir.join("preprocessor_config.json")).unwrap())
            .unwrap();
    assert_eq!(pre["size"], json!({"height": 48, "width": 48}));

    let reference = crate::common::e2e::hf_scores(&dir, &fx.red_png);
    let answer: Value = reqwest::Client::new()
        .post(format!(
            "{}/predict?all_scores=true&calibrated=false",
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
    let worst = crate::common::e2e::max_score_diff(&answer["results"][0], &reference);
    println!("48 px model: max |score - transformers| = {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
    server.stop().await;
}
