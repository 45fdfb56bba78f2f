//! A poison upload must not crash the service at every start. Each start
//! of a validation is counted in its row before it runs; one that has
//! started `--max-validation-starts` times without ever ending (each start
//! ended with its process: a crash the ingestion threads could not
//! contain, or a kill) fails with `validation_crashed` instead of running
//! again.

use super::files::TempPath;
use super::record::{self, DatasetFailure, DatasetRecord};
use super::DatasetStore;
use crate::error::ErrorKind;
use crate::store::datasets as store;

/// The refusal of a dataset whose validation started `starts` times
/// without ever ending.
fn crashed(starts: i64) -> DatasetFailure {
    DatasetFailure {
        kind: Some(ErrorKind::Unprocessable),
        code: "validation_crashed".into(),
        detail: format!(
            "the validation of this dataset started {starts} times and never ended: the service \
             stopped each time while validating it (a crash, or a kill). It is not validated \
             again (--max-validation-starts); if the service was stopped on purpose, upload it again"
        ),
    }
}

impl DatasetStore {
    /// Counts this start of the validation in its row: the count, or
    /// `None` when it must not run: the dataset is no longer `validating`,
    /// or its validation has started `--max-validation-starts` times
    /// already, and then it fails now with `validation_crashed`.
    pub(super) async fn count_start(&self, record: &DatasetRecord) -> anyhow::Result<Option<i64>> {
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
            TempPath::new(self.work_path(&record.sha256))
                .discard()
                .await;
            self.fail(record, &crashed(max)).await?;
        }
        Ok(None)
    }
}
