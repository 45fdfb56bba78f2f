//! What an audit found, as stored and served: findings name each image
//! by its path in the dataset (`train/cat/001.jpg`) and its split; the
//! CSV has one row per image with every score.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::balance::ClassBalance;
use crate::task::Task;

/// An image, by its path in the dataset and its split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub path: String,
    /// `train`, `validation` or `test`.
    pub split: String,
}

/// A suspected label error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelIssue {
    #[serde(flatten)]
    pub image: ImageRef,
    /// The labels the image was given.
    pub given: Vec<String>,
    /// The label it confidently looks like (multi-class, strong evidence
    /// only).
    pub suggested: Option<String>,
    /// Multi-label: the labels in question (given but likely absent, or
    /// absent but likely present).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspect_labels: Vec<String>,
    /// Label quality: self-confidence, the out-of-sample probability of the
    /// given label (multi-label: cleanlab's average over labels); low is
    /// suspicious.
    pub score: f64,
}

/// Images that are copies of one another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DuplicateGroup {
    pub images: Vec<ImageRef>,
    /// The lowest embedding similarity that joined the group (1: the same
    /// bytes).
    pub similarity: f64,
    /// Its images are in more than one split.
    pub leakage: bool,
}

/// An image far from every other one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Outlier {
    #[serde(flatten)]
    pub image: ImageRef,
    /// cleanlab's k-nearest-neighbour score in (0, 1]; low: far.
    pub score: f64,
}

/// Everything an audit found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditFindings {
    pub images: usize,
    pub task: Task,
    pub labels: Vec<String>,
    /// Folds of the out-of-sample linear probes.
    pub folds: usize,
    /// The probes' out-of-sample accuracy (multi-class) or per-label
    /// accuracy (multi-label): how much the label issues can be trusted.
    pub probe_accuracy: f64,
    /// Suspected label errors, lowest score first.
    pub label_issues: Vec<LabelIssue>,
    /// Groups of byte-identical images.
    pub exact_duplicates: Vec<DuplicateGroup>,
    /// Groups of near-identical images (exact copies included), by
    /// embedding cosine similarity at least `near_duplicate_threshold`.
    pub near_duplicates: Vec<DuplicateGroup>,
    pub near_duplicate_threshold: f64,
    /// Duplicate groups (exact or near) whose images cross splits.
    pub leakage_groups: usize,
    /// The lowest-scored hundredth of the images, lowest first.
    pub outliers: Vec<Outlier>,
    pub class_balance: ClassBalance,
    /// Seconds spent computing features (0 when cached) and in all.
    pub feature_seconds: f64,
    pub total_seconds: f64,
}

/// One CSV row per image.
#[derive(Debug, Clone, Serialize)]
pub struct CsvRow {
    pub path: String,
    pub split: String,
    pub given: String,
    pub suggested: String,
    pub label_quality: f64,
    pub label_issue: bool,
    pub outlier_score: f64,
    /// Index of its exact-duplicate group in the findings, or empty.
    pub exact_group: Option<usize>,
    pub near_group: Option<usize>,
    pub leakage: bool,
}

/// The rows as CSV text (header first).
pub fn to_csv(rows: &[CsvRow]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}
