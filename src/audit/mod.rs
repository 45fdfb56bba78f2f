//! The dataset audit: what is wrong with a labelled image set, found from
//! a frozen backbone's features (the ones linear probes use, computed by
//! `train`): suspected label errors (K-fold linear probes, then confident
//! learning), exact and near duplicates and the ones crossing splits
//! (leakage), outliers, and class balance.
//!
//! | file | holds |
//! |---|---|
//! | `confident.rs` | confident learning, as cleanlab computes it: thresholds, confident joint, label issues, self-confidence, suggestions; multi-label per label |
//! | `probe.rs` | out-of-sample probabilities from K-fold linear probes on features |
//! | `duplicates.rs` | exact copies by content hash, near copies by embedding cosine, leakage |
//! | `outliers.rs` | k-nearest-neighbour outlier scores (cleanlab's `OutOfDistribution`) |
//! | `balance.rs` | images per class and split, classes too small |
//! | `report.rs` | the findings as stored and served, and the per-image CSV |
//! | `run.rs` | one audit on a blocking thread: images, features, probes, findings |
//! | `service.rs` | start in the background, follow live, read the newest (`Audits`) |

pub mod balance;
pub mod confident;
pub mod duplicates;
pub mod outliers;
pub mod probe;
pub mod report;
pub mod run;
pub mod service;

pub use service::{AuditRequest, AuditView, Audits};

#[cfg(test)]
mod cleanlab_parity;
