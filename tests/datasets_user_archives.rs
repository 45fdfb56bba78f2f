//! `POST /datasets` with the archives users actually make: other tar
//! compressions, one folder per class with one class, empty folders, loose
//! images, clashing entries, metadata files from spreadsheets and pandas,
//! macOS (NFD) names, TIFF and truncated images. Each case once went wrong
//! (a 500, a misleading code, or silently wrong labels).

mod common;

use std::io::{Cursor, Write};

use axum::http::StatusCode;
use common::{upload, TestApp};
use serde_json::{json, Value};

fn encode(w: u32, h: u32, seed: u8, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(7).wrapping_add(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png(seed: u8) -> Vec<u8> {
    encode(12, 10, seed, image::ImageFormat::Png)
}

type Entries = Vec<(String, Vec<u8>)>;

/// `n` images under each `<prefix><label>/`.
fn labelled(prefix: &str, labels: &[&str], n: usize) -> Entries {
    let mut v = Vec::new();
    for (li, l) in labels.iter().enumerate() {
        for i in 0..n {
            v.push((format!("{prefix}{l}/{i}.png"), png((li * 40 + i) as u8)));
        }
    }
    v
}

/// A zip; names may repeat (the `zip` crate refuses, so entries are
/// written raw: stored, with a central directory).
fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = {
            let mut c = flate2::Crc::new();
            c.update(data);
            c.sum()
        };
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u32.to_le_bytes()); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
                h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(fields(0x04034b50, false));
        out.extend_from_slice(data);
        central.extend(fields(0x02014b50, true));
    }
    let (cd_offset, cd_len, n) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend(central);
    out.extend_from_slice(&0x06054b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn tar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
        }
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

async fn stored(app: &TestApp, bytes: &[u8]) -> Value {
    let (status, body) = upload(app, bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Refused with `status` and `code`, leaving no file and no row behind;
/// returns the detail.
async fn refused(app: &TestApp, bytes: &[u8], status: StatusCode, code: &str) -> String {
    let (got, body) = upload(app, bytes).await;
    assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    for sub in ["tmp", "datasets"] {
        let dir = app.dir.path().join(sub);
        if dir.exists() {
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            assert!(left.is_empty(), "{sub}/ not empty: {left:?}");
        }
    }
    body["detail"].as_str().unwrap().to_string()
}

fn with(mut a: Entries, b: impl IntoIterator<Item = (&'static str, Vec<u8>)>) -> Entries {
    a.extend(b.into_iter().map(|(n, d)| (n.to_string(), d)));
    a
}

#[tokio::test]
async fn plain_tar_and_tar_bz2_are_accepted() {
    let app = TestApp::new().await;
    let files = labelled("photos/", &["cat", "dog"], 2);
    let plain = tar(&files);
    let body = stored(&app, &plain).await;
    assert_eq!(body["format"], "tar");
    assert_eq!(body["summary"]["labels"], json!(["cat", "dog"]));
    assert_eq!(body["summary"]["images"], 4);

    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&tar(&labelled("", &["ant", "bee"], 2)))
        .unwrap();
    let body = stored(&app, &bz.finish().unwrap()).await;
    assert_eq!(body["format"], "tar.bz2");
    assert_eq!(body["summary"]["labels"], json!(["ant", "bee"]));

    // Cut short: truncated, not a 500 and not "not an archive".
    let app = TestApp::new().await;
    refused(
        &app,
        &plain[..plain.len() / 2],
        StatusCode::BAD_REQUEST,
        "truncated_archive",
    )
    .await;
}

#[tokio::test]
async fn other_formats_are_named_and_compressed_single_files_are_not_archives() {
    let app = TestApp::new().await;
    for (magic, what) in [
        (&b"\xfd7zXZ\x00\x00\x04"[..], "xz"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "7z"),
        (b"Rar!\x1a\x07\x01\x00", "RAR"),
    ] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[0; 600]);
        let detail = refused(&app, &bytes, StatusCode::BAD_REQUEST, "unsupported_archive").await;
        assert!(detail.contains(what) && detail.contains("zip"), "{detail}");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b"one big text file\n".repeat(100)).unwrap();
    let detail = refused(
        &app,
        &gz.finish().unwrap(),
        StatusCode::BAD_REQUEST,
        "not_an_archive",
    )
    .await;
    assert!(detail.contains("gzip data does not hold a tar"), "{detail}");
}

#[tokio::test]
async fn clashing_entries_are_refused_not_overwritten() {
    let app = TestApp::new().await;
    let files = labelled("", &["cat", "dog"], 2);
    // The same name twice: the second would silently replace the first.
    let twice = with(files.clone(), [("cat/0.png", png(200))]);
    let detail = refused(
        &app,
        &zip(&twice),
        StatusCode::BAD_REQUEST,
        "duplicate_entry",
    )
    .await;
    assert!(
        detail.contains("5 entries but only 4 distinct names"),
        "{detail}"
    );
    let detail = refused(
        &app,
        &tar(&twice),
        StatusCode::BAD_REQUEST,
        "duplicate_entry",
    )
    .await;
    assert!(detail.contains("`cat/0.png`"), "{detail}");
    // A file, then a directory of the same name (was a 500).
    let clash = with(
        files.clone(),
        [("cat/x", b"data".to_vec()), ("cat/x/y.png", png(201))],
    );
    for bytes in [zip(&clash), tar(&clash)] {
        let detail = refused(&app, &bytes, StatusCode::BAD_REQUEST, "duplicate_entry").await;
        assert!(detail.contains("`cat/x/y.png`"), "{detail}");
    }
    // A directory, then a file of that name.
    let clash = with(files, [("cat/sub/", vec![]), ("cat/sub", png(202))]);
    refused(
        &app,
        &tar(&clash),
        StatusCode::BAD_REQUEST,
        "duplicate_entry",
    )
    .await;
}

#[tokio::test]
async fn one_class_folder_is_too_few_labels_and_loose_images_say_how_to_label() {
    let app = TestApp::new().await;
    // Zipping the one folder of a single class (was "no usable images").
    for prefix in ["", "my photos/"] {
        let detail = refused(
            &app,
            &zip(&labelled(prefix, &["cat"], 3)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_few_labels",
        )
        .await;
        assert!(detail.contains("found 1 (cat)"), "{detail}");
    }
    let loose: Entries = (0..3).map(|i| (format!("{i}.jpg"), png(i))).collect();
    let detail = refused(
        &app,
        &zip(&loose),
        StatusCode::UNPROCESSABLE_ENTITY,
        "no_labels",
    )
    .await;
    assert!(
        detail.contains("3 image(s)") && detail.contains("metadata.csv"),
        "{detail}"
    );
}

#[tokio::test]
async fn empty_class_folders_are_skipped_and_listed() {
    let app = TestApp::new().await;
    let files = with(
        labelled("", &["cat", "dog"], 2),
        [
            ("bird/", vec![]),
            ("fish/deep/", vec![]),
            ("cat/Thumbs.db", b"x".to_vec()),
            ("dog/desktop.ini", b"[x]".to_vec()),
        ],
    );
    let body = stored(&app, &zip(&files)).await;
    let s = &body["summary"];
    assert_eq!(s["labels"], json!(["cat", "dog"]));
    let skipped: Vec<&str> = s["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["file"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["bird", "fish"]);

    // A folder with files but no images is still a mistake worth refusing.
    let app = TestApp::new().await;
    let files = with(
        labelled("", &["cat", "dog"], 2),
        [("bird/scan.heic", b"....".to_vec())],
    );
    let detail = refused(
        &app,
        &zip(&files),
        StatusCode::UNPROCESSABLE_ENTITY,
        "label_without_images",
    )
    .await;
    assert!(detail.contains("bird/scan.heic"), "{detail}");
}

#[tokio::test]
async fn metadata_as_spreadsheets_and_pandas_write_it() {
    let app = TestApp::new().await;
    let images = || -> Entries { (0..4).map(|i| (format!("img/{i}.png"), png(i))).collect() };

    // JSON Lines with a byte order mark and CRLF (was "not a JSON object").
    let jsonl = "\u{feff}{\"file_name\": \"img/0.png\", \"label\": \"cat\"}\r\n{\"file_name\": \"img/1.png\", \"label\": \"dog\"}\r\n{\"file_name\": \"img/2.png\", \"label\": \"cat\"}\r\n{\"file_name\": \"img/3.png\", \"label\": \"dog\"}\r\n";
    let body = stored(
        &app,
        &zip(&with(images(), [("metadata.jsonl", jsonl.into())])),
    )
    .await;
    assert_eq!(body["summary"]["labels"], json!(["cat", "dog"]));

    // Windows names and headers: `Metadata.CSV`, `File_Name,Label`.
    let csv =
        "File_Name,Label,Source\nimg/0.png,a,x\nimg/1.png,b,x\nimg/2.png,a,x\nimg/3.png,b,y\n";
    let body = stored(&app, &zip(&with(images(), [("Metadata.CSV", csv.into())]))).await;
    assert_eq!(body["summary"]["layout"], "metadata");
    assert_eq!(body["summary"]["labels"], json!(["a", "b"]));

    // pandas' `to_csv` of a list column (was refused as "not JSON").
    let csv = "file_name,labels\nimg/0.png,\"['cat', 'indoor']\"\nimg/1.png,['dog']\nimg/2.png,\"['cat']\"\nimg/3.png,\"['dog', 'indoor']\"\n";
    let body = stored(&app, &zip(&with(images(), [("metadata.csv", csv.into())]))).await;
    assert_eq!(body["task"], "multi_label");
    assert_eq!(body["summary"]["labels"], json!(["cat", "dog", "indoor"]));
    assert_eq!(body["summary"]["splits"]["train"]["per_label"]["indoor"], 2);

    // `;` as a separator is one label each: stored, with a warning.
    let csv =
        "file_name,labels\nimg/0.png,cat;indoor\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,dog\n";
    let body = stored(&app, &zip(&with(images(), [("metadata.csv", csv.into())]))).await;
    let warnings = body["summary"]["warnings"].to_string();
    assert!(
        warnings.contains("`cat;indoor`") && warnings.contains("`|`"),
        "{warnings}"
    );
}

#[tokio::test]
async fn metadata_mistakes_are_named() {
    let app = TestApp::new().await;
    let images = || -> Entries {
        (0..4)
            .map(|i| (format!("img/{i}.png"), png(i + 10)))
            .collect()
    };
    // One file, two labels on two rows: was silently the first.
    let csv = "file_name,label\nimg/0.png,cat\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,dog\nimg/0.png,dog\nimg/1.png,dog\n";
    let detail = refused(
        &app,
        &zip(&with(images(), [("metadata.csv", csv.into())])),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_metadata",
    )
    .await;
    assert!(
        detail.contains("`img/0.png`: line 2 of metadata.csv says [\"cat\"], line 6 of metadata.csv says [\"dog\"]"),
        "{detail}"
    );
    assert!(!detail.contains("img/1.png"), "{detail}");

    // File names without their folder, or in another case: point at the file.
    let csv = "file_name,label\n0.png,cat\nimg/1.png,dog\nimg/2.PNG,cat\nimg/3.png,dog\n";
    let detail = refused(
        &app,
        &zip(&with(images(), [("metadata.csv", csv.into())])),
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_file",
    )
    .await;
    assert!(
        detail.contains("`0.png` (line 2 of metadata.csv): the archive has `img/0.png`")
            && detail.contains("`img/2.PNG` (line 4 of metadata.csv): the archive has `img/2.png`"),
        "{detail}"
    );

    // Latin-1 from an old spreadsheet.
    let mut csv = b"file_name,label\nimg/0.png,caf".to_vec();
    csv.extend_from_slice(b"\xe9\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,dog\n");
    let detail = refused(
        &app,
        &zip(&with(images(), [("metadata.csv", csv)])),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_metadata",
    )
    .await;
    assert!(detail.contains("line 2 is not UTF-8"), "{detail}");
}

#[tokio::test]
async fn macos_nfd_names_and_typed_nfc_names_are_one_label() {
    let app = TestApp::new().await;
    let nfd = "cafe\u{301}";
    let mut files = labelled("train/", &[nfd, "dog"], 2);
    files.extend(labelled("validation/", &["caf\u{e9}", "dog"], 1));
    let body = stored(&app, &zip(&files)).await;
    assert_eq!(body["summary"]["labels"], json!(["caf\u{e9}", "dog"]));
    assert_eq!(
        body["summary"]["splits"]["validation"]["per_label"]["caf\u{e9}"],
        1
    );

    // Metadata typed as NFC naming files a Mac stored as NFD.
    let files = vec![
        (format!("{nfd}/a.png"), png(1)),
        (format!("{nfd}/b.png"), png(2)),
        (
            "metadata.csv".to_string(),
            "file_name,label\ncaf\u{e9}/a.png,x\ncaf\u{e9}/b.png,y\n".into(),
        ),
    ];
    let body = stored(&app, &zip(&files)).await;
    assert_eq!(body["summary"]["labels"], json!(["x", "y"]));
}

#[tokio::test]
async fn tiff_and_any_case_extensions_are_images() {
    let app = TestApp::new().await;
    let files = vec![
        (
            "scans/a/1.TIF".to_string(),
            encode(9, 7, 1, image::ImageFormat::Tiff),
        ),
        (
            "scans/a/2.tiff".to_string(),
            encode(9, 7, 2, image::ImageFormat::Tiff),
        ),
        (
            "scans/b/3.JPG".to_string(),
            encode(9, 7, 3, image::ImageFormat::Jpeg),
        ),
        (
            "scans/b/4.Jpeg".to_string(),
            encode(9, 7, 4, image::ImageFormat::Jpeg),
        ),
        ("scans/b/5.PNG".to_string(), png(5)),
    ];
    let body = stored(&app, &zip(&files)).await;
    let s = &body["summary"];
    assert_eq!(s["images"], 5, "{s}");
    assert_eq!(s["splits"]["train"]["per_label"], json!({"a": 2, "b": 3}));
    assert_eq!(s["skipped"], json!([]));
}

#[tokio::test]
async fn a_truncated_jpeg_is_undecodable_not_half_grey() {
    let app = TestApp::new().await;
    let jpeg = encode(64, 48, 9, image::ImageFormat::Jpeg);
    let files = with(
        labelled("", &["cat", "dog"], 3),
        [("cat/cut.jpg", jpeg[..jpeg.len() * 2 / 3].to_vec())],
    );
    let detail = refused(
        &app,
        &zip(&files),
        StatusCode::UNPROCESSABLE_ENTITY,
        "undecodable_images",
    )
    .await;
    assert!(
        detail.contains("cat/cut.jpg") && detail.contains("truncated JPEG"),
        "{detail}"
    );
    // Below the tolerance it is skipped and listed instead.
    let lenient = TestApp::with_config(|c| c.max_undecodable_fraction = 0.5).await;
    let body = stored(&lenient, &zip(&files)).await;
    assert_eq!(body["summary"]["images"], 6);
    assert_eq!(body["summary"]["skipped"][0]["file"], "cat/cut.jpg");
}
