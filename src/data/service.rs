//! Storing an uploaded dataset: stream it to a temp file while hashing;
//! return the existing record when the same archive was stored before;
//! else record it `validating`, keep the upload under `uploads/<sha256>`
//! and validate it in the background ([`super::validation`]): extract and
//! check it into `tmp/<sha256>.d`, then move that into `datasets/<sha256>`
//! in one rename, so nothing is ever half-ready. A refusal leaves nothing
//! on disk but the record, `failed` with the refusal's code and detail.
//! The upload is kept until the validation ends, so that a restart
//! validates again what was validating ([`DatasetStore::resume`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::db::{Db, SessionLock};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::error::DatasetError;
use super::ingest::{ingest_upload, IngestLimits, Ingested};
use super::parquet::ParquetColumns;
use super::record::{self, DatasetCounts, DatasetFailure, DatasetRecord, DatasetStatus};
use super::validation::{Throttle, Validations, PUBLISH_EVERY};
use crate::store::datasets::{self as store, Validated};
use crate::AppError;

/// Where datasets go and what they are checked against. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    pub db: Db,
    /// The data directory: archives are extracted under `datasets/`,
    /// uploads wait for their validation under `uploads/`, and work in
    /// progress lives under `tmp/`.
    pub data_dir: PathBuf,
    pub limits: IngestLimits,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// The background validation pool.
    pub validations: Validations,
    /// Where uploads wait and validated datasets go for other nodes.
    pub artifacts: crate::artifacts::Artifacts,
    /// Starts of one dataset's validation after which it fails
    /// (`validation_crashed`) instead of running again: each start that
    /// did not end took its process down.
    pub max_validation_starts: u32,
}

/// The outcome of an upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: DatasetRecord,
    /// True when this upload started a validation (a new archive, or one
    /// that had failed); false when the same archive (by SHA-256) was
    /// already stored or is being validated.
    pub started: bool,
}

/// A path removed (file or directory) when dropped, unless kept. A file
/// goes at once; a work directory can hold thousands of extracted images,
/// so on the runtime its removal goes to a blocking thread
/// ([`TempPath::discard`] also waits for it).
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("temp path still armed")
    }
    fn keep(mut self) {
        self.0 = None;
    }
    /// Removes the path now, off the runtime's threads, and waits for it.
    async fn discard(mut self) {
        if let Some(p) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || remove_path(&p)).await;
        }
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) if p.is_dir() => drop(rt.spawn_blocking(move || remove_path(&p))),
                _ => remove_path(&p),
            }
        }
    }
}

fn remove_path(p: &Path) {
    let _ = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
}

/// The `datasets/<sha256>` directory, relative to the data dir.
pub fn dataset_rel_path(sha256: &str) -> String {
    format!("datasets/{sha256}")
}

/// What a client is told of a validation that crashed (the cause, when
/// known, is logged).
const CRASHED_DETAIL: &str =
    "the validation of this dataset crashed (a fault of this service, logged); it is not validated again";

/// The refusal of a dataset whose validation started `starts` times
/// without ever ending.
fn crashed(starts: i64) -> DatasetFailure {
    DatasetFailure {
        kind: Some(crate::error::ErrorKind::Unprocessable),
        code: "validation_crashed".into(),
        detail: format!(
            "the validation of this dataset started {starts} times and never ended: the service \
             stopped each time while validating it (a crash, or a kill). It is not validated \
             again (--max-validation-starts); if the service was stopped on purpose, upload it again"
        ),
    }
}

/// What a client is told of a fault of ours while validating (the cause
/// is logged).
const INTERNAL_DETAIL: &str =
    "an internal error occurred while validating the dataset; it has been logged (upload it again to retry)";

impl DatasetStore {
    /// The refusal of an upload over `max_upload_bytes` (worded as the
    /// HTTP layer words its own body limit).
    pub fn too_large(&self) -> AppError {
        AppError::payload_too_large(format!(
            "the dataset archive is larger than {} bytes (--max-upload-bytes, VITRINE_MAX_UPLOAD_BYTES)",
            self.max_upload_bytes
        ))
    }

    /// Where an upload waits for its validation.
    fn upload_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join("uploads").join(sha256)
    }

    /// Where a validation extracts and checks the upload.
    fn work_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join("tmp").join(format!("{sha256}.d"))
    }

    /// Beside a kept upload, the Parquet columns its uploader named (so a
    /// restart validates it the same way).
    fn columns_path(&self, sha256: &str) -> PathBuf {
        self.data_dir
            .join("uploads")
            .join(format!("{sha256}.columns.json"))
    }

    /// Removes a kept upload, here and in the artefact store.
    async fn remove_upload(&self, sha256: &str) {
        remove_path(&self.upload_path(sha256));
        remove_path(&self.columns_path(sha256));
        self.artifacts.delete_upload(sha256).await;
        self.artifacts
            .delete_upload(&format!("{sha256}.columns.json"))
            .await;
    }

    /// Copies a kept upload (and its columns) to the artefact store, so
    /// another node can resume its validation. A failure is logged: this
    /// node validates it all the same.
    async fn share_upload(&self, sha256: &str) {
        let mut shared = self
            .artifacts
            .put_upload(sha256, &self.upload_path(sha256))
            .await;
        let columns = self.columns_path(sha256);
        if shared.is_ok() && columns.is_file() {
            shared = self
                .artifacts
                .put_upload(&format!("{sha256}.columns.json"), &columns)
                .await;
        }
        if let Err(e) = shared {
            tracing::warn!(sha256, error = %format!("{e:#}"), "storing the upload in the artifact store failed; only this node can resume its validation");
        }
    }

    /// A kept upload fetched from the artefact store (a validation left by
    /// another node); false when the store lacks it too.
    async fn fetch_upload(&self, sha256: &str) -> bool {
        let fetched = self
            .artifacts
            .fetch_upload(sha256, &self.upload_path(sha256))
            .await;
        match fetched {
            Ok(true) => {
                let columns = format!("{sha256}.columns.json");
                if let Err(e) = self
                    .artifacts
                    .fetch_upload(&columns, &self.columns_path(sha256))
                    .await
                {
                    tracing::warn!(sha256, error = %format!("{e:#}"), "fetching the upload's columns failed");
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(sha256, error = %format!("{e:#}"), "fetching the upload from the artifact store failed");
                false
            }
        }
    }

    /// The columns named for a kept upload (none: found by convention).
    async fn columns_of(&self, sha256: &str) -> anyhow::Result<ParquetColumns> {
        match tokio::fs::read(self.columns_path(sha256)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ParquetColumns::default()),
            Err(e) => Err(e.into()),
        }
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
        let sha256 = columns.dataset_key(&hex::encode(hasher.finalize()));
        Ok(self.accept(upload, &sha256, size, columns).await?)
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
        let db = &self.db;
        let started = match store::find_by_sha256(db, sha256).await? {
            // None: a concurrent upload of the same archive recorded it first.
            None => {
                store::insert_validating(db, sha256, size as i64, &dataset_rel_path(sha256)).await?
            }
            Some(row) if row.status == DatasetStatus::Failed => {
                store::restart_failed(db, row.id).await?
            }
            Some(_) => None,
        };
        let Some(row) = started else {
            let record = record::find_by_sha256(db, sha256)
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
        let record: DatasetRecord = row.try_into()?;
        tracing::info!(dataset = %record.id, sha256, size, "dataset stored; validating");
        self.start_validation(record.clone());
        Ok(Stored {
            record,
            started: true,
        })
    }

    /// Validates again every dataset left `validating` that no other node
    /// validates now (at start: a previous life of this node, or a node
    /// that died). Returns how many it started (or failed, their upload
    /// gone).
    pub async fn resume(&self) -> anyhow::Result<usize> {
        self.take_over(None).await
    }

    /// What [`resume`](Self::resume) does for the rows whose progress has
    /// not moved for `stale`: run on a timer by API nodes sharing
    /// PostgreSQL, so a dataset whose node died is validated by another.
    /// A validation waiting for a slot writes nothing but holds its rows
    /// through the lock only once it runs: a stale queued one may be
    /// taken by an idle node, and its own node then skips it.
    pub async fn take_over_stale(&self, stale: Duration) -> anyhow::Result<usize> {
        self.take_over(Some(stale)).await
    }

    async fn take_over(&self, stale: Option<Duration>) -> anyhow::Result<usize> {
        let pending = store::list_validating(&self.db).await?;
        let now = chrono::Utc::now();
        let mut n = 0;
        for row in pending {
            let record: DatasetRecord = row.try_into()?;
            if self.validations.subscribe(record.id).is_some() {
                continue; // validating here
            }
            if stale.is_some_and(|s| (now - record.updated_at).to_std().unwrap_or_default() < s) {
                continue;
            }
            // Another node validates it now: it is not ours to resume or fail.
            let Some(lock) = SessionLock::try_acquire(&self.db, &lock_name(&record)).await? else {
                continue;
            };
            n += 1;
            if self.upload_path(&record.sha256).is_file() || self.fetch_upload(&record.sha256).await
            {
                tracing::info!(dataset = %record.id, "validating again after a restart");
                lock.release().await;
                self.start_validation(record);
            } else {
                tracing::warn!(dataset = %record.id, "its upload is gone; the dataset fails");
                let failure = DatasetFailure {
                    kind: Some(crate::error::ErrorKind::Unprocessable),
                    code: "upload_lost".into(),
                    detail: "the service stopped while validating this dataset and its upload \
                             was lost; upload it again"
                        .into(),
                };
                self.fail(&record, &failure).await?;
                lock.release().await;
            }
        }
        Ok(n)
    }

    /// Starts validating `record` (`validating`, its upload kept) on the
    /// background pool, unless it is already validated here.
    pub fn start_validation(&self, record: DatasetRecord) {
        if !self.validations.register(&record) {
            return;
        }
        let store = self.clone();
        self.validations.spawn(async move {
            let id = record.id;
            if let Err(e) = store.validate(record).await {
                tracing::error!(dataset = %id, error = ?e, "recording a validation failed");
            }
        });
    }

    /// One validation: wait for a slot, check the archive on the
    /// ingestion pool while reporting progress, then record the outcome.
    async fn validate(&self, mut record: DatasetRecord) -> anyhow::Result<()> {
        // Another node validates it (PostgreSQL): leave its progress alone.
        if SessionLock::is_held_elsewhere(&self.db, &lock_name(&record)).await? {
            tracing::info!(dataset = %record.id, "validated by another node");
            self.validations.finish(&record);
            return Ok(());
        }
        let progress = Arc::new(self.validations.progress());
        record.progress = Some(progress.snapshot(true));
        self.validations.publish(&record);
        self.write_progress(&record).await;
        let _slot = self.validations.slot().await;
        if self.validations.is_stopping() {
            self.validations.finish(&record);
            return Ok(());
        }
        // One node at a time validates a dataset (PostgreSQL: several API
        // nodes resume the same rows); held until the outcome is recorded.
        let Some(lock) = SessionLock::try_acquire(&self.db, &lock_name(&record)).await? else {
            tracing::info!(dataset = %record.id, "validated by another node");
            self.validations.finish(&record);
            return Ok(());
        };
        let result = self.validate_locked(record, progress).await;
        lock.release().await;
        result
    }

    /// [`validate`](Self::validate) once it holds the dataset's lock.
    async fn validate_locked(
        &self,
        mut record: DatasetRecord,
        progress: Arc<super::progress::IngestProgress>,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let Some(starts) = self.count_start(&record).await? else {
            self.finish_with_row(&record).await;
            return Ok(());
        };
        record.validation_starts = starts;

        let sha256 = record.sha256.clone();
        let work_path = self.work_path(&sha256);
        // A validation killed with its process may have left its work here.
        let fresh = work_path.clone();
        tokio::task::spawn_blocking(move || {
            remove_path(&fresh);
            std::fs::create_dir_all(&fresh)
        })
        .await??;
        let work = TempPath(Some(work_path));

        let outcome = self.run_ingest(&mut record, &progress, work.path()).await?;
        if self.validations.is_stopping() && outcome.is_err() {
            // Shutting down: the record stays `validating` and the upload
            // kept; the next start validates it again, and this start,
            // which did not crash, is not counted against it.
            tracing::info!(dataset = %record.id, "validation interrupted by shutdown; it runs again at the next start");
            if let Err(e) = store::refund_validation_start(&self.db, record.id).await {
                tracing::warn!(dataset = %record.id, error = ?e, "giving back the validation's start failed");
            }
            work.discard().await;
            self.validations.finish(&record);
            return Ok(());
        }
        record.progress = Some(progress.done());
        let refusal = match outcome {
            Ok(ingested) => match self.ready(&record, work, &ingested).await {
                Ok(()) => None,
                Err(e) => Some(DatasetError::internal(format!(
                    "storing the dataset: {e:#}"
                ))),
            },
            Err(e) => {
                work.discard().await;
                Some(e)
            }
        };
        let result = match &refusal {
            None => Ok(()),
            Some(e) => {
                // The refused dataset keeps how far its check went.
                self.write_progress(&record).await;
                self.fail(&record, &failure_of(&record, e)).await
            }
        };
        self.remove_upload(&sha256).await;
        tracing::info!(dataset = %record.id, seconds = started.elapsed().as_secs_f64(), refused = ?refusal.map(|e| e.code), "validation ended");
        self.finish_with_row(&record).await;
        result
    }

    /// Ends the validation's watch with what the database holds (or the
    /// last progress, if reading it fails): subscribers read the outcome
    /// from there.
    async fn finish_with_row(&self, record: &DatasetRecord) {
        let last = record::get(&self.db, record.id).await.ok().flatten();
        self.validations.finish(last.as_ref().unwrap_or(record));
    }

    /// Counts this start of the validation in its row. `None` when it must
    /// not run: the dataset is no longer `validating`, or its validation
    /// has started `--max-validation-starts` times already without ending
    /// (each start ended with its process: a crash the ingestion threads
    /// could not contain, or a kill), and then it fails now with
    /// `validation_crashed`, so that a poison upload cannot crash the
    /// service at every start.
    async fn count_start(&self, record: &DatasetRecord) -> anyhow::Result<Option<i64>> {
        let max = i64::from(self.max_validation_starts.max(1));
        if let Some(n) = store::begin_validation(&self.db, record.id, max).await? {
            return Ok(Some(n));
        }
        let validating = record::get(&self.db, record.id)
            .await?
            .is_some_and(|r| !r.is_settled());
        if validating {
            tracing::error!(dataset = %record.id, starts = max, "the dataset's validation started this many times without ending; it is quarantined (failed) instead of validated again");
            // What the last start, killed with its process, left behind.
            TempPath(Some(self.work_path(&record.sha256)))
                .discard()
                .await;
            self.fail(record, &crashed(max)).await?;
        }
        Ok(None)
    }

    /// Checks the archive on the ingestion pool while reporting progress.
    /// `Err` only for a fault recording it; the check's own outcome (a
    /// refusal, or a panic contained as `validation_crashed`) is `Ok`.
    async fn run_ingest(
        &self,
        record: &mut DatasetRecord,
        progress: &Arc<super::progress::IngestProgress>,
        dir: &Path,
    ) -> anyhow::Result<Result<Ingested, DatasetError>> {
        let columns = self.columns_of(&record.sha256).await?;
        let archive = self.upload_path(&record.sha256);
        let (limits, validations) = (self.limits.clone(), self.validations.clone());
        let (dir, counters) = (dir.to_path_buf(), progress.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            validations.install(|| ingest_upload(&archive, &dir, &limits, &columns, &counters))
        });
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        let mut throttle = Throttle::new();
        let joined = loop {
            tokio::select! {
                joined = &mut task => break joined,
                _ = tick.tick() => {
                    record.progress = Some(progress.snapshot(false));
                    self.validations.publish(record);
                    if throttle.write_due() {
                        self.write_progress(record).await;
                    }
                }
            }
        };
        Ok(match joined {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => {
                tracing::error!(dataset = %record.id, panic, "the validation panicked; the dataset fails");
                Err(DatasetError::invalid("validation_crashed", CRASHED_DETAIL))
            }
            Err(e) => Err(DatasetError::internal(format!(
                "the validation task failed: {e}"
            ))),
        })
    }

    /// Progress is informative: failing to record it does not stop the
    /// validation.
    async fn write_progress(&self, record: &DatasetRecord) {
        let json = serde_json::to_string(&record.progress).unwrap_or_default();
        if let Err(e) = store::set_progress(&self.db, record.id, &json).await {
            tracing::warn!(dataset = %record.id, error = ?e, "recording progress failed");
        }
    }

    /// Moves the checked dataset into place and records it `ready`.
    async fn ready(
        &self,
        record: &DatasetRecord,
        work: TempPath,
        ingested: &Ingested,
    ) -> anyhow::Result<()> {
        let target = self.data_dir.join(&record.path);
        let from = work.path().to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if target.exists() {
                // Moved into place before a crash, the record not updated:
                // this validation's result replaces it.
                std::fs::remove_dir_all(&target)?;
            }
            std::fs::rename(&from, &target)
        })
        .await??;
        work.keep();
        // Other nodes fetch it from the store; not ready before it is there.
        self.artifacts
            .put_dataset(&record.path, &self.data_dir.join(&record.path))
            .await?;
        let summary_json = serde_json::to_string(&ingested.summary)?;
        let counts_json = serde_json::to_string(&DatasetCounts::of(&ingested.summary))?;
        let progress_json = serde_json::to_string(&record.progress)?;
        let found = Validated {
            format: ingested.format.as_str(),
            task: ingested.task,
            summary_json: &summary_json,
            counts_json: &counts_json,
        };
        if store::mark_ready(&self.db, record.id, &found, &progress_json)
            .await?
            .is_none()
        {
            tracing::warn!(dataset = %record.id, "the dataset was no longer validating; its result is dropped");
        }
        Ok(())
    }

    /// Records the refusal (and fails the jobs waiting for the dataset),
    /// and removes the upload: nothing is left but the record.
    async fn fail(&self, record: &DatasetRecord, failure: &DatasetFailure) -> anyhow::Result<()> {
        self.remove_upload(&record.sha256).await;
        match store::mark_failed(&self.db, record.id, &failure.to_row(), &failure.job_error())
            .await?
        {
            Some((_, jobs)) => {
                tracing::info!(dataset = %record.id, code = %failure.code, jobs_failed = jobs, "dataset refused")
            }
            None => tracing::warn!(dataset = %record.id, "the dataset was no longer validating"),
        }
        Ok(())
    }
}

/// The refusal as recorded: a client error as it is; a fault of ours
/// logged in full and recorded without its cause.
fn failure_of(record: &DatasetRecord, e: &DatasetError) -> DatasetFailure {
    match e.kind {
        Some(kind) => DatasetFailure {
            kind: Some(kind),
            code: e.code.to_string(),
            detail: e.detail.clone(),
        },
        None => {
            tracing::error!(dataset = %record.id, error = %e.detail, "validating a dataset failed");
            DatasetFailure {
                kind: None,
                code: "internal".into(),
                detail: INTERNAL_DETAIL.into(),
            }
        }
    }
}

/// The cross-node lock of a dataset's validation.
fn lock_name(record: &DatasetRecord) -> String {
    validation_lock(record.id)
}

/// The name of the [`SessionLock`] a node holds while it validates the
/// dataset `id`.
pub fn validation_lock(id: Uuid) -> String {
    format!("vitrine-dataset-validation:{id}")
}
