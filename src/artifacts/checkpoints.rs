//! A job's checkpoints in the store, so that a job whose node dies resumes
//! on another one. Each epoch's files go under new keys
//! (`jobs/<id>/epoch-<n>/checkpoint/…`, and `…/best/…` when the best model
//! changed); the pointer `jobs/<id>/latest.json` is written last, and only
//! then are older epochs deleted. A failed upload therefore never moves
//! the pointer: the last good checkpoint stays readable.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::transfer::{self, key};
use super::Remote;

/// `jobs/<id>/latest.json`: the newest complete checkpoint of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Epochs completed by that checkpoint.
    pub epoch: u32,
    /// The prefix holding `checkpoint/`'s files.
    pub checkpoint: String,
    /// The prefix holding the best model so far (`best/`), if any.
    pub best: Option<String>,
}

pub(super) fn job_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}")
}

fn pointer_key(job_id: &str) -> String {
    format!("jobs/{job_id}/latest.json")
}

fn features_key(job_id: &str) -> String {
    format!("jobs/{job_id}/features.safetensors")
}

/// Reads a job's pointer.
pub(super) async fn read_pointer(remote: &Remote, job_id: &str) -> anyhow::Result<Option<Pointer>> {
    match transfer::get_bytes(remote.store.as_ref(), &key(&pointer_key(job_id))).await? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Epochs done by the local checkpoint of `work_dir`, if it has one.
fn local_epochs(work_dir: &Path) -> Option<u32> {
    ["checkpoint", "checkpoint.old"].iter().find_map(|d| {
        let bytes = std::fs::read(work_dir.join(d).join("state.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v.get("epochs_done")?.as_u64().map(|n| n as u32)
    })
}

/// Fetches a job's stored checkpoint (and best model and feature cache)
/// into `work_dir` when the store's is newer than the local one. Returns
/// the epochs of the checkpoint fetched.
pub(super) async fn pull(
    remote: &Remote,
    job_id: &str,
    work_dir: &Path,
) -> anyhow::Result<Option<u32>> {
    let store = remote.store.as_ref();
    let features = work_dir.join("features.safetensors");
    if !features.exists()
        && transfer::get_file(store, &key(&features_key(job_id)), &features).await?
    {
        remote.downloads.with_label_values(&["features"]).inc();
    }
    let Some(pointer) = read_pointer(remote, job_id).await? else {
        return Ok(None);
    };
    if local_epochs(work_dir).is_some_and(|local| local >= pointer.epoch) {
        return Ok(None);
    }
    if !transfer::get_dir(store, &pointer.checkpoint, &work_dir.join("checkpoint")).await? {
        anyhow::bail!(
            "the checkpoint {} named by the pointer is missing",
            pointer.checkpoint
        );
    }
    let _ = tokio::fs::remove_dir_all(work_dir.join("checkpoint.old")).await;
    if let Some(best) = &pointer.best {
        transfer::get_dir(store, best, &work_dir.join("best")).await?;
    }
    remote.downloads.with_label_values(&["checkpoint"]).inc();
    Ok(Some(pointer.epoch))
}

/// Uploads one job's checkpoints as its training goes. The trainer runs
/// on an OS thread of its own, so the blocking calls
/// ([`JobSync::epoch_saved`], [`JobSync::features_saved`]) run the uploads
/// on the runtime whose handle this holds and wait for them.
pub struct JobSync {
    remote: Arc<Remote>,
    job_id: String,
    work_dir: PathBuf,
    runtime: tokio::runtime::Handle,
    /// The pointer as this job last wrote or read it (`None`: not read yet).
    current: tokio::sync::Mutex<Option<Option<Pointer>>>,
    features_sent: AtomicBool,
}

impl std::fmt::Debug for JobSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSync")
            .field("store", &self.remote.url)
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl JobSync {
    pub(super) fn new(
        remote: Arc<Remote>,
        job_id: &str,
        work_dir: &Path,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            remote,
            job_id: job_id.to_string(),
            work_dir: work_dir.to_path_buf(),
            runtime,
            current: tokio::sync::Mutex::new(None),
            features_sent: AtomicBool::new(false),
        }
    }

    /// From the training thread, after epoch `epoch` (1-based) wrote
    /// `checkpoint/` (and `best/`, when `best_changed`): stores them,
    /// retrying through an outage. An error names the store and the cause.
    pub fn epoch_saved(&self, epoch: u32, best_changed: bool) -> anyhow::Result<()> {
        self.runtime.block_on(self.push_epoch(epoch, best_changed))
    }

    /// From the training thread, after the feature cache was written.
    /// Best effort: a failure is logged (the cache can be recomputed).
    pub fn features_saved(&self) {
        self.runtime.block_on(self.push_features())
    }

    /// Uploads epoch `epoch`'s files under new keys, then moves the pointer,
    /// then deletes the epochs it no longer names.
    pub async fn push_epoch(&self, epoch: u32, best_changed: bool) -> anyhow::Result<()> {
        let remote = &self.remote;
        let store = &remote.store;
        let mut current = self.current.lock().await;
        if current.is_none() {
            let read = remote
                .backoff
                .run("reading the checkpoint pointer", || {
                    read_pointer(remote, &self.job_id)
                })
                .await
                .map_err(|e| remote.fail(e))?;
            *current = Some(read);
        }
        let previous = current.clone().flatten();
        let base = format!("{}/epoch-{epoch}", job_prefix(&self.job_id));
        let checkpoint = format!("{base}/checkpoint");
        let dir = self.work_dir.join("checkpoint");
        remote
            .backoff
            .run(
                &format!("uploading the checkpoint of epoch {epoch}"),
                || transfer::put_dir(store, &checkpoint, &dir),
            )
            .await
            .map_err(|e| remote.fail(e))?;
        let best_dir = self.work_dir.join("best");
        let kept_best = previous.as_ref().and_then(|p| p.best.clone());
        let best = if (best_changed || kept_best.is_none()) && best_dir.is_dir() {
            let prefix = format!("{base}/best");
            remote
                .backoff
                .run(
                    &format!("uploading the best model of epoch {epoch}"),
                    || transfer::put_dir(store, &prefix, &best_dir),
                )
                .await
                .map_err(|e| remote.fail(e))?;
            Some(prefix)
        } else {
            kept_best
        };
        let pointer = Pointer {
            epoch,
            checkpoint,
            best,
        };
        let json = serde_json::to_vec(&pointer)?;
        let pointer_at = key(&pointer_key(&self.job_id));
        remote
            .backoff
            .run("writing the checkpoint pointer", || {
                transfer::put_bytes(store.as_ref(), &pointer_at, json.clone())
            })
            .await
            .map_err(|e| remote.fail(e))?;
        *current = Some(Some(pointer.clone()));
        drop(current);
        if let Err(e) = self.delete_unnamed(&pointer).await {
            tracing::warn!(job = %self.job_id, error = %format!("{e:#}"), "deleting older stored checkpoints failed");
        }
        Ok(())
    }

    /// Deletes every `epoch-*` prefix of the job the pointer does not name.
    async fn delete_unnamed(&self, pointer: &Pointer) -> anyhow::Result<()> {
        let store = self.remote.store.as_ref();
        let named = |child: &str| {
            let dir = format!("{child}/");
            pointer.checkpoint.starts_with(&dir)
                || pointer.best.as_deref().is_some_and(|b| b.starts_with(&dir))
        };
        for child in transfer::children(store, &job_prefix(&self.job_id)).await? {
            let is_epoch = child
                .rsplit('/')
                .next()
                .is_some_and(|last| last.starts_with("epoch-"));
            if is_epoch && !named(&child) {
                transfer::delete_prefix(store, &child).await?;
            }
        }
        Ok(())
    }

    /// Uploads the feature cache once.
    pub async fn push_features(&self) {
        let path = self.work_dir.join("features.safetensors");
        if self.features_sent.load(Ordering::Relaxed) || !path.is_file() {
            return;
        }
        let remote = &self.remote;
        let k = key(&features_key(&self.job_id));
        let sent = remote
            .backoff
            .run("uploading the feature cache", || {
                transfer::put_file(&remote.store, &k, &path)
            })
            .await;
        match sent {
            Ok(()) => self.features_sent.store(true, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(job = %self.job_id, error = %format!("{:#}", remote.fail(e)), "storing the feature cache failed")
            }
        }
    }

    /// The pointer in the store now.
    pub async fn pointer(&self) -> anyhow::Result<Option<Pointer>> {
        read_pointer(&self.remote, &self.job_id).await
    }
}
