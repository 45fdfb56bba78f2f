//! Datasets in, as formats: archive reading and safe extraction, layout
//! detection (Hugging Face `imagefolder` conventions), metadata, Parquet,
//! the checks of an upload ([`ingest`]), the summary shown to users and
//! the manifest the trainer reads. Pure format code: storing, validating
//! in the background and recording datasets is `crate::datasets`, and
//! nothing here imports `store`, `db` or `artifacts` (`layering` checks).

pub mod archive;
pub mod error;
pub mod ingest;
pub mod layout;
pub mod manifest;
pub mod metadata;
pub mod parquet;
pub mod parquet_guard;
pub mod progress;
pub mod split;
pub mod summary;

pub use archive::ArchiveFormat;
pub use error::DatasetError;
pub use ingest::{IngestLimits, Ingested};
pub use manifest::{Manifest, Sample};
pub use summary::DatasetSummary;

/// File names the imagefolder convention recognises as images.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "webp", "bmp", "gif", "tif", "tiff",
];

/// True for names every archive tool leaves behind and nobody means as data:
/// `__MACOSX/`, `.DS_Store`, `._foo`, `Thumbs.db`, `desktop.ini` and other
/// hidden files.
pub fn is_ignored_component(name: &str) -> bool {
    name.starts_with('.')
        || name == "__MACOSX"
        || name.eq_ignore_ascii_case("Thumbs.db")
        || name.eq_ignore_ascii_case("desktop.ini")
}

/// The canonical split a directory name stands for.
pub fn split_name(dir: &str) -> Option<&'static str> {
    match dir.to_ascii_lowercase().as_str() {
        "train" | "training" => Some("train"),
        "validation" | "val" | "valid" | "dev" => Some("validation"),
        "test" | "testing" => Some("test"),
        _ => None,
    }
}
