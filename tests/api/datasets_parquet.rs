//! Hugging Face Parquet datasets, made by the real `datasets` library
//! (tests/python/make_parquet_datasets.py), through the same ingestion as
//! archives: every kept row's bytes and labels, the skipped rows, and each
//! refusal's code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use vitrine::budget::DecodeBudget;
use vitrine::data::ingest::{ingest_upload, IngestLimits};
use vitrine::data::parquet::ParquetColumns;
use vitrine::data::{DatasetError, Ingested};
use vitrine::task::Task;

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
        decode_budget: DecodeBudget::new(256 << 20),
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

// Hostile files (issue 26): tests/python/make_hostile_parquet.py.

fn hostile() -> &'static Path {
    python_fixtures("tests/python/make_hostile_parquet.py")
}

fn ingest_hostile(name: &str, limits: &IngestLimits) -> Result<Ingested, DatasetError> {
    let dir = tempfile::tempdir().unwrap();
    let upload = hostile().join(name);
    ingest_upload(
        &upload,
        dir.path(),
        limits,
        &ParquetColumns::default(),
        &Default::default(),
    )
}

/// A struct nested 5,000 deep overflowed the stack of the schema code in
/// the `parquet` crate and aborted the process; it is refused before that
/// code runs. Here on a thread with half the stack of the ingest threads
/// (2 MiB), in a debug build: the deepest schema accepted (64 levels) fits
/// with room to spare.
#[test]
fn deep_schemas_are_refused_before_any_recursion() {
    for (name, refused) in [
        ("deep_5000.parquet", true),
        ("deep_200.parquet", true),
        ("deep_64.parquet", false),
    ] {
        let result = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || ingest_hostile(name, &limits()))
            .unwrap()
            .join()
            .expect("the ingest thread died");
        match result {
            Err(e) if refused => {
                assert_eq!(e.code, "invalid_parquet", "{name}: {e}");
                assert!(e.detail.contains("nested 65 levels"), "{name}: {e}");
                assert!(e.detail.contains("at most 64"), "{name}: {e}");
            }
            Ok(ingested) if !refused => assert_eq!(ingested.summary.images, 8, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// One image of 512 MiB of zeros (a few KB of zstd) is refused from the
/// page headers, before a byte of it is decompressed; the same zeros in a
/// column vitrine does not use are never read. Either way the budget is
/// all given back.
#[test]
fn column_bombs_are_refused_unread_or_never_read() {
    let l = limits();
    let e = ingest_hostile("bomb_image.parquet", &l).unwrap_err();
    assert_eq!(e.code, "archive_too_large", "{e}");
    assert!(e.detail.contains("a page decompresses to 5368709"), "{e}");
    // With a larger archive limit, the decode budget refuses it.
    let roomy = IngestLimits {
        max_uncompressed_bytes: 20 << 30,
        ..limits()
    };
    let e = ingest_hostile("bomb_image.parquet", &roomy).unwrap_err();
    assert_eq!(e.code, "parquet_row_group_too_large", "{e}");
    let ingested = ingest_hostile("bomb_unused.parquet", &l).unwrap();
    assert_eq!(ingested.summary.images, 8);
    assert_eq!(l.decode_budget.in_use(), 0);
    assert_eq!(roomy.decode_budget.in_use(), 0);
}

/// One image over `--max-image-file-bytes` is refused by name.
#[test]
fn each_image_is_held_to_the_per_file_cap() {
    let tight = IngestLimits {
        max_image_file_bytes: 10,
        ..limits()
    };
    let e = ingest_hostile("bomb_unused.parquet", &tight).unwrap_err();
    assert_eq!(e.code, "image_file_too_large", "{e}");
    assert!(e.detail.contains("row 0"), "{e}");
}

/// 190,000 rows without an image beside 8 images were accepted, each row
/// listed in `skipped`: they count as undecodable images now.
#[test]
fn rows_without_images_count_against_the_undecodable_fraction() {
    let roomy = IngestLimits {
        max_entries: 1_000_000,
        ..limits()
    };
    let e = ingest_hostile("missing_images.parquet", &roomy).unwrap_err();
    assert_eq!(e.code, "missing_images", "{e}");
    assert!(e.detail.contains("190000 of 190008 rows"), "{e}");
}

/// Skipped rows are listed up to 100 and counted beyond, in the summary
/// stored and answered.
#[test]
fn skipped_lists_are_capped_with_a_total() {
    let ingested = ingest_hostile("no_labels.parquet", &limits()).unwrap();
    let skipped = &ingested.summary.skipped;
    assert_eq!((skipped.skipped.len(), skipped.len()), (100, 150));
    let json = serde_json::to_value(&ingested.summary).unwrap();
    assert_eq!(json["skipped"].as_array().unwrap().len(), 100);
    assert_eq!(json["skipped_total"], 150);
    assert!(
        ingested
            .summary
            .warnings
            .iter()
            .any(|w| w.starts_with("150 file(s) skipped")),
        "{:?}",
        ingested.summary.warnings
    );
}

/// A 16 MiB label was accepted whole, and shown in every answer about the
/// dataset; labels longer than 256 bytes are refused, in Parquet and in
/// metadata files.
#[test]
fn long_labels_are_refused() {
    let e = ingest_hostile("long_label.parquet", &limits()).unwrap_err();
    assert_eq!(e.code, "label_too_long", "{e}");
    assert!(e.detail.contains("16777216 bytes"), "{e}");
    assert!(e.detail.len() < 1000, "the label is not repeated");

    // The metadata is read before any image is decoded: the images can be
    // anything.
    let long = "y".repeat(300);
    for (name, meta) in [
        ("metadata.csv", format!("file_name,label\na.png,cat\nb.png,{long}\n")),
        (
            "metadata.jsonl",
            format!(
                "{{\"file_name\": \"a.png\", \"label\": \"cat\"}}\n{{\"file_name\": \"b.png\", \"label\": \"{long}\"}}\n"
            ),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("up.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (file, bytes) in [
            (name, meta.as_bytes().to_vec()),
            ("a.png", b"a".to_vec()),
            ("b.png", b"b".to_vec()),
        ] {
            zip.start_file(file, opts).unwrap();
            std::io::Write::write_all(&mut zip, &bytes).unwrap();
        }
        zip.finish().unwrap();
        let e = ingest_upload(
            &zip_path,
            &dir.path().join("out"),
            &limits(),
            &ParquetColumns::default(),
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, "label_too_long", "{name}: {e}");
        let line = if name.ends_with("csv") { "line 3" } else { "line 2" };
        assert!(e.detail.contains(line), "{name}: {e}");
    }
}
