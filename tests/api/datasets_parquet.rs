//! Hugging Face Parquet datasets, made by the real `datasets` library
//! (tests/python/make_parquet_datasets.py), through the same ingestion as
//! archives: every kept row's bytes and labels, the skipped rows, and each
//! refusal's code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use vitrine::data::ingest::{ingest_upload, IngestLimits};
use vitrine::data::parquet::ParquetColumns;
use vitrine::data::{DatasetError, Ingested, Task};

use crate::common::{body_json, python_fixtures, settle, upload_request, TestApp};

fn fixtures() -> &'static Path {
    python_fixtures("tests/python/make_parquet_datasets.py")
}

fn limits() -> IngestLimits {
    IngestLimits {
        max_entries: 10_000,
        max_uncompressed_bytes: 100 << 20,
        max_image_pixels: 10_000_000,
        max_undecodable_fraction: 0.05,
        max_image_file_bytes: 64 << 20,
    }
}

fn ingest_with(
    name: &str,
    limits: &IngestLimits,
    columns: &ParquetColumns,
) -> (Result<Ingested, DatasetError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let result = ingest_upload(
        &fixtures().join(name),
        dir.path(),
        limits,
        columns,
        &Default::default(),
    );
    (result, dir)
}

fn refusal(name: &str, columns: &ParquetColumns) -> DatasetError {
    match ingest_with(name, &limits(), columns).0 {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e,
    }
}

/// `{split: sorted [(sha256, sorted labels)]}` of what was ingested.
fn kept(ingested: &Ingested, dir: &Path) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let m = &ingested.manifest;
    let mut out = BTreeMap::new();
    let splits = [
        ("train", Some(&m.train)),
        ("validation", m.validation.as_ref()),
        ("test", m.test.as_ref()),
    ];
    for (split, samples) in splits {
        let Some(samples) = samples else { continue };
        let mut rows: Vec<(String, Vec<String>)> = samples
            .iter()
            .map(|s| {
                let bytes = std::fs::read(dir.join(&s.path)).unwrap();
                let mut labels: Vec<String> =
                    s.labels.iter().map(|&i| m.labels[i].clone()).collect();
                labels.sort();
                (hex::encode(Sha256::digest(&bytes)), labels)
            })
            .collect();
        rows.sort();
        out.insert(split.to_string(), rows);
    }
    out
}

fn expected_rows(case: &Value) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let mut out = BTreeMap::new();
    for (split, rows) in case["rows"].as_object().unwrap() {
        let mut rows: Vec<(String, Vec<String>)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect();
                (r[0].as_str().unwrap().to_string(), labels)
            })
            .collect();
        rows.sort();
        out.insert(split.clone(), rows);
    }
    out
}

fn check_case(name: &str, columns: &ParquetColumns) -> Ingested {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let case = &expected[name];
    let (result, dir) = ingest_with(name, &limits(), columns);
    let ingested = result.unwrap_or_else(|e| panic!("{name} refused: {e}"));
    assert_eq!(ingested.summary.layout, "parquet");
    let task = match case["task"].as_str().unwrap() {
        "multi_label" => Task::MultiLabel,
        _ => Task::MultiClass,
    };
    assert_eq!(ingested.task, task, "{name}");
    let labels: Vec<String> = serde_json::from_value(case["labels"].clone()).unwrap();
    assert_eq!(ingested.manifest.labels, labels, "{name}");
    assert_eq!(kept(&ingested, dir.path()), expected_rows(case), "{name}");
    assert_eq!(
        ingested.summary.skipped.len() as u64,
        case["skipped"].as_u64().unwrap(),
        "{name}: {:?}",
        ingested.summary.skipped
    );
    // Nothing of the Parquet files themselves is kept.
    assert!(!dir.path().join("parquet").exists());
    let leftover: Vec<PathBuf> = walk(&dir.path().join("files"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    ingested
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn hub_layout_with_class_labels_and_three_splits() {
    let ingested = check_case("hub.zip", &ParquetColumns::default());
    let skipped: Vec<String> = ingested
        .summary
        .skipped
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    let all = skipped.join("\n");
    assert!(all.contains("README.md"), "{all}");
    assert!(
        all.contains("test-00000-of-00001.parquet row 6") && all.contains("no label"),
        "{all}"
    );
    let test = &ingested.summary.splits["test"];
    assert_eq!(test.images, 6);
}

#[test]
fn multi_label_lists_in_split_directories() {
    let ingested = check_case("multilabel.tar.gz", &ParquetColumns::default());
    assert_eq!(ingested.summary.splits["train"].images, 16);
}

#[test]
fn one_file_with_string_labels_skips_the_undecodable_image() {
    let ingested = check_case("strings.parquet", &ParquetColumns::default());
    let skipped = format!("{:?}", ingested.summary.skipped);
    assert!(skipped.contains("undecodable"), "{skipped}");
}

#[test]
fn columns_can_be_named_by_the_uploader() {
    let e = refusal("columns.parquet", &ParquetColumns::default());
    assert_eq!(e.code, "parquet_column_not_found", "{e}");
    assert!(
        e.detail.contains("`picture`") && e.detail.contains("image_column"),
        "{e}"
    );
    let named = ParquetColumns {
        image: Some("picture".into()),
        label: Some("category".into()),
    };
    check_case("columns.parquet", &named);
    let wrong = ParquetColumns {
        image: Some("picture".into()),
        label: Some("kind".into()),
    };
    let e = refusal("columns.parquet", &wrong);
    assert_eq!(e.code, "parquet_column_not_found", "{e}");
    assert!(
        e.detail.contains("`kind`") && e.detail.contains("`category`"),
        "{e}"
    );
    let not_images = ParquetColumns {
        image: Some("note".into()),
        label: Some("category".into()),
    };
    let e = refusal("columns.parquet", &not_images);
    assert_eq!(e.code, "parquet_column_type", "{e}");
}

#[test]
fn refusals_name_the_problem() {
    let e = refusal("paths_only.parquet", &ParquetColumns::default());
    assert_eq!(e.code, "parquet_image_paths_only", "{e}");
    assert!(e.detail.contains("/home/someone/photos/0.jpg"), "{e}");

    let e = refusal("corrupt.parquet", &ParquetColumns::default());
    assert_eq!(e.code, "invalid_parquet", "{e}");

    let e = refusal("bad_label.parquet", &ParquetColumns::default());
    assert_eq!(e.code, "invalid_metadata", "{e}");
    assert!(e.detail.contains("label id 7"), "{e}");
}

#[test]
fn archive_limits_apply_to_rows_and_image_bytes() {
    let few = IngestLimits {
        max_entries: 20,
        ..limits()
    };
    let (result, _dir) = ingest_with("hub.zip", &few, &ParquetColumns::default());
    assert_eq!(result.unwrap_err().code, "too_many_entries");
    let small = IngestLimits {
        max_uncompressed_bytes: 5_000,
        ..limits()
    };
    let (result, _dir) = ingest_with("strings.parquet", &small, &ParquetColumns::default());
    assert_eq!(result.unwrap_err().code, "archive_too_large");
}

/// `POST /datasets{query}` with a fixture: the status and the dataset once
/// its validation has ended.
async fn post(app: &TestApp, name: &str, query: &str) -> (axum::http::StatusCode, Value) {
    let mut req = upload_request("dataset", &std::fs::read(fixtures().join(name)).unwrap());
    *req.uri_mut() = format!("/datasets{query}").parse().unwrap();
    let resp = app.send(req).await;
    let status = resp.status();
    let body = body_json(resp).await;
    if !status.is_success() {
        return (status, body);
    }
    (status, settle(app, body["id"].as_str().unwrap()).await)
}

#[tokio::test]
async fn uploads_over_http_name_their_columns_in_the_query() {
    let app = TestApp::new().await;
    let (status, hub) = post(&app, "hub.zip", "").await;
    assert_eq!(status, axum::http::StatusCode::ACCEPTED);
    assert_eq!(hub["status"], "ready", "{hub}");
    assert_eq!(hub["format"], "zip");
    assert_eq!(hub["summary"]["layout"], "parquet");
    assert_eq!(hub["summary"]["splits"]["validation"]["images"], 6, "{hub}");

    // The server's undecodable fraction (1%) is below the file's 1 of 40.
    let (status, single) = post(&app, "strings.parquet", "").await;
    assert_eq!(status, axum::http::StatusCode::ACCEPTED);
    assert_eq!(single["error"]["code"], "undecodable_images", "{single}");
    assert_eq!(single["progress"]["phase"], "done", "{single}");
    assert_eq!(single["progress"]["images_checked"], 40, "{single}");

    // Without the names: refused, naming the columns; with them: ready,
    // as another dataset than the same file read by convention.
    let (_, refused) = post(&app, "columns.parquet", "").await;
    assert_eq!(refused["status"], "failed");
    assert_eq!(
        refused["error"]["code"], "parquet_column_not_found",
        "{refused}"
    );
    let named = "?image_column=picture&label_column=category";
    let (status, ready) = post(&app, "columns.parquet", named).await;
    assert_eq!(status, axum::http::StatusCode::ACCEPTED, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_ne!(ready["id"], refused["id"]);
    assert_ne!(ready["sha256"], refused["sha256"]);
    assert_eq!(ready["summary"]["labels"], serde_json::json!(["0", "1"]));
    assert_eq!(ready["format"], "parquet", "{ready}");
    let (status, again) = post(&app, "columns.parquet", named).await;
    assert_eq!(status, axum::http::StatusCode::OK);
    assert_eq!(again["id"], ready["id"]);

    let (status, problem) = post(&app, "columns.parquet", "?image_col=picture").await;
    assert_eq!(status, axum::http::StatusCode::BAD_REQUEST, "{problem}");

    let (_, paths) = post(&app, "paths_only.parquet", "").await;
    assert_eq!(
        paths["error"]["code"], "parquet_image_paths_only",
        "{paths}"
    );
    // Nothing is left of the uploads, the columns named with them, or the
    // refused datasets' work.
    for sub in ["uploads", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(app.dir.path().join(sub))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}
