//! Asynchronous ingestion: `POST /datasets` answers 202 with the dataset
//! `validating`; its progress moves (`GET /datasets/{id}` and SSE); jobs
//! queued on it wait, and fail with its refusal if it is refused; an
//! inline `dataset` part of `POST /jobs` behaves as it always did.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use vitrine::store::jobs as job_store;

use vitrine::db::Backend;

use crate::common::postgres::both_databases;
use crate::common::{body_json, photo_archive, settle, upload, TestApp};

// The tests that go through the queue run on SQLite and on PostgreSQL.
both_databases!(
    a_job_on_a_validating_dataset_waits_for_it,
    jobs_on_a_refused_dataset_fail_with_its_error,
);

/// One ingestion thread, so a few hundred photos take seconds.
async fn slow_app() -> TestApp {
    slow_app_on(Backend::Sqlite).await
}

async fn slow_app_on(backend: Backend) -> TestApp {
    TestApp::with_config_on(backend, |c| {
        c.ingest_threads = 1;
        c.devices = vec!["cpu".into()];
    })
    .await
}

async fn post_json(app: &TestApp, uri: &str, body: Value) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    let status = resp.status();
    (status, body_json(resp).await)
}

fn empty(app: &TestApp, sub: &str) -> bool {
    std::fs::read_dir(app.dir.path().join(sub)).map_or(true, |mut d| d.next().is_none())
}

#[tokio::test]
async fn an_upload_is_accepted_at_once_and_its_progress_moves_until_ready() {
    let app = slow_app().await;
    let archive = photo_archive(400, 2000, 1500, false);
    let resp = app
        .send(crate::common::upload_request("dataset", &archive))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = {
        let location = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
        let body = body_json(resp).await;
        assert_eq!(body["status"], "validating", "{body}");
        assert!(
            body["summary"].is_null() && body["task"].is_null(),
            "{body}"
        );
        assert!(body["error"].is_null(), "{body}");
        assert_eq!(
            location,
            format!("/datasets/{}", body["id"].as_str().unwrap())
        );
        body["id"].as_str().unwrap().to_string()
    };

    // Listed with its status at once.
    let list = body_json(app.get("/datasets?status=validating").await).await;
    assert_eq!(list["datasets"][0]["id"], id.as_str());
    assert_eq!(
        app.get("/datasets?status=exploded").await.status(),
        StatusCode::BAD_REQUEST
    );

    // Progress moves: several distinct counts below the total, with a rate and an ETA.
    let mut seen = Vec::new();
    let started = Instant::now();
    let ready = loop {
        let d = body_json(app.get(&format!("/datasets/{id}")).await).await;
        if d["status"] != "validating" {
            break d;
        }
        let p = &d["progress"];
        if p["phase"] == "checking" && p["images_checked"].as_u64() > Some(0) {
            assert_eq!(p["images_total"], 400, "{p}");
            assert!(p["images_per_sec"].as_f64() > Some(0.0), "{p}");
            assert!(p["eta_seconds"].as_f64() >= Some(0.0), "{p}");
            let n = p["images_checked"].as_u64().unwrap();
            if seen.last() != Some(&n) {
                seen.push(n);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("images checked as seen while validating: {seen:?}");
    assert!(seen.len() >= 2, "progress did not move: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(*seen.last().unwrap() <= 400);

    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["summary"]["images"], 400);
    assert_eq!(ready["format"], "zip");
    assert_eq!(ready["task"], "multi_class");
    assert_eq!(ready["progress"]["phase"], "done");
    assert_eq!(ready["progress"]["images_checked"], 400);
    assert!(ready["finished_at"].is_string());
    // The upload is gone, the dataset moved into place in one piece.
    assert!(empty(&app, "uploads") && empty(&app, "tmp"));
    assert!(app
        .dir
        .path()
        .join("datasets")
        .join(ready["sha256"].as_str().unwrap())
        .join("manifest.json")
        .is_file());
}

/// Reads server-sent events from a response body until `status` (or 120 s).
async fn read_events(resp: axum::http::Response<Body>) -> Vec<(String, Value)> {
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(30), body.frame()).await
        else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            if let (Some(kind), Some(data)) = (field("event:"), field("data:")) {
                events.push((kind.clone(), serde_json::from_str(&data).unwrap()));
                if kind == "status" {
                    return events;
                }
            }
        }
    }
    events
}

#[tokio::test]
async fn events_stream_the_progress_and_end_with_the_status() {
    let app = slow_app().await;
    let (status, body) = upload(&app, &photo_archive(160, 2000, 1500, false)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["id"].as_str().unwrap();
    let resp = app.get(&format!("/datasets/{id}/events")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_events(resp).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"snapshot"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"status"), "{kinds:?}");
    let checked: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "progress")
        .filter_map(|(_, d)| d["progress"]["images_checked"].as_u64())
        .collect();
    assert!(
        checked.iter().any(|&n| n > 0 && n < 160),
        "no progress event midway: {checked:?}"
    );
    assert!(checked.windows(2).all(|w| w[0] <= w[1]), "{checked:?}");
    let (_, last) = events.last().unwrap();
    assert_eq!(last["status"], "ready", "{last}");
    assert_eq!(last["summary"]["images"], 160);

    // A settled dataset's stream is its snapshot alone.
    let events = read_events(app.get(&format!("/datasets/{id}/events")).await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "snapshot");
    assert_eq!(
        app.get("/datasets/nope/events").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// A job queued on a dataset still validating waits: no worker may claim
/// it until the dataset is ready.
async fn a_job_on_a_validating_dataset_waits_for_it(backend: Backend) {
    let fx = crate::common::e2e::fixtures();
    let app = slow_app_on(backend).await;
    let (_, body) = upload(&app, &photo_archive(200, 2000, 1500, false)).await;
    let id = body["id"].as_str().unwrap().to_string();
    let (status, job) = post_json(
        &app,
        "/jobs",
        json!({"dataset_id": id, "config": {"base_model": fx.base_model, "epochs": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    let db = &app.state.db;
    assert!(
        job_store::claim_next(db, "cpu", "test", 60_000)
            .await
            .unwrap()
            .is_none(),
        "claimed while the dataset validates"
    );
    // A sweep needs the task for its metric: it is asked to wait.
    let (status, problem) = post_json(
        &app,
        "/sweeps",
        json!({"dataset_id": id, "spec": {"base": {"base_model": fx.base_model}, "grid": {"learning_rate": [0.1, 0.01]}}}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("dataset_not_ready")),
        "{problem}"
    );
    assert_eq!(settle(&app, &id).await["status"], "ready");
    let claimed = job_store::claim_next(db, "cpu", "test", 60_000)
        .await
        .unwrap()
        .expect("claimable once the dataset is ready");
    assert_eq!(claimed.id, job["id"].as_str().unwrap());
}

/// Jobs waiting for a dataset that is refused fail with its code and
/// detail; a job asking for a refused dataset is refused.
async fn jobs_on_a_refused_dataset_fail_with_its_error(backend: Backend) {
    let fx = crate::common::e2e::fixtures();
    let app = TestApp::with_config_on(backend, |c| {
        c.ingest_threads = 1;
        c.devices = vec!["cpu".into()];
        c.max_undecodable_fraction = 0.0;
    })
    .await;
    let (_, body) = upload(&app, &photo_archive(200, 2000, 1500, true)).await;
    let id = body["id"].as_str().unwrap().to_string();
    let config = json!({"base_model": fx.base_model, "epochs": 1});
    let (status, job) = post_json(&app, "/jobs", json!({"dataset_id": id, "config": config})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");

    let dataset = settle(&app, &id).await;
    assert_eq!(dataset["status"], "failed", "{dataset}");
    assert_eq!(dataset["error"]["code"], "undecodable_images");
    assert_eq!(dataset["error"]["status"], 422);
    let detail = dataset["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("train/b/broken.jpg"), "{detail}");

    let job = body_json(
        app.get(&format!("/jobs/{}", job["id"].as_str().unwrap()))
            .await,
    )
    .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_code"], "undecodable_images", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains(detail),
        "{}",
        job["error"]
    );

    let (status, problem) =
        post_json(&app, "/jobs", json!({"dataset_id": id, "config": config})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["code"], "dataset_failed", "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("undecodable_images"));
}

fn job_form(archive: &[u8], config: &Value) -> Request<Body> {
    let boundary = "vitrine-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n{config}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(archive);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/jobs")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// The inline `dataset` part of `POST /jobs` is validated within the
/// request, as before: a bad archive is the same immediate 4xx with the
/// same code (the same archive again too), a good one is ready when the
/// job is queued.
#[tokio::test]
async fn an_inline_dataset_on_jobs_is_validated_within_the_request() {
    let fx = crate::common::e2e::fixtures();
    let app = TestApp::with_config(|c| {
        c.devices = vec!["cpu".into()];
        c.max_undecodable_fraction = 0.0;
    })
    .await;
    let config = json!({"base_model": fx.base_model, "epochs": 1});
    let bad = photo_archive(4, 64, 48, true);
    for attempt in 0..2 {
        let resp = app.send(job_form(&bad, &config)).await;
        let status = resp.status();
        let problem = body_json(resp).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("undecodable_images")),
            "attempt {attempt}: {problem}"
        );
        assert!(problem["detail"].as_str().unwrap().contains("broken.jpg"));
    }
    let resp = app.send(job_form(b"not an archive", &config)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(resp).await["code"], "not_an_archive");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no job was queued for a refused archive");

    let resp = app
        .send(job_form(&std::fs::read(&fx.tints_zip).unwrap(), &config))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job = body_json(resp).await;
    assert_eq!(job["dataset"]["images"], 280, "{job}");
    let dataset = body_json(
        app.get(&format!(
            "/datasets/{}",
            job["dataset_id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(dataset["status"], "ready");
}

/// API nodes on one PostgreSQL: a dataset another node is validating (it
/// holds the dataset's lock) is neither resumed nor failed here, and its
/// progress is left alone; once that node is gone (its session ends, as
/// when its process dies) and the row has gone silent, this node takes it
/// over and validates it.
#[tokio::test]
async fn a_validation_another_node_holds_is_left_to_it_then_taken_over() {
    use sha2::Digest;
    if crate::common::postgres::PgServer::shared().is_none() {
        return crate::common::postgres::skip("a_validation_another_node_holds_is_left_to_it");
    }
    let app = slow_app_on(Backend::Postgres).await;
    // As if another node had accepted the upload: a `validating` row, the
    // upload where this node would find it.
    let archive = photo_archive(12, 64, 48, false);
    let sha = hex::encode(sha2::Sha256::digest(&archive));
    let uploads = app.dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join(&sha), &archive).unwrap();
    let row =
        vitrine::store::datasets::insert_validating::<vitrine::datasets::record::DatasetRecord>(
            &app.state.db,
            &sha,
            archive.len() as i64,
            &format!("datasets/{sha}"),
        )
        .await
        .unwrap()
        .unwrap();
    let id = row.id;
    let name = vitrine::datasets::takeover::validation_lock(id);
    let other = vitrine::db::SessionLock::try_acquire(&app.state.db, &name)
        .await
        .unwrap()
        .expect("the other node takes the lock");

    let datasets = &app.state.datasets;
    assert_eq!(datasets.resume().await.unwrap(), 0);
    assert_eq!(datasets.take_over_stale(Duration::ZERO).await.unwrap(), 0);
    let d = vitrine::datasets::record::get(&app.state.db, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.status,
        vitrine::datasets::record::DatasetStatus::Validating
    );
    assert!(d.progress.is_none(), "untouched: {:?}", d.progress);

    // The other node dies: its session, and the lock, end with it.
    drop(other);
    // A row that moved less than 30 s ago is not silent yet.
    assert_eq!(
        datasets
            .take_over_stale(Duration::from_secs(30))
            .await
            .unwrap(),
        0
    );
    let started = Instant::now();
    while datasets.take_over_stale(Duration::ZERO).await.unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lock was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = datasets.wait_settled(id).await.unwrap();
    assert_eq!(done.status, vitrine::datasets::record::DatasetStatus::Ready);
    assert!(empty(&app, "uploads"));
}

/// A dataset left `validating` with its upload, whose validation has
/// started `--max-validation-starts` times already (each start ended with
/// its process, as when a parser crashes it), fails at the next start with
/// `validation_crashed` instead of running again: its upload is removed
/// and the job queued on it fails with the same code. One started fewer
/// times is resumed, that start counted, and validates to the end.
#[tokio::test]
async fn a_validation_that_never_ends_is_quarantined_at_the_next_start() {
    let app = TestApp::with_config(|c| c.max_validation_starts = 2).await;
    let db = &app.state.db;
    let uploads = app.dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let archive = photo_archive(4, 64, 48, false);
    let mut rows = Vec::new();
    for (sha, starts) in [("a".repeat(64), 2), ("b".repeat(64), 1)] {
        let row = vitrine::store::datasets::insert_validating::<
            vitrine::datasets::record::DatasetRecord,
        >(db, &sha, archive.len() as i64, &format!("datasets/{sha}"))
        .await
        .unwrap()
        .unwrap();
        sqlx::query("UPDATE datasets SET validation_starts = $2 WHERE id = $1")
            .bind(row.id.to_string())
            .bind(starts as i64)
            .execute(db)
            .await
            .unwrap();
        std::fs::write(uploads.join(&sha), &archive).unwrap();
        rows.push(row);
    }
    let (job, _) = job_store::insert(
        db,
        job_store::NewJob {
            dataset_id: &rows[0].id.to_string(),
            config_json: "{}",
            idempotency_key: None,
            device: None,
            max_attempts: 3,
        },
    )
    .await
    .unwrap();

    assert_eq!(app.state.datasets.resume().await.unwrap(), 2);
    let poisoned = settle(&app, &rows[0].id.to_string()).await;
    assert_eq!(poisoned["status"], "failed", "{poisoned}");
    assert_eq!(
        poisoned["error"]["code"], "validation_crashed",
        "{poisoned}"
    );
    assert_eq!(poisoned["error"]["status"], 422, "{poisoned}");
    assert_eq!(
        poisoned["validation_starts"], 2,
        "not started again: {poisoned}"
    );
    assert!(!uploads.join(&rows[0].sha256).exists());
    let job = job_store::get(db, &job.id).await.unwrap().unwrap();
    assert_eq!(job.status, "failed");
    assert_eq!(job.error_code.as_deref(), Some("validation_crashed"));

    let resumed = settle(&app, &rows[1].id.to_string()).await;
    assert_eq!(resumed["status"], "ready", "{resumed}");
    assert_eq!(resumed["validation_starts"], 2, "{resumed}");
    assert!(empty(&app, "uploads"));
}
