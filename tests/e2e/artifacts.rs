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

fn env_of(s3: &S3Server) -> Vec<(String, String)> {
    s3.env()
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
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
    let env = env_of(s3);
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
        assert_eq!(body["model_id"], model_id.as_str(), "{body}");
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
    let good = env_of(s3);
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|(gk, gv)| (gk.clone(), if gk == k { v.to_string() } else { gv.clone() }))
            .collect()
    };
    let missing = s3.missing_bucket();
    let bucket = s3.fresh_bucket();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, Vec<(String, String)>, String)> = vec![
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
