//! A process killed with SIGKILL mid-training loses nothing: on restart the
//! expired lease sends the job back to the queue and it resumes from its
//! last epoch checkpoint; the model is recorded once.

use std::time::{Duration, Instant};

use crate::common::e2e::{fixtures, get_json, submit, wait_for_job};
use crate::common::process::ServerProcess;
use serde_json::{json, Value};

const LEASE: &[&str] = &["--job-lease-secs", "2"];

const EPOCHS: u32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_from_its_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    kill_and_resume(&fixtures().base_model, data.path()).await;
}

/// The same with a ResNet, whose batch-norm statistics are state beside the
/// parameters: the saved model's `num_batches_tracked` counts every training
/// step up to its best epoch, those before the kill included, so the
/// statistics came back from the checkpoint rather than from the base model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_resnet_job_resumes_with_its_batch_norm_statistics() {
    let data = tempfile::tempdir().unwrap();
    let base = data.path().join("resnet");
    crate::common::run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/random_backbone.py"),
        &["resnet", base.to_str().unwrap()],
        data.path(),
    );
    let done = kill_and_resume(&base, &data.path().join("server")).await;
    let model_dir = data
        .path()
        .join("server/models")
        .join(done["model_id"].as_str().unwrap());
    let card: Value =
        serde_json::from_slice(&std::fs::read(model_dir.join("metrics.json")).unwrap()).unwrap();
    let best_epoch = card["best_epoch"].as_u64().unwrap();
    let steps_per_epoch = done["progress"]["total_steps"].as_u64().unwrap() / EPOCHS as u64;
    let weights = tch::Tensor::read_safetensors(model_dir.join("model.safetensors")).unwrap();
    let counters: Vec<i64> = weights
        .iter()
        .filter(|(n, _)| n.ends_with("num_batches_tracked"))
        .map(|(_, t)| t.int64_value(&[]))
        .collect();
    assert!(!counters.is_empty());
    println!("best epoch {best_epoch}, {steps_per_epoch} steps per epoch, counters {counters:?}");
    assert!(
        counters
            .iter()
            .all(|&c| c as u64 == best_epoch * steps_per_epoch),
        "{counters:?}, best epoch {best_epoch}, {steps_per_epoch} steps per epoch"
    );
}

/// Submits a 12-epoch full fine-tune of `base_model`, SIGKILLs the server
/// in epoch 2, restarts it on the same data directory and checks that the
/// job resumed (not restarted) and made one model; returns the finished job.
async fn kill_and_resume(base_model: &std::path::Path, data: &std::path::Path) -> Value {
    let fx = fixtures();
    std::fs::create_dir_all(data).unwrap();
    let mut child = ServerProcess::start(data, LEASE).await;
    let url = child.url.clone();

    // Enough epochs that the job is still far from done when it is killed
    // (an epoch of this tiny model takes a fraction of a second).
    let cfg = json!({"base_model": base_model, "mode": "full", "epochs": EPOCHS, "batch_size": 16});
    let resp = submit(&url, &fx.tints_zip, cfg, None).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Kill it once the first epoch is checkpointed and the second is under way.
    let started = Instant::now();
    let before = loop {
        let j = get_json(&url, &format!("/jobs/{id}")).await;
        let epochs = j["metrics"].as_array().map_or(0, Vec::len);
        if epochs >= 1 && j["progress"]["epoch"].as_u64() >= Some(2) {
            break j;
        }
        assert!(
            j["status"] == "queued" || j["status"] == "running",
            "the job ended before it could be killed: {j}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill(); // SIGKILL: no chance to requeue
    let killed_during = before["progress"]["epoch"].as_u64().unwrap();
    assert!(killed_during < EPOCHS as u64, "{before}");
    let epoch1 = before["metrics"][0].clone();

    let mut child = ServerProcess::start_on(data, child.port(), LEASE).await;
    let done = wait_for_job(&url, &id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    // Resumed, not restarted: the second attempt began at epoch 2 and the
    // first epoch's record is the one made before the kill.
    assert!(
        done["progress"]["start_epoch"].as_u64() >= Some(1),
        "{}",
        done["progress"]
    );
    let epochs: Vec<u64> = done["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=EPOCHS as u64).collect::<Vec<_>>());
    assert_eq!(done["metrics"][0], epoch1);
    // Exactly one model, for this job.
    let models: Vec<Value> = reqwest::get(format!("{url}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["job_id"], id.as_str());
    assert_eq!(models[0]["id"], done["model_id"]);
    child.kill();
    done
}
