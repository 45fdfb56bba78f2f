//! Deleting and aliasing models through the router (`models` service), on
//! SQLite and PostgreSQL: the plain answers, and the two raced against
//! each other, which must end in a 409 or a success and a consistent
//! state, never a 500 (a check-then-act delete used to trip the foreign
//! key when an alias landed between its check and its `DELETE`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use vitrine::db::Backend;
use vitrine::store::models::{self as store, NewModel};

use crate::common::postgres::both_databases;
use crate::common::{body_json, TestApp};

both_databases!(aliases_and_deletes_answer_as_documented);

/// Rounds of the race per backend.
const ROUNDS: usize = 60;

async fn app(backend: Backend) -> TestApp {
    TestApp::with_config_on(backend, |c| {
        c.devices = vec!["cpu".into()];
        c.no_workers = true;
    })
    .await
}

/// A model row, as a finished job records it (no files: deleting a model
/// whose directory is already gone only logs).
async fn add_model(app: &TestApp) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    store::insert(
        &app.state.db,
        NewModel {
            id: &id,
            job_id: None,
            path: &format!("models/{id}"),
            base_model: "base",
            task: vitrine::task::Task::MultiClass,
            labels_json: r#"["a","b"]"#,
            metrics_json: "{}",
        },
    )
    .await
    .unwrap();
    id
}

async fn delete(app: &TestApp, id: &str) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::delete(format!("/models/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let status = resp.status();
    let bytes = crate::common::body_bytes(resp).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn set_alias(app: &TestApp, name: &str, id: &str) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::put(format!("/models/aliases/{name}"))
                .header("content-type", "application/json")
                .body(Body::from(json!({ "model_id": id }).to_string()))
                .unwrap(),
        )
        .await;
    let status = resp.status();
    (status, body_json(resp).await)
}

async fn aliases_and_deletes_answer_as_documented(backend: Backend) {
    let app = app(backend).await;
    let id = add_model(&app).await;
    assert_eq!(delete(&app, "nope").await.0, StatusCode::NOT_FOUND);
    let (status, body) = set_alias(&app, "production", "nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = set_alias(&app, "no%20spaces", &id).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = set_alias(&app, "production", &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["aliases"], json!(["production"]), "{body}");
    let (status, body) = delete(&app, &id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "model_aliased", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("`production`"),
        "{body}"
    );
    // Moved away, the alias no longer holds the model.
    let other = add_model(&app).await;
    assert_eq!(
        set_alias(&app, "production", &other).await.0,
        StatusCode::OK
    );
    assert_eq!(delete(&app, &id).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/models/{id}")).await.status(), 404);
    let pinned = body_json(app.get("/models/production").await).await;
    assert_eq!(pinned["id"], other.as_str(), "{pinned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raced_deletes_and_aliases_never_answer_500_on_sqlite() {
    race(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raced_deletes_and_aliases_never_answer_500_on_postgres() {
    if crate::common::postgres::PgServer::shared().is_none() {
        crate::common::postgres::skip("raced_deletes_and_aliases_never_answer_500_on_postgres");
        return;
    }
    race(Backend::Postgres).await
}

/// Each round: a new model, deleted and aliased at once on two threads.
/// Exactly one wins: the delete (204, the alias answers 404 or 409 and
/// does not exist) or the alias (200, the delete answers 409 and the
/// model stays, pinned).
async fn race(backend: Backend) {
    let app = Arc::new(app(backend).await);
    let mut won = [0usize; 2];
    for round in 0..ROUNDS {
        let id = add_model(&app).await;
        let alias = format!("race-{round}");
        let (d, a) = tokio::join!(
            tokio::spawn({
                let (app, id) = (app.clone(), id.clone());
                async move { delete(&app, &id).await }
            }),
            tokio::spawn({
                let (app, id, alias) = (app.clone(), id.clone(), alias.clone());
                async move { set_alias(&app, &alias, &id).await }
            }),
        );
        let ((deleted, d_body), (aliased, a_body)) = (d.unwrap(), a.unwrap());
        let model = app.get(&format!("/models/{id}")).await.status();
        let pinned = app.get(&format!("/models/{alias}")).await.status();
        match (deleted, aliased) {
            (StatusCode::NO_CONTENT, StatusCode::NOT_FOUND | StatusCode::CONFLICT) => {
                assert_eq!(
                    (model, pinned),
                    (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
                );
                won[0] += 1;
            }
            (StatusCode::CONFLICT, StatusCode::OK) => {
                assert_eq!(d_body["code"], "model_aliased", "{d_body}");
                assert_eq!((model, pinned), (StatusCode::OK, StatusCode::OK));
                won[1] += 1;
            }
            other => panic!("round {round}: {other:?}: {d_body} / {a_body}"),
        }
    }
    println!(
        "{backend:?}: the delete won {} rounds, the alias {}",
        won[0], won[1]
    );
}
