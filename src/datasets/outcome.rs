//! The end of a validation, recorded: the checked dataset moved into
//! place in one rename, shared with other nodes and marked `ready`; or
//! the refusal recorded `failed` (failing the jobs waiting for it), with
//! nothing left on disk but the record.

use super::files::TempPath;
use super::record::{self, DatasetCounts, DatasetFailure, DatasetRecord};
use super::DatasetStore;
use crate::data::error::DatasetError;
use crate::data::ingest::Ingested;
use crate::store::datasets::{self as store, Validated};

/// What a client is told of a fault of ours while validating (the cause
/// is logged).
const INTERNAL_DETAIL: &str =
    "an internal error occurred while validating the dataset; it has been logged (upload it again to retry)";

impl DatasetStore {
    /// Puts a checked dataset in place, or discards the work of a refused
    /// one. Returns the refusal: the check's, or a fault storing it.
    pub(super) async fn settle(
        &self,
        record: &DatasetRecord,
        work: TempPath,
        outcome: Result<Ingested, DatasetError>,
    ) -> Option<DatasetError> {
        match outcome {
            Ok(ingested) => match self.ready(record, work, &ingested).await {
                Ok(()) => None,
                Err(e) => Some(DatasetError::internal(format!(
                    "storing the dataset: {e:#}"
                ))),
            },
            Err(e) => {
                work.discard().await;
                Some(e)
            }
        }
    }

    /// Records a refusal; the refused dataset keeps how far its check went.
    pub(super) async fn refuse(
        &self,
        record: &DatasetRecord,
        e: &DatasetError,
    ) -> anyhow::Result<()> {
        self.write_progress(record).await;
        self.fail(record, &failure_of(record, e)).await
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
        self.mark_ready(record, ingested).await
    }

    /// Records what the validation found: `validating` -> `ready`.
    async fn mark_ready(&self, record: &DatasetRecord, ingested: &Ingested) -> anyhow::Result<()> {
        let summary_json = serde_json::to_string(&ingested.summary)?;
        let counts_json = serde_json::to_string(&DatasetCounts::of(&ingested.summary))?;
        let progress_json = serde_json::to_string(&record.progress)?;
        let found = Validated {
            format: ingested.format.as_str(),
            task: ingested.task,
            summary_json: &summary_json,
            counts_json: &counts_json,
        };
        let marked: Option<DatasetRecord> =
            store::mark_ready(&self.db, record.id, &found, &progress_json).await?;
        if marked.is_none() {
            tracing::warn!(dataset = %record.id, "the dataset was no longer validating; its result is dropped");
        }
        Ok(())
    }

    /// Records the refusal (and fails the jobs waiting for the dataset),
    /// and removes the upload: nothing is left but the record.
    pub(super) async fn fail(
        &self,
        record: &DatasetRecord,
        failure: &DatasetFailure,
    ) -> anyhow::Result<()> {
        self.remove_upload(&record.sha256).await;
        let failed: Option<(DatasetRecord, u64)> =
            store::mark_failed(&self.db, record.id, &failure.to_row(), &failure.job_error())
                .await?;
        match failed {
            Some((_, jobs)) => {
                tracing::info!(dataset = %record.id, code = %failure.code, jobs_failed = jobs, "dataset refused")
            }
            None => tracing::warn!(dataset = %record.id, "the dataset was no longer validating"),
        }
        Ok(())
    }

    /// Ends the validation's watch with what the database holds (or the
    /// last progress, if reading it fails): subscribers read the outcome
    /// from there.
    pub(super) async fn finish_with_row(&self, record: &DatasetRecord) {
        let last = record::get(&self.db, record.id).await.ok().flatten();
        self.validations.finish(last.as_ref().unwrap_or(record));
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
