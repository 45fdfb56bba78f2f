//! `POST /datasets` with the archives users actually make: other tar
//! compressions, one folder per class with one class, empty folders, loose
//! images, clashing entries, metadata files from spreadsheets and pandas,
//! macOS (NFD) names, TIFF and truncated images. Each case once went wrong
//! (a 500, a misleading code, or silently wrong labels).

use std::io::{Cursor, Write};

use axum::http::StatusCode;

use crate::common::refusal::{assert_refused, defaults, Refusal};
use crate::common::{upload_settled, TestApp};
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
    let (status, body) = upload_settled(app, bytes).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    body
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

/// Below the tolerance a truncated JPEG is skipped and listed (above it,
/// it is refused: see [`REFUSALS`]).
#[tokio::test]
async fn a_truncated_jpeg_below_the_tolerance_is_skipped_and_listed() {
    let lenient = TestApp::with_config(|c| c.max_undecodable_fraction = 0.5).await;
    let body = stored(&lenient, &zip(&with_cut_jpeg())).await;
    assert_eq!(body["summary"]["images"], 6);
    assert_eq!(body["summary"]["skipped"][0]["file"], "cat/cut.jpg");
}

// ---------- refused ----------

/// Two images of two classes, with a third of `cat` cut after two thirds.
fn with_cut_jpeg() -> Entries {
    let jpeg = encode(64, 48, 9, image::ImageFormat::Jpeg);
    with(
        labelled("", &["cat", "dog"], 3),
        [("cat/cut.jpg", jpeg[..jpeg.len() * 2 / 3].to_vec())],
    )
}

/// An archive format vitrine does not read: its magic bytes, then zeros.
fn magic(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.extend_from_slice(&[0; 600]);
    out
}

/// Two classes of two images, where `cat/0.png` appears twice.
fn cat_0_twice() -> Entries {
    with(labelled("", &["cat", "dog"], 2), [("cat/0.png", png(200))])
}

/// A file `cat/x`, then `cat/x/y.png` under it.
fn file_then_dir() -> Entries {
    with(
        labelled("", &["cat", "dog"], 2),
        [("cat/x", b"data".to_vec()), ("cat/x/y.png", png(201))],
    )
}

/// Four images under `img/` and a `metadata.csv`.
fn with_metadata(csv: impl Into<Vec<u8>>) -> Vec<u8> {
    let images = (0..4).map(|i| (format!("img/{i}.png"), png(i + 10)));
    zip(&with(images.collect(), [("metadata.csv", csv.into())]))
}

/// `img/0.png` labelled `cat` on line 2 and `dog` on line 6; `img/1.png`
/// labelled `dog` twice.
const TWO_LABELS_FOR_ONE_FILE: &str = "file_name,label\nimg/0.png,cat\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,dog\nimg/0.png,dog\nimg/1.png,dog\n";

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// Each of these once went wrong: a 500, a misleading code, or silently
/// wrong labels.
const REFUSALS: &[Refusal] = &[
    Refusal {
        // Not a 500 and not "not an archive".
        case: "half a plain tar",
        limits: defaults,
        archive: || {
            let plain = tar(&labelled("photos/", &["cat", "dog"], 2));
            plain[..plain.len() / 2].to_vec()
        },
        status: BAD_REQUEST,
        code: "truncated_archive",
        detail: &[],
    },
    Refusal {
        case: "xz",
        limits: defaults,
        archive: || magic(b"\xfd7zXZ\x00\x00\x04"),
        status: BAD_REQUEST,
        code: "unsupported_archive",
        detail: &["xz", "zip"],
    },
    Refusal {
        case: "7z",
        limits: defaults,
        archive: || magic(b"7z\xbc\xaf\x27\x1c\x00\x04"),
        status: BAD_REQUEST,
        code: "unsupported_archive",
        detail: &["7z", "zip"],
    },
    Refusal {
        case: "RAR",
        limits: defaults,
        archive: || magic(b"Rar!\x1a\x07\x01\x00"),
        status: BAD_REQUEST,
        code: "unsupported_archive",
        detail: &["RAR", "zip"],
    },
    Refusal {
        case: "one gzipped file",
        limits: defaults,
        archive: || {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&b"one big text file\n".repeat(100)).unwrap();
            gz.finish().unwrap()
        },
        status: BAD_REQUEST,
        code: "not_an_archive",
        detail: &["gzip data does not hold a tar"],
    },
    Refusal {
        // The second would silently replace the first.
        case: "the same name twice in a zip",
        limits: defaults,
        archive: || zip(&cat_0_twice()),
        status: BAD_REQUEST,
        code: "duplicate_entry",
        detail: &["5 entries but only 4 distinct names"],
    },
    Refusal {
        case: "the same name twice in a tar",
        limits: defaults,
        archive: || tar(&cat_0_twice()),
        status: BAD_REQUEST,
        code: "duplicate_entry",
        detail: &["`cat/0.png`"],
    },
    Refusal {
        // Was a 500.
        case: "a file, then a directory of that name, in a zip",
        limits: defaults,
        archive: || zip(&file_then_dir()),
        status: BAD_REQUEST,
        code: "duplicate_entry",
        detail: &["`cat/x/y.png`"],
    },
    Refusal {
        case: "a file, then a directory of that name, in a tar",
        limits: defaults,
        archive: || tar(&file_then_dir()),
        status: BAD_REQUEST,
        code: "duplicate_entry",
        detail: &["`cat/x/y.png`"],
    },
    Refusal {
        case: "a directory, then a file of that name, in a tar",
        limits: defaults,
        archive: || {
            let entries = [("cat/sub/", vec![]), ("cat/sub", png(202))];
            tar(&with(labelled("", &["cat", "dog"], 2), entries))
        },
        status: BAD_REQUEST,
        code: "duplicate_entry",
        detail: &[],
    },
    Refusal {
        // Zipping the one folder of a single class (was "no usable images").
        case: "one class folder",
        limits: defaults,
        archive: || zip(&labelled("", &["cat"], 3)),
        status: UNPROCESSABLE,
        code: "too_few_labels",
        detail: &["found 1 (cat)"],
    },
    Refusal {
        case: "one class folder in a wrapper folder",
        limits: defaults,
        archive: || zip(&labelled("my photos/", &["cat"], 3)),
        status: UNPROCESSABLE,
        code: "too_few_labels",
        detail: &["found 1 (cat)"],
    },
    Refusal {
        case: "loose images say how to label them",
        limits: defaults,
        archive: || zip(&(0..3).map(|i| (format!("{i}.jpg"), png(i))).collect::<Vec<_>>()),
        status: UNPROCESSABLE,
        code: "no_labels",
        detail: &["3 image(s)", "metadata.csv"],
    },
    Refusal {
        // Empty folders are skipped, but files and no images is a mistake.
        case: "a class folder with files but no images",
        limits: defaults,
        archive: || {
            let heic = [("bird/scan.heic", b"....".to_vec())];
            zip(&with(labelled("", &["cat", "dog"], 2), heic))
        },
        status: UNPROCESSABLE,
        code: "label_without_images",
        detail: &["bird/scan.heic"],
    },
    Refusal {
        // Was silently the first.
        case: "one file, two labels on two rows",
        limits: defaults,
        archive: || with_metadata(TWO_LABELS_FOR_ONE_FILE),
        status: UNPROCESSABLE,
        code: "invalid_metadata",
        detail: &["`img/0.png`: line 2 of metadata.csv says [\"cat\"], line 6 of metadata.csv says [\"dog\"]"],
    },
    Refusal {
        // Point at the file the row must have meant.
        case: "file names without their folder, or in another case",
        limits: defaults,
        archive: || {
            with_metadata("file_name,label\n0.png,cat\nimg/1.png,dog\nimg/2.PNG,cat\nimg/3.png,dog\n")
        },
        status: UNPROCESSABLE,
        code: "missing_file",
        detail: &[
            "`0.png` (line 2 of metadata.csv): the archive has `img/0.png`",
            "`img/2.PNG` (line 4 of metadata.csv): the archive has `img/2.png`",
        ],
    },
    Refusal {
        case: "Latin-1 metadata from an old spreadsheet",
        limits: defaults,
        archive: || {
            let mut csv = b"file_name,label\nimg/0.png,caf".to_vec();
            csv.extend_from_slice(b"\xe9\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,dog\n");
            with_metadata(csv)
        },
        status: UNPROCESSABLE,
        code: "invalid_metadata",
        detail: &["line 2 is not UTF-8"],
    },
    Refusal {
        // Not decoded as half grey.
        case: "a truncated JPEG above the tolerance",
        limits: defaults,
        archive: || zip(&with_cut_jpeg()),
        status: UNPROCESSABLE,
        code: "undecodable_images",
        detail: &["cat/cut.jpg", "truncated JPEG"],
    },
];

#[tokio::test]
async fn every_refusal_names_what_to_fix_and_leaves_nothing_behind() {
    assert_refused(REFUSALS).await;
}

/// Only the file whose rows disagree is named, not one labelled the same
/// twice.
#[tokio::test]
async fn rows_that_agree_are_not_a_conflict() {
    let case = REFUSALS
        .iter()
        .find(|r| r.case == "one file, two labels on two rows")
        .unwrap();
    let body = case.check().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains("img/1.png"), "{detail}");
}
