//! The dataset summary returned by the API and stored with the dataset.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::task::Task;

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

/// At most this many skipped files are listed; beyond, they are counted.
pub const MAX_SKIPPED_LISTED: usize = 100;

/// The files left out of a dataset: the first 100 of them
/// (`MAX_SKIPPED_LISTED`), and how many there were in all. A Parquet file
/// can hold millions of rows without an image; listing each would make
/// every later answer about the dataset as large.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkipList {
    /// Files left out (undecodable images below the tolerance, non-images,
    /// rows without an image, ...): the first 100.
    pub skipped: Vec<Skipped>,
    /// How many files were left out in all (`skipped` lists the first 100).
    #[serde(default)]
    pub skipped_total: usize,
}

impl SkipList {
    /// Counts one more, listing it while fewer than the cap are listed.
    pub fn push(&mut self, s: Skipped) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(s);
        }
    }

    /// Adds `other`'s files after these.
    pub fn append(&mut self, other: SkipList) {
        let unlisted = other.len() - other.skipped.len();
        for s in other.skipped {
            self.push(s);
        }
        self.skipped_total += unlisted;
    }

    /// Puts `first`'s files before these.
    pub fn prepend(&mut self, first: SkipList) {
        let rest = std::mem::replace(self, first);
        self.append(rest);
    }

    /// How many files were left out in all.
    pub fn len(&self) -> usize {
        self.skipped_total.max(self.skipped.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listed files.
    pub fn iter(&self) -> std::slice::Iter<'_, Skipped> {
        self.skipped.iter()
    }
}

impl Extend<Skipped> for SkipList {
    fn extend<I: IntoIterator<Item = Skipped>>(&mut self, iter: I) {
        for s in iter {
            self.push(s);
        }
    }
}

impl FromIterator<Skipped> for SkipList {
    fn from_iter<I: IntoIterator<Item = Skipped>>(iter: I) -> Self {
        let mut list = SkipList::default();
        list.extend(iter);
        list
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
    /// Files left out: `skipped` (the first 100) and `skipped_total`.
    #[serde(flatten)]
    pub skipped: SkipList,
    /// Groups of byte-identical images found in more than one split.
    pub duplicates_across_splits: Vec<Vec<String>>,
    /// Things worth a look: class imbalance, duplicates, skipped files.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(n: usize, what: &str) -> SkipList {
        (0..n)
            .map(|i| Skipped::new(format!("{what}{i}"), "x"))
            .collect()
    }

    #[test]
    fn skip_lists_keep_the_first_and_count_the_rest() {
        let mut list = many(150, "a");
        assert_eq!((list.skipped.len(), list.len()), (MAX_SKIPPED_LISTED, 150));
        list.append(many(10, "b"));
        assert_eq!(list.len(), 160);
        let mut later = many(3, "c");
        later.prepend(many(120, "d"));
        assert_eq!(later.len(), 123);
        assert_eq!(later.skipped[0].file, "d0");
        assert_eq!(later.skipped.len(), MAX_SKIPPED_LISTED);
    }

    #[test]
    fn summaries_flatten_the_list_and_read_old_records() {
        let json = serde_json::to_value(many(2, "a")).unwrap();
        assert_eq!(json["skipped_total"], 2);
        let old: SkipList =
            serde_json::from_value(serde_json::json!({"skipped": [{"file": "x", "reason": "y"}]}))
                .unwrap();
        assert_eq!(old.len(), 1);
    }
}
