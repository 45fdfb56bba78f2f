//! Hostile Parquet uploads against the real binary (issue 26, findings 1,
//! 3 and 10): a schema nested 5,000 deep once aborted the process (and
//! every restart after it), a 17 KB file holding one 512 MiB image took
//! memory to 2 GB before it was refused, and the same zeros in an unused
//! column were decoded and accepted. Each is now refused or skipped with
//! the server's peak resident memory (VmHWM) within 1.5 times its idle
//! footprint plus the decode budget, and the server stays up.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::e2e::{get_json, wait_dataset_settled};
use crate::common::process::ServerProcess;
use crate::common::python_fixtures;

const BUDGET: u64 = 256 << 20;

async fn upload(url: &str, path: &Path) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "dataset",
        reqwest::multipart::Part::bytes(std::fs::read(path).unwrap()).file_name("data.parquet"),
    );
    let resp = reqwest::Client::new()
        .post(format!("{url}/datasets"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    wait_dataset_settled(url, &id, Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parquet_files_are_refused_in_bounded_memory() {
    let fx = python_fixtures("tests/python/make_hostile_parquet.py");
    let data = tempfile::tempdir().unwrap();
    let budget = BUDGET.to_string();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--decode-budget-bytes",
            &budget,
            "--max-uncompressed-bytes",
            "104857600",
        ],
    )
    .await;
    let idle = server.peak_rss();

    for (file, code) in [
        ("deep_5000.parquet", "invalid_parquet"),
        ("deep_200.parquet", "invalid_parquet"),
        ("bomb_image.parquet", "archive_too_large"),
        ("missing_images.parquet", "missing_images"),
        ("long_label.parquet", "label_too_long"),
    ] {
        let d = upload(&server.url, &fx.join(file)).await;
        assert_eq!(d["status"], "failed", "{file}: {d}");
        assert_eq!(d["error"]["code"], code, "{file}: {d}");
        let health = reqwest::get(format!("{}/healthz", server.url)).await;
        assert!(
            health.is_ok_and(|r| r.status() == 200),
            "{file}: server down"
        );
    }
    let unused = upload(&server.url, &fx.join("bomb_unused.parquet")).await;
    assert_eq!(unused["status"], "ready", "{unused}");
    assert_eq!(unused["summary"]["images"], 8, "{unused}");

    let skips = upload(&server.url, &fx.join("no_labels.parquet")).await;
    assert_eq!(skips["status"], "ready", "{skips}");
    assert_eq!(skips["summary"]["skipped"].as_array().unwrap().len(), 100);
    assert_eq!(skips["summary"]["skipped_total"], 150, "{skips}");
    let listed = get_json(&server.url, "/datasets").await;
    assert!(
        listed.to_string().len() < 100_000,
        "the listing stays small"
    );

    let peak = server.peak_rss();
    let bound = (idle as f64 * 1.5) as u64 + BUDGET;
    eprintln!(
        "hostile parquet: idle {} MiB, peak {} MiB, bound {} MiB",
        idle >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(peak < 2 << 30 && peak < bound, "peak {peak} over {bound}");
}
