//! Asynchronous ingestion end to end: a job submitted while its dataset is
//! still validating waits, then trains; a server killed (SIGKILL) in the
//! middle of a validation validates the dataset again when it restarts,
//! and nothing is ever half-ready.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::e2e::{
    fixtures, get_json, upload_dataset as upload, wait_dataset_settled as wait_settled, TestServer,
};
use crate::common::photo_archive;
use crate::common::process::ServerProcess;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_validating_dataset_waits_then_trains() {
    let fx = fixtures();
    // One validation at a time on one thread: the tints dataset waits
    // behind a slow one, so the job is surely submitted before it is ready.
    let server = TestServer::start(|c| {
        c.ingest_concurrency = 1;
        c.ingest_threads = 1;
    })
    .await;
    let (status, slow) = upload(&server.url, photo_archive(200, 2000, 1500, false)).await;
    assert_eq!(status, 202, "{slow}");
    let (status, tints) = upload(&server.url, std::fs::read(&fx.tints_zip).unwrap()).await;
    assert_eq!(status, 202, "{tints}");
    let tints_id = tints["id"].as_str().unwrap();

    let resp = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .json(&json!({"dataset_id": tints_id, "config": {
            "base_model": fx.base_model, "mode": "linear_probe", "epochs": 2, "batch_size": 32}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap();

    // It waits for the slow one's slot (its progress says so once its
    // validation task has started).
    let started = Instant::now();
    let waiting = loop {
        let d = get_json(&server.url, &format!("/datasets/{tints_id}")).await;
        if !d["progress"].is_null() || started.elapsed() > Duration::from_secs(10) {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(waiting["status"], "validating", "{waiting}");
    assert_eq!(waiting["progress"]["phase"], "queued", "{waiting}");
    // As long as the dataset validates, its job stays queued. The job is
    // read first: a dataset still validating when read after it was
    // validating when the job was read (statuses only move forward).
    let mut seen_waiting = 0;
    loop {
        let job = server.get_json(&format!("/jobs/{job_id}")).await;
        let d = get_json(&server.url, &format!("/datasets/{tints_id}")).await;
        if d["status"] != "validating" {
            break;
        }
        assert_eq!(
            job["status"], "queued",
            "the job ran before its dataset was ready: {job}"
        );
        seen_waiting += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_waiting >= 1, "the job was never seen waiting");

    let ready = wait_settled(&server.url, tints_id, Duration::from_secs(300)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let done = server.wait_for_job(job_id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (started, ready_at) = (
        done["started_at"].as_str().unwrap().to_string(),
        ready["finished_at"].as_str().unwrap().to_string(),
    );
    assert!(
        started.as_str() >= ready_at.as_str(),
        "started {started}, dataset ready {ready_at}"
    );
    server.stop().await;
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or(vec![], |d| {
        d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_validating_validates_again_on_restart() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--ingest-threads", "1", "--no-workers"];
    let mut child = ServerProcess::start(data.path(), &args).await;
    let url = child.url.clone();
    let (status, body) = upload(&url, photo_archive(300, 2000, 1500, false)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let sha = body["sha256"].as_str().unwrap().to_string();

    // Kill it once some images are checked, well before the end.
    let started = Instant::now();
    let before = loop {
        let d = get_json(&url, &format!("/datasets/{id}")).await;
        assert_eq!(
            d["status"], "validating",
            "ended before it could be killed: {d}"
        );
        if d["progress"]["images_checked"].as_u64() > Some(0) {
            break d;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill();
    println!("killed at {}", before["progress"]);
    // Nothing half-ready: no dataset directory, the upload kept.
    assert!(entries(&data.path().join("datasets")).is_empty());
    assert_eq!(entries(&data.path().join("uploads")), vec![sha.clone()]);

    let child = ServerProcess::start_on(data.path(), child.port(), &args).await;
    let done = wait_settled(&url, &id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(done["summary"]["images"], 300);
    assert_eq!(done["progress"]["images_checked"], 300);
    assert!(entries(&data.path().join("uploads")).is_empty());
    assert!(
        entries(&data.path().join("tmp")).is_empty(),
        "{:?}",
        entries(&data.path().join("tmp"))
    );
    assert!(data
        .path()
        .join("datasets")
        .join(&sha)
        .join("manifest.json")
        .is_file());
    drop(child);
}

/// SIGTERM in the middle of a long validation: the server exits promptly
/// (the validation stops at its next image instead of holding the exit),
/// leaves the dataset `validating` with its upload, and the next start
/// validates it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_while_validating_exits_promptly_and_validates_again() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--ingest-threads", "1", "--no-workers"];
    let mut child = ServerProcess::start(data.path(), &args).await;
    let url = child.url.clone();
    // Several times longer to validate than the exit may take.
    let (status, body) = upload(&url, photo_archive(900, 2000, 1500, false)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let sha = body["sha256"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let d = get_json(&url, &format!("/datasets/{id}")).await;
        assert_eq!(d["status"], "validating", "{d}");
        if d["progress"]["images_checked"].as_u64() > Some(0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.terminate();
    let stopping = Instant::now();
    let exit = child.wait_exit(Duration::from_secs(5)).await;
    assert!(exit.is_some(), "still running 5 s after SIGTERM");
    println!("exited {:?} after SIGTERM", stopping.elapsed());
    assert!(entries(&data.path().join("datasets")).is_empty());
    assert_eq!(entries(&data.path().join("uploads")), vec![sha.clone()]);
    assert!(
        entries(&data.path().join("tmp")).is_empty(),
        "{:?}",
        entries(&data.path().join("tmp"))
    );

    let child = ServerProcess::start_on(data.path(), child.port(), &args).await;
    let done = wait_settled(&url, &id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(done["summary"]["images"], 900);
    assert!(entries(&data.path().join("uploads")).is_empty());
    drop(child);
}
