//! The server's ONNX exports: one bounded queue, a disk cache per
//! (model, options), and memory drawn from the decoding budget.
//!
//! An export holds the model's weights several times over (loaded, copied
//! into the graph, encoded: about 3.5x the safetensors for fp32), so twelve
//! at once used to take 2.4 GiB for an 82 MB model. Now:
//!
//! - `--export-concurrency` exports run at once and `--export-queue` more
//!   may wait for them; a request beyond both is answered 429 at once
//!   (`overloaded`, naming the export queue, with `Retry-After`).
//! - A model never changes once recorded, so each (model, opset, batch,
//!   precision) is exported once: written aside and renamed into
//!   `<data-dir>/exports/<model id>/`, and served from there (streamed from
//!   disk) by every later request. A request that waited in the queue
//!   looks again when its turn comes, so concurrent requests for one export
//!   run it once.
//! - A running export holds a lease of [`export_bytes`] from the server's
//!   [`DecodeBudget`], waiting for it up to [`LEASE_WAIT`], then 429.
//!
//! The metadata (`format=onnx-metadata`) needs no export at all
//! ([`super::metadata_of_dir`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{export_dir, ExportOptions, Precision};
use crate::budget::DecodeBudget;
use crate::error::{AppError, AppResult};

/// How long a running export waits for decoding memory before a 429.
pub const LEASE_WAIT: Duration = Duration::from_secs(30);

/// The server's export queue and cache. Cheap to clone.
#[derive(Clone)]
pub struct ExportQueue {
    /// Exports running or waiting: `running + waiting` permits.
    admitted: Arc<Semaphore>,
    /// Exports running.
    running: Arc<Semaphore>,
    budget: DecodeBudget,
    /// `<data-dir>/exports`.
    root: PathBuf,
}

impl std::fmt::Debug for ExportQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportQueue")
            .field("root", &self.root)
            .finish()
    }
}

impl ExportQueue {
    /// `running` exports at once (at least 1), `waiting` more queued.
    pub fn new(running: usize, waiting: usize, budget: DecodeBudget, root: PathBuf) -> Self {
        let running = running.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(running + waiting)),
            running: Arc::new(Semaphore::new(running)),
            budget,
            root,
        }
    }

    /// Where the export of `model_id` with `opts` is kept.
    pub fn cache_path(&self, model_id: &str, opts: &ExportOptions) -> PathBuf {
        let batch = if opts.dynamic_batch { "dyn" } else { "b1" };
        let precision = match opts.precision {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        };
        self.root
            .join(model_id)
            .join(format!("opset{}-{batch}-{precision}.onnx", opts.opset))
    }

    /// The ONNX file of the model `model_id` (directory `dir`) exported
    /// with `opts`: from the cache, or exported now through the queue.
    pub async fn onnx_file(
        &self,
        model_id: &str,
        dir: &Path,
        opts: &ExportOptions,
    ) -> AppResult<PathBuf> {
        opts.check()?;
        let path = self.cache_path(model_id, opts);
        if path.is_file() {
            return Ok(path);
        }
        let _admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| queue_full())?;
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AppError::Internal(e.into()))?;
        if path.is_file() {
            return Ok(path); // exported by a request ahead of this one
        }
        let (dir, opts, out) = (dir.to_path_buf(), *opts, path.clone());
        let bytes = blocking(move || export_bytes(&dir).map(|b| (dir, b))).await?;
        let (dir, bytes) = bytes.map_err(|e| AppError::Internal(e.into()))?;
        let lease = self
            .budget
            .acquire(bytes, LEASE_WAIT, "an ONNX export")
            .await
            .map_err(busy_as_429)?;
        blocking(move || {
            let _lease = lease; // held until the encoded file is written
            export_to_file(&dir, &opts, &out)
        })
        .await??;
        Ok(path)
    }

    /// Removes the exports of a deleted model.
    pub async fn forget(&self, model_id: &str) {
        let dir = self.root.join(model_id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(model = %model_id, error = ?e, "removing the model's exports failed");
            }
        }
    }
}

/// Bytes an export of the model directory `dir` holds at its peak: its
/// weights four times (loaded, converted into the graph, the encoded
/// message, and slack for libtorch's copies) plus 64 MiB.
pub fn export_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut weights = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "safetensors") {
            weights += entry.metadata()?.len();
        }
    }
    Ok(weights * 4 + (64 << 20))
}

/// Exports `dir` and writes the file aside, then renames it to `out`, so a
/// reader never sees half a file and a crash leaves none.
fn export_to_file(dir: &Path, opts: &ExportOptions, out: &Path) -> AppResult<()> {
    let exported = export_dir(dir, opts)?;
    let parent = out.parent().expect("cache paths have a parent");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(parent)?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        std::io::Write::write_all(&mut tmp, &exported.onnx)?;
        tmp.as_file().sync_all()?;
        tmp.persist(out).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| AppError::Internal(anyhow::Error::from(e).context("writing an export")))
}

fn queue_full() -> AppError {
    AppError::Overloaded {
        retry_after_secs: 5,
        detail: "ONNX exports are running and the export queue is full; retry later".into(),
    }
}

/// The budget stayed busy for the whole wait: a 429 the client retries.
fn busy_as_429(e: AppError) -> AppError {
    match e {
        AppError::Client {
            code: "decode_budget_exhausted",
            detail,
            ..
        } => AppError::Overloaded {
            retry_after_secs: 5,
            detail,
        },
        other => other,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(anyhow::Error::from(e)))
}
