//! `POST /datasets` with archives built in code: every accepted layout, and
//! every kind of refusal with its exact status and code, leaving nothing
//! behind on disk or in the database.

use std::io::{Cursor, Write};
use std::time::Instant;

use axum::http::StatusCode;

use crate::common::refusal::{assert_refused, defaults, refused, Refusal};
use crate::common::{body_json, upload, upload_request, upload_settled, TestApp};

// ---------- archive builders ----------

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_add(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        if name.ends_with('/') {
            w.add_directory(*name, opts).unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

fn tar_gz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Two labels x `n` images each under `prefix` (e.g. `train/`).
fn labelled(prefix: &str, labels: &[&str], n: usize, size: u32) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (li, l) in labels.iter().enumerate() {
        for i in 0..n {
            v.push((
                format!("{prefix}{l}/{i}.png"),
                png(size + i as u32, size, (li * 50 + i) as u8),
            ));
        }
    }
    v
}

fn refs(v: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    v.iter().map(|(n, d)| (n.as_str(), d.clone())).collect()
}

// ---------- accepted ----------

#[tokio::test]
async fn zip_with_splits_in_a_wrapper_dir_is_stored() {
    let app = TestApp::new().await;
    let mut files = labelled("pets/train/", &["cat", "dog"], 4, 40);
    files.extend(labelled("pets/validation/", &["cat", "dog"], 2, 30));
    files.push(("pets/.DS_Store".into(), b"junk".to_vec()));
    files.push(("__MACOSX/pets/._x.png".into(), b"junk".to_vec()));
    files.push(("pets/README.txt".into(), b"hello".to_vec()));
    let (status, body) = upload_settled(&app, &zip(&refs(&files))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    let s = &body["summary"];
    assert_eq!(body["format"], "zip");
    assert_eq!(body["task"], "multi_class");
    assert_eq!(s["layout"], "splits");
    assert_eq!(s["labels"], serde_json::json!(["cat", "dog"]));
    assert_eq!(s["splits"]["train"]["images"], 8);
    assert_eq!(s["splits"]["validation"]["per_label"]["dog"], 2);
    assert_eq!(s["image_size"]["min_width"], 30);
    assert_eq!(s["image_size"]["max_width"], 43);
    assert_eq!(s["skipped"][0]["file"], "pets/README.txt");

    let id = body["id"].as_str().unwrap();
    let got = body_json(app.get(&format!("/datasets/{id}")).await).await;
    assert_eq!(got, body);
    let list = body_json(app.get("/datasets").await).await;
    assert_eq!(list["datasets"][0]["id"], id);

    let record = vitrine::datasets::record::get(&app.state.db, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let m = record.load_manifest(app.dir.path()).unwrap();
    assert_eq!(m.train.len(), 8);
    assert_eq!(m.validation.as_ref().unwrap().len(), 4);
    assert!(m.test.is_none());
    let dir = record.dir(app.dir.path());
    for s in &m.train {
        assert!(s.path.is_absolute() && s.path.starts_with(&dir) && s.path.is_file());
        assert_eq!(s.labels.len(), 1);
    }
    assert!(std::fs::read_dir(app.dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn tar_gz_label_dirs_without_splits_get_a_seeded_split() {
    let app = TestApp::new().await;
    let files = labelled("", &["ant", "bee", "wasp"], 5, 20);
    let (status, body) = upload_settled(&app, &tar_gz(&refs(&files))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["format"], "tar.gz");
    assert_eq!(body["summary"]["layout"], "labels");
    let record = vitrine::datasets::record::get(
        &app.state.db,
        body["id"].as_str().unwrap().parse().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let m = record.load_manifest(app.dir.path()).unwrap();
    assert!(m.validation.is_none());
    let a = m.clone().with_validation_split(0.2, 7);
    let b = m.clone().with_validation_split(0.2, 7);
    assert_eq!(a, b);
    assert_eq!(a.validation.as_ref().unwrap().len(), 3);
    assert_eq!(a.train.len(), 12);
}

#[tokio::test]
async fn metadata_csv_with_separator_is_multi_label() {
    let app = TestApp::new().await;
    let csv = "file_name,labels\nimages/a.png,cat|indoor\nimages/b.png,dog\nimages/c.png,dog|indoor\nimages/d.png,[]\n";
    let files = vec![
        ("metadata.csv", csv.as_bytes().to_vec()),
        ("images/a.png", png(10, 10, 1)),
        ("images/b.png", png(10, 12, 2)),
        ("images/c.png", png(12, 10, 3)),
        ("images/d.png", png(12, 12, 4)),
    ];
    let (status, body) = upload_settled(&app, &zip(&files)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["task"], "multi_label");
    assert_eq!(
        body["summary"]["labels"],
        serde_json::json!(["cat", "dog", "indoor"])
    );
    assert_eq!(body["summary"]["splits"]["train"]["per_label"]["indoor"], 2);
}

#[tokio::test]
async fn metadata_jsonl_single_labels_are_multi_class() {
    let app = TestApp::new().await;
    let jsonl = "{\"file_name\": \"a.png\", \"label\": \"cat\"}\n{\"file_name\": \"b.png\", \"label\": \"dog\"}\n";
    let files = vec![
        ("metadata.jsonl", jsonl.as_bytes().to_vec()),
        ("a.png", png(10, 10, 1)),
        ("b.png", png(10, 10, 2)),
    ];
    let (status, body) = upload_settled(&app, &tar_gz(&files)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["task"], "multi_class");
    assert_eq!(body["summary"]["layout"], "metadata");
}

#[tokio::test]
async fn the_same_archive_twice_is_stored_once() {
    let app = TestApp::new().await;
    let archive = zip(&refs(&labelled("train/", &["a", "b"], 2, 16)));
    let (s1, b1) = upload(&app, &archive).await;
    // While the first is validated, and once it is ready: the same record.
    let (s2, b2) = upload(&app, &archive).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(b1["id"], b2["id"]);
    let ready = crate::common::settle(&app, b1["id"].as_str().unwrap()).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let (s3, b3) = upload(&app, &archive).await;
    assert_eq!(s3, StatusCode::OK);
    assert_eq!(b3, ready);
    assert_eq!(
        std::fs::read_dir(app.dir.path().join("datasets"))
            .unwrap()
            .count(),
        1
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn undecodable_images_below_the_tolerance_are_skipped_and_listed() {
    let app = TestApp::with_config(|c| c.max_undecodable_fraction = 0.2).await;
    let mut files = labelled("", &["a", "b"], 5, 16);
    files.push((
        "a/broken.jpg".into(),
        b"\xff\xd8\xff\xe0 not really a jpeg".to_vec(),
    ));
    let (status, body) = upload_settled(&app, &zip(&refs(&files))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["summary"]["images"], 10);
    let skipped = body["summary"]["skipped"].to_string();
    assert!(
        skipped.contains("a/broken.jpg") && skipped.contains("undecodable"),
        "{skipped}"
    );
}

// ---------- refused ----------

/// A tar.gz with one image and a link of `kind` to `/etc/passwd`.
fn tar_gz_with_link(kind: tar::EntryType) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let data = png(4, 4, 0);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "train/a/1.png", data.as_slice())
        .unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(kind);
    l.set_size(0);
    b.append_link(&mut l, "train/b/link.png", "/etc/passwd")
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// 1 GiB of zeros in one entry: about 1 MiB deflated.
fn zip_bomb() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9))
        .large_file(true);
    w.start_file("train/a/zeros.png", opts).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        w.write_all(&block).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A zip whose headers claim 1 KiB for a 128 MiB entry.
fn zip_with_lying_sizes() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("train/a/zeros.png", opts).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..128 {
        w.write_all(&block).unwrap();
    }
    let mut bytes = w.finish().unwrap().into_inner();
    // Patch the uncompressed size in the local header (offset 22) and in the
    // central directory entry (offset 24 after its signature).
    let lie = 1024u32.to_le_bytes();
    bytes[22..26].copy_from_slice(&lie);
    let cd = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&lie);
    bytes
}

fn two_labels_with(extra: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut files = labelled("train/", &["a", "b"], 2, 16);
    files.extend(extra.iter().map(|(n, d)| (n.to_string(), d.clone())));
    files
}

fn metadata_zip(csv: &str, images: &[&str]) -> Vec<u8> {
    let mut files = vec![("metadata.csv", csv.as_bytes().to_vec())];
    for (i, name) in images.iter().enumerate() {
        files.push((name, png(8, 8, i as u8 + 1)));
    }
    zip(&files)
}

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const TOO_LARGE: StatusCode = StatusCode::PAYLOAD_TOO_LARGE;
const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// Every kind of refusal, with its exact status and code.
const REFUSALS: &[Refusal] = &[
    Refusal {
        case: "text is not an archive",
        limits: defaults,
        archive: || b"just some text, not an archive".to_vec(),
        status: BAD_REQUEST,
        code: "not_an_archive",
        detail: &[],
    },
    Refusal {
        case: "an image is not an archive",
        limits: defaults,
        archive: || png(8, 8, 0),
        status: BAD_REQUEST,
        code: "not_an_archive",
        detail: &[],
    },
    Refusal {
        case: "half a zip",
        limits: defaults,
        archive: || {
            let z = zip(&refs(&labelled("train/", &["a", "b"], 3, 32)));
            z[..z.len() / 2].to_vec()
        },
        status: BAD_REQUEST,
        code: "truncated_archive",
        detail: &[],
    },
    Refusal {
        case: "half a tar.gz",
        limits: defaults,
        archive: || {
            let t = tar_gz(&refs(&labelled("train/", &["a", "b"], 3, 32)));
            t[..t.len() / 2].to_vec()
        },
        status: BAD_REQUEST,
        code: "truncated_archive",
        detail: &[],
    },
    Refusal {
        case: "zip slip",
        limits: defaults,
        archive: || zip(&refs(&two_labels_with(&[("../evil.png", png(4, 4, 0))]))),
        status: BAD_REQUEST,
        code: "unsafe_entry_path",
        detail: &["../evil.png"],
    },
    Refusal {
        case: "absolute path",
        limits: defaults,
        archive: || zip(&refs(&two_labels_with(&[("/tmp/abs.png", png(4, 4, 0))]))),
        status: BAD_REQUEST,
        code: "unsafe_entry_path",
        detail: &[],
    },
    Refusal {
        case: "tar symlink",
        limits: defaults,
        archive: || tar_gz_with_link(tar::EntryType::Symlink),
        status: BAD_REQUEST,
        code: "unsafe_entry_path",
        detail: &["train/b/link.png"],
    },
    Refusal {
        case: "tar hard link",
        limits: defaults,
        archive: || tar_gz_with_link(tar::EntryType::Link),
        status: BAD_REQUEST,
        code: "unsafe_entry_path",
        detail: &["train/b/link.png"],
    },
    Refusal {
        case: "too many zip entries",
        limits: |c| c.max_archive_entries = 5,
        archive: || zip(&refs(&labelled("", &["a", "b"], 4, 8))),
        status: TOO_LARGE,
        code: "too_many_entries",
        detail: &[],
    },
    Refusal {
        case: "too many tar.gz entries",
        limits: |c| c.max_archive_entries = 5,
        archive: || tar_gz(&refs(&labelled("", &["a", "b"], 4, 8))),
        status: TOO_LARGE,
        code: "too_many_entries",
        detail: &[],
    },
    Refusal {
        // The bytes actually decompressed are counted, not the headers.
        case: "zip with lying sizes",
        limits: |c| c.max_uncompressed_bytes = 16 << 20,
        archive: zip_with_lying_sizes,
        status: TOO_LARGE,
        code: "archive_too_large",
        detail: &[],
    },
    Refusal {
        case: "tar.gz bomb",
        limits: |c| c.max_uncompressed_bytes = 16 << 20,
        archive: || tar_gz(&[("train/a/zeros.png", vec![0u8; 64 << 20])]),
        status: TOO_LARGE,
        code: "archive_too_large",
        detail: &[],
    },
    Refusal {
        case: "upload over the limit",
        limits: |c| c.max_upload_bytes = 2000,
        archive: || zip(&refs(&labelled("", &["a", "b"], 4, 32))),
        status: TOO_LARGE,
        code: "payload_too_large",
        detail: &["2000"],
    },
    Refusal {
        case: "image file over --max-image-file-bytes (zip: its declared size)",
        limits: |c| c.max_image_file_bytes = 1000,
        archive: || {
            let mut files = labelled("", &["a", "b"], 2, 8);
            files.push(("b/big.png".into(), png(200, 120, 9)));
            zip(&refs(&files))
        },
        status: TOO_LARGE,
        code: "image_file_too_large",
        detail: &["b/big.png", "1000 bytes", "--max-image-file-bytes"],
    },
    Refusal {
        case: "image file over --max-image-file-bytes (tar.gz)",
        limits: |c| c.max_image_file_bytes = 1000,
        archive: || {
            let mut files = labelled("", &["a", "b"], 2, 8);
            files.push(("b/big.png".into(), png(200, 120, 9)));
            tar_gz(&refs(&files))
        },
        status: TOO_LARGE,
        code: "image_file_too_large",
        detail: &["b/big.png", "1000 bytes"],
    },
    Refusal {
        case: "image over the pixel limit",
        limits: |c| c.max_image_pixels = 100 * 100,
        archive: || {
            let mut files = labelled("", &["a", "b"], 2, 16);
            files.push(("b/huge.png".into(), png(200, 120, 9)));
            zip(&refs(&files))
        },
        status: TOO_LARGE,
        code: "image_too_large",
        detail: &["b/huge.png"],
    },
    Refusal {
        case: "one label",
        limits: defaults,
        archive: || zip(&refs(&labelled("train/", &["only"], 3, 8))),
        status: UNPROCESSABLE,
        code: "too_few_labels",
        detail: &[],
    },
    Refusal {
        case: "a label folder without images",
        limits: defaults,
        archive: || {
            let mut files = labelled("", &["a", "b"], 2, 8);
            files.push(("c/notes.txt".into(), b"no images here".to_vec()));
            zip(&refs(&files))
        },
        status: UNPROCESSABLE,
        code: "label_without_images",
        detail: &["c"],
    },
    Refusal {
        case: "a label only in validation",
        limits: defaults,
        archive: || {
            let mut files = labelled("train/", &["a", "b"], 2, 8);
            files.extend(labelled("val/", &["z"], 1, 8));
            zip(&refs(&files))
        },
        status: UNPROCESSABLE,
        code: "label_without_images",
        detail: &[],
    },
    Refusal {
        case: "an empty label in metadata.csv",
        limits: defaults,
        archive: || metadata_zip("file_name,label\na.png,cat\nb.png,\n", &["a.png", "b.png"]),
        status: UNPROCESSABLE,
        code: "empty_label",
        detail: &["line 3"],
    },
    Refusal {
        case: "metadata naming a missing file",
        limits: defaults,
        archive: || {
            metadata_zip(
                "file_name,label\na.png,cat\nb.png,dog\nghost.png,dog\n",
                &["a.png", "b.png"],
            )
        },
        status: UNPROCESSABLE,
        code: "missing_file",
        detail: &["ghost.png"],
    },
    Refusal {
        case: "undecodable images above the tolerance",
        limits: defaults,
        archive: || {
            let mut files = labelled("", &["a", "b"], 3, 16);
            files.push(("b/broken.png".into(), b"\x89PNG\r\n\x1a\n garbage".to_vec()));
            zip(&refs(&files))
        },
        status: UNPROCESSABLE,
        code: "undecodable_images",
        detail: &["b/broken.png"],
    },
];

#[tokio::test]
async fn every_refusal_has_its_status_code_and_detail_and_leaves_nothing_behind() {
    assert_refused(REFUSALS).await;
}

/// 1 GiB of zeros deflates to about 1 MiB; refused at the 64 MiB limit,
/// quickly, from the declared size.
#[tokio::test]
async fn zip_bomb_is_refused_quickly() {
    let app = TestApp::with_config(|c| c.max_uncompressed_bytes = 64 << 20).await;
    let bomb = zip_bomb();
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let t = Instant::now();
    let body = refused(&app, &bomb, TOO_LARGE, "archive_too_large")
        .await
        .unwrap();
    assert!(t.elapsed().as_secs() < 10);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("train/a/zeros.png"));
}

#[tokio::test]
async fn missing_dataset_part() {
    let app = TestApp::new().await;
    let resp = app.send(upload_request("other", b"x")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(resp).await["code"], "missing_dataset");
    assert_eq!(
        app.get("/datasets/0193a7c2-0000-7000-8000-000000000000")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// `GET /datasets` pages carry each dataset's counts, not its summary: a
/// dataset with thousands of skipped files (an upload can make its skip
/// list megabytes long) is a few hundred bytes in the list, and whole in
/// `GET /datasets/{id}`.
#[tokio::test]
async fn a_list_page_has_counts_not_skip_lists() {
    let app = TestApp::new().await;
    let mut files = labelled("train/", &["cat", "dog"], 2, 20);
    let long = "n".repeat(120);
    for i in 0..3000 {
        files.push((format!("train/cat/{long}-{i}.txt"), b"n".to_vec()));
    }
    let (status, body) = upload_settled(&app, &zip(&refs(&files))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    // The record lists the first 100 skipped files and counts them all.
    assert_eq!(body["summary"]["skipped"].as_array().unwrap().len(), 100);
    assert_eq!(body["summary"]["skipped_total"], 3000);
    let id = body["id"].as_str().unwrap();

    let one = crate::common::body_bytes(app.get(&format!("/datasets/{id}")).await).await;
    let page = crate::common::body_bytes(app.get("/datasets").await).await;
    println!(
        "GET /datasets/{{id}}: {} bytes; GET /datasets: {} bytes",
        one.len(),
        page.len()
    );
    assert!(one.len() > 10_000, "{}", one.len());
    assert!(page.len() < 2_000, "{}", String::from_utf8_lossy(&page));
    let page: serde_json::Value = serde_json::from_slice(&page).unwrap();
    let item = &page["datasets"][0];
    assert_eq!(item["id"], id);
    assert!(item.get("summary").is_none(), "{item}");
    let counts = &item["counts"];
    assert_eq!(counts["images"], 4, "{item}");
    assert_eq!(counts["labels"], 2, "{item}");
    assert_eq!(counts["skipped"], 3000, "{item}");
    assert_eq!(counts["splits"]["train"], 4, "{item}");
    assert_eq!(counts["layout"], "splits", "{item}");
    assert_eq!(item["task"], "multi_class", "{item}");
}

/// A dataset validated before counts were stored (its row has none) is
/// listed with counts computed from its summary.
#[tokio::test]
async fn a_list_page_counts_datasets_stored_before_counts() {
    let app = TestApp::new().await;
    let files = labelled("train/", &["cat", "dog"], 2, 20);
    let (_, body) = upload_settled(&app, &zip(&refs(&files))).await;
    let id = body["id"].as_str().unwrap();
    sqlx::query("UPDATE datasets SET counts = NULL WHERE id = $1")
        .bind(id)
        .execute(&app.state.db)
        .await
        .unwrap();
    let page = body_json(app.get("/datasets").await).await;
    let item = &page["datasets"][0];
    assert_eq!(item["counts"]["images"], 4, "{item}");
    assert_eq!(item["counts"]["labels"], 2, "{item}");
    assert!(item.get("summary").is_none(), "{item}");
}
