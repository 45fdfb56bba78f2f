//! Where a dataset's files live while it is stored and validated: the
//! kept upload and the Parquet columns named with it (here, and in the
//! artefact store so that another node can resume the validation), and
//! the work directory a validation extracts into.

use std::path::{Path, PathBuf};

use crate::data::parquet::ParquetColumns;

use super::DatasetStore;

/// A path removed (file or directory) when dropped, unless kept. A file
/// goes at once; a work directory can hold thousands of extracted images,
/// so on the runtime its removal goes to a blocking thread
/// ([`TempPath::discard`] also waits for it).
pub(super) struct TempPath(Option<PathBuf>);

impl TempPath {
    pub(super) fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }
    pub(super) fn path(&self) -> &Path {
        self.0.as_deref().expect("temp path still armed")
    }
    pub(super) fn keep(mut self) {
        self.0 = None;
    }
    /// Removes the path now, off the runtime's threads, and waits for it.
    pub(super) async fn discard(mut self) {
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

pub(super) fn remove_path(p: &Path) {
    let _ = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
}

/// The `datasets/<sha256>` directory, relative to the data dir.
pub(super) fn dataset_rel_path(sha256: &str) -> String {
    format!("datasets/{sha256}")
}

/// The name, in the artefact store's uploads, of the columns kept beside
/// the upload `sha256`.
fn columns_name(sha256: &str) -> String {
    format!("{sha256}.columns.json")
}

impl DatasetStore {
    /// Where an upload waits for its validation.
    pub(super) fn upload_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join("uploads").join(sha256)
    }

    /// Where a validation extracts and checks the upload.
    pub(super) fn work_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join("tmp").join(format!("{sha256}.d"))
    }

    /// Beside a kept upload, the Parquet columns its uploader named (so a
    /// restart validates it the same way).
    pub(super) fn columns_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join("uploads").join(columns_name(sha256))
    }

    /// Removes a kept upload, here and in the artefact store.
    pub(super) async fn remove_upload(&self, sha256: &str) {
        remove_path(&self.upload_path(sha256));
        remove_path(&self.columns_path(sha256));
        self.artifacts.delete_upload(sha256).await;
        self.artifacts.delete_upload(&columns_name(sha256)).await;
    }

    /// Copies a kept upload (and its columns) to the artefact store, so
    /// another node can resume its validation. A failure is logged: this
    /// node validates it all the same.
    pub(super) async fn share_upload(&self, sha256: &str) {
        let mut shared = self
            .artifacts
            .put_upload(sha256, &self.upload_path(sha256))
            .await;
        let columns = self.columns_path(sha256);
        if shared.is_ok() && columns.is_file() {
            shared = self
                .artifacts
                .put_upload(&columns_name(sha256), &columns)
                .await;
        }
        if let Err(e) = shared {
            tracing::warn!(sha256, error = %format!("{e:#}"), "storing the upload in the artifact store failed; only this node can resume its validation");
        }
    }

    /// A kept upload fetched from the artefact store (a validation left by
    /// another node); false when the store lacks it too.
    pub(super) async fn fetch_upload(&self, sha256: &str) -> bool {
        let fetched = self
            .artifacts
            .fetch_upload(sha256, &self.upload_path(sha256))
            .await;
        match fetched {
            Ok(true) => {
                if let Err(e) = self
                    .artifacts
                    .fetch_upload(&columns_name(sha256), &self.columns_path(sha256))
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
    pub(super) async fn columns_of(&self, sha256: &str) -> anyhow::Result<ParquetColumns> {
        match tokio::fs::read(self.columns_path(sha256)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ParquetColumns::default()),
            Err(e) => Err(e.into()),
        }
    }
}
