//! A model's files for download: its directory as a tar.gz, its ONNX
//! export, or that export's metadata.

use std::path::PathBuf;

use crate::error::AppResult;
use crate::export::{self, ExportMetadata, ExportOptions};
use crate::models::Models;
use crate::store::models::ModelRow;

/// What to download.
#[derive(Debug, Clone, Copy)]
pub enum DownloadFormat {
    /// The model directory in the Hugging Face layout, as a tar.gz (a LoRA
    /// model: its adapter, as is).
    Hf,
    /// A LoRA model merged into its base, as a plain Hugging Face checkpoint
    /// in a tar.gz (any other model: as `Hf`).
    Merged,
    /// The ONNX file (exported once per model and options, then kept).
    Onnx(ExportOptions),
    /// The ONNX export's metadata alone, read from the card without exporting.
    OnnxMetadata(ExportOptions),
}

/// A download, ready to send.
pub enum Download {
    /// The tar.gz, in an anonymous temporary file (gone once sent).
    Archive { name: String, file: std::fs::File },
    /// The ONNX file and its length.
    Onnx {
        name: String,
        file: tokio::fs::File,
        len: u64,
    },
    /// Boxed: it is ten times the size of the others.
    Metadata(Box<ExportMetadata>),
}

impl Models<'_> {
    /// The model `name` designates (an id or an alias), as `format`.
    pub async fn download(&self, name: &str, format: DownloadFormat) -> AppResult<Download> {
        let row = self.find(name).await?;
        let dir = self.artifacts.model_dir(&row.path).await?;
        match format {
            DownloadFormat::Hf => self.archive(row, dir).await,
            DownloadFormat::Merged => self.merged(row, dir).await,
            DownloadFormat::OnnxMetadata(opts) => {
                let metadata =
                    tokio::task::spawn_blocking(move || export::metadata_of_dir(&dir, &opts))
                        .await
                        .map_err(anyhow::Error::from)??;
                Ok(Download::Metadata(Box::new(metadata)))
            }
            DownloadFormat::Onnx(opts) => {
                let path = self.exports.onnx_file(&row.id, &dir, &opts).await?;
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the export {}: {e}", path.display()))?;
                let len = file.metadata().await.map_err(anyhow::Error::from)?.len();
                Ok(Download::Onnx {
                    name: row.id,
                    file,
                    len,
                })
            }
        }
    }

    /// The merged checkpoint of a LoRA model, written aside, then archived.
    async fn merged(&self, row: ModelRow, dir: PathBuf) -> AppResult<Download> {
        if !crate::model::lora::is_lora_dir(&dir) {
            return self.archive(row, dir).await;
        }
        let out = self
            .data_dir
            .join("tmp")
            .join(format!("merged-{}", uuid::Uuid::now_v7().simple()));
        let (src, dst) = (dir.clone(), out.clone());
        tokio::task::spawn_blocking(move || crate::model::lora::save_merged(&src, &dst))
            .await
            .map_err(anyhow::Error::from)??;
        let archived = self.archive(row, out.clone()).await;
        let _ = tokio::fs::remove_dir_all(&out).await;
        archived
    }

    async fn archive(&self, row: ModelRow, dir: PathBuf) -> AppResult<Download> {
        let tmp_dir = self.data_dir.join("tmp");
        let name = row.id.clone();
        let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
            std::fs::create_dir_all(&tmp_dir)?;
            // An anonymous temporary file: gone as soon as the response is sent.
            let mut file = tempfile::tempfile_in(&tmp_dir)?;
            {
                let gz = flate2::write::GzEncoder::new(&mut file, flate2::Compression::fast());
                let mut tar = tar::Builder::new(gz);
                tar.append_dir_all(&name, &dir)?;
                tar.into_inner()?.finish()?;
            }
            use std::io::Seek;
            file.rewind()?;
            Ok(file)
        })
        .await
        .map_err(anyhow::Error::from)??;
        Ok(Download::Archive { name: row.id, file })
    }
}
