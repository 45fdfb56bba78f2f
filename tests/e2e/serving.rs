//! Serving through real HTTP: answers equal `transformers`', every input
//! form, concurrency with dynamic batching, overload, aliases, hot swap and
//! every bad input's status.

use std::time::Duration;

use crate::common::e2e::{fixtures, Fixtures, TestServer};
use base64::Engine as _;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Trains a quick linear probe and returns the model id.
async fn train(server: &TestServer, fx: &Fixtures, epochs: u32) -> String {
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": epochs, "learning_rate": 0.01});
    let job = server.run_job(&fx.tints_zip, cfg, TIMEOUT).await;
    job["model_id"].as_str().unwrap().to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn predict_raw(server: &TestServer, path: &str, bytes: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.url))
        .header("content-type", "image/png")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_transformers_in_every_input_form() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    // No model yet: 409 with a hint.
    let resp = predict_raw(&server, "/predict", std::fs::read(&fx.red_png).unwrap()).await;
    assert_eq!(resp.status(), 409);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "no_model");
    assert!(problem["detail"].as_str().unwrap().contains("POST /jobs"));

    let model_id = train(&server, &fx, 3).await;
    let png = std::fs::read(&fx.red_png).unwrap();

    // Reference: transformers on the saved model directory.
    let dir = server.dir.path().join("models").join(&model_id);
    let reference = crate::common::e2e::hf_scores(&dir, &fx.red_png);

    // Raw body, multipart with two parts, base64 JSON: the same scores.
    let raw: Value = predict_raw(
        &server,
        "/predict?all_scores=true&calibrated=false",
        png.clone(),
    )
    .await
    .json()
    .await
    .unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("b.png"),
        );
    let multi: Value = client()
        .post(format!(
            "{}/models/{model_id}/predict?all_scores=true&calibrated=false",
            server.url
        ))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let js: Value = client()
        .post(format!("{}/predict", server.url))
        .json(&json!({"images": [b64], "all_scores": true, "top_k": 1, "calibrated": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["model"], model_id.as_str());
    assert_eq!(multi["results"].as_array().unwrap().len(), 2);
    assert_eq!(
        js["predictions"].as_array().unwrap().len(),
        1,
        "top_k from JSON"
    );
    let worst = [
        &raw["results"][0],
        &multi["results"][0],
        &multi["results"][1],
        &js["results"][0],
    ]
    .into_iter()
    .map(|result| crate::common::e2e::max_score_diff(result, &reference))
    .fold(0.0, f64::max);
    println!("max |score - transformers| = {worst:e}");
    assert!(worst <= 1e-4, "scores differ from transformers by {worst}");
    assert_eq!(raw["predictions"][0]["label"], "red");

    // The model downloads as a tar.gz in the HF layout.
    let names = crate::common::e2e::downloaded_names(&server.url, &model_id).await;
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "metrics.json",
    ] {
        assert!(names.iter().any(|n| n.ends_with(f)), "{f} not in {names:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_status() {
    let fx = fixtures();
    let server = TestServer::start(|c| c.max_body_bytes = 64 * 1024).await;
    let model_id = train(&server, &fx, 1).await;
    let png = std::fs::read(&fx.red_png).unwrap();
    let post = |path: &str| client().post(format!("{}{path}", server.url));
    let raw = |path: &str, content_type: &str, body: Vec<u8>| {
        post(path).header("content-type", content_type).body(body)
    };
    let parts = |parts: Vec<(&'static str, Vec<u8>, &'static str)>| {
        let form = parts.into_iter().fold(
            reqwest::multipart::Form::new(),
            |form, (name, bytes, file)| {
                form.part(name, reqwest::multipart::Part::bytes(bytes).file_name(file))
            },
        );
        post("/predict").multipart(form)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            raw("/predict", "image/png", b"not an image".to_vec()),
            422,
            "undecodable_image",
        ),
        (
            parts(vec![
                ("image", png.clone(), "ok.png"),
                ("image", b"GIF89a broken".to_vec(), "broken.gif"),
            ]),
            422,
            "broken.gif",
        ),
        (
            parts(vec![("photo", png.clone(), "ok.png")]),
            400,
            "unknown_part",
        ),
        (
            raw("/predict", "image/png", vec![0u8; 200 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            raw("/predict", "text/plain", b"hi".to_vec()),
            415,
            "unsupported_media_type",
        ),
        // curl --data-binary's default type, on a body that is no image.
        (
            raw(
                "/predict",
                "application/x-www-form-urlencoded",
                b"a=1".to_vec(),
            ),
            415,
            "Content-Type: image/jpeg",
        ),
        (
            post("/predict").json(&json!({"images": []})),
            400,
            "no_image",
        ),
        (
            post("/predict").json(&json!({"images": ["%%%"]})),
            422,
            "invalid_base64",
        ),
        (
            post("/predict").json(&json!({"imgs": []})),
            422,
            "invalid_json",
        ),
        (
            raw("/models/nope/predict", "image/png", png.clone()),
            404,
            "not_found",
        ),
        (
            raw("/predict?threshold=3", "image/png", png.clone()),
            400,
            "invalid_query",
        ),
        (
            raw("/predict?top_k=0", "image/png", png.clone()),
            400,
            "at least 1",
        ),
        // Accepted as users send them: an image body under curl's default
        // type or no type, and a `file` part.
        (
            raw("/predict", "application/x-www-form-urlencoded", png.clone()),
            200,
            "red",
        ),
        (raw("/predict", "", png.clone()), 200, "red"),
        (parts(vec![("file", png.clone(), "red.png")]), 200, "red"),
    ];
    for (req, status, needle) in cases {
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(got, status, "{text}");
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    // Deleting a model an alias points at is refused; after moving the alias it works.
    let resp = client()
        .put(format!("{}/models/aliases/production", server.url))
        .json(&json!({"model_id": model_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .delete(format!("{}/models/{model_id}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    server.stop().await;
}

/// Many concurrent requests, all answered correctly, in batches larger than
/// one; then a tiny queue under the same load answers 429s, never 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_overload_is_refused() {
    let fx = fixtures();
    let png = std::fs::read(&fx.red_png).unwrap();
    let server = TestServer::start(|c| c.predict_max_wait_ms = 20).await;
    train(&server, &fx, 2).await;
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let (url, png) = (server.url.clone(), png.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client()
                .post(format!("{url}/predict"))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, answer) = t.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["predictions"][0]["label"], "red");
    }
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (images, batches) = (
        value("vitrine_inference_batch_size_sum"),
        value("vitrine_inference_batch_size_count"),
    );
    println!("{images} images in {batches} forward passes");
    assert_eq!(images, 48.0);
    assert!(batches < images, "no batch larger than one was formed");
    assert!(metrics.contains("vitrine_jobs{status=\"succeeded\"} 1"));
    server.stop().await;

    let server = TestServer::start(|c| {
        c.predict_queue = 1;
        c.predict_max_wait_ms = 50;
        c.predict_max_batch = 2;
    })
    .await;
    train(&server, &fx, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let (url, png) = (server.url.clone(), png.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client()
                .post(format!("{url}/predict"))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            let retry = resp.headers().get("retry-after").is_some();
            (resp.status().as_u16(), retry)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, true) => busy += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    println!("{ok} answered, {busy} refused with 429");
    assert!(ok > 0 && busy > 0);
    server.stop().await;
}

/// A newer model is served by the next request without a restart or a
/// failed request; an alias pins `/predict` to a chosen model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_models_hot_swap_and_aliases_pin() {
    let fx = fixtures();
    let png = std::fs::read(&fx.red_png).unwrap();
    let server = TestServer::start(|_| {}).await;
    let first = train(&server, &fx, 1).await;
    // Requests flow while the second model trains.
    let url = server.url.clone();
    let flow_png = png.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let flow_stop = stop.clone();
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flow_answers = answers.clone();
    let flow = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !flow_stop.is_cancelled() {
            let resp = client()
                .post(format!("{url}/predict"))
                .header("content-type", "image/png")
                .body(flow_png.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let model = resp.json::<Value>().await.unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string();
            if seen.last() != Some(&model) {
                seen.push(model);
            }
            flow_answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    let second = train(&server, &fx, 2).await;
    // Let the flow answer twice after the second model was recorded (a
    // fixed pause is too short on a loaded machine).
    let after = answers.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answers.load(std::sync::atomic::Ordering::SeqCst) < after + 2
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let seen = flow.await.unwrap();
    assert_eq!(
        seen,
        vec![first.clone(), second.clone()],
        "served models in order"
    );

    // Pin production to the first model: /predict follows the alias.
    let resp = client()
        .put(format!("{}/models/aliases/production", server.url))
        .json(&json!({"model_id": first}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = predict_raw(&server, "/predict", png.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], first.as_str());
    let answer: Value = predict_raw(&server, "/models/production/predict", png.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], first.as_str());
    let model = server.get_json(&format!("/models/{first}")).await;
    assert_eq!(model["aliases"], json!(["production"]));
    // Move it, then the first model can go.
    client()
        .put(format!("{}/models/aliases/production", server.url))
        .json(&json!({"model_id": second}))
        .send()
        .await
        .unwrap();
    let resp = client()
        .delete(format!("{}/models/{first}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!server.dir.path().join("models").join(&first).exists());
    let models = server.get_json("/models").await;
    assert_eq!(models.as_array().unwrap().len(), 1);
    server.stop().await;
}
