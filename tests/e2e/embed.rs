//! `/embed` over real HTTP on a trained tiny ViT: the vectors equal what
//! `transformers`' classifier reads (within 1e-4), one image alone equals
//! the same image in a batch of 32 (within 1e-6), normalised vectors have
//! unit norm, and every input form of `/predict` is taken.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::e2e::{fixtures, TestServer};

const TIMEOUT: Duration = Duration::from_secs(300);

fn vectors(answer: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(answer["embeddings"].clone()).expect("embeddings")
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// 31 seeded noise PNGs of assorted sizes.
fn noise_pngs() -> Vec<Vec<u8>> {
    let mut seed = 7u64;
    (0..31)
        .map(|i| {
            let (w, h) = (20 + i % 7 * 5, 24 + i % 5 * 6);
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let v = (seed >> 33) as u32;
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_equal_transformers_alone_or_batched_and_normalised() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 1});
    let job = server.run_job(&fx.tints_zip, cfg, TIMEOUT).await;
    let id = job["model_id"].as_str().unwrap();
    let client = reqwest::Client::new();
    let png = std::fs::read(&fx.red_png).unwrap();

    // One raw image, unnormalised: transformers' vector.
    let alone: Value = client
        .post(format!("{}/models/{id}/embed?normalize=false", server.url))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (alone["model"].as_str(), alone["normalized"].clone()),
        (Some(id), json!(false))
    );
    let dir = server.dir.path().join("models").join(id);
    let reference = crate::common::python_json("tests/e2e/hf_embed.py", &[&dir, &fx.red_png]);
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let alone = vectors(&alone).remove(0);
    assert_eq!(alone.len(), want[0].len());
    let d = max_diff(&alone, &want[0]);
    println!(
        "/embed vs transformers: max abs diff {d:e} over {} dimensions",
        alone.len()
    );
    assert!(d <= 1e-4, "{d}");

    // The same image among 31 others, as base64 JSON (a data URL too):
    // the same vector; and normalised by default.
    let mut images: Vec<String> = noise_pngs()
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    images.insert(17, format!("data:image/png;base64,{b64}"));
    let batch: Value = client
        .post(format!("{}/embed", server.url))
        .json(&json!({"images": images, "normalize": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = vectors(&batch);
    assert_eq!(batch.len(), 32);
    let d = max_diff(&batch[17], &alone);
    println!("alone vs in a batch of 32: max abs diff {d:e}");
    assert!(d <= 1e-6, "{d}");
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(noise_pngs().remove(0)).file_name("b.png"),
        );
    let unit: Value = client
        .post(format!("{}/models/{id}/embed", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unit["normalized"], true);
    let unit = vectors(&unit);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    for v in &unit {
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
    }
    let scaled: Vec<f64> = alone.iter().map(|x| x / norm(&alone)).collect();
    assert!(max_diff(&unit[0], &scaled) < 1e-6);
    server.stop().await;
}
