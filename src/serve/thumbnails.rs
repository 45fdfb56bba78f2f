//! Thumbnails of dataset images (`GET /datasets/{id}/images/{index}`),
//! decoded under the server's [`DecodeBudget`].
//!
//! A stored image may be as large as the pixel limit allows (an 8000x8000
//! PNG compresses to a few kilobytes and decodes to 192 MiB), and the web
//! page asks for dozens at once. So the file's length is checked against
//! `--max-image-file-bytes` and its header read before anything else; the
//! bytes its decode will hold ([`ThumbnailSource::bytes`]: a few rows for
//! a PNG shrunk while it is decoded, else the whole image) are then leased
//! from the budget, and only then is the file read and decoded.
//!
//! A request waits for its lease a short while ([`LEASE_WAIT`]: a page
//! loading a grid of thumbnails gets them a few at a time instead of
//! failing at once), then answers 429 with `Retry-After`; an image whose
//! decode alone exceeds the whole budget is a 413 (`decode_too_large`).

use std::path::PathBuf;
use std::time::Duration;

use crate::budget::DecodeBudget;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::imaging::thumbnail::{thumbnail_png_file, ThumbnailSource};
use crate::imaging::{DecodeLimits, ImageError};

/// How long a thumbnail request waits for decoding memory before a 429.
pub const LEASE_WAIT: Duration = Duration::from_secs(2);

/// What a thumbnail may cost.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailLimits {
    pub decode: DecodeLimits,
    /// `--max-image-file-bytes`.
    pub max_file_bytes: u64,
}

/// The stored image at `path` shrunk to fit `side` x `side`, as PNG.
pub async fn dataset_thumbnail(
    path: PathBuf,
    side: u32,
    limits: ThumbnailLimits,
    budget: &DecodeBudget,
) -> AppResult<Vec<u8>> {
    let at = path.clone();
    let source = blocking(move || ThumbnailSource::inspect(&at, limits.max_file_bytes)).await?;
    let source = source.map_err(refused)?;
    let header = source.header;
    if header.image.pixels() > limits.decode.max_pixels {
        return Err(refused(ImageError::TooLarge {
            width: header.image.width,
            height: header.image.height,
            max_pixels: limits.decode.max_pixels,
        }));
    }
    let lease = budget
        .acquire(source.bytes(side), LEASE_WAIT, "a thumbnail")
        .await
        .map_err(busy_as_429)?;
    let png = blocking(move || {
        let _lease = lease; // held until the decoded pixels are gone
        thumbnail_png_file(&path, &source, &limits.decode, limits.max_file_bytes, side)
    })
    .await?;
    // Stored images passed the checks at upload; one failing now is a fault.
    png.map_err(|e| AppError::Internal(anyhow::anyhow!("thumbnail: {e}")))
}

/// A stored image refused by today's limits (they may have been lowered
/// since it was accepted), named; anything else is a fault.
fn refused(e: ImageError) -> AppError {
    match e {
        ImageError::FileTooLarge { .. } => {
            AppError::client(ErrorKind::TooLarge, "image_file_too_large", e.to_string())
        }
        ImageError::TooLarge { .. } => {
            AppError::client(ErrorKind::TooLarge, "image_too_large", e.to_string())
        }
        other => AppError::Internal(anyhow::anyhow!("reading a stored image: {other}")),
    }
}

/// The budget stayed busy for the whole wait: a 429 the client retries.
pub(crate) fn busy_as_429(e: AppError) -> AppError {
    match e {
        AppError::Client {
            code: "decode_budget_exhausted",
            detail,
            ..
        } => AppError::Overloaded {
            retry_after_secs: 1,
            detail,
        },
        other => other,
    }
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> AppResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(anyhow::Error::from(e)))
}
