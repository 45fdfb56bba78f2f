//! Images in: decoding with limits, and the resize/crop/normalise pipeline a
//! Hugging Face `preprocessor_config.json` describes, run in parallel.

pub mod augment;
pub mod bench;
pub mod config;
pub mod decode;
pub mod input_cache;
pub mod pipeline;
mod png_rows;
pub mod randaugment;
mod randaugment_ops;
pub mod thumbnail;

pub use augment::AugmentConfig;
pub use config::{Geometry, PreprocessorConfig, ResizeTarget, SizeSpec};
pub use decode::{decode, decode_dynamic, DecodeLimits};
pub use pipeline::{Normalisation, Pipeline};
pub use randaugment::RandAugment;

/// Why an image could not be turned into a tensor.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("image file is {bytes} bytes, more than the limit of {max_bytes} bytes")]
    FileTooLarge { bytes: u64, max_bytes: u64 },
    #[error("not a JPEG, PNG, WebP, BMP, GIF or TIFF image")]
    UnsupportedFormat,
    #[error("image is {width}x{height}, more than the limit of {max_pixels} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("undecodable image: {0}")]
    Decode(String),
    #[error("{path}: {source}")]
    InFile {
        path: std::path::PathBuf,
        source: Box<ImageError>,
    },
    /// An image of a batch decoded from bytes ([`Pipeline::batch_from_bytes`]),
    /// by its index: the caller knows what to call it.
    #[error("image {index} of the batch: {source}")]
    InBatch {
        index: usize,
        source: Box<ImageError>,
    },
    #[error("images of one batch have different sizes after preprocessing ({0})")]
    MixedSizes(String),
    #[error("resize failed: {0}")]
    Resize(String),
    #[error("colour jitter gives values that are not 8-bit; use the float batches")]
    NotEightBit,
    #[error("waiting for decoding memory: {0}")]
    Budget(String),
    #[error("tensor: {0}")]
    Tensor(#[from] tch::TchError),
}

impl ImageError {
    fn from_image(e: image::ImageError) -> Self {
        match e {
            image::ImageError::Limits(l) => ImageError::Decode(format!("decoder limit: {l}")),
            image::ImageError::Unsupported(u) => ImageError::Decode(u.to_string()),
            other => ImageError::Decode(other.to_string()),
        }
    }

    /// Wraps the error with the file it came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        ImageError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}
