//! ONNX over HTTP: a model trained through the API, downloaded with
//! `?format=onnx`, ranks the same top label as `/predict` on 20 images
//! when run by onnxruntime with the README's own Python snippet
//! (preprocessing read from the file's metadata); the metadata endpoint
//! matches the file; bad formats and opsets are refused by code. A
//! multi-label model carries its thresholds and answers alike in fp16 too.

use std::io::Read;
use std::time::Duration;

use crate::common::e2e::{downloaded_names, fixtures, TestServer};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

/// `n` images of a dataset zip spread over its entries (so over its
/// classes), with their names.
fn images_of(zip_path: &std::path::Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    let names: Vec<String> = archive
        .file_names()
        .filter(|n| n.ends_with(".png") || n.ends_with(".jpg"))
        .map(String::from)
        .collect();
    let mut names: Vec<String> = names.clone();
    names.sort();
    let step = (names.len() / n).max(1);
    names
        .iter()
        .step_by(step)
        .take(n)
        .map(|name| {
            let mut bytes = Vec::new();
            archive
                .by_name(name)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            (name.clone(), bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloaded_onnx_model_ranks_like_predict() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2, "learning_rate": 0.01});
    let job = server.run_job(&fx.tints_zip, cfg, TIMEOUT).await;
    let model_id = job["model_id"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let get = |query: String| {
        let (client, url, id) = (client.clone(), server.url.clone(), model_id.clone());
        async move {
            client
                .get(format!("{url}/models/{id}/download{query}"))
                .send()
                .await
                .unwrap()
        }
    };

    let resp = get("?format=onnx&dynamic_batch=true".into()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let onnx = resp.bytes().await.unwrap();
    let meta: Value = get("?format=onnx-metadata&dynamic_batch=true".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["task"], "multi_class");
    assert_eq!(meta["input"]["shape"][0], Value::Null);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx"), &onnx).unwrap();

    let images = images_of(&fx.tints_zip, 20);
    assert_eq!(images.len(), 20);
    let mut agree = 0;
    for (name, bytes) in &images {
        let url = format!("{}/predict?calibrated=false", server.url);
        let answer = predict_png(&client, &url, bytes).await;
        let want = answer["predictions"][0]["label"]
            .as_str()
            .unwrap()
            .to_string();
        let want_score = answer["predictions"][0]["score"].as_f64().unwrap();
        std::fs::write(dir.path().join("cat.jpg"), bytes).unwrap();
        let (label, score) = crate::common::run_readme_onnx_snippet(dir.path());
        println!("{name}: /predict {want} {want_score:.5}, onnx {label} {score:.5}");
        assert_eq!(label, want, "{name}");
        assert!(
            (score - want_score).abs() < 1e-3,
            "{name}: {score} vs {want_score}"
        );
        agree += 1;
    }
    assert_eq!(agree, 20);
    let distinct: std::collections::BTreeSet<&str> = images
        .iter()
        .map(|(n, _)| n.split('/').nth(1).unwrap())
        .collect();
    assert!(
        distinct.len() >= 3,
        "images of several classes: {distinct:?}"
    );

    // The metadata endpoint is what the file carries.
    let props = crate::common::python_json(
        "tests/python/onnx_metadata.py",
        &[&dir.path().join("model.onnx")],
    );
    assert_eq!(props, meta);

    // Refusals by code; the default format is unchanged.
    for (query, status, code) in [
        ("?format=tflite", 400, "unsupported_format"),
        ("?format=onnx&opset=9", 400, "unsupported_opset"),
        ("?format=onnx&opset=abc", 400, "invalid_query"),
        ("?opset=18", 400, "invalid_query"),
    ] {
        let resp = get(query.to_string()).await;
        assert_eq!(resp.status(), status, "{query}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], code, "{query}: {problem}");
    }
    let names = downloaded_names(&server.url, &model_id).await;
    assert!(
        names.iter().any(|n| n.ends_with("model.safetensors")),
        "{names:?}"
    );
    server.stop().await;
}

/// A multi-label model: sigmoid probabilities, the thresholds chosen in
/// training in the metadata, and (fp16 too) the README snippet's best label
/// and probability equal to `/predict`'s best score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_label_model_exports_its_thresholds() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2, "learning_rate": 0.01});
    let job = server.run_job(&fx.mosaic_zip, cfg, TIMEOUT).await;
    let model_id = job["model_id"].as_str().unwrap().to_string();
    let model = server.get_json(&format!("/models/{model_id}")).await;
    let meta = server
        .get_json(&format!("/models/{model_id}/download?format=onnx-metadata"))
        .await;
    assert_eq!(meta["task"], "multi_label");
    assert_eq!(meta["probabilities"], "sigmoid");
    assert_eq!(meta["input"]["shape"][0], 1, "batch 1 by default");
    assert!(meta["thresholds"].is_array(), "{meta}");
    assert_eq!(meta["thresholds"], model["metrics"]["thresholds"]);
    assert_eq!(meta["labels"], model["labels"]);

    let client = reqwest::Client::new();
    let images = images_of(&fx.mosaic_zip, 5);
    for fp16 in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let onnx = client
            .get(format!(
                "{}/models/{model_id}/download?format=onnx&fp16={fp16}",
                server.url
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(dir.path().join("model.onnx"), &onnx).unwrap();
        let tol = if fp16 { 1e-2 } else { 1e-4 };
        for (name, bytes) in &images {
            let answer = predict_png(
                &client,
                // The graph's probabilities are uncalibrated (the model's
                // temperatures are in its metadata).
                &format!("{}/predict?all_scores=true&calibrated=false", server.url),
                bytes,
            )
            .await;
            let best = answer["results"][0]["scores"]
                .as_array()
                .unwrap()
                .iter()
                .max_by(|a, b| {
                    a["score"]
                        .as_f64()
                        .partial_cmp(&b["score"].as_f64())
                        .unwrap()
                })
                .unwrap()
                .clone();
            std::fs::write(dir.path().join("cat.jpg"), bytes).unwrap();
            let (label, score) = crate::common::run_readme_onnx_snippet(dir.path());
            println!("{name} fp16={fp16}: /predict {best}, onnx {label} {score:.5}");
            assert_eq!(label, best["label"].as_str().unwrap(), "{name}");
            let want = best["score"].as_f64().unwrap();
            assert!((score - want).abs() < tol, "{name}: {score} vs {want}");
        }
    }
    server.stop().await;
}

/// `/predict`'s answer (at `url`, with its query) for one PNG.
async fn predict_png(client: &reqwest::Client, url: &str, png: &[u8]) -> Value {
    client
        .post(url)
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
