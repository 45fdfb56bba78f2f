//! Sweeps through the router and the queue, with no model trained: a spec
//! expands to the right jobs, bad specs are refused naming the field, the
//! queue honours `max_parallel`, cancel stops every candidate, and the
//! supervisor's halving, budget and promotion act on the rows it reads
//! (per-epoch metrics written here as a worker would).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use vitrine::store::jobs::{self as jobs, JobStatus, NewJob};
use vitrine::store::models::NewModel;

use vitrine::db::Backend;

use crate::common::postgres::both_databases;
use crate::common::{body_json, upload_settled, TestApp};

// Every test runs on SQLite and on PostgreSQL.
both_databases!(
    a_grid_expands_to_one_ordinary_job_per_combination,
    bad_specs_are_refused_naming_the_field_and_queue_nothing,
    the_queue_runs_at_most_max_parallel_candidates_and_other_jobs_still_run,
    cancelling_a_sweep_stops_every_candidate,
    halving_stops_the_losers_at_each_rung_and_the_winner_is_promoted,
    a_spent_budget_stops_the_sweep,
);

/// An app (no workers run: the test claims jobs itself) with the tints
/// dataset uploaded; returns the dataset id and the base model path.
async fn app_with_dataset(
    backend: Backend,
    tweak: impl FnOnce(&mut vitrine::config::ServeConfig),
) -> (TestApp, String, String) {
    let fx = crate::common::e2e::fixtures();
    let app = TestApp::with_config_on(backend, |c| {
        c.devices = vec!["cpu".into()];
        tweak(c)
    })
    .await;
    let (status, body) = upload_settled(&app, &std::fs::read(&fx.tints_zip).unwrap()).await;
    assert!(status.is_success(), "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    (app, id, fx.base_model.to_str().unwrap().to_string())
}

async fn post_sweep(app: &TestApp, dataset_id: &str, spec: Value) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::post("/sweeps")
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"dataset_id": dataset_id, "spec": spec}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    let status = resp.status();
    (status, body_json(resp).await)
}

async fn get(app: &TestApp, uri: &str) -> Value {
    body_json(app.get(uri).await).await
}

fn job_ids(sweep: &Value) -> Vec<String> {
    sweep["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job_id"].as_str().unwrap().to_string())
        .collect()
}

async fn a_grid_expands_to_one_ordinary_job_per_combination(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |_| {}).await;
    let (status, sweep) = post_sweep(
        &app,
        &dataset,
        json!({
            "base": {"base_model": base, "epochs": 3, "batch_size": 16},
            "grid": {"mode": ["linear_probe", "full"], "learning_rate": [0.01, 0.001]},
            "max_parallel": 2,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sweep}");
    assert_eq!(sweep["status"], "queued");
    assert_eq!(sweep["metric"], "accuracy", "the multi-class default");
    assert_eq!(sweep["leaderboard"].as_array().unwrap().len(), 4);
    let sweep_id = sweep["id"].as_str().unwrap();

    // Every candidate is an ordinary job, in GET /jobs, linked to the sweep,
    // queued in the grid's order (fields alphabetical, the last fastest).
    let listed = get(&app, "/jobs").await;
    let mut listed: Vec<&Value> = listed.as_array().unwrap().iter().collect();
    listed.reverse(); // oldest first
    assert_eq!(listed.len(), 4);
    let got: Vec<(f64, String)> = listed
        .iter()
        .map(|j| {
            assert_eq!(j["sweep_id"], sweep_id);
            assert_eq!(j["status"], "queued");
            assert_eq!(j["config"]["epochs"], 3);
            assert_eq!(j["config"]["batch_size"], 16);
            // Each candidate keeps its best epoch by the sweep's metric.
            assert_eq!(j["config"]["selection_metric"], "accuracy");
            assert_eq!(j["config"]["base_model"], base.as_str());
            (
                j["config"]["learning_rate"].as_f64().unwrap(),
                j["config"]["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0.01, "linear_probe".to_string()),
            (0.01, "full".into()),
            (0.001, "linear_probe".into()),
            (0.001, "full".into()),
        ]
    );

    // GET /sweeps lists it; GET /sweeps/{id} shows the same candidates.
    let all = get(&app, "/sweeps").await;
    assert_eq!(all[0]["id"], sweep_id);
    let one = get(&app, &format!("/sweeps/{sweep_id}")).await;
    let mut a = job_ids(&one);
    let mut b: Vec<String> = listed
        .iter()
        .map(|j| j["id"].as_str().unwrap().into())
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // The multipart form (as POST /jobs takes it) works too, with candidates.
    let fx = crate::common::e2e::fixtures();
    let boundary = "sweep-boundary";
    let spec = json!({"candidates": [{"base_model": base, "epochs": 2}, {"base_model": base, "epochs": 3, "mode": "full"}]});
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{spec}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::fs::read(&fx.tints_zip).unwrap());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = app
        .send(
            Request::post("/sweeps")
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let second = body_json(resp).await;
    assert_eq!(
        second["dataset_id"],
        dataset.as_str(),
        "the same archive is stored once"
    );
    let epochs: Vec<u64> = second["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["config"]["epochs"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs.contains(&2) && epochs.contains(&3));
    // Newest first.
    let all = get(&app, "/sweeps").await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second["id"].as_str().unwrap(), sweep_id]);
}

async fn bad_specs_are_refused_naming_the_field_and_queue_nothing(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |c| c.max_sweep_candidates = 4).await;
    let cases = [
        (
            json!({"base": {"base_model": base}, "grid": {"learnig_rate": [0.1, 0.01]}}),
            "unknown_grid_field",
            "learnig_rate",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {}}),
            "empty_grid",
            "grid",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {"learning_rate": []}}),
            "empty_grid",
            "grid.learning_rate",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {"learning_rate": [0.1, 0.01, 0.001], "seed": [1, 2]}}),
            "too_many_candidates",
            "at most 4",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {"seed": [1, 2]}, "budget": {"max_seconds": 0.001}}),
            "budget_too_small",
            "budget.max_seconds",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {"seed": [1, 2]}, "metric": "map"}),
            "metric_unavailable",
            "metric",
        ),
        (
            json!({"base": {"base_model": base, "epochs": 3}, "grid": {"seed": [1, 2]},
                   "early_stop": "halving", "rungs": [3]}),
            "invalid_rungs",
            "rungs",
        ),
        (
            json!({"candidates": [{"base_model": base}, {"base_model": "/no/such/model"}]}),
            "unknown_base_model",
            "candidate 1",
        ),
        (
            json!({"base": {"base_model": base}, "grid": {"batch_size": [8, 0]}}),
            "invalid_config",
            "batch_size",
        ),
        (
            json!({"candidates": [{"base_model": base}], "max_paralel": 2}),
            "invalid_spec",
            "max_paralel",
        ),
    ];
    for (spec, code, named) in cases {
        let (status, body) = post_sweep(&app, &dataset, spec.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{spec}: {body}");
        assert_eq!(body["code"], code, "{spec}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{spec}: {detail}");
    }
    assert_eq!(get(&app, "/jobs").await, json!([]), "nothing queued");
    assert_eq!(get(&app, "/sweeps").await, json!([]));
}

/// Claims jobs as a worker would, until none is given.
async fn claim_all(app: &TestApp, owner: &str) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(j) = jobs::claim_next(
        &app.state.db,
        "cpu",
        &format!("{owner}{}", got.len()),
        60_000,
    )
    .await
    .unwrap()
    {
        got.push(j.id);
    }
    got
}

async fn the_queue_runs_at_most_max_parallel_candidates_and_other_jobs_still_run(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |_| {}).await;
    let (status, sweep) = post_sweep(
        &app,
        &dataset,
        json!({"base": {"base_model": base}, "grid": {"seed": [1, 2, 3, 4]}, "max_parallel": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sweep}");
    let candidates = job_ids(&sweep);
    // An ordinary job queued after the sweep.
    let (other, _) = jobs::insert(
        &app.state.db,
        NewJob {
            dataset_id: &dataset,
            config_json: &json!({"base_model": base}).to_string(),
            idempotency_key: None,
            device: None,
            max_attempts: 3,
        },
    )
    .await
    .unwrap();

    let first = claim_all(&app, "w").await;
    assert_eq!(
        first.len(),
        3,
        "two candidates and the other job: {first:?}"
    );
    assert_eq!(first.iter().filter(|id| candidates.contains(id)).count(), 2);
    assert!(
        first.contains(&other.id),
        "the rest of the queue is not held up"
    );

    // A candidate ends: one more may start, and only one.
    let done = first.iter().find(|id| candidates.contains(id)).unwrap();
    let owner = format!("w{}", first.iter().position(|i| i == done).unwrap());
    assert!(jobs::finish(
        &app.state.db,
        done,
        &owner,
        JobStatus::Failed,
        None,
        Some("x")
    )
    .await
    .unwrap());
    let next = claim_all(&app, "v").await;
    assert_eq!(next.len(), 1);
    assert!(candidates.contains(&next[0]) && !first.contains(&next[0]));
}

async fn cancelling_a_sweep_stops_every_candidate(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |_| {}).await;
    let (_, sweep) = post_sweep(
        &app,
        &dataset,
        json!({"base": {"base_model": base}, "grid": {"seed": [1, 2, 3]}, "promote_alias": "production"}),
    )
    .await;
    let id = sweep["id"].as_str().unwrap();
    let running = claim_all(&app, "w").await;
    assert_eq!(running.len(), 1, "max_parallel defaults to 1");
    vitrine::sweeps::supervisor::tick(&app.state.jobs)
        .await
        .unwrap();
    assert_eq!(
        get(&app, &format!("/sweeps/{id}")).await["status"],
        "running"
    );

    // A candidate can be cancelled alone, like any job; the rest go on.
    let alone = job_ids(&sweep)
        .into_iter()
        .find(|j| *j != running[0])
        .unwrap();
    let resp = app
        .send(
            Request::post(format!("/jobs/{alone}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let listed = get(&app, "/jobs").await;
    let queued = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "queued")
        .count();
    assert_eq!(queued, 1, "{listed}");
    vitrine::sweeps::supervisor::tick(&app.state.jobs)
        .await
        .unwrap();
    assert_eq!(
        get(&app, &format!("/sweeps/{id}")).await["status"],
        "running"
    );

    let resp = app
        .send(
            Request::post(format!("/sweeps/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let listed = get(&app, "/jobs").await;
    for j in listed.as_array().unwrap() {
        if j["id"] == running[0].as_str() {
            assert_eq!(j["status"], "running");
            assert_eq!(j["cancel_requested"], true, "stops at its next step");
        } else {
            assert_eq!(j["status"], "cancelled", "{j}");
        }
    }
    // Nothing more is claimed; the sweep ends once its last job has.
    assert!(claim_all(&app, "v").await.is_empty());
    vitrine::sweeps::supervisor::tick(&app.state.jobs)
        .await
        .unwrap();
    assert_eq!(
        get(&app, &format!("/sweeps/{id}")).await["status"],
        "running"
    );
    assert!(jobs::finish(
        &app.state.db,
        &running[0],
        "w0",
        JobStatus::Cancelled,
        None,
        None
    )
    .await
    .unwrap());
    vitrine::sweeps::supervisor::tick(&app.state.jobs)
        .await
        .unwrap();
    let ended = get(&app, &format!("/sweeps/{id}")).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["stop_reason"], "cancelled");
    let resp = app
        .send(
            Request::post(format!("/sweeps/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

/// One epoch's record as the worker writes it (only what ranking reads).
fn epoch(n: u32, accuracy: f64) -> Value {
    json!({"epoch": n, "train_loss": 1.0, "validation_loss": 1.0, "learning_rate": 0.001,
           "seconds": 1.0, "train_images_per_sec": 100.0,
           "validation": {"accuracy": accuracy, "macro_f1": accuracy, "per_class": [], "confusion_matrix": []}})
}

async fn record_epochs(app: &TestApp, job: &str, owner: &str, accs: &[f64]) {
    let list: Vec<Value> = accs
        .iter()
        .enumerate()
        .map(|(i, a)| epoch(i as u32 + 1, *a))
        .collect();
    assert!(
        jobs::set_metrics(&app.state.db, job, owner, &Value::Array(list).to_string())
            .await
            .unwrap()
    );
}

async fn halving_stops_the_losers_at_each_rung_and_the_winner_is_promoted(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |_| {}).await;
    let (status, sweep) = post_sweep(
        &app,
        &dataset,
        json!({"base": {"base_model": base, "epochs": 4}, "grid": {"seed": [1, 2, 3, 4]},
               "max_parallel": 4, "early_stop": "halving", "rungs": [1, 2], "reduction_factor": 2,
               "promote_alias": "best"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sweep}");
    let id = sweep["id"].as_str().unwrap().to_string();
    let c = job_ids(&sweep); // ids in the leaderboard; order does not matter here
    let mut owners = std::collections::HashMap::new();
    while let Some(j) =
        jobs::claim_next(&app.state.db, "cpu", &format!("w{}", owners.len()), 60_000)
            .await
            .unwrap()
    {
        owners.insert(j.id.clone(), format!("w{}", owners.len()));
    }
    assert_eq!(owners.len(), 4);
    let tick = || vitrine::sweeps::supervisor::tick(&app.state.jobs);
    let job = |id: &str| {
        let id = id.to_string();
        let db = app.state.db.clone();
        async move { jobs::get(&db, &id).await.unwrap().unwrap() }
    };

    // Rung 1 waits for every candidate to reach epoch 1.
    record_epochs(&app, &c[0], &owners[&c[0]], &[0.9]).await;
    record_epochs(&app, &c[1], &owners[&c[1]], &[0.5]).await;
    record_epochs(&app, &c[2], &owners[&c[2]], &[0.7, 0.2]).await; // a fast one goes on
    tick().await.unwrap();
    assert_eq!(get(&app, &format!("/sweeps/{id}")).await["rungs_done"], 0);
    record_epochs(&app, &c[3], &owners[&c[3]], &[0.3]).await;
    tick().await.unwrap();
    let s = get(&app, &format!("/sweeps/{id}")).await;
    assert_eq!(s["rungs_done"], 1, "{s}");
    // Top half at epoch 1: c0 (0.9) and c2 (0.7, compared at epoch 1 though it is further).
    for (i, stopped) in [(0, false), (1, true), (2, false), (3, true)] {
        let j = job(&c[i]).await;
        assert_eq!(j.stopped_rung, stopped.then_some(1), "candidate {i}");
        assert_eq!(j.cancel_requested != 0, stopped, "candidate {i}");
    }
    // The stopped ones end as a cancelled job does.
    for i in [1, 3] {
        assert!(jobs::finish(
            &app.state.db,
            &c[i],
            &owners[&c[i]],
            JobStatus::Cancelled,
            None,
            None
        )
        .await
        .unwrap());
    }

    // Rung 2: c2 (0.2) loses to c0 (0.6).
    record_epochs(&app, &c[0], &owners[&c[0]], &[0.9, 0.6]).await;
    tick().await.unwrap();
    assert_eq!(job(&c[2]).await.stopped_rung, Some(2));
    assert_eq!(job(&c[0]).await.stopped_rung, None);

    // c0 finishes with a model, c2 stops with one: the sweep ends, c0 wins
    // and is promoted.
    let card_json =
        |acc: f64| json!({"best_epoch": 1, "validation": epoch(1, acc), "test": null}).to_string();
    for (i, status, acc) in [
        (0, JobStatus::Succeeded, 0.9),
        (2, JobStatus::Cancelled, 0.7),
    ] {
        let model_id = uuid::Uuid::now_v7().to_string();
        let card = card_json(acc);
        assert!(jobs::finish_with_model(
            &app.state.db,
            &c[i],
            &owners[&c[i]],
            status,
            NewModel {
                id: &model_id,
                job_id: Some(&c[i]),
                path: "models/x",
                base_model: &base,
                task: vitrine::task::Task::MultiClass,
                labels_json: "[]",
                metrics_json: &card,
            },
        )
        .await
        .unwrap());
    }
    tick().await.unwrap();
    let s = get(&app, &format!("/sweeps/{id}")).await;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["winner_job_id"], c[0].as_str());
    let board = s["leaderboard"].as_array().unwrap();
    let order: Vec<&str> = board
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    // Survivor first, then the rung-2 loser, then the rung-1 losers (best first).
    assert_eq!(
        order,
        [c[0].as_str(), c[2].as_str(), c[1].as_str(), c[3].as_str()]
    );
    assert_eq!(board[0]["best_metric"], 0.9);
    assert_eq!(board[0]["best_epoch"], 1);
    assert_eq!(board[1]["stopped_rung"], 2);
    let alias = get(&app, "/models/best").await;
    assert_eq!(alias["id"], s["winner_model_id"], "{alias}");
    assert_eq!(alias["job_id"], c[0].as_str());
}

async fn a_spent_budget_stops_the_sweep(backend: Backend) {
    let (app, dataset, base) = app_with_dataset(backend, |_| {}).await;
    let (status, sweep) = post_sweep(
        &app,
        &dataset,
        json!({"base": {"base_model": base}, "grid": {"seed": [1, 2, 3]}, "budget": {"max_seconds": 0.3}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sweep}");
    let id = sweep["id"].as_str().unwrap();
    let running = claim_all(&app, "w").await;
    assert_eq!(running.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    vitrine::sweeps::supervisor::tick(&app.state.jobs)
        .await
        .unwrap();
    let s = get(&app, &format!("/sweeps/{id}")).await;
    assert_eq!(s["stop_reason"], "budget", "{s}");
    let j = jobs::get(&app.state.db, &running[0])
        .await
        .unwrap()
        .unwrap();
    assert!(
        j.cancel_requested != 0,
        "the running candidate stops at its next step"
    );
    let cancelled = s["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "cancelled")
        .count();
    assert_eq!(cancelled, 2, "the queued ones never start");
}
