//! End-to-end helpers: a real server on port 0 over a real SQLite file, and
//! synthetic fixtures (a pre-trained tiny ViT, image datasets) made by
//! `tests/e2e/synthetic.py` once and cached under cargo's target tmp dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vitrine::config::ServeConfig;

/// A running vitrine on 127.0.0.1:<random port>.
pub struct TestServer {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub state: vitrine::app::AppState,
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServeConfig::for_data_dir(dir.path());
        cfg.devices = vec!["cpu".into()];
        cfg.job_lease_secs = 5;
        tweak(&mut cfg);
        let state = vitrine::app::AppState::build(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(vitrine::server::serve_on(
            listener,
            state.clone(),
            stop.clone(),
        ));
        Self {
            url,
            dir,
            state,
            stop,
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    /// POST /jobs with a dataset archive and a config.
    pub async fn submit(&self, archive: &Path, config: Value) -> reqwest::Response {
        submit(&self.url, archive, config, None).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&self.url, path).await
    }

    /// Submits a job, expects 202, waits for it and expects it to succeed;
    /// returns the finished job.
    pub async fn run_job(&self, archive: &Path, config: Value, timeout: Duration) -> Value {
        let job = submit_and_wait(&self.url, archive, config, timeout).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    }

    /// Polls the job until it ends (or `timeout`), returning its last state.
    pub async fn wait_for_job(&self, id: &str, timeout: Duration) -> Value {
        wait_for_job(&self.url, id, timeout).await
    }
}

/// POST /jobs on the server at `url`: multipart archive + config.
pub async fn submit(
    url: &str,
    archive: &Path,
    config: Value,
    key: Option<&str>,
) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part(
            "dataset",
            reqwest::multipart::Part::bytes(std::fs::read(archive).unwrap())
                .file_name("dataset.zip"),
        )
        .text("config", config.to_string());
    let mut req = reqwest::Client::new()
        .post(format!("{url}/jobs"))
        .multipart(form);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

/// Submits a job to the server at `url` (expecting 202) and waits for it to
/// end; returns the job as it ended, whatever its status.
pub async fn submit_and_wait(url: &str, archive: &Path, config: Value, timeout: Duration) -> Value {
    let resp = submit(url, archive, config, None).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_job(url, &id, timeout).await
}

/// The value of the sample `name` (labels included, as
/// `vitrine_jobs{status="queued"}`) on the server's `/metrics`.
pub async fn metric(url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn get_json(url: &str, path: &str) -> Value {
    reqwest::get(format!("{url}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls a job until it ends (or `timeout`), returning its last state.
pub async fn wait_for_job(url: &str, id: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    loop {
        let job = get_json(url, &format!("/jobs/{id}")).await;
        let status = job["status"].as_str().unwrap_or("").to_string();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
            return job;
        }
        assert!(
            started.elapsed() < timeout,
            "job {id} still {status} after {timeout:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Files made by `tests/e2e/synthetic.py`.
pub struct Fixtures {
    /// A tiny ViT pre-trained on shape-and-colour images (HF layout).
    pub base_model: PathBuf,
    /// Multi-class imagefolder zip: the colour of an outlined shape
    /// (train/validation dirs).
    pub tints_zip: PathBuf,
    /// Multi-label zip with metadata.jsonl: which colours a mosaic holds.
    pub mosaic_zip: PathBuf,
    /// A red outlined shape.
    pub red_png: PathBuf,
}

static LOCK: Mutex<()> = Mutex::new(());

/// Makes the fixtures once per script version; later calls reuse them.
pub fn fixtures() -> Fixtures {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/synthetic.py");
    let text = std::fs::read(script).unwrap();
    let hash = text.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{hash:016x}"));
    let fx = Fixtures {
        base_model: dir.join("base"),
        tints_zip: dir.join("tints.zip"),
        mosaic_zip: dir.join("mosaic.zip"),
        red_png: dir.join("red.png"),
    };
    if dir.join("done").exists() {
        return fx;
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let run = |args: &[&str]| super::run_python(script, args, &tmp);
    run(&["pretrain", "base"]);
    run(&["dataset", "tints.zip", "tints"]);
    run(&["dataset", "mosaic.zip", "mosaic"]);
    run(&["image", "red.png", "red"]);
    std::fs::write(tmp.join("done"), b"").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    fx
}

/// `GET /models/{id}/download` on the server at `url`: expects 200 and
/// returns the paths of the tar.gz's entries.
pub async fn downloaded_names(url: &str, model_id: &str) -> Vec<String> {
    let resp = reqwest::get(format!("{url}/models/{model_id}/download"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// `transformers`' scores for a saved model directory and one image
/// (`tests/e2e/hf_predict.py`): `{"labels": [...], "scores": [[...]]}`.
pub fn hf_scores(model_dir: &Path, image: &Path) -> Value {
    super::python_json("tests/e2e/hf_predict.py", &[model_dir, image])
}

/// The largest |score - reference| over every label of one image's result
/// (asked with `all_scores=true`).
pub fn max_score_diff(result: &Value, reference: &Value) -> f64 {
    let scores = result["scores"]
        .as_array()
        .expect("all_scores in the answer");
    reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let got = scores.iter().find(|p| p["label"] == *label).unwrap()["score"]
                .as_f64()
                .unwrap();
            (got - reference["scores"][0][i].as_f64().unwrap()).abs()
        })
        .fold(0.0, f64::max)
}

/// `POST /datasets` with `archive` as the `dataset` part: status and body.
pub async fn upload_dataset(url: &str, archive: Vec<u8>) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new().part(
        "dataset",
        reqwest::multipart::Part::bytes(archive).file_name("dataset.zip"),
    );
    let resp = reqwest::Client::new()
        .post(format!("{url}/datasets"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Polls `GET /datasets/{id}` until it is no longer `validating`.
pub async fn wait_dataset_settled(
    url: &str,
    id: &str,
    timeout: std::time::Duration,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let d = get_json(url, &format!("/datasets/{id}")).await;
        if d["status"] != "validating" {
            return d;
        }
        assert!(started.elapsed() < timeout, "still validating: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
