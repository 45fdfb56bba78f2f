//! The decode-once input cache under a SIGKILL: a server killed while it
//! writes a dataset's cache leaves no file a later job would read; the job,
//! resumed after the restart, builds the cache whole and trains from it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::e2e::{fixtures, get_json, metric, submit, wait_for_job};
use crate::common::process::ServerProcess;

const LEASE: &[&str] = &["--job-lease-secs", "2"];

/// `n` noisy photo-sized JPEGs (slow enough to decode that the cache takes
/// a while to write) over two labels.
fn photos(zip_path: &Path, n: usize) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    for i in 0..n {
        let label = ["cat", "dog"][i % 2];
        let mut state = (i as u32).wrapping_mul(2_654_435_761) | 1;
        let img = image::RgbImage::from_fn(1100, 900, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let base = if label == "cat" { 60 } else { 190 };
            image::Rgb([
                base,
                (x / 5 % 256) as u8,
                (y as u8).wrapping_add((state & 63) as u8),
            ])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        zip.start_file(
            format!("train/{label}/{i}.jpg"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&jpeg).unwrap();
    }
    zip.finish().unwrap();
}

/// Whether a cache file is whole: its format's magic at both ends (the
/// trailer is the last thing written before the rename).
fn complete(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.len() > 16 && bytes.starts_with(b"VTRNIC01") && bytes.ends_with(b"VTRNIC01")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_killed_mid_write_is_never_used_and_is_built_again() {
    let root = tempfile::tempdir().unwrap();
    let zip = root.path().join("photos.zip");
    photos(&zip, 120);
    let data = root.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let cache = data.join("cache").join("inputs");
    let mut child = ServerProcess::start(&data, LEASE).await;
    let url = child.url.clone();
    let cfg =
        json!({"base_model": fixtures().base_model, "mode": "full", "epochs": 2, "batch_size": 16});
    let resp = submit(&url, &zip, cfg, None).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Kill it while the cache is being written.
    let started = Instant::now();
    while files(&cache, "tmp").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no cache was written"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill();
    // Whatever the kill caught, a file in place is a whole one (on a box
    // slow to notice the `.tmp`, a build may even have finished).
    let whole_before = files(&cache, "bin");
    for bin in &whole_before {
        assert!(complete(bin), "a half cache was put in place: {bin:?}");
    }
    // (The kill may land between the creation of the two forms' files.)
    assert!(
        whole_before.len() + files(&cache, "tmp").len() >= 1,
        "a build was under way"
    );

    let mut child = ServerProcess::start_on(&data, child.port(), LEASE).await;
    let done = wait_for_job(&url, &id, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    // Built whole this time: training copies and evaluation outputs, no
    // leftover; and the second epoch read them.
    let bins = files(&cache, "bin");
    assert_eq!(bins.len(), 2, "{bins:?}");
    assert!(bins.iter().all(|b| complete(b)));
    assert!(
        files(&cache, "tmp").is_empty(),
        "the dead build's file was cleared"
    );
    let builds = metric(&url, "vitrine_input_cache_builds_total").await;
    assert_eq!(
        builds,
        Some((2 - whole_before.len()) as f64),
        "rebuilt what the kill cut short"
    );
    assert!(metric(&url, "vitrine_input_cache_hits_total").await > Some(0.0));
    let epochs = get_json(&url, &format!("/jobs/{id}")).await["metrics"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(epochs, 2);
    child.kill();
}
