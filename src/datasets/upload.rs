//! Storing an upload: streamed to a temp file while hashed, then recorded
//! `validating` and validated in the background unless the same archive
//! (by SHA-256) is stored already; and waiting for a validation to end.

use std::time::Duration;

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::files::{dataset_rel_path, TempPath};
use super::record::{self, DatasetRecord, DatasetStatus};
use super::DatasetStore;
use crate::data::parquet::ParquetColumns;
use crate::store::datasets as store;
use crate::AppError;

/// The outcome of an upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: DatasetRecord,
    /// True when this upload started a validation (a new archive, or one
    /// that had failed); false when the same archive (by SHA-256) was
    /// already stored or is being validated.
    pub started: bool,
}

/// An upload written to its temp file: the file, its SHA-256 (hex) and size.
struct Received {
    file: TempPath,
    sha256: String,
    size: u64,
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
    /// of `POST /datasets`, `/jobs` or `/sweeps`): streamed to a temp file
    /// while hashed, then recorded `validating` and validated in the
    /// background unless already stored. Returns as soon as the upload is
    /// recorded. A chunk's error ends the upload with that error.
    pub async fn ingest<S, B>(&self, chunks: S) -> Result<Stored, AppError>
    where
        S: Stream<Item = Result<B, AppError>>,
        B: AsRef<[u8]>,
    {
        self.ingest_with(chunks, &ParquetColumns::default()).await
    }

    /// [`ingest`](Self::ingest) of a Parquet dataset whose image or label
    /// column the uploader named: stored under a key of the upload and the
    /// names ([`ParquetColumns::dataset_key`]).
    pub async fn ingest_with<S, B>(
        &self,
        chunks: S,
        columns: &ParquetColumns,
    ) -> Result<Stored, AppError>
    where
        S: Stream<Item = Result<B, AppError>>,
        B: AsRef<[u8]>,
    {
        let received = self.receive(chunks).await?;
        let sha256 = columns.dataset_key(&received.sha256);
        Ok(self
            .accept(received.file, &sha256, received.size, columns)
            .await?)
    }

    /// Writes `chunks` to a new temp file under `tmp/`, hashing them, and
    /// refuses the upload as soon as it passes `max_upload_bytes`.
    async fn receive<S, B>(&self, chunks: S) -> Result<Received, AppError>
    where
        S: Stream<Item = Result<B, AppError>>,
        B: AsRef<[u8]>,
    {
        let tmp_dir = self.data_dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(anyhow::Error::from)?;
        let upload = TempPath::new(tmp_dir.join(format!("{}.upload", Uuid::now_v7())));
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
        Ok(Received {
            file: upload,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// Like [`ingest`](Self::ingest), then waits for the validation to
    /// end: the ready dataset, or its refusal as the error (the same code,
    /// detail and kind a synchronous upload used to get). For an inline
    /// `dataset` part of `POST /jobs` and `POST /sweeps`.
    pub async fn ingest_and_wait<S, B>(&self, chunks: S) -> Result<DatasetRecord, AppError>
    where
        S: Stream<Item = Result<B, AppError>>,
        B: AsRef<[u8]>,
    {
        let stored = self.ingest(chunks).await?;
        let record = self.wait_settled(stored.record.id).await?;
        match (&record.status, &record.error) {
            (DatasetStatus::Ready, _) => Ok(record),
            (_, Some(failure)) => Err(failure.to_app_error()),
            _ => Err(anyhow::anyhow!("dataset {} failed without an error", record.id).into()),
        }
    }

    /// Waits until the dataset `id` is ready or failed, and returns it.
    pub async fn wait_settled(&self, id: Uuid) -> anyhow::Result<DatasetRecord> {
        let mut live = self.validations.subscribe(id);
        loop {
            let record = record::get(&self.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("dataset {id} vanished"))?;
            if record.is_settled() {
                return Ok(record);
            }
            match live.as_mut() {
                // Woken by each progress report and by the end; the
                // database is read again either way.
                Some(rx) => {
                    if let Ok(Err(_)) =
                        tokio::time::timeout(Duration::from_secs(2), rx.changed()).await
                    {
                        live = None; // the validation ended: its outcome is in the database
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    live = self.validations.subscribe(id);
                }
            }
        }
    }

    /// The upload is complete: the existing record, or a new `validating`
    /// one whose validation starts now.
    async fn accept(
        &self,
        upload: TempPath,
        sha256: &str,
        size: u64,
        columns: &ParquetColumns,
    ) -> anyhow::Result<Stored> {
        let Some(record) = self.record_validating(sha256, size).await? else {
            let record = record::find_by_sha256(&self.db, sha256)
                .await?
                .ok_or_else(|| anyhow::anyhow!("dataset {sha256} vanished"))?;
            return Ok(Stored {
                record,
                started: false,
            });
        };
        // This upload started the validation: keep it until the end.
        let kept = self.upload_path(sha256);
        tokio::fs::create_dir_all(kept.parent().unwrap_or(&self.data_dir)).await?;
        tokio::fs::rename(upload.path(), &kept).await?;
        upload.keep();
        if !columns.is_default() {
            tokio::fs::write(self.columns_path(sha256), serde_json::to_vec(columns)?).await?;
        }
        self.share_upload(sha256).await;
        tracing::info!(dataset = %record.id, sha256, size, "dataset stored; validating");
        self.start_validation(record.clone());
        Ok(Stored {
            record,
            started: true,
        })
    }

    /// Records the archive `sha256` `validating`: a new row, or a failed
    /// one validated again. `None` when it is stored (or being validated)
    /// already.
    async fn record_validating(
        &self,
        sha256: &str,
        size: u64,
    ) -> anyhow::Result<Option<DatasetRecord>> {
        let db = &self.db;
        Ok(match record::find_by_sha256(db, sha256).await? {
            // None: a concurrent upload of the same archive recorded it first.
            None => {
                store::insert_validating(db, sha256, size as i64, &dataset_rel_path(sha256)).await?
            }
            Some(row) if row.status == DatasetStatus::Failed => {
                store::restart_failed(db, row.id).await?
            }
            Some(_) => None,
        })
    }
}
