//! Storing an uploaded dataset: stream it to a temp file while hashing,
//! return the existing record when the same archive was stored before, else
//! validate and extract it off the async runtime and move it into place.
//! Any refusal leaves nothing on disk and nothing in the database.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use tokio::io::AsyncWriteExt;

use super::ingest::{ingest_archive, IngestLimits};
use super::record::{self, DatasetRecord};
use crate::store::datasets::{self as store, NewDataset};
use crate::AppError;

/// Where datasets go and what they are checked against. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    pub db: SqlitePool,
    /// The data directory: archives are extracted under `datasets/`, and
    /// uploads in progress live under `tmp/`.
    pub data_dir: PathBuf,
    pub limits: IngestLimits,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
}

/// The outcome of an upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: DatasetRecord,
    /// False when the same archive (by SHA-256) was already stored.
    pub created: bool,
}

/// A path removed (file or directory) when dropped, unless kept.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("temp path still armed")
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The `datasets/<sha256>` directory, relative to the data dir.
pub fn dataset_rel_path(sha256: &str) -> String {
    format!("datasets/{sha256}")
}

impl DatasetStore {
    /// The refusal of an upload over `max_upload_bytes` (worded as the
    /// HTTP layer words its own body limit).
    pub fn too_large(&self) -> AppError {
        AppError::payload_too_large(format!(
            "the dataset archive is larger than {} bytes (--max-upload-bytes, VITRINE_MAX_UPLOAD_BYTES)",
            self.max_upload_bytes
        ))
    }

    /// Stores an uploaded archive arriving as `chunks` (the `dataset` part
    /// of `POST /datasets` or `POST /jobs`): streamed to a temp file while
    /// hashed, then validated and extracted unless already stored. A
    /// chunk's error ends the upload with that error.
    pub async fn ingest<S, B>(&self, chunks: S) -> Result<Stored, AppError>
    where
        S: Stream<Item = Result<B, AppError>>,
        B: AsRef<[u8]>,
    {
        let tmp_dir = self.data_dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(anyhow::Error::from)?;
        let upload = TempPath(Some(
            tmp_dir.join(format!("{}.upload", uuid::Uuid::now_v7())),
        ));
        let mut file = tokio::fs::File::create(upload.path())
            .await
            .map_err(anyhow::Error::from)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let chunk = chunk.as_ref();
            size += chunk.len() as u64;
            if size > self.max_upload_bytes {
                return Err(self.too_large());
            }
            hasher.update(chunk);
            file.write_all(chunk).await.map_err(anyhow::Error::from)?;
        }
        file.flush().await.map_err(anyhow::Error::from)?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        store_archive(self, upload, &sha256, size).await
    }
}

async fn store_archive(
    state: &DatasetStore,
    upload: TempPath,
    sha256: &str,
    size: u64,
) -> Result<Stored, AppError> {
    let db = &state.db;
    if let Some(record) = record::find_by_sha256(db, sha256).await? {
        return Ok(Stored {
            record,
            created: false,
        });
    }
    let data_dir = state.data_dir.clone();
    let work = TempPath(Some(
        data_dir
            .join("tmp")
            .join(format!("{}.d", uuid::Uuid::now_v7())),
    ));
    std::fs::create_dir_all(work.path()).map_err(anyhow::Error::from)?;
    let limits: IngestLimits = state.limits;
    let (archive, dir) = (upload.path().to_path_buf(), work.path().to_path_buf());
    let ingested = tokio::task::spawn_blocking(move || ingest_archive(&archive, &dir, &limits))
        .await
        .map_err(anyhow::Error::from)??;
    drop(upload);

    let rel = dataset_rel_path(sha256);
    let target = data_dir.join(&rel);
    std::fs::create_dir_all(data_dir.join("datasets")).map_err(anyhow::Error::from)?;
    if let Err(e) = std::fs::rename(work.path(), &target) {
        // Another upload of the same archive won the race, or a crash left
        // an unrecorded directory behind.
        if let Some(record) = record::find_by_sha256(db, sha256).await? {
            return Ok(Stored {
                record,
                created: false,
            });
        }
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(anyhow::Error::from)?;
            std::fs::rename(work.path(), &target).map_err(anyhow::Error::from)?;
        } else {
            return Err(anyhow::Error::from(e)
                .context("moving the dataset into place")
                .into());
        }
    }
    work.keep();
    let new = NewDataset {
        sha256,
        format: ingested.format.as_str(),
        size_bytes: size as i64,
        path: &rel,
        task: ingested.task,
        summary_json: &serde_json::to_string(&ingested.summary).map_err(anyhow::Error::from)?,
    };
    match store::insert(db, &new).await {
        Ok(row) => Ok(Stored {
            record: row.try_into()?,
            created: true,
        }),
        Err(e) => {
            if let Some(record) = record::find_by_sha256(db, sha256).await? {
                return Ok(Stored {
                    record,
                    created: false,
                });
            }
            let _ = std::fs::remove_dir_all(&target);
            Err(e.into())
        }
    }
}
