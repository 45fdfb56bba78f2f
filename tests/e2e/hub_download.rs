//! The Hugging Face Hub path, against a local server that speaks the Hub's
//! file protocol as `hf-hub` uses it (`/{repo}/resolve/{revision}/{file}`,
//! `Range` requests, `ETag` and `X-Repo-Commit` headers, 404 for missing
//! files): a model id is downloaded into the HF cache layout (single-file and
//! sharded weights), found there again offline, and checked at submission
//! (a misspelt id or an unsupported architecture is a 422 at once; an
//! unreachable Hub queues the job and the worker reports the failure).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::e2e::{fixtures, get_json, submit, submit_and_wait};
use crate::common::process::{free_port, ServerProcess};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tch::Device;
use tokio_util::sync::CancellationToken;
use vitrine::model::{load_pretrained, resolve_model_source, HubOptions};

const COMMIT: &str = "4c1d0a2b3e4f5061728394a5b6c7d8e9f0a1b2c3";

#[derive(Clone, Default)]
struct Hub {
    /// repo id -> directory served as its `main` revision.
    repos: Arc<HashMap<String, PathBuf>>,
    /// Every file asked for, as `repo/file`.
    asked: Arc<Mutex<Vec<String>>>,
}

/// A fake Hub on a local port; stops when dropped.
struct FakeHub {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeHub {
    async fn start(repos: &[(&str, &Path)]) -> Self {
        let hub = Hub {
            repos: Arc::new(
                repos
                    .iter()
                    .map(|(id, dir)| (id.to_string(), dir.to_path_buf()))
                    .collect(),
            ),
            asked: Arc::default(),
        };
        let asked = hub.asked.clone();
        let app = Router::new()
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .with_state(hub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        FakeHub { url, asked, stop }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// One file of a repository, honouring `Range: bytes=a-` / `bytes=a-b` as
/// the Hub's CDN does.
async fn resolve(
    State(hub): State<Hub>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{org}/{name}");
    hub.asked.lock().unwrap().push(format!("{repo}/{file}"));
    let Some(dir) = hub.repos.get(&repo).filter(|_| rev == "main") else {
        return (
            StatusCode::NOT_FOUND,
            [("x-error-code", "RepoNotFound")],
            "Repository not found",
        )
            .into_response();
    };
    let Ok(bytes) = std::fs::read(dir.join(&file)) else {
        return (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            "Entry not found",
        )
            .into_response();
    };
    let etag = format!(
        "\"{:016x}\"",
        bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
    );
    let size = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap();
            let end = b.parse::<usize>().map_or(size - 1, |e| e.min(size - 1));
            (start, end)
        });
    let common = [
        (header::ETAG, etag),
        (
            header::HeaderName::from_static("x-repo-commit"),
            COMMIT.to_string(),
        ),
    ];
    match range {
        Some((start, end)) if start < size => (
            StatusCode::PARTIAL_CONTENT,
            common,
            [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))],
            bytes[start..=end].to_vec(),
        )
            .into_response(),
        Some(_) => (
            StatusCode::PARTIAL_CONTENT,
            common,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            Vec::new(),
        )
            .into_response(),
        None => (StatusCode::OK, common, bytes).into_response(),
    }
}

fn options(cache: &Path, endpoint: &str, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        offline,
        endpoint: Some(endpoint.to_string()),
        token: None,
    }
}

/// `base`'s model with its weights split over two safetensors shards and an
/// index, as `save_pretrained(max_shard_size=...)` writes them.
fn sharded_copy(base: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(base.join(f), out.join(f)).unwrap();
    }
    let bytes = std::fs::read(base.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = tensors.names();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part
            .iter()
            .map(|n| (n.to_string(), tensors.tensor(n).unwrap()))
            .collect();
        std::fs::write(
            out.join(&file),
            safetensors::serialize(views, &None).unwrap(),
        )
        .unwrap();
        for n in part.iter() {
            weight_map.insert(n.to_string(), json!(file));
        }
    }
    std::fs::write(
        out.join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": bytes.len()}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_id_is_downloaded_into_the_hf_cache_and_then_found_offline() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    sharded_copy(&fx.base_model, &sharded);
    let hub = FakeHub::start(&[("org/tiny-vit", &fx.base_model), ("org/sharded", &sharded)]).await;
    let cache = tmp.path().join("cache");

    for (id, source) in [("org/tiny-vit", &fx.base_model), ("org/sharded", &sharded)] {
        let online = options(&cache, &hub.url, false);
        let id_ = id.to_string();
        let dir = tokio::task::spawn_blocking(move || resolve_model_source(&id_, &online))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let folder = format!("models--{}", id.replace('/', "--"));
        assert_eq!(
            dir,
            cache.join(&folder).join("snapshots").join(COMMIT),
            "the huggingface_hub cache layout"
        );
        assert_eq!(
            std::fs::read_to_string(cache.join(&folder).join("refs/main")).unwrap(),
            COMMIT
        );
        // Every file arrived whole (the weights in Range-resumable pieces).
        for entry in std::fs::read_dir(source).unwrap() {
            let name = entry.unwrap().file_name();
            assert_eq!(
                std::fs::read(dir.join(&name)).unwrap(),
                std::fs::read(source.join(&name)).unwrap(),
                "{id}: {name:?}"
            );
        }
        let model = load_pretrained(&dir, Device::Cpu, None).unwrap();
        let reference = load_pretrained(&fx.base_model, Device::Cpu, None).unwrap();
        let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
        let diff = (model.net.forward_t(&x, false) - reference.net.forward_t(&x, false))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "{id}: {diff}");
    }
    let asked = hub.asked();
    for file in [
        "org/tiny-vit/config.json",
        "org/tiny-vit/model.safetensors",
        "org/sharded/model.safetensors.index.json",
        "org/sharded/model-00001-of-00002.safetensors",
        "org/sharded/model-00002-of-00002.safetensors",
    ] {
        assert!(
            asked.iter().any(|a| a == file),
            "{file} not fetched: {asked:?}"
        );
    }

    // The Hub gone and the network forbidden: the cache answers.
    let endpoint = hub.url.clone();
    drop(hub);
    for id in ["org/tiny-vit", "org/sharded"] {
        let offline = options(&cache, &endpoint, true);
        let got = resolve_model_source(id, &offline).unwrap();
        assert!(got.ends_with(COMMIT), "{got:?}");
    }
    let err = resolve_model_source("org/never-fetched", &options(&cache, &endpoint, true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_checks_the_hub_id_before_queueing() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let swinv2 = tmp.path().join("swinv2");
    std::fs::create_dir_all(&swinv2).unwrap();
    std::fs::write(
        swinv2.join("config.json"),
        json!({"model_type": "swinv2", "architectures": ["Swinv2ForImageClassification"]})
            .to_string(),
    )
    .unwrap();
    // A supported family beside ViT: a tiny random ResNet made by transformers.
    let resnet = tmp.path().join("resnet");
    crate::common::run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/random_backbone.py"),
        &["resnet", resnet.to_str().unwrap()],
        tmp.path(),
    );
    let hub = FakeHub::start(&[
        ("org/tiny-vit", &fx.base_model),
        ("org/swinv2", &swinv2),
        ("org/resnet", &resnet),
    ])
    .await;
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let cache_env = cache.to_str().unwrap();
    let server = ServerProcess::start_with(
        &data,
        free_port(),
        &[],
        &[("HF_ENDPOINT", &hub.url), ("HF_HUB_CACHE", cache_env)],
    )
    .await;
    let cfg = |base: &str| json!({"base_model": base, "mode": "linear_probe", "epochs": 1});

    // Misspelt id and a revision that does not exist: 422 naming the 404.
    for base in ["org/tiny-vt", "org/tiny-vit@v9"] {
        let resp = submit(&server.url, &fx.tints_zip, cfg(base), None).await;
        assert_eq!(resp.status(), 422, "{base}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "unknown_base_model", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(base.split('@').next().unwrap()) && detail.contains("404"),
            "{detail}"
        );
    }
    // An architecture vitrine does not train: refused before any weights move.
    let resp = submit(&server.url, &fx.tints_zip, cfg("org/swinv2"), None).await;
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("swinv2"),
        "{problem}"
    );
    assert!(!hub
        .asked()
        .iter()
        .any(|a| a.starts_with("org/swinv2/model")));

    // Real ids: only the config at submission, the weights by the worker.
    for id in ["org/tiny-vit", "org/resnet"] {
        let job = submit_and_wait(
            &server.url,
            &fx.tints_zip,
            cfg(id),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let model = get_json(
            &server.url,
            &format!("/models/{}", job["model_id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(model["base_model"], id, "{model}");
        assert!(hub
            .asked()
            .iter()
            .any(|a| *a == format!("{id}/model.safetensors")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_queues_the_job_and_the_worker_reports() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let cache = tmp.path().join("cache");
    let server = ServerProcess::start_with(
        &tmp.path().join("data"),
        free_port(),
        &[],
        &[
            ("HF_ENDPOINT", &nobody),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ],
    )
    .await;
    let cfg = json!({"base_model": "org/tiny-vit", "mode": "linear_probe", "epochs": 1});
    let job = submit_and_wait(&server.url, &fx.tints_zip, cfg, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].to_string();
    assert!(
        error.contains("org/tiny-vit") && error.contains("download"),
        "{error}"
    );
}
