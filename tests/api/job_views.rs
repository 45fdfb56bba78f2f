//! Jobs and sweeps as the API shows them, through the router with no
//! worker running (the tests claim and end jobs as a worker would):
//! `GET /jobs` and `GET /sweeps` read a page in one query, and each item
//! must be exactly what `GET /jobs/{id}` or `GET /sweeps/{id}` shows of
//! it; cancelling a job is decided by the database (202, 404, or 409 once
//! it has ended).

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use vitrine::db::Backend;
use vitrine::store::jobs::{self as jobs, JobStatus};
use vitrine::store::models::NewModel;

use crate::common::postgres::both_databases;
use crate::common::{body_json, upload_settled, TestApp};

both_databases!(
    a_page_of_jobs_shows_each_job_as_its_own_get_does,
    a_page_of_sweeps_shows_each_sweep_as_its_own_get_does,
    cancelling_a_job_answers_by_the_state_it_is_in,
);

/// An app on `cpu` with the tints dataset uploaded and validated: the app,
/// the dataset id and the base model path.
async fn app_with_dataset(backend: Backend) -> (TestApp, String, String) {
    let fx = crate::common::e2e::fixtures();
    let app = TestApp::with_config_on(backend, |c| c.devices = vec!["cpu".into()]).await;
    let (status, body) = upload_settled(&app, &std::fs::read(&fx.tints_zip).unwrap()).await;
    assert!(status.is_success(), "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    (app, id, fx.base_model.to_str().unwrap().to_string())
}

async fn post(app: &TestApp, uri: &str, body: Value) -> (StatusCode, Value) {
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

async fn get(app: &TestApp, uri: &str) -> Value {
    let resp = app.get(uri).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {uri}");
    body_json(resp).await
}

async fn cancel(app: &TestApp, id: &str) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::post(format!("/jobs/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let status = resp.status();
    (status, body_json(resp).await)
}

/// Queues a job with this learning rate; its id.
async fn submit_job(app: &TestApp, dataset: &str, base: &str, lr: f64) -> String {
    let config = json!({"base_model": base, "epochs": 2, "learning_rate": lr});
    let (status, job) = post(
        app,
        "/jobs",
        json!({"dataset_id": dataset, "config": config}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// Every item of a list answer is what the single GET of its id shows.
async fn each_as_its_get(app: &TestApp, list: &Value, path: &str) {
    for item in list.as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        assert_eq!(
            item,
            &get(app, &format!("{path}/{id}")).await,
            "{path}/{id}"
        );
    }
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect()
}

async fn a_page_of_jobs_shows_each_job_as_its_own_get_does(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend).await;
    let cancelled = submit_job(&app, &dataset, &base, 0.01).await;
    let running = submit_job(&app, &dataset, &base, 0.02).await;
    let queued = submit_job(&app, &dataset, &base, 0.03).await;
    assert_eq!(cancel(&app, &cancelled).await.0, StatusCode::ACCEPTED);
    let claimed = jobs::claim_next(&app.state.db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, running);
    let progress = json!({"epoch": 1, "step": 3, "phase": "training"}).to_string();
    assert!(jobs::set_progress(&app.state.db, &running, "w", &progress)
        .await
        .unwrap());

    let all = get(&app, "/jobs").await;
    assert_eq!(ids(&all), [&queued, &running, &cancelled], "newest first");
    each_as_its_get(&app, &all, "/jobs").await;
    for job in all.as_array().unwrap() {
        // The dataset's summary comes with every job of the page.
        assert!(
            job["dataset"]["splits"]["train"]["images"].as_u64() > Some(0),
            "{job}"
        );
    }
    assert_eq!(all[1]["status"], "running");
    assert_eq!(all[1]["progress"]["step"], 3);

    // Pages, and one status only, show the same items.
    let resp = app.get("/jobs?limit=2").await;
    assert!(resp.headers().contains_key(header::LINK));
    let first = body_json(resp).await;
    let rest = get(&app, &format!("/jobs?limit=2&before={running}")).await;
    let paged: Vec<&Value> = first
        .as_array()
        .unwrap()
        .iter()
        .chain(rest.as_array().unwrap())
        .collect();
    assert_eq!(paged, all.as_array().unwrap().iter().collect::<Vec<_>>());
    let only = get(&app, "/jobs?status=cancelled").await;
    assert_eq!(ids(&only), [&cancelled]);
    each_as_its_get(&app, &only, "/jobs").await;
}

async fn a_page_of_sweeps_shows_each_sweep_as_its_own_get_does(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend).await;
    let spec = json!({
        "base": {"base_model": base, "epochs": 3},
        "grid": {"learning_rate": [0.01, 0.001]},
    });
    let mut sweeps = Vec::new();
    for _ in 0..2 {
        let (status, sweep) = post(
            &app,
            "/sweeps",
            json!({"dataset_id": dataset, "spec": spec}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sweep}");
        sweeps.push(sweep);
    }
    // The first sweep's first candidate trains one epoch and ends with a
    // model whose card the leaderboard reads.
    let first_job = sweeps[0]["leaderboard"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let claimed = jobs::claim_next(&app.state.db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, first_job);
    let epoch = json!({"epoch": 1, "validation": {"accuracy": 0.75}});
    let metrics = json!([epoch]).to_string();
    assert!(jobs::set_metrics(&app.state.db, &first_job, "w", &metrics)
        .await
        .unwrap());
    let model_id = uuid::Uuid::now_v7().to_string();
    let card =
        json!({"best_epoch": 1, "validation": epoch, "test": {"metrics": {"accuracy": 0.5}}});
    assert!(jobs::finish_with_model(
        &app.state.db,
        &first_job,
        "w",
        JobStatus::Succeeded,
        NewModel {
            id: &model_id,
            job_id: Some(&first_job),
            path: "models/x",
            base_model: &base,
            task: vitrine::task::Task::MultiClass,
            labels_json: "[]",
            metrics_json: &card.to_string(),
        },
    )
    .await
    .unwrap());

    let all = get(&app, "/sweeps").await;
    let newest_first: Vec<&str> = sweeps
        .iter()
        .rev()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids(&all), newest_first);
    each_as_its_get(&app, &all, "/sweeps").await;
    let board = &all[1]["leaderboard"];
    assert_eq!(board.as_array().unwrap().len(), 2);
    assert_eq!(board[0]["job_id"], first_job.as_str(), "{board}");
    assert_eq!(board[0]["model_id"], model_id.as_str());
    assert_eq!(board[0]["test_metric"], 0.5, "read from the model's card");
    assert_eq!(all[0]["leaderboard"].as_array().unwrap().len(), 2);

    let page = get(&app, "/sweeps?limit=1").await;
    assert_eq!(page.as_array().unwrap(), &all.as_array().unwrap()[..1]);
}

async fn cancelling_a_job_answers_by_the_state_it_is_in(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend).await;
    let running = submit_job(&app, &dataset, &base, 0.01).await;
    let queued = submit_job(&app, &dataset, &base, 0.02).await;
    jobs::claim_next(&app.state.db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();

    // Queued: cancelled at once.
    let (status, job) = cancel(&app, &queued).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert!(job["finished_at"].is_string());
    assert_eq!(job, get(&app, &format!("/jobs/{queued}")).await);
    // Running: flagged for its worker, which reads the flag with its lease.
    let (status, job) = cancel(&app, &running).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(
        (&job["status"], &job["cancel_requested"]),
        (&json!("running"), &json!(true))
    );
    assert_eq!(
        jobs::renew_lease(&app.state.db, &running, "w", 60_000)
            .await
            .unwrap(),
        Some(true)
    );

    // Ended, whichever way: 409, and nothing changes.
    assert!(jobs::finish(
        &app.state.db,
        &running,
        "w",
        JobStatus::Cancelled,
        None,
        None
    )
    .await
    .unwrap());
    for id in [&queued, &running] {
        let before = get(&app, &format!("/jobs/{id}")).await;
        let (status, problem) = cancel(&app, id).await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["code"], "job_finished");
        assert_eq!(before, get(&app, &format!("/jobs/{id}")).await);
    }
    let (status, problem) = cancel(&app, "no-such-job").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}
