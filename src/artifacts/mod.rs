//! Artefact storage shared by every node: uploads waiting for validation,
//! validated datasets, per-epoch checkpoints, trained models and feature
//! caches, behind one handle ([`Artifacts`]).
//!
//! Without `--artifacts` the handle is local: everything stays in the data
//! dir as it always has, and nothing is copied. With `s3://bucket/prefix`
//! (through `object_store`'s S3 client, configured by the AWS environment)
//! or `file:///path` (a shared mount), the data dir becomes a cache of the
//! store, under the same relative paths:
//!
//! | key | what | written | read |
//! |---|---|---|---|
//! | `uploads/<key>` (+ `.columns.json`) | an upload being validated | `POST /datasets` | a node resuming the validation |
//! | `datasets/<sha256>.tar` | the validated directory, one tar | validation succeeded | a worker, once, into `datasets/<sha256>/` |
//! | `jobs/<id>/epoch-<n>/{checkpoint,best}/…`, `jobs/<id>/latest.json` | checkpoints ([`JobSync`]) | each epoch end | a worker claiming the job |
//! | `jobs/<id>/features.safetensors` | a linear probe's feature cache | after computing | before recomputing |
//! | `models/<id>/…` | a trained model (HF layout) | before the job is recorded succeeded | an API node, on first use, into a bounded LRU cache |
//!
//! Every fetch lands aside and is renamed into place, and concurrent
//! fetches of one key on a node download it once.

pub mod cache;
mod checkpoints;
pub mod location;
pub mod retry;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use prometheus::{IntCounterVec, Opts};

pub use checkpoints::{JobSync, Pointer};
pub use location::Location;
pub use retry::Backoff;

use cache::{ModelCache, SingleFlight};
use transfer::key;

/// How the store is reached and how much of it a node keeps.
#[derive(Debug, Clone)]
pub struct ArtifactOptions {
    /// `s3://bucket/prefix`, `file:///path`, or `None`: the data dir only.
    pub url: Option<String>,
    /// Most bytes of model directories fetched from the store kept on
    /// local disk (least recently used evicted).
    pub model_cache_bytes: u64,
    /// How long an operation is retried through an outage.
    pub backoff: Backoff,
    /// `AWS_*` settings applied over the environment's (`AWS_ENDPOINT_URL`,
    /// keys...), named as the variables are: tests reach their server
    /// with these instead of changing the process environment.
    pub s3_env: Vec<(String, String)>,
}

/// The store behind a shared handle.
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
    backoff: Backoff,
    downloads: IntCounterVec,
    models: ModelCache,
    flights: SingleFlight,
}

impl Remote {
    /// An error of the store, named by its URL.
    fn fail(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!("artifact store {}", self.url))
    }
}

/// The artefact store of this node. Cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    data_dir: PathBuf,
    remote: Option<Arc<Remote>>,
    downloads: IntCounterVec,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("data_dir", &self.data_dir)
            .field("url", &self.url())
            .finish()
    }
}

fn downloads_counter() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "vitrine_artifact_downloads_total",
            "Artefacts fetched from the shared store, by kind (model, dataset, checkpoint, features, upload)",
        ),
        &["kind"],
    )
    .expect("valid metric")
}

impl Artifacts {
    /// The data dir alone (no store): today's behaviour.
    pub fn local(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            remote: None,
            downloads: downloads_counter(),
        }
    }

    /// Opens the store `opts.url` names and checks it is usable (a probe
    /// object written, read and deleted); without a URL, [`Self::local`].
    /// Each failure is one line naming the problem and the URL.
    pub async fn open(
        opts: &ArtifactOptions,
        data_dir: &Path,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let mut local = Self::local(data_dir);
        let _ = registry.register(Box::new(local.downloads.clone()));
        let Some(url) = opts.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(local);
        };
        let location = Location::parse(url)?;
        // Named by its canonical form from here on: never a credential.
        let url = &location.url();
        let store = location.build(url, &opts.s3_env)?;
        location::probe(store.as_ref(), url, &location, &opts.s3_env).await?;
        let models = ModelCache::new(data_dir, opts.model_cache_bytes);
        let models = tokio::task::spawn_blocking(move || {
            models.scan();
            models
        })
        .await?;
        local.remote = Some(Arc::new(Remote {
            store,
            url: url.to_string(),
            backoff: opts.backoff,
            downloads: local.downloads.clone(),
            models,
            flights: SingleFlight::default(),
        }));
        tracing::info!(store = url, "artifact store ready");
        Ok(local)
    }

    /// The store's URL; `None` when artefacts stay in the data dir.
    pub fn url(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.url.as_str())
    }

    /// Whether a shared store is configured.
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Fetches of `kind` (`model`, `dataset`, `checkpoint`, `features`,
    /// `upload`) so far.
    pub fn downloads(&self, kind: &str) -> u64 {
        self.downloads.with_label_values(&[kind]).get()
    }

    // --- uploads --------------------------------------------------------

    /// Stores an upload waiting for validation (`uploads/<name>`),
    /// streamed from `path`.
    pub async fn put_upload(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        let k = key(&format!("uploads/{name}"));
        r.backoff
            .run(&format!("storing the upload {name}"), || {
                transfer::put_file(&r.store, &k, path)
            })
            .await
            .map_err(|e| r.fail(e))
    }

    /// Fetches `uploads/<name>` to `dest`; false when the store lacks it
    /// (or there is no store).
    pub async fn fetch_upload(&self, name: &str, dest: &Path) -> anyhow::Result<bool> {
        let Some(r) = &self.remote else {
            return Ok(false);
        };
        let k = key(&format!("uploads/{name}"));
        let got = transfer::get_file(r.store.as_ref(), &k, dest)
            .await
            .map_err(|e| r.fail(e))?;
        if got {
            r.downloads.with_label_values(&["upload"]).inc();
        }
        Ok(got)
    }

    /// Removes `uploads/<name>` (a failure is logged: it only costs space).
    pub async fn delete_upload(&self, name: &str) {
        let Some(r) = &self.remote else { return };
        if let Err(e) = transfer::delete(r.store.as_ref(), &key(&format!("uploads/{name}"))).await {
            tracing::warn!(upload = name, error = %format!("{:#}", r.fail(e)), "deleting a stored upload failed");
        }
    }

    // --- datasets -------------------------------------------------------

    /// Stores the validated dataset directory `dir` (relative path `rel`,
    /// `datasets/<sha256>`) as the tar `<rel>.tar`.
    pub async fn put_dataset(&self, rel: &str, dir: &Path) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        let k = key(&format!("{rel}.tar"));
        r.backoff
            .run(&format!("storing {rel}.tar"), || {
                transfer::put_tar(&r.store, &k, dir)
            })
            .await
            .map_err(|e| r.fail(e))
    }

    /// The local directory of the dataset `rel`, fetched from the store
    /// into the cache (`<data-dir>/<rel>`) the first time.
    pub async fn dataset_dir(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let local = self.data_dir.join(rel);
        let Some(r) = &self.remote else {
            return Ok(local);
        };
        if local.join("manifest.json").is_file() {
            return Ok(local);
        }
        let _flight = r.flights.lock(rel).await;
        if local.join("manifest.json").is_file() {
            return Ok(local);
        }
        let k = key(&format!("{rel}.tar"));
        let got = r
            .backoff
            .run(&format!("fetching {rel}.tar"), || {
                transfer::get_tar(r.store.as_ref(), &k, &local)
            })
            .await
            .map_err(|e| r.fail(e))?;
        if !got {
            anyhow::bail!(
                "dataset {rel} is neither in the data dir nor in the artifact store {}",
                r.url
            );
        }
        r.downloads.with_label_values(&["dataset"]).inc();
        tracing::info!(dataset = rel, "dataset fetched from the artifact store");
        Ok(local)
    }

    // --- models ---------------------------------------------------------

    /// Stores the model directory `dir` under `rel` (`models/<id>`) and
    /// counts it in the local cache.
    pub async fn put_model(&self, rel: &str, dir: &Path) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        r.backoff
            .run(&format!("storing {rel}"), || {
                transfer::put_dir(&r.store, rel, dir)
            })
            .await
            .map_err(|e| r.fail(e))?;
        let owned = dir.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || cache::dir_size(&owned)).await?;
        self.evict(r.models.insert(rel, bytes)).await;
        Ok(())
    }

    /// The local directory of the model `rel` (`models/<id>`), fetched
    /// from the store the first time (once, however many ask at once);
    /// fetching it may evict the least recently used others.
    pub async fn model_dir(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let local = self.data_dir.join(rel);
        let Some(r) = &self.remote else {
            return Ok(local);
        };
        if local.is_dir() && r.models.touch(rel) {
            return Ok(local);
        }
        let _flight = r.flights.lock(rel).await;
        if local.is_dir() {
            if !r.models.touch(rel) {
                // Written here (trained on this node) but not counted yet.
                let owned = local.clone();
                let bytes = tokio::task::spawn_blocking(move || cache::dir_size(&owned)).await?;
                self.evict(r.models.insert(rel, bytes)).await;
            }
            return Ok(local);
        }
        let got = r
            .backoff
            .run(&format!("fetching {rel}"), || {
                transfer::get_dir(r.store.as_ref(), rel, &local)
            })
            .await
            .map_err(|e| r.fail(e))?;
        if !got {
            anyhow::bail!(
                "model {rel} is neither in the data dir nor in the artifact store {}",
                r.url
            );
        }
        r.downloads.with_label_values(&["model"]).inc();
        let owned = local.clone();
        let bytes = tokio::task::spawn_blocking(move || cache::dir_size(&owned)).await?;
        tracing::info!(model = rel, bytes, "model fetched from the artifact store");
        self.evict(r.models.insert(rel, bytes)).await;
        Ok(local)
    }

    /// Marks the model `rel` as just used (served from memory), so the
    /// disk cache evicts models in use last.
    pub fn touch_model(&self, rel: &str) {
        if let Some(r) = &self.remote {
            r.models.touch(rel);
        }
    }

    /// Removes a deleted model from the store and the local cache.
    pub async fn delete_model(&self, rel: &str) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        r.models.forget(rel);
        transfer::delete_prefix(r.store.as_ref(), rel)
            .await
            .map_err(|e| r.fail(e))
    }

    /// The model directories in the local cache, most recently used
    /// first, and their total bytes (empty without a store).
    pub fn cached_models(&self) -> (Vec<String>, u64) {
        match &self.remote {
            Some(r) => r.models.contents(),
            None => (vec![], 0),
        }
    }

    async fn evict(&self, dirs: Vec<PathBuf>) {
        for dir in dirs {
            tracing::info!(dir = %dir.display(), "evicting a cached model");
            let owned = dir.clone();
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(owned)).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(dir = %dir.display(), error = ?e, "evicting a cached model failed");
            }
        }
    }

    // --- jobs -----------------------------------------------------------

    /// The uploader of a job's checkpoints, for the trainer (`None`
    /// without a store). Must be called on the runtime.
    pub fn job_sync(&self, job_id: &str, work_dir: &Path) -> Option<JobSync> {
        let r = self.remote.as_ref()?;
        Some(JobSync::new(
            r.clone(),
            job_id,
            work_dir,
            tokio::runtime::Handle::current(),
        ))
    }

    /// Fetches the job's stored checkpoint into `work_dir` when it is newer
    /// than the local one (a job resumed on another node); the epochs it
    /// holds, or `None` when nothing was fetched.
    pub async fn pull_job(&self, job_id: &str, work_dir: &Path) -> anyhow::Result<Option<u32>> {
        let Some(r) = &self.remote else {
            return Ok(None);
        };
        r.backoff
            .run(&format!("fetching the checkpoint of job {job_id}"), || {
                checkpoints::pull(r, job_id, work_dir)
            })
            .await
            .map_err(|e| r.fail(e))
    }

    /// The job's stored pointer, if any.
    pub async fn job_pointer(&self, job_id: &str) -> anyhow::Result<Option<Pointer>> {
        let Some(r) = &self.remote else {
            return Ok(None);
        };
        checkpoints::read_pointer(r, job_id)
            .await
            .map_err(|e| r.fail(e))
    }

    /// Removes a finished job's checkpoints from the store (logged on failure).
    pub async fn delete_job(&self, job_id: &str) {
        let Some(r) = &self.remote else { return };
        let prefix = checkpoints::job_prefix(job_id);
        if let Err(e) = transfer::delete_prefix(r.store.as_ref(), &prefix).await {
            tracing::warn!(job = job_id, error = %format!("{:#}", r.fail(e)), "deleting a job's stored checkpoints failed");
        }
    }
}

#[cfg(test)]
mod tests;
