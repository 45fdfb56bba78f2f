//! Storing an uploaded dataset: stream it to a temp file while hashing,
//! return the existing record when the same archive was stored before, else
//! validate and extract it off the async runtime and move it into place.
//! Any refusal leaves nothing on disk and nothing in the database.

use std::path::{Path, PathBuf};

use axum::extract::multipart::Field;
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ingest::{ingest_archive, IngestLimits};
use crate::http::AppState;
use crate::store::datasets::{self, DatasetRecord, NewDataset};
use crate::AppError;

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

/// Reads a multipart `dataset` part (the archive) and stores it. Used by
/// `POST /datasets` and by `POST /jobs`.
pub async fn ingest_field(state: &AppState, mut field: Field<'_>) -> Result<Stored, AppError> {
    let cfg = &state.config;
    let tmp_dir = cfg.data_dir.join("tmp");
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
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large(cfg.max_upload_bytes))
            }
            Err(e) => return Err(AppError::bad_request("invalid_multipart", e.body_text())),
        };
        size += chunk.len() as u64;
        if size > cfg.max_upload_bytes {
            return Err(too_large(cfg.max_upload_bytes));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    drop(file);
    let sha256 = hex::encode(hasher.finalize());
    store_archive(state, upload, &sha256, size).await
}

fn too_large(limit: u64) -> AppError {
    AppError::payload_too_large(format!(
        "the dataset archive is larger than {limit} bytes (VITRINE_MAX_UPLOAD_BYTES)"
    ))
}

/// Stores an archive already on disk (e.g. for the CLI or tests): hashes it,
/// then as [`ingest_field`]. The file is left in place.
pub async fn ingest_path(state: &AppState, archive: &Path) -> Result<Stored, AppError> {
    let tmp_dir = state.config.data_dir.join("tmp");
    tokio::fs::create_dir_all(&tmp_dir)
        .await
        .map_err(anyhow::Error::from)?;
    let copy = TempPath(Some(
        tmp_dir.join(format!("{}.upload", uuid::Uuid::now_v7())),
    ));
    tokio::fs::copy(archive, copy.path())
        .await
        .map_err(anyhow::Error::from)?;
    let bytes_path = copy.path().to_path_buf();
    let (sha256, size) = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        let mut f = std::fs::File::open(bytes_path)?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut f, &mut h)?;
        Ok((hex::encode(h.finalize()), n))
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(anyhow::Error::from)?;
    store_archive(state, copy, &sha256, size).await
}

async fn store_archive(
    state: &AppState,
    upload: TempPath,
    sha256: &str,
    size: u64,
) -> Result<Stored, AppError> {
    let db = &state.db;
    if let Some(record) = datasets::find_by_sha256(db, sha256).await? {
        return Ok(Stored {
            record,
            created: false,
        });
    }
    let data_dir = state.config.data_dir.clone();
    let work = TempPath(Some(
        data_dir
            .join("tmp")
            .join(format!("{}.d", uuid::Uuid::now_v7())),
    ));
    std::fs::create_dir_all(work.path()).map_err(anyhow::Error::from)?;
    let limits = IngestLimits::from_config(&state.config);
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
        if let Some(record) = datasets::find_by_sha256(db, sha256).await? {
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
        summary: &ingested.summary,
    };
    match datasets::insert(db, &new).await {
        Ok(record) => Ok(Stored {
            record,
            created: true,
        }),
        Err(e) => {
            if let Some(record) = datasets::find_by_sha256(db, sha256).await? {
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
