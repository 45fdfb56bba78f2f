//! Hostile uploads against the real `vitrine` process: a dataset whose
//! validation takes the server down is quarantined instead of crashing it
//! at every start (issue 26, finding 1), and an image member of gigabytes
//! of zeros is refused from its size, the server's memory untouched
//! (finding 2).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::e2e::{get_json, upload_dataset as upload, wait_dataset_settled};
use crate::common::photo_archive;
use crate::common::process::ServerProcess;
use serde_json::Value;

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or(vec![], |d| {
        d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    })
}

/// Waits until this life of the server checks images of dataset `id`:
/// its validation has started `starts` times (this start counted) and the
/// live progress counts images.
async fn wait_checking(url: &str, id: &str, starts: u64) -> Value {
    let started = Instant::now();
    loop {
        let d = get_json(url, &format!("/datasets/{id}")).await;
        assert_eq!(d["status"], "validating", "ended before the kill: {d}");
        if d["validation_starts"] == starts && d["progress"]["images_checked"].as_u64() > Some(0) {
            return d;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The crash loop of finding 1, by construction impossible: the server is
/// killed (SIGKILL, as a stack overflow aborts it) in the middle of the
/// same validation three times, each restart resuming it; the fourth
/// start does not validate it again but fails it (`validation_crashed`),
/// removes its upload, and stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_killed_three_times_is_quarantined_at_the_fourth_start() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--ingest-threads", "1", "--no-workers"];
    let mut child = ServerProcess::start(data.path(), &args).await;
    let (url, port) = (child.url.clone(), child.port());
    let (status, body) = upload(&url, photo_archive(300, 2000, 1500, false)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let sha = body["sha256"].as_str().unwrap().to_string();

    for kill in 1..=3 {
        let seen = wait_checking(&url, &id, kill).await;
        child.kill();
        println!("kill {kill} at {}", seen["progress"]);
        assert_eq!(entries(&data.path().join("uploads")), vec![sha.clone()]);
        child = ServerProcess::start_on(data.path(), port, &args).await;
    }

    let done = wait_dataset_settled(&url, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "validation_crashed", "{done}");
    assert_eq!(
        done["validation_starts"], 3,
        "started a fourth time: {done}"
    );
    assert!(
        done["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("3 times")),
        "{done}"
    );
    // Up, and staying up.
    for _ in 0..3 {
        let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(child.wait_exit(Duration::from_millis(100)).await.is_none());
    assert!(entries(&data.path().join("uploads")).is_empty());
    assert!(entries(&data.path().join("datasets")).is_empty());
    assert!(
        entries(&data.path().join("tmp")).is_empty(),
        "{:?}",
        entries(&data.path().join("tmp"))
    );
}

/// Bytes of zeros in the hostile member (a sparse file's content, deflated
/// as it streams into the zip).
const ZEROS: u64 = 10 << 30;
/// The decoding budget the server runs with.
const BUDGET: u64 = 256 << 20;

/// A zip of a few real images and `train/a/zeros.png`: `ZEROS` bytes of
/// zeros, deflated while streamed from a sparse file (about 10 MiB).
fn zeros_zip(dir: &Path) -> Vec<u8> {
    let sparse = dir.join("zeros.png");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(ZEROS)
        .unwrap();
    let path = dir.join("zeros.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let small =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let png = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    for name in [
        "train/a/0.png",
        "train/a/1.png",
        "train/b/0.png",
        "train/b/1.png",
    ] {
        zip.start_file(name, small).unwrap();
        zip.write_all(&png).unwrap();
    }
    let big = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    zip.start_file("train/a/zeros.png", big).unwrap();
    std::io::copy(&mut std::fs::File::open(&sparse).unwrap(), &mut zip).unwrap();
    zip.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// Finding 2: a small zip holding one "PNG" of 10 GiB of zeros took the
/// server to 10.6 GiB of resident memory (the image read whole). Now the
/// member is refused (`image_file_too_large`, naming it) from its size,
/// and the server's peak resident memory stays within 1.5x its idle
/// footprint plus its decoding budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_gib_image_member_is_refused_from_its_size() {
    let work = tempfile::tempdir().unwrap();
    let made = Instant::now();
    let archive = zeros_zip(work.path());
    println!(
        "zip of {} GiB of zeros: {} bytes, made in {:?}",
        ZEROS >> 30,
        archive.len(),
        made.elapsed()
    );
    let data = tempfile::tempdir().unwrap();
    let budget = BUDGET.to_string();
    let child = ServerProcess::start(
        data.path(),
        &["--no-workers", "--decode-budget-bytes", &budget],
    )
    .await;
    let idle = child.peak_rss();
    let (status, body) = upload(&child.url, archive).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    let done = wait_dataset_settled(&child.url, id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "image_file_too_large", "{done}");
    assert_eq!(done["error"]["status"], 413, "{done}");
    let detail = done["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("train/a/zeros.png"), "{detail}");
    let peak = child.peak_rss();
    println!(
        "server resident memory: idle {} MiB, peak {} MiB",
        idle >> 20,
        peak >> 20
    );
    assert!(peak < 2 << 30, "peak {} MiB", peak >> 20);
    assert!(
        (peak as f64) < 1.5 * idle as f64 + BUDGET as f64,
        "peak {} MiB, idle {} MiB",
        peak >> 20,
        idle >> 20
    );
    // Nothing of it stays on disk.
    assert!(entries(&data.path().join("tmp")).is_empty());
    assert!(entries(&data.path().join("uploads")).is_empty());
}
