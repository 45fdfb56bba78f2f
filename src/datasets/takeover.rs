//! Validating again what was left `validating`: at start (a previous life
//! of this node), and on a timer by API nodes sharing PostgreSQL (a node
//! that died). A validation is one node's at a time: the node validating
//! it holds a session lock ([`validation_lock`]) that the others skip.

use std::time::Duration;

use uuid::Uuid;

use super::record::{DatasetFailure, DatasetRecord};
use super::DatasetStore;
use crate::db::SessionLock;
use crate::error::ErrorKind;
use crate::store::datasets as store;

/// The name of the [`SessionLock`] a node holds while it validates the
/// dataset `id`.
pub fn validation_lock(id: Uuid) -> String {
    format!("vitrine-dataset-validation:{id}")
}

/// The cross-node lock of a dataset's validation.
pub(super) fn lock_name(record: &DatasetRecord) -> String {
    validation_lock(record.id)
}

/// The refusal of a dataset whose upload is gone when its validation is
/// taken over.
fn upload_lost() -> DatasetFailure {
    DatasetFailure {
        kind: Some(ErrorKind::Unprocessable),
        code: "upload_lost".into(),
        detail: "the service stopped while validating this dataset and its upload \
                 was lost; upload it again"
            .into(),
    }
}

impl DatasetStore {
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
        let pending: Vec<DatasetRecord> = store::list_validating(&self.db).await?;
        let now = chrono::Utc::now();
        let mut n = 0;
        for record in pending {
            if self.validations.subscribe(record.id).is_some() {
                continue; // validating here
            }
            if stale.is_some_and(|s| (now - record.updated_at).to_std().unwrap_or_default() < s) {
                continue;
            }
            if self.take_over_one(record).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Validates `record` again here, or fails it when its upload is gone
    /// (here and in the artefact store). False when another node
    /// validates it now: it is not ours to resume or fail.
    async fn take_over_one(&self, record: DatasetRecord) -> anyhow::Result<bool> {
        let Some(lock) = SessionLock::try_acquire(&self.db, &lock_name(&record)).await? else {
            return Ok(false);
        };
        if self.upload_path(&record.sha256).is_file() || self.fetch_upload(&record.sha256).await {
            tracing::info!(dataset = %record.id, "validating again after a restart");
            lock.release().await;
            self.start_validation(record);
        } else {
            tracing::warn!(dataset = %record.id, "its upload is gone; the dataset fails");
            self.fail(&record, &upload_lost()).await?;
            lock.release().await;
        }
        Ok(true)
    }
}
