//! A model whose preprocessor leaves the output size open (`do_resize:
//! false`, or a shortest-edge resize without a centre crop) serves images
//! of any sizes: through `/predict` (several in one request, and separate
//! requests batched together by the engine) and `vitrine predict`, each
//! image is resized to the model's `image_size`.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use crate::common::e2e::{fixtures, TestServer};
use serde_json::{json, Value};

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([200, (x * 3 % 256) as u8, (y * 5 % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn set_preprocessor(model_dir: &Path, json: Value) {
    std::fs::write(
        model_dir.join("preprocessor_config.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_any_size_are_served_at_the_model_size() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 1});
    let job = server
        .run_job(&fx.tints_zip, cfg, Duration::from_secs(300))
        .await;
    let model_id = job["model_id"].as_str().unwrap().to_string();
    let dir = server.dir.path().join("models").join(&model_id);
    // Before the first request (the registry reads it once per model).
    set_preprocessor(&dir, json!({"do_resize": false}));

    let client = reqwest::Client::new();
    let sizes = [(50, 30), (17, 91), (300, 200)];
    let mut form = reqwest::multipart::Form::new();
    for (i, (w, h)) in sizes.iter().enumerate() {
        form = form.part(
            "image",
            reqwest::multipart::Part::bytes(png(*w, *h)).file_name(format!("{i}.png")),
        );
    }
    let resp = client
        .post(format!("{}/predict", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), sizes.len());

    // Separate requests of different sizes, sent at once so the engine may
    // put them in one batch: every one answered.
    let requests = sizes.iter().map(|(w, h)| {
        client
            .post(format!("{}/predict", server.url))
            .header("content-type", "image/png")
            .body(png(*w, *h))
            .send()
    });
    for resp in futures::future::join_all(requests).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["results"].as_array().unwrap().len(), 1);
    }

    // `vitrine predict` on a copy with a shortest-edge resize and no crop.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    set_preprocessor(copy.path(), json!({"size": {"shortest_edge": 24}}));
    let mut args = vec![
        "predict".to_string(),
        "--model".into(),
        copy.path().display().to_string(),
    ];
    for (w, h) in sizes {
        let path = copy.path().join(format!("{w}x{h}.png"));
        std::fs::write(&path, png(w, h)).unwrap();
        args.push(path.display().to_string());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["results"].as_array().unwrap().len(), sizes.len());
    server.stop().await;
}
