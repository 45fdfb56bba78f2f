//! One validation of a kept upload: wait for a slot, take the dataset's
//! cross-node lock, check the archive on the ingestion pool while
//! reporting progress, then record the outcome ([`super::outcome`]).

use std::path::Path;
use std::sync::Arc;

use super::files::{remove_path, TempPath};
use super::pool::{Throttle, PUBLISH_EVERY};
use super::record::DatasetRecord;
use super::takeover::lock_name;
use super::DatasetStore;
use crate::data::error::DatasetError;
use crate::data::ingest::{ingest_upload, Ingested};
use crate::data::progress::IngestProgress;
use crate::db::SessionLock;
use crate::store::datasets as store;

/// What a client is told of a validation that crashed (the cause, when
/// known, is logged).
const CRASHED_DETAIL: &str =
    "the validation of this dataset crashed (a fault of this service, logged); it is not validated again";

impl DatasetStore {
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
        progress: Arc<IngestProgress>,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let Some(starts) = self.count_start(&record).await? else {
            self.finish_with_row(&record).await;
            return Ok(());
        };
        record.validation_starts = starts;
        let work = self.fresh_work_dir(&record.sha256).await?;
        let outcome = self.run_ingest(&mut record, &progress, work.path()).await?;
        if self.validations.is_stopping() && outcome.is_err() {
            self.interrupted(&record, work).await;
            return Ok(());
        }
        record.progress = Some(progress.done());
        let refusal = self.settle(&record, work, outcome).await;
        let result = match &refusal {
            None => Ok(()),
            Some(e) => self.refuse(&record, e).await,
        };
        self.remove_upload(&record.sha256).await;
        tracing::info!(dataset = %record.id, seconds = started.elapsed().as_secs_f64(), refused = ?refusal.map(|e| e.code), "validation ended");
        self.finish_with_row(&record).await;
        result
    }

    /// An empty work directory for the upload `sha256`: a validation
    /// killed with its process may have left its work there.
    async fn fresh_work_dir(&self, sha256: &str) -> anyhow::Result<TempPath> {
        let work_path = self.work_path(sha256);
        let fresh = work_path.clone();
        tokio::task::spawn_blocking(move || {
            remove_path(&fresh);
            std::fs::create_dir_all(&fresh)
        })
        .await??;
        Ok(TempPath::new(work_path))
    }

    /// Shutting down: the record stays `validating` and the upload kept;
    /// the next start validates it again, and this start, which did not
    /// crash, is not counted against it.
    async fn interrupted(&self, record: &DatasetRecord, work: TempPath) {
        tracing::info!(dataset = %record.id, "validation interrupted by shutdown; it runs again at the next start");
        if let Err(e) = store::refund_validation_start(&self.db, record.id).await {
            tracing::warn!(dataset = %record.id, error = ?e, "giving back the validation's start failed");
        }
        work.discard().await;
        self.validations.finish(record);
    }

    /// Checks the archive on the ingestion pool while reporting progress.
    /// `Err` only for a fault recording it; the check's own outcome (a
    /// refusal, or a panic contained as `validation_crashed`) is `Ok`.
    async fn run_ingest(
        &self,
        record: &mut DatasetRecord,
        progress: &Arc<IngestProgress>,
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
    pub(super) async fn write_progress(&self, record: &DatasetRecord) {
        let json = serde_json::to_string(&record.progress).unwrap_or_default();
        if let Err(e) = store::set_progress(&self.db, record.id, &json).await {
            tracing::warn!(dataset = %record.id, error = ?e, "recording progress failed");
        }
    }
}
