//! A cluster of real processes over one database: one API node (`serve
//! --no-workers`) and three `vitrine worker` nodes, 40 jobs submitted at
//! once. Every job runs exactly once (one model each; the claims in the
//! workers' logs never overlap between owners), a worker SIGKILLed
//! mid-epoch loses its job to another worker, which resumes it from the
//! last checkpoint; a new API node, after the first is SIGKILLed, answers
//! `/predict` for the same models as it did; a worker stopped with SIGTERM
//! puts its job back with the attempt refunded.
//!
//! The backend is a parameter ([`Backend`]): here SQLite, one file and one
//! data directory shared by every process. [`run_cluster`] takes a
//! `Backend::postgres_s3(...)` as it is (each node then has a data
//! directory of its own).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::cluster::{claims, overlapping_claims, Backend, Claim, Node};
use crate::common::e2e::{fixtures, get_json, wait_for_job};

const WORKERS: usize = 3;
const JOBS: usize = 40;
/// The job killed with its worker: long enough to be caught mid-epoch.
const LONG_EPOCHS: u64 = 10;
const SMALL_EPOCHS: u64 = 2;
/// Short leases, so a killed worker's job is back in the queue soon.
const NODE_FLAGS: &[&str] = &["--job-lease-secs", "4", "--cpu-threads", "1"];
const TIMEOUT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_sqlite_runs_every_job_once_and_survives_killed_nodes() {
    let dir = tempfile::tempdir().unwrap();
    run_cluster(&Backend::sqlite(dir.path())).await;
}

/// The proof: PostgreSQL and an S3 store (moto), each node with a
/// data directory of its own, so all they share goes through the database
/// and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_postgres_and_s3_runs_every_job_once_and_survives_killed_nodes() {
    let (Some(pg), Some(s3)) = (
        crate::common::postgres::PgServer::shared(),
        crate::common::s3::S3Server::shared(),
    ) else {
        eprintln!("SKIPPED a_cluster_on_postgres_and_s3: no PostgreSQL or S3 server");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::postgres_s3(
        dir.path(),
        &pg.fresh_database(),
        &s3.fresh_bucket(),
        s3.env(),
    );
    run_cluster(&backend).await;
}

/// The whole scenario on `backend`; prints the counts and times.
pub async fn run_cluster(backend: &Backend) {
    let fx = fixtures();
    let mut api = Node::api(backend, "api-1", NODE_FLAGS).await;
    let mut workers = Vec::new();
    for i in 1..=WORKERS {
        workers.push(Node::worker(backend, &format!("worker-{i}"), NODE_FLAGS).await);
    }
    probe_a_worker(&workers[0]).await;

    // One dataset, validated by the API node.
    let dataset = upload_dataset(&api.url, &fx.tints_zip).await;

    // The long job first (the oldest is claimed first), then the others at once.
    let started = Instant::now();
    let job_config = |epochs: u64| {
        json!({"dataset_id": dataset, "config": {"base_model": fx.base_model, "mode": "full",
            "epochs": epochs, "batch_size": 16}})
    };
    let long = submit(&api.url, job_config(LONG_EPOCHS)).await;
    // A client follows the long job on the API node while workers train it.
    let follower = tokio::spawn(follow_events(api.url.clone(), long.clone()));
    let others =
        futures::future::join_all((1..JOBS).map(|_| submit(&api.url, job_config(SMALL_EPOCHS))))
            .await;
    let submitted = started.elapsed();
    let mut ids = vec![long.clone()];
    ids.extend(others);

    // Kill the long job's worker once epoch 1 is checkpointed and epoch 2
    // under way.
    let before = loop {
        let j = get_json(&api.url, &format!("/jobs/{long}")).await;
        let epochs = j["metrics"].as_array().map_or(0, Vec::len);
        if j["status"] == "running" && epochs >= 1 && j["progress"]["epoch"].as_u64() >= Some(2) {
            break j;
        }
        assert!(
            j["status"] == "queued" || j["status"] == "running",
            "the long job ended before it could be killed: {j}"
        );
        assert!(started.elapsed() < TIMEOUT, "no progress: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = workers
        .iter()
        .position(|w| claims(w).iter().any(|c| c.job == long && c.until.is_none()))
        .expect("a worker's log shows the long job running");
    workers[victim].kill();
    let killed_at = chrono::Utc::now();
    let victim_name = workers[victim].name.clone();
    let checkpointed = before["metrics"].as_array().unwrap().len() as u64;

    // Every job ends.
    let mut done = BTreeMap::new();
    for id in &ids {
        let job = wait_for_job(&api.url, id, TIMEOUT.saturating_sub(started.elapsed())).await;
        done.insert(id.clone(), job);
    }
    let wall = started.elapsed();
    for (id, job) in &done {
        assert_eq!(job["status"], "succeeded", "{id}: {job}");
        let expected = if *id == long { 2 } else { 1 };
        assert_eq!(job["attempts"], expected, "{id}: {job}");
    }

    // The client's stream: on PostgreSQL the workers' events reach the API
    // node (jobs::relay), before and after the kill; on SQLite only the
    // end, found by the stream's polling.
    let seen = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the event stream ends with the job")
        .unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("status"), "{seen:?}");
    let count = |kind: &str| seen.iter().filter(|k| *k == kind).count();
    if backend.relays_events() {
        assert!(count("progress") >= 2, "{seen:?}");
        assert_eq!(
            count("epoch") as u64,
            LONG_EPOCHS,
            "one event per epoch: {seen:?}"
        );
        // running again on the second worker, then succeeded (the first
        // `running` may precede the subscription: the snapshot holds it)
        assert!(count("status") >= 2, "{seen:?}");
    }
    println!(
        "cluster on {}: the API node's stream of the long job saw {} progress, {} epoch, {} status events",
        backend.name,
        count("progress"),
        count("epoch"),
        count("status")
    );

    // The long job resumed from its checkpoint, elsewhere, and kept the
    // epochs recorded before the kill.
    let resumed = &done[&long];
    let start_epoch = resumed["progress"]["start_epoch"].as_u64().unwrap();
    assert!(
        start_epoch >= checkpointed,
        "resumed at {start_epoch}, checkpointed {checkpointed}: {}",
        resumed["progress"]
    );
    let epochs: Vec<u64> = resumed["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=LONG_EPOCHS).collect::<Vec<_>>());
    assert_eq!(resumed["metrics"][0], before["metrics"][0]);

    // The workers' own account: every claim, no two owners of one job at
    // once, one success per job.
    let all: Vec<Claim> = workers.iter().flat_map(claims).collect();
    let died = |node: &str| (node == victim_name).then_some(killed_at);
    let overlaps = overlapping_claims(&all, &died);
    assert!(overlaps.is_empty(), "overlapping claims: {overlaps:#?}");
    for id in &ids {
        let of_job: Vec<&Claim> = all.iter().filter(|c| &c.job == id).collect();
        let wins = of_job
            .iter()
            .filter(|c| c.outcome.as_deref() == Some("succeeded"))
            .count();
        assert_eq!(wins, 1, "{id}: {of_job:#?}");
        assert_eq!(of_job.len(), if *id == long { 2 } else { 1 }, "{of_job:#?}");
    }
    let mut long_claims: Vec<&Claim> = all.iter().filter(|c| c.job == long).collect();
    long_claims.sort_by_key(|c| c.from);
    assert_eq!(long_claims[0].node, victim_name);
    assert_eq!(long_claims[0].until, None, "killed while running");
    assert_ne!(long_claims[1].node, victim_name);
    assert!(long_claims[1].from > killed_at);
    let resume_after = (long_claims[1].from - killed_at).to_std().unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(resumed["finished_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let long_done_after = (finished - killed_at).to_std().unwrap();

    // One model per job.
    let models = list_models(&api.url).await;
    assert_eq!(models.len(), JOBS, "{models:#?}");
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for m in &models {
        *per_job
            .entry(m["job_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (id, job) in &done {
        assert_eq!(per_job.get(id), Some(&1), "{id}");
        assert!(models.iter().any(|m| m["id"] == job["model_id"]));
    }

    // A new API node answers `/predict` for the same models as the old one.
    let image = std::fs::read(&fx.red_png).unwrap();
    let model_ids: Vec<String> = done
        .values()
        .map(|j| j["model_id"].as_str().unwrap().to_string())
        .collect();
    let mut answers = Vec::new();
    for m in &model_ids {
        answers.push(predict(&api.url, m, &image).await);
    }
    api.kill();
    let restarted = Instant::now();
    let api = Node::api(backend, "api-2", NODE_FLAGS).await;
    let api_ready_after = restarted.elapsed();
    for (m, before) in model_ids.iter().zip(&answers) {
        let after = predict(&api.url, m, &image).await;
        assert_same_scores(before, &after, m);
    }
    let newest = reqwest::Client::new()
        .post(format!("{}/predict", api.url))
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(newest.status(), 200);
    let api_served_after = restarted.elapsed();

    // SIGTERM on a worker running a job: the job goes back to the queue
    // with its attempt refunded and ends on another worker.
    let sigterm_job = submit(&api.url, job_config(LONG_EPOCHS)).await;
    let holder = loop {
        let j = get_json(&api.url, &format!("/jobs/{sigterm_job}")).await;
        if j["status"] == "running" && j["metrics"].as_array().is_some_and(|m| !m.is_empty()) {
            if let Some(w) = workers.iter().position(|w| {
                claims(w)
                    .iter()
                    .any(|c| c.job == sigterm_job && c.until.is_none())
            }) {
                break w;
            }
        }
        assert!(j["status"] == "queued" || j["status"] == "running", "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    workers[holder].terminate();
    let exit = workers[holder].wait_exit(Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    let job = wait_for_job(&api.url, &sigterm_job, TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "the shutdown's attempt is refunded: {job}"
    );
    let outcomes: Vec<Option<String>> = claims(&workers[holder])
        .into_iter()
        .filter(|c| c.job == sigterm_job)
        .map(|c| c.outcome)
        .collect();
    assert_eq!(outcomes, vec![Some("requeued".to_string())]);

    let mut per_worker: Vec<String> = workers
        .iter()
        .map(|w| {
            let n = all.iter().filter(|c| c.node == w.name).count();
            format!("{}: {n}", w.name)
        })
        .collect();
    per_worker.sort();
    println!(
        "cluster on {}: {JOBS} jobs ({} of {SMALL_EPOCHS} epochs, 1 of {LONG_EPOCHS}), \
         1 API node + {WORKERS} workers; submitted in {:.2} s, all succeeded in {:.1} s \
         wall; claims per worker: {}; {victim_name} SIGKILLed in epoch {} of the long job \
         (checkpoint at epoch {checkpointed}), claimed again {:.1} s later, resumed at \
         epoch {start_epoch} and finished {:.1} s after the kill; new API node ready \
         {:.2} s after the kill of the old one, {} models answered identically {:.2} s \
         after it",
        backend.name,
        JOBS - 1,
        submitted.as_secs_f64(),
        wall.as_secs_f64(),
        per_worker.join(", "),
        before["progress"]["epoch"],
        resume_after.as_secs_f64(),
        long_done_after.as_secs_f64(),
        api_ready_after.as_secs_f64(),
        model_ids.len(),
        api_served_after.as_secs_f64(),
    );
}

/// A worker answers its probes and nothing else.
async fn probe_a_worker(worker: &Node) {
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/jobs", 404)] {
        let resp = reqwest::get(format!("{}{path}", worker.url)).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    let metrics = reqwest::get(format!("{}/metrics", worker.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vitrine_device_up{device=\"cpu\"} 1"),
        "{metrics}"
    );
}

/// `POST /datasets` and waits until it is `ready`; returns its id.
async fn upload_dataset(url: &str, archive: &std::path::Path) -> String {
    let (status, body) =
        crate::common::e2e::upload_dataset(url, std::fs::read(archive).unwrap()).await;
    assert!(status == 200 || status == 202, "{status}: {body}");
    let id = body["id"].as_str().unwrap().to_string();
    let d = crate::common::e2e::wait_dataset_settled(url, &id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "ready", "{d}");
    id
}

/// `POST /jobs` as JSON; expects 202 and returns the job's id.
/// The event names of `/jobs/{job}/events` until the stream ends.
async fn follow_events(url: String, job: String) -> Vec<String> {
    use futures::StreamExt;
    let response = reqwest::get(format!("{url}/jobs/{job}/events"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let (mut buffer, mut kinds) = (String::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(kind) = line.trim_end().strip_prefix("event:") {
                kinds.push(kind.trim().to_string());
            }
        }
    }
    kinds
}

async fn submit(url: &str, body: Value) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{url}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn list_models(url: &str) -> Vec<Value> {
    get_json(url, "/models?limit=200")
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// `POST /models/{id}/predict?all_scores=true` with one PNG; expects 200.
async fn predict(url: &str, model: &str, png: &[u8]) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}/models/{model}/predict?all_scores=true"))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{model}");
    resp.json().await.unwrap()
}

fn assert_same_scores(before: &Value, after: &Value, model: &str) {
    let scores = |v: &Value| -> Vec<(String, f64)> {
        v["results"][0]["scores"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|p| {
                (
                    p["label"].as_str().unwrap().to_string(),
                    p["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (scores(before), scores(after));
    assert_eq!(a.len(), b.len(), "{model}");
    for ((la, sa), (lb, sb)) in a.iter().zip(&b) {
        assert_eq!(la, lb, "{model}");
        assert!((sa - sb).abs() < 1e-5, "{model}: {before} vs {after}");
    }
}
