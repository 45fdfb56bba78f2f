//! The artefact store against a real S3-compatible server (moto, with IAM
//! authentication on; `tests/common/s3.rs`), through the same
//! `object_store` client production uses: streamed uploads, dataset tars,
//! checkpoints through an outage, the model cache, start-up errors, and a
//! validation resumed by another node.

use std::time::Duration;

use sha2::{Digest, Sha256};
use vitrine::artifacts::{ArtifactOptions, Artifacts, Backoff};

use crate::common::s3::{CutProxy, S3Server};
use crate::common::{photo_archive, settle, upload, TestApp};

/// A store at `url` on `s3`, reached at `endpoint` when given.
fn options(s3: &S3Server, url: &str, endpoint: Option<&str>) -> ArtifactOptions {
    ArtifactOptions {
        url: Some(url.to_string()),
        model_cache_bytes: 1 << 30,
        backoff: Backoff {
            attempts: 3,
            initial: Duration::from_millis(50),
        },
        s3_env: match endpoint {
            Some(e) => s3.env_via(e),
            None => s3.env(),
        },
    }
}

async fn open(s3: &S3Server, url: &str, dir: &std::path::Path) -> Artifacts {
    Artifacts::open(&options(s3, url, None), dir, &prometheus::Registry::new())
        .await
        .unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// 40 MB goes up in multipart parts (the client's buffer is 10 MB) and
/// comes back identical, on another node.
#[tokio::test]
async fn a_large_upload_streams_up_and_back() {
    let Some(s3) = S3Server::shared() else { return };
    let url = s3.fresh_bucket();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bytes: Vec<u8> = (0..40_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = one.path().join("upload");
    std::fs::write(&src, &bytes).unwrap();
    open(s3, &url, one.path())
        .await
        .put_upload("big", &src)
        .await
        .unwrap();
    let b = open(s3, &url, two.path()).await;
    let dest = two.path().join("uploads/big");
    assert!(b.fetch_upload("big", &dest).await.unwrap());
    assert_eq!(sha(&std::fs::read(&dest).unwrap()), sha(&bytes));
    assert_eq!(b.downloads("upload"), 1);
}

/// A dataset directory goes up as one tar and comes back on another node
/// once, however many jobs ask at once.
#[tokio::test]
async fn a_dataset_tar_round_trips_once() {
    let Some(s3) = S3Server::shared() else { return };
    let url = s3.fresh_bucket();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = one.path().join("datasets/d1");
    std::fs::create_dir_all(dir.join("train/a")).unwrap();
    std::fs::write(dir.join("manifest.json"), b"{\"x\":1}").unwrap();
    std::fs::write(dir.join("train/a/1.jpg"), vec![9u8; 300_000]).unwrap();
    open(s3, &url, one.path())
        .await
        .put_dataset("datasets/d1", &dir)
        .await
        .unwrap();
    let b = open(s3, &url, two.path()).await;
    let all = futures::future::join_all((0..6).map(|_| b.dataset_dir("datasets/d1"))).await;
    assert!(all.iter().all(|r| r.is_ok()), "{all:?}");
    assert_eq!(b.downloads("dataset"), 1);
    assert_eq!(
        std::fs::read(two.path().join("datasets/d1/train/a/1.jpg")).unwrap(),
        vec![9u8; 300_000]
    );
    let leftovers: Vec<_> = std::fs::read_dir(two.path().join("datasets"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec!["d1"], "nothing half-fetched beside it");
}

/// Epoch 1 is stored; the store becomes unreachable; epoch 2's upload
/// retries, then fails naming the store; the pointer and epoch 1's files
/// are intact, and another node resumes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_never_loses_the_last_checkpoint() {
    let Some(s3) = S3Server::shared() else { return };
    let url = s3.fresh_bucket();
    let proxy = CutProxy::start(&s3.endpoint).await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Artifacts::open(
        &options(s3, &url, Some(&proxy.endpoint)),
        one.path(),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let work = one.path().join("jobs/j");
    let write_epoch = |epoch: u32| {
        std::fs::create_dir_all(work.join("checkpoint")).unwrap();
        std::fs::create_dir_all(work.join("best")).unwrap();
        std::fs::write(
            work.join("checkpoint/state.json"),
            format!(r#"{{"epochs_done":{epoch}}}"#),
        )
        .unwrap();
        std::fs::write(
            work.join("checkpoint/weights.safetensors"),
            vec![epoch as u8; 1000],
        )
        .unwrap();
        std::fs::write(work.join("best/model.safetensors"), vec![epoch as u8; 1000]).unwrap();
    };
    let sync = a.job_sync("j", &work).unwrap();
    write_epoch(1);
    sync.push_epoch(1, true).await.unwrap();

    proxy.cut();
    write_epoch(2);
    let started = std::time::Instant::now();
    let e = format!("{:#}", sync.push_epoch(2, true).await.unwrap_err());
    assert!(
        e.starts_with(&format!(
            "artifact store {url}: uploading the checkpoint of epoch 2 failed after 3 attempts"
        )),
        "{e}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it backed off"
    );
    proxy.restore();

    let b = open(s3, &url, two.path()).await;
    let pointer = b.job_pointer("j").await.unwrap().unwrap();
    assert_eq!(pointer.epoch, 1, "the pointer did not move");
    let work2 = two.path().join("jobs/j");
    assert_eq!(b.pull_job("j", &work2).await.unwrap(), Some(1));
    assert_eq!(
        std::fs::read(work2.join("checkpoint/weights.safetensors")).unwrap(),
        vec![1u8; 1000]
    );
    assert_eq!(
        std::fs::read(work2.join("best/model.safetensors")).unwrap(),
        vec![1u8; 1000]
    );
    // Once the store is back, the next epoch goes through.
    sync.push_epoch(2, true).await.unwrap();
    assert_eq!(b.job_pointer("j").await.unwrap().unwrap().epoch, 2);
}

/// Eight concurrent first loads of a model: one download. A bound of two
/// models' bytes evicts the least recently used.
#[tokio::test]
async fn models_download_once_and_the_cache_evicts_the_least_recently_used() {
    let Some(s3) = S3Server::shared() else { return };
    let url = s3.fresh_bucket();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let worker = open(s3, &url, one.path()).await;
    for id in ["m1", "m2", "m3"] {
        let dir = one.path().join("models").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), vec![1u8; 50_000]).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        worker
            .put_model(&format!("models/{id}"), &dir)
            .await
            .unwrap();
    }
    let mut opts = options(s3, &url, None);
    opts.model_cache_bytes = 110_000;
    let api = Artifacts::open(&opts, two.path(), &prometheus::Registry::new())
        .await
        .unwrap();
    let loads = futures::future::join_all((0..8).map(|_| api.model_dir("models/m1"))).await;
    assert!(loads.iter().all(|r| r.is_ok()), "{loads:?}");
    assert_eq!(api.downloads("model"), 1);
    api.model_dir("models/m2").await.unwrap();
    api.model_dir("models/m1").await.unwrap();
    api.model_dir("models/m3").await.unwrap();
    assert_eq!(api.cached_models().0, vec!["models/m3", "models/m1"]);
    assert!(!two.path().join("models/m2").exists());
    assert_eq!(api.downloads("model"), 3);
}

/// Start-up checks in-process: a bucket nobody created, and an endpoint
/// nothing listens on, each one line naming the URL. (Wrong credentials
/// and an unknown scheme are checked on the real binary in
/// `tests/e2e/artifacts.rs`.)
#[tokio::test]
async fn a_missing_bucket_or_a_dead_endpoint_is_a_clear_error_at_start() {
    let Some(s3) = S3Server::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = s3.missing_bucket();
    let e = Artifacts::open(
        &options(s3, &url, None),
        dir.path(),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    let bucket = url.trim_start_matches("s3://").split('/').next().unwrap();
    assert_eq!(
        e,
        format!("artifact store {url}: bucket `{bucket}` does not exist (create it first)")
    );

    let dead = format!("http://127.0.0.1:{}", crate::common::process::free_port());
    let url = s3.fresh_bucket();
    let started = std::time::Instant::now();
    let e = Artifacts::open(
        &options(s3, &url, Some(&dead)),
        dir.path(),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "artifact store {url}: endpoint {dead} is unreachable"
        )),
        "{e}"
    );
    assert!(!e.contains('\n') && !e.contains(&s3.secret_key), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded");
}

/// An upload is copied to the store while it validates; the validated
/// dataset goes up as a tar and the upload goes away. A node that finds a
/// dataset left `validating` by another one fetches its upload from the
/// store and validates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_left_by_another_node_resumes_from_the_store() {
    let Some(s3) = S3Server::shared() else { return };
    let url = s3.fresh_bucket();
    let archive = photo_archive(4, 64, 64, false);
    let key = sha(&archive);

    let a = TestApp::with_config(|c| {
        c.artifacts = Some(url.clone());
        c.artifacts_env = s3.env();
    })
    .await;
    let (status, body) = upload(&a, &archive).await;
    assert_eq!(status, 202, "{body}");
    let done = settle(&a, body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "ready", "{done}");
    let probe = tempfile::tempdir().unwrap();
    let reader = open(s3, &url, probe.path()).await;
    let fetched = reader
        .dataset_dir(&format!("datasets/{key}"))
        .await
        .unwrap();
    assert!(fetched.join("manifest.json").is_file());
    assert!(
        !reader
            .fetch_upload(&key, &probe.path().join("u"))
            .await
            .unwrap(),
        "the upload left the store when its validation ended"
    );

    // Node B: a row left `validating`, whose upload only the store has.
    let other = photo_archive(5, 64, 64, false);
    let other_key = sha(&other);
    let src = probe.path().join("other.zip");
    std::fs::write(&src, &other).unwrap();
    reader.put_upload(&other_key, &src).await.unwrap();
    let b = TestApp::with_config(|c| {
        c.artifacts = Some(url.clone());
        c.artifacts_env = s3.env();
    })
    .await;
    let row =
        vitrine::store::datasets::insert_validating::<vitrine::datasets::record::DatasetRecord>(
            &b.state.db,
            &other_key,
            other.len() as i64,
            &format!("datasets/{other_key}"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.state.datasets.resume().await.unwrap(), 1);
    let done = settle(&b, &row.id.to_string()).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(b.state.artifacts.downloads("upload"), 1);
}
