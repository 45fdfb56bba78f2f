//! `POST/GET /datasets/{id}/audit` on a tiny random ViT and images the
//! test makes: a mislabelled image is flagged (with the label it looks
//! like), an exact copy and a resized, JPEG-recompressed copy planted in
//! test are found as duplicates crossing splits (leakage), the CSV names
//! every image; and the refusals.

use std::io::Write;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rand::{Rng, SeedableRng};

use crate::common::{body_bytes, body_json, upload_settled, TestApp};

/// A tiny random ViT (hidden 32, 2 layers, 32 px) in the HF layout, no
/// classifier head, its
/// matrices scaled up 5x: at the Hub's initialisation (std 0.02) a random
/// ViT's features hardly depend on the image, and every pair of images
/// would look alike.
fn tiny_backbone(dir: &std::path::Path) -> std::path::PathBuf {
    let config = vitrine::model::ModelConfig::from_json(
        serde_json::json!({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}),
        std::path::Path::new("config.json"),
    )
    .unwrap();
    let model =
        vitrine::model::Model::from_config(config, vec!["x".into(), "y".into()], tch::Device::Cpu)
            .unwrap();
    // Weights from a seeded generator of the test's own (libtorch's global
    // one is shared with the tests running beside this one), with the
    // linear and patch weights 5x `transformers`' 0.02 so that a random
    // net still tells the textures apart.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut vars: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
            if t.dim() < 2 {
                continue; // layer norms and biases: ones and zeros
            }
            let std = if t.dim() == 2 || name.contains("projection.weight") {
                0.1
            } else {
                0.02
            };
            let half = std * 3f64.sqrt();
            let values: Vec<f32> = (0..t.numel())
                .map(|_| rng.gen_range(-half..half) as f32)
                .collect();
            t.copy_(&tch::Tensor::from_slice(&values).view(t.size().as_slice()));
        }
    });
    let out = dir.join("tiny-vit");
    vitrine::model::save_pretrained(&model, &out, vitrine::model::ProblemType::SingleLabel)
        .unwrap();
    // Without its head, as a base model from the Hub comes.
    let weights = out.join("model.safetensors");
    let kept: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&weights)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .collect();
    tch::Tensor::write_safetensors(&kept, &weights).unwrap();
    out
}

/// A 48 px texture: reddish (`red`) or bluish, with its own stripes.
fn texture(rng: &mut impl Rng, red: bool) -> image::RgbImage {
    let (fx, fy, phase) = (
        rng.gen_range(1..6),
        rng.gen_range(1..6),
        rng.gen_range(0..255u32),
    );
    let tint: u8 = rng.gen_range(150..250);
    image::RgbImage::from_fn(48, 48, |x, y| {
        let wave = ((x * fx + y * fy) * 16 + phase) % 256;
        let (main, other) = (tint.saturating_sub((wave / 3) as u8), (wave / 2) as u8);
        if red {
            image::Rgb([main, other / 2, other])
        } else {
            image::Rgb([other, other / 2, main])
        }
    })
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `img` at 0.7x, JPEG quality 70.
fn resized_jpeg(img: &image::RgbImage) -> Vec<u8> {
    let small = image::imageops::resize(img, 34, 34, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 70)
        .encode_image(&small)
        .unwrap();
    out
}

/// 12 images a class in train, 4 in test; `train/red/wrong.png` is blue;
/// `test/red/copy.jpg` is `train/red/0.png` resized and recompressed;
/// `test/blue/same.png` is `train/blue/1.png` byte for byte.
fn planted_archive() -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (split, count) in [("train", 12), ("test", 4)] {
        for class in ["red", "blue"] {
            for i in 0..count {
                let img = texture(&mut rng, class == "red");
                if split == "train" && class == "red" && i == 0 {
                    files.push(("test/red/copy.jpg".into(), resized_jpeg(&img)));
                }
                let bytes = png(&img);
                if split == "train" && class == "blue" && i == 1 {
                    files.push(("test/blue/same.png".into(), bytes.clone()));
                }
                files.push((format!("{split}/{class}/{i}.png"), bytes));
            }
        }
    }
    files.push(("train/red/wrong.png".into(), png(&texture(&mut rng, false))));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in files {
        w.start_file(name, opts).unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn post_audit(id: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(format!("/datasets/{id}/audit"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn paths(group: &serde_json::Value) -> Vec<String> {
    group["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Polls until the audit ends. Audits run at a lower CPU priority, so
/// beside other tests on a loaded 2-core CI machine they take long: the
/// bound is generous.
async fn audited(app: &TestApp, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let resp = app.get(&format!("/datasets/{id}/audit")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = body_json(resp).await;
        if body["status"] != "running" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_audit_finds_the_planted_label_error_copies_and_leakage() {
    let app = TestApp::new().await;
    let backbone = tiny_backbone(app.dir.path());
    let (_, dataset) = upload_settled(&app, &planted_archive()).await;
    assert_eq!(dataset["status"], "ready", "{dataset}");
    let id = dataset["id"].as_str().unwrap();

    let unknown = app
        .send(post_audit(
            id,
            serde_json::json!({"base_model": "/no/such/model"}),
        ))
        .await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body_json(unknown).await["code"], "unknown_base_model");
    let none = app.get(&format!("/datasets/{id}/audit")).await;
    assert_eq!(none.status(), StatusCode::NOT_FOUND);

    let started = app
        .send(post_audit(
            id,
            serde_json::json!({"base_model": backbone, "near_duplicate_threshold": 0.995}),
        ))
        .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    assert_eq!(body_json(started).await["status"], "running");
    let audit = audited(&app, id).await;
    assert_eq!(audit["status"], "succeeded", "{audit}");
    let f = &audit["findings"];
    assert_eq!(f["images"], 35);

    let issue = f["label_issues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == "train/red/wrong.png")
        .unwrap_or_else(|| panic!("the blue image labelled red is not flagged: {f}"));
    assert_eq!(issue["given"], serde_json::json!(["red"]));
    assert_eq!(issue["suggested"], "blue");
    assert!(issue["score"].as_f64().unwrap() < 0.5, "{issue}");

    let exact = f["exact_duplicates"].as_array().unwrap();
    assert_eq!(exact.len(), 1, "{f}");
    assert_eq!(paths(&exact[0]), ["test/blue/same.png", "train/blue/1.png"]);
    assert_eq!(exact[0]["leakage"], true);
    let near = f["near_duplicates"].as_array().unwrap();
    let copy = near
        .iter()
        .find(|g| paths(g).contains(&"test/red/copy.jpg".to_string()))
        .unwrap_or_else(|| panic!("the resized JPEG copy is not found: {near:?}"));
    assert!(
        paths(copy).contains(&"train/red/0.png".to_string()),
        "{copy}"
    );
    assert_eq!(copy["leakage"], true);
    assert!(f["leakage_groups"].as_u64().unwrap() >= 2);
    assert_eq!(f["class_balance"]["counts"]["test"]["red"], 5);

    let csv = app.get(&format!("/datasets/{id}/audit.csv")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(csv).await).unwrap();
    assert_eq!(text.lines().count(), 36);
    let wrong = text
        .lines()
        .find(|l| l.starts_with("train/red/wrong.png,"))
        .unwrap();
    assert!(wrong.contains(",blue,"), "{wrong}");
}

/// 404 for no dataset, 400/422 for an unknown field, 409 for a dataset
/// still validating (photos on one ingestion thread take seconds).
#[tokio::test]
async fn audits_of_no_dataset_or_one_still_validating_are_refused() {
    let app = TestApp::with_config(|c| c.ingest_threads = 1).await;
    let nowhere = "0193a3c8-0000-7000-8000-000000000000";
    let resp = app
        .send(post_audit(nowhere, serde_json::json!({"base_model": "x"})))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let bad = app
        .send(post_audit(
            nowhere,
            serde_json::json!({"base_model": "x", "colour": 1}),
        ))
        .await;
    assert!(bad.status().is_client_error());

    let (status, body) =
        crate::common::upload(&app, &crate::common::photo_archive(40, 2000, 1500, false)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["id"].as_str().unwrap();
    let resp = app
        .send(post_audit(id, serde_json::json!({"base_model": "x"})))
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(body_json(resp).await["code"], "dataset_not_ready");
}
