//! Class balance: images per class in each split, and a warning for each
//! class too small to validate or to audit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Fewer images of a class than this in an evaluation split (validation,
/// test) make its per-class metrics noise.
pub const MIN_PER_EVAL_SPLIT: usize = 5;

/// Per split, images per class; and what is too small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassBalance {
    /// `split -> label -> images` (a multi-label image counts once per label).
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    pub warnings: Vec<String>,
}

/// Counts `labels[i]` (indices into `names`) per `splits[i]`; warns for
/// a class under [`MIN_PER_EVAL_SPLIT`] in validation or test, and for one
/// with fewer images in all than `folds` (some probes never see it).
pub fn class_balance(
    names: &[String],
    splits: &[&str],
    labels: &[Vec<usize>],
    folds: usize,
) -> ClassBalance {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut totals = vec![0usize; names.len()];
    for (split, ls) in splits.iter().zip(labels) {
        let per = counts
            .entry(split.to_string())
            .or_insert_with(|| names.iter().map(|n| (n.clone(), 0)).collect());
        for &l in ls {
            *per.get_mut(&names[l]).unwrap() += 1;
            totals[l] += 1;
        }
    }
    let mut warnings = Vec::new();
    for (c, name) in names.iter().enumerate() {
        if totals[c] < folds {
            warnings.push(format!(
                "`{name}` has {} images in all, fewer than the audit's {folds} folds: its label issues are guesses",
                totals[c]
            ));
        }
    }
    for split in ["validation", "test"] {
        if let Some(per) = counts.get(split) {
            for (name, &n) in per {
                if n < MIN_PER_EVAL_SPLIT {
                    warnings.push(format!(
                        "`{name}` has {n} images in {split}, fewer than {MIN_PER_EVAL_SPLIT}: too few to validate"
                    ));
                }
            }
        }
    }
    ClassBalance { counts, warnings }
}
