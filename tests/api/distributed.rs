//! Jobs on several devices (`docs/distributed.md`): what a node cannot run
//! is refused at submission with a 422 that names what it has, and a job
//! it can run shows its devices.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::common::{body_json, upload_settled, TestApp};

async fn post_job(app: &TestApp, dataset: &str, config: Value) -> (StatusCode, Value) {
    let resp = app
        .send(
            Request::post("/jobs")
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"dataset_id": dataset, "config": config}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    let status = resp.status();
    (status, body_json(resp).await)
}

#[tokio::test]
async fn device_requests_a_cpu_node_cannot_serve_are_refused_by_name() {
    let fx = crate::common::e2e::fixtures();
    let app = TestApp::with_config(|c| c.devices = vec!["cpu".into()]).await;
    let (status, body) = upload_settled(&app, &std::fs::read(&fx.tints_zip).unwrap()).await;
    assert!(status.is_success(), "{body}");
    let dataset = body["id"].as_str().unwrap().to_string();
    let base = fx.base_model.to_str().unwrap();
    let cpus = vitrine::torch_info::threads::available_cpus();
    let too_many = cpus + 1;
    let cases = [
        (
            json!({"base_model": base, "devices": ["cuda:0", "cuda:1"]}),
            "no_such_device",
            "only cpu",
        ),
        (
            json!({"base_model": base, "devices": too_many, "batch_size": too_many * 2}),
            "too_many_devices",
            "cores",
        ),
        (
            json!({"base_model": base, "nodes": 2}),
            "multi_node_not_yet",
            "nodes",
        ),
        (
            json!({"base_model": base, "devices": 2, "batch_size": 7}),
            "invalid_config",
            "batch_size",
        ),
    ];
    for (config, code, named) in cases {
        let (status, body) = post_job(&app, &dataset, config.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{config}: {body}");
        assert_eq!(body["code"], code, "{config}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{config}: {detail}");
    }
    if vitrine::torchx::dist::available() && cpus >= 2 {
        let config = json!({"base_model": base, "devices": ["cpu", "cpu"], "batch_size": 8});
        let (status, job) = post_job(&app, &dataset, config).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        assert_eq!(job["config"]["devices"], json!(["cpu", "cpu"]));
    }
}
