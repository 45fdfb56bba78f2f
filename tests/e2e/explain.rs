//! `/explain` through real HTTP on a trained ViT: the default method is
//! attention rollout, maps have the model's input size with values in
//! [0, 1], the explained label and score are the ones `/predict` serves,
//! `.npy` and PNG answers decode, refusals name the problem, and a full
//! explanation queue answers 429 while `/predict` keeps answering.

use std::time::Duration;

use crate::common::e2e::{fixtures, TestServer};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

async fn post(server: &TestServer, path: &str, png: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap()
}

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explanations_follow_predictions_and_refusals_name_the_problem() {
    let fx = fixtures();
    let server = TestServer::start(|c| c.explain_queue = 1).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2, "learning_rate": 0.01});
    let job = server.run_job(&fx.tints_zip, cfg, TIMEOUT).await;
    let model = job["model_id"].as_str().unwrap().to_string();
    let png = std::fs::read(&fx.red_png).unwrap();

    let predicted: Value = post(&server, "/predict", &png).await.json().await.unwrap();
    let top = &predicted["predictions"][0];
    let resp = post(&server, "/explain", &png).await;
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["model"], model.as_str());
    assert_eq!(e["method"], "attention_rollout");
    let (w, h) = (e["width"].as_u64().unwrap(), e["height"].as_u64().unwrap());
    // The fixture's preprocessing resizes to the model's size, no crop:
    // the maps cover the whole image.
    let size = e["image_size"].clone();
    let (iw, ih) = (size[0].as_f64().unwrap(), size[1].as_f64().unwrap());
    assert_eq!(e["image_window"], json!([0.0, 0.0, iw, ih]), "{size}");
    let first = &e["explanations"][0];
    assert_eq!(first["label"], top["label"]);
    assert!((first["score"].as_f64().unwrap() - top["score"].as_f64().unwrap()).abs() < 1e-5);
    let map = first["map"].as_array().unwrap();
    assert_eq!(map.len() as u64, h);
    let values: Vec<f64> = map
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(values.len() as u64, w * h);
    assert!(values.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)));
    assert!(
        values.iter().any(|&v| v > 0.99),
        "the map is scaled to its maximum"
    );
    let overlay = first["overlay_png"]
        .as_str()
        .unwrap()
        .strip_prefix("data:image/png;base64,")
        .unwrap();
    use base64::Engine as _;
    let overlay = base64::engine::general_purpose::STANDARD
        .decode(overlay)
        .unwrap();
    let img = image::load_from_memory(&overlay).unwrap();
    assert_eq!((img.width() as u64, img.height() as u64), (w, h));

    // Named labels, integrated gradients, as .npy: [2, H, W] float32.
    let labels = ["red", "green"];
    let path = format!(
        "/models/{model}/explain?method=integrated_gradients&steps=8&baseline=black&format=npy&labels={}",
        labels.join(",")
    );
    let resp = post(&server, &path, &png).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["vitrine-labels"],
        serde_json::to_string(&labels).unwrap()
    );
    let npy = resp.bytes().await.unwrap();
    let len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + len]).unwrap();
    assert!(
        header.contains(&format!("'shape': (2, {h}, {w},)")),
        "{header}"
    );
    assert_eq!(npy.len(), 10 + len + (2 * h * w * 4) as usize);

    // PNG of the first label.
    let resp = post(
        &server,
        "/explain?method=integrated_gradients&steps=4&format=png",
        &png,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();

    // `vitrine explain` on the model's directory: the same maps, as files.
    let out = tempfile::tempdir().unwrap();
    let dir = server.dir.path().join("models").join(&model);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["explain", "--labels", "red,green", "--out"])
        .arg(out.path())
        .arg("--model")
        .arg(&dir)
        .arg(&fx.red_png)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["method"], "attention_rollout");
    assert_eq!(summary["labels"][1]["label"], "green");
    for file in ["red.red.png", "red.green.png", "red.npy"] {
        assert!(out.path().join(file).is_file(), "{file}: {summary}");
    }

    // Refusals.
    let p = problem(post(&server, "/explain?method=gradcam", &png).await, 422).await;
    assert_eq!(p["code"], "method_not_supported");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("attention_rollout") && detail.contains("integrated_gradients"),
        "{detail}"
    );
    let p = problem(post(&server, "/explain?method=lime", &png).await, 422).await;
    assert_eq!(p["code"], "unknown_method");
    let p = problem(post(&server, "/explain?labels=purple", &png).await, 422).await;
    assert_eq!(p["code"], "unknown_label");
    let p = problem(
        post(
            &server,
            "/explain?method=integrated_gradients&steps=100000",
            &png,
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["code"], "invalid_steps");
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("--explain-max-steps"));
    let p = problem(
        post(
            &server,
            "/explain?method=integrated_gradients&baseline=grey",
            &png,
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["code"], "unknown_baseline");
    let p = problem(post(&server, "/explain?format=gif", &png).await, 400).await;
    assert_eq!(p["code"], "invalid_query");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let resp = reqwest::Client::new()
        .post(format!("{}/explain", server.url))
        .json(&json!({"images": [b64, b64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(resp, 422).await["code"], "one_image");

    // A queue of one: of several slow explanations at once, some are
    // refused with 429 and Retry-After, the rest answer; /predict answers
    // meanwhile.
    let slow = "/explain?method=integrated_gradients&steps=256";
    let calls: Vec<_> = (0..8).map(|_| post(&server, slow, &png)).collect();
    let during = post(&server, "/predict", &png);
    let (answers, during) = tokio::join!(futures::future::join_all(calls), during);
    assert_eq!(during.status(), 200);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let refused = answers.iter().find(|r| r.status() == 429).unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    server.stop().await;
}
