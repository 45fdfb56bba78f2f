//! The artefact store with real processes over real HTTP: a node with
//! workers trains against an S3-compatible server (moto); a second API
//! node with an empty data dir, on the same database file and bucket,
//! answers `/predict` for that model after downloading it once, however
//! many first requests arrive at once. And the start-up refusals of a bad
//! `--artifacts`, as the binary prints them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::e2e::{fixtures, get_json, submit_and_wait};
use crate::common::process::{free_port, ServerProcess};
use crate::common::s3::S3Server;

/// `AWS_*` variables for a child process.
type Env = Vec<(String, String)>;

fn refs(env: &Env) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `vitrine_artifact_downloads_total{kind}` on a server's /metrics.
async fn downloads(url: &str, kind: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("vitrine_artifact_downloads_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_api_node_serves_a_stored_model_after_one_download() {
    let Some(s3) = S3Server::shared() else { return };
    let fx = fixtures();
    let bucket = s3.fresh_bucket();
    let env = s3.env();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trainer = ServerProcess::start_with(
        one.path(),
        free_port(),
        &["--artifacts", &bucket],
        &refs(&env),
    )
    .await;
    let job = submit_and_wait(
        &trainer.url,
        &fx.tints_zip,
        json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2}),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["model_id"].as_str().unwrap().to_string();

    // The API node: an empty data dir, the same database file and bucket.
    let db = format!("sqlite://{}", one.path().join("vitrine.db").display());
    let api = ServerProcess::start_with(
        two.path(),
        free_port(),
        &[
            "--artifacts",
            &bucket,
            "--database-url",
            &db,
            "--no-workers",
        ],
        &refs(&env),
    )
    .await;
    assert!(!two.path().join("models").join(&model_id).exists());
    let image = std::fs::read(&fx.red_png).unwrap();
    let client = reqwest::Client::new();
    let answers = futures::future::join_all((0..6).map(|_| {
        client
            .post(format!("{}/predict", api.url))
            .header("content-type", "image/png")
            .body(image.clone())
            .send()
    }))
    .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["model"], model_id.as_str(), "{body}");
    }
    assert_eq!(
        downloads(&api.url, "model").await,
        1,
        "six concurrent first requests, one download"
    );
    assert!(two
        .path()
        .join("models")
        .join(&model_id)
        .join("config.json")
        .is_file());

    // The trained node's own answer is the same model's.
    let own = get_json(&trainer.url, &format!("/models/{model_id}")).await;
    assert_eq!(own["id"], model_id.as_str());
    assert_eq!(
        downloads(&trainer.url, "model").await,
        0,
        "it had the model already"
    );
}

/// The binary with a bad `--artifacts` exits at start with one line naming
/// the problem and the URL, and never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_artifact_store_is_refused_at_start() {
    let Some(s3) = S3Server::shared() else { return };
    let data = tempfile::tempdir().unwrap();
    let good = s3.env();
    let with = |k: &str, v: &str| -> Env {
        good.iter()
            .map(|(gk, gv)| (gk.clone(), if gk == k { v.to_string() } else { gv.clone() }))
            .collect()
    };
    let missing = s3.missing_bucket();
    let bucket = s3.fresh_bucket();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, Env, String)> = vec![
        (
            "gs://bucket/x",
            good.clone(),
            "unsupported artifact store URL scheme `gs` in `gs://bucket/x`".into(),
        ),
        (
            &missing,
            good.clone(),
            format!("artifact store {missing}: bucket `"),
        ),
        (
            &bucket,
            with("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
            format!("artifact store {bucket}: access refused (SignatureDoesNotMatch)"),
        ),
        (
            &bucket,
            with("AWS_ACCESS_KEY_ID", "AKIANOBODYKNOWS00000"),
            format!("artifact store {bucket}: access refused (InvalidAccessKeyId)"),
        ),
        (
            &bucket,
            with("AWS_ENDPOINT_URL", &dead),
            format!("artifact store {bucket}: endpoint {dead} is unreachable"),
        ),
    ];
    for (url, env, expected) in cases {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args([
                "serve",
                "--devices",
                "cpu",
                "--no-workers",
                "--artifacts",
                url,
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(data.path())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} started");
        assert!(
            stderr.contains(&expected),
            "{url}: expected `{expected}` in:\n{stderr}"
        );
        assert!(!stderr.contains(&s3.secret_key) && !stderr.contains("not-the-secret"));
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{url}: refused only after {:?}",
            started.elapsed()
        );
    }
}

/// A node is killed (SIGKILL) mid-training; another node with an empty
/// data dir, on the same database file and bucket, takes the job once its
/// lease expires, fetches the dataset and the last stored checkpoint, and
/// resumes from it (not from scratch); the job's stored checkpoints go
/// when it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_died_resumes_on_another_node_from_the_store() {
    let Some(s3) = S3Server::shared() else { return };
    const EPOCHS: u64 = 10;
    let fx = fixtures();
    let bucket = s3.fresh_bucket();
    let env = s3.env();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = format!("sqlite://{}", one.path().join("vitrine.db").display());
    let args = [
        "--artifacts",
        &bucket,
        "--job-lease-secs",
        "2",
        "--database-url",
        &db,
    ];
    let mut first = ServerProcess::start_with(one.path(), free_port(), &args, &refs(&env)).await;
    let cfg =
        json!({"base_model": fx.base_model, "mode": "full", "epochs": EPOCHS, "batch_size": 16});
    let resp = crate::common::e2e::submit(&first.url, &fx.tints_zip, cfg, None).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let before = loop {
        let j = get_json(&first.url, &format!("/jobs/{id}")).await;
        let epochs = j["metrics"].as_array().map_or(0, Vec::len);
        if epochs >= 1 && j["progress"]["epoch"].as_u64() >= Some(2) {
            break j;
        }
        assert!(
            j["status"] == "queued" || j["status"] == "running",
            "ended too soon: {j}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill();
    let epoch1 = before["metrics"][0].clone();

    let second = ServerProcess::start_with(two.path(), free_port(), &args, &refs(&env)).await;
    let done = crate::common::e2e::wait_for_job(&second.url, &id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert!(
        done["progress"]["start_epoch"].as_u64() >= Some(1),
        "resumed, not restarted: {}",
        done["progress"]
    );
    assert_eq!(done["metrics"][0], epoch1, "the first node's epoch is kept");
    assert_eq!(done["metrics"].as_array().unwrap().len() as u64, EPOCHS);
    assert_eq!(downloads(&second.url, "checkpoint").await, 1);
    assert_eq!(downloads(&second.url, "dataset").await, 1);
    // Finished: its checkpoints left the store; its model is there.
    let probe = tempfile::tempdir().unwrap();
    let store = open_store(&bucket, env.clone(), probe.path()).await;
    assert_eq!(store.job_pointer(&id).await.unwrap(), None);
    let model = store
        .model_dir(&format!("models/{}", done["model_id"].as_str().unwrap()))
        .await
        .unwrap();
    assert!(model.join("model.safetensors").is_file());
}

/// The store becomes unreachable mid-training: the epoch's upload retries
/// with backoff, then the job fails with a message naming the store; once
/// the store is back, its last stored checkpoint is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_the_job_and_keeps_its_last_checkpoint() {
    let Some(s3) = S3Server::shared() else { return };
    let fx = fixtures();
    let bucket = s3.fresh_bucket();
    let proxy = crate::common::s3::CutProxy::start(&s3.endpoint).await;
    let server = crate::common::e2e::TestServer::start(|c| {
        c.artifacts = Some(bucket.clone());
        c.artifacts_env = s3.env_via(&proxy.endpoint);
        c.artifacts_retry_attempts = 3;
        c.artifacts_retry_initial_ms = 100;
    })
    .await;
    let cfg = json!({"base_model": fx.base_model, "mode": "full", "epochs": 30, "batch_size": 16});
    let resp = server.submit(&fx.tints_zip, cfg).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    loop {
        let j = server.get_json(&format!("/jobs/{id}")).await;
        if j["metrics"].as_array().map_or(0, Vec::len) >= 1 {
            break;
        }
        assert!(
            j["status"] == "queued" || j["status"] == "running",
            "ended too soon: {j}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let done = server.wait_for_job(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "artifact store {bucket}: uploading the checkpoint of epoch"
        )) && error.contains("failed after 3 attempts"),
        "{error}"
    );
    proxy.restore();
    let probe = tempfile::tempdir().unwrap();
    let store = open_store(&bucket, s3.env(), probe.path()).await;
    let pointer = store
        .job_pointer(&id)
        .await
        .unwrap()
        .expect("the last pointer is kept");
    let recorded = done["metrics"].as_array().unwrap().len() as u32;
    assert_eq!(pointer.epoch, recorded, "it names the last epoch recorded");
    let work = probe.path().join("jobs").join(&id);
    assert_eq!(store.pull_job(&id, &work).await.unwrap(), Some(recorded));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["epochs_done"], recorded);
    server.stop().await;
}

/// The store at `bucket` as a node of its own sees it (cache in `dir`).
async fn open_store(
    bucket: &str,
    s3_env: Vec<(String, String)>,
    dir: &std::path::Path,
) -> vitrine::artifacts::Artifacts {
    vitrine::artifacts::Artifacts::open(
        &vitrine::artifacts::ArtifactOptions {
            url: Some(bucket.to_string()),
            model_cache_bytes: 1 << 30,
            backoff: Default::default(),
            s3_env,
        },
        dir,
        &prometheus::Registry::new(),
    )
    .await
    .unwrap()
}
