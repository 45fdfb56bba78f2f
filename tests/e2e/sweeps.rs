//! Sweeps trained for real on the synthetic fixtures: successive halving
//! stops the losing candidates mid-training, the winner is promoted and
//! `/models/<alias>/predict` serves it; a server SIGKILLed mid-sweep
//! resumes the sweep and each of its jobs exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::e2e::{fixtures, get_json, TestServer};
use crate::common::process::ServerProcess;

const TIMEOUT: Duration = Duration::from_secs(400);

/// POST /sweeps: multipart archive + spec; expects 202, returns the sweep.
pub(crate) async fn submit_sweep(url: &str, archive: &Path, spec: Value) -> Value {
    let form = reqwest::multipart::Form::new()
        .part(
            "dataset",
            reqwest::multipart::Part::bytes(std::fs::read(archive).unwrap()).file_name("d.zip"),
        )
        .text("spec", spec.to_string());
    let resp = reqwest::Client::new()
        .post(format!("{url}/sweeps"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

/// Polls the sweep until it ends.
pub(crate) async fn wait_for_sweep(url: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let s = get_json(url, &format!("/sweeps/{id}")).await;
        if ["succeeded", "failed", "cancelled"].contains(&s["status"].as_str().unwrap_or("")) {
            return s;
        }
        assert!(started.elapsed() < TIMEOUT, "sweep {id} did not end: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Three full fine-tunes run side by side (the server's CPU worker and two
/// more on the same queue, so that `max_parallel: 3` means three at once).
/// Two have a learning rate too small to learn anything: at the rung
/// (epoch 1) the one that learns is kept and the other two are stopped
/// mid-training, keeping their best epoch as a model. The winner is
/// promoted to an alias and `/models/<alias>/predict` answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halving_stops_the_losers_and_the_promoted_winner_serves_predictions() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let extra = CancellationToken::new();
    let mut workers = vitrine::jobs::worker::spawn_workers(&server.state.jobs, extra.clone());
    workers.extend(vitrine::jobs::worker::spawn_workers(
        &server.state.jobs,
        extra.clone(),
    ));
    let base = fx.base_model.to_str().unwrap();
    const EPOCHS: u64 = 8;
    // Candidates do not wait at a rung, and an epoch of this dataset takes
    // about 0.1 s: with the winner's 8 epochs a loser could end before the
    // supervisor's next tick decides the rung. With 100 it is still
    // training when it is stopped.
    const LOSER_EPOCHS: u64 = 100;
    let spec = json!({
        "base": {"base_model": base, "mode": "full", "epochs": EPOCHS, "batch_size": 16, "warmup_ratio": 0.0},
        "candidates": [
            {"learning_rate": 1e-8, "seed": 1, "epochs": LOSER_EPOCHS},
            {"learning_rate": 0.002},
            {"learning_rate": 1e-8, "seed": 2, "epochs": LOSER_EPOCHS},
        ],
        "max_parallel": 3,
        "early_stop": "halving", "rungs": [1], "reduction_factor": 3,
        "promote_alias": "tints-best",
    });
    let sweep = submit_sweep(&server.url, &fx.tints_zip, spec).await;
    let id = sweep["id"].as_str().unwrap();
    // Followed live: a snapshot, then updates, until the sweep ends.
    let resp = reqwest::get(format!("{}/sweeps/{id}/events", server.url))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(TIMEOUT, resp.text())
        .await
        .expect("the stream ends with the sweep")
        .unwrap();
    let events: Vec<(&str, Value)> = body
        .split("\n\n")
        .filter_map(|block| {
            let kind = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((kind, serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(events.first().map(|e| e.0), Some("snapshot"));
    assert!(events.len() > 2, "{body}");
    let (kind, last) = events.last().unwrap();
    assert_eq!((*kind, &last["status"]), ("update", &json!("succeeded")));
    assert!(events
        .iter()
        .any(|(_, s)| s["rungs_done"] == 1 && s["status"] == "running"));

    let done = wait_for_sweep(&server.url, id).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&done["leaderboard"]).unwrap()
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["rungs_done"], 1);
    let board = done["leaderboard"].as_array().unwrap();
    let winner = &board[0];
    assert_eq!(winner["config"]["learning_rate"], 0.002, "{done}");
    assert_eq!(winner["status"], "succeeded");
    assert_eq!(winner["stopped_rung"], Value::Null);
    assert_eq!(winner["epochs_done"], EPOCHS);
    assert!(
        winner["trainable_parameters"].as_u64() > Some(0),
        "{winner}"
    );
    assert!(winner["images_per_sec"].as_f64() > Some(0.0));
    assert!(winner["wall_seconds"].as_f64() > Some(0.0));
    assert_eq!(done["winner_job_id"], winner["job_id"]);
    for loser in &board[1..] {
        assert_eq!(loser["config"]["learning_rate"], 1e-8);
        assert_eq!(loser["stopped_rung"], 1, "{loser}");
        assert_eq!(loser["status"], "cancelled", "stopped early: {loser}");
        assert!(
            loser["epochs_done"].as_u64() < Some(LOSER_EPOCHS),
            "stopped before its last epoch: {loser}"
        );
        assert!(
            loser["model_id"].is_string(),
            "keeps its best epoch: {loser}"
        );
        let job = server
            .get_json(&format!("/jobs/{}", loser["job_id"].as_str().unwrap()))
            .await;
        assert_eq!(job["sweep_id"], id);
        assert_eq!(job["stopped_rung"], 1);
    }
    assert!(winner["best_metric"].as_f64() > board[1]["best_metric"].as_f64());

    // The alias points at the winner's model, and /predict serves it.
    let model = server.get_json("/models/tints-best").await;
    assert_eq!(model["id"], done["winner_model_id"]);
    let resp = reqwest::Client::new()
        .post(format!("{}/models/tints-best/predict", server.url))
        .header("content-type", "image/png")
        .body(std::fs::read(&fx.red_png).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], done["winner_model_id"], "{answer}");
    assert_eq!(answer["predictions"][0]["label"], "red", "{answer}");

    extra.cancel();
    for w in workers {
        let _ = w.await;
    }
    server.stop().await;
}

const LEASE: &[&str] = &["--job-lease-secs", "2"];

/// Two candidates, one at a time; the server is SIGKILLed while the first
/// is in its second epoch. After a restart the sweep goes on from the
/// database: the killed job resumes from its checkpoint (attempt 2, its
/// first epoch kept), the second runs once, each makes one model, and the
/// winner is promoted to `production`, which `/predict` follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_killed_mid_training_resumes_each_job_exactly_once() {
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let mut child = ServerProcess::start(data.path(), LEASE).await;
    let url = child.url.clone();
    const EPOCHS: u64 = 12;
    let spec = json!({
        "base": {"base_model": fx.base_model, "mode": "full", "epochs": EPOCHS, "batch_size": 16},
        "grid": {"learning_rate": [0.001, 0.002]},
        "promote_alias": "production",
    });
    let sweep = submit_sweep(&url, &fx.tints_zip, spec).await;
    let id = sweep["id"].as_str().unwrap().to_string();

    // Kill once a candidate has checkpointed epoch 1 and is into epoch 2
    // (progress is written once a second: enough epochs that the first
    // candidate is still far from done then).
    let started = Instant::now();
    let (killed_job, epoch1) = loop {
        let s = get_json(&url, &format!("/sweeps/{id}")).await;
        let rows = s["leaderboard"].as_array().unwrap();
        assert!(
            rows.iter()
                .all(|r| r["status"] == "queued" || r["status"] == "running"),
            "a candidate ended before the kill: {s}"
        );
        let mut hit = None;
        for r in rows.iter().filter(|r| r["status"] == "running") {
            let j = get_json(&url, &format!("/jobs/{}", r["job_id"].as_str().unwrap())).await;
            if j["metrics"].as_array().map_or(0, Vec::len) >= 1
                && j["progress"]["epoch"].as_u64() >= Some(2)
            {
                hit = Some((
                    j["id"].as_str().unwrap().to_string(),
                    j["metrics"][0].clone(),
                ));
            }
        }
        if let Some(hit) = hit {
            break hit;
        }
        assert!(started.elapsed() < TIMEOUT, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill(); // SIGKILL: no chance to requeue

    let mut child = ServerProcess::start_on(data.path(), child.port(), LEASE).await;
    let done = wait_for_sweep(&url, &id).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&done["leaderboard"]).unwrap()
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    let board = done["leaderboard"].as_array().unwrap();
    assert_eq!(board.len(), 2);
    for row in board {
        let job = get_json(&url, &format!("/jobs/{}", row["job_id"].as_str().unwrap())).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let epochs: Vec<u64> = job["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["epoch"].as_u64().unwrap())
            .collect();
        assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>(), "each epoch once");
        if job["id"] == killed_job.as_str() {
            assert_eq!(job["attempts"], 2, "resumed once: {job}");
            assert!(
                job["progress"]["start_epoch"].as_u64() >= Some(1),
                "resumed, not restarted"
            );
            assert_eq!(job["metrics"][0], epoch1);
        } else {
            assert_eq!(job["attempts"], 1, "{job}");
        }
    }
    // One model per job.
    let models: Vec<Value> = reqwest::get(format!("{url}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models.len(), 2, "{models:?}");
    let mut owners: Vec<&str> = models
        .iter()
        .map(|m| m["job_id"].as_str().unwrap())
        .collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 2);
    // The winner serves /predict (the `production` alias).
    let resp = reqwest::Client::new()
        .post(format!("{url}/predict"))
        .header("content-type", "image/png")
        .body(std::fs::read(&fx.red_png).unwrap())
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], done["winner_model_id"], "{answer}");
    child.kill();
}
