//! The dataset summary returned by the API and stored with the dataset.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Task;

/// A file left out of the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Skipped {
    /// Path inside the archive.
    pub file: String,
    pub reason: String,
}

impl Skipped {
    pub fn new(file: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Self {
            file: file.as_ref().to_string_lossy().replace('\\', "/"),
            reason: reason.into(),
        }
    }
}

/// Image counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitSummary {
    pub images: usize,
    /// Images per label (a multi-label image counts for each of its labels).
    pub per_label: BTreeMap<String, usize>,
}

/// The range of image dimensions, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SizeRange {
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
}

impl SizeRange {
    pub fn include(range: Option<SizeRange>, w: u32, h: u32) -> SizeRange {
        match range {
            None => SizeRange {
                min_width: w,
                max_width: w,
                min_height: h,
                max_height: h,
            },
            Some(r) => SizeRange {
                min_width: r.min_width.min(w),
                max_width: r.max_width.max(w),
                min_height: r.min_height.min(h),
                max_height: r.max_height.max(h),
            },
        }
    }
}

/// What vitrine found in an uploaded dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetSummary {
    /// `splits` (`train/<label>/...`), `labels` (`<label>/...`) or `metadata`.
    pub layout: String,
    /// Inferred task; a job's config may force it.
    pub task: Task,
    /// Class names, sorted; the index is the class id.
    pub labels: Vec<String>,
    /// Usable images in all splits.
    pub images: usize,
    /// `train`, and `validation` / `test` when the archive has them. With no
    /// `validation`, the trainer draws a seeded stratified split from `train`.
    pub splits: BTreeMap<String, SplitSummary>,
    pub image_size: Option<SizeRange>,
    /// Bytes the archive expanded to.
    pub extracted_bytes: u64,
    /// Files left out (undecodable images below the tolerance, non-images, ...).
    pub skipped: Vec<Skipped>,
    /// Groups of byte-identical images found in more than one split.
    pub duplicates_across_splits: Vec<Vec<String>>,
    /// Things worth a look: class imbalance, duplicates, skipped files.
    pub warnings: Vec<String>,
}
