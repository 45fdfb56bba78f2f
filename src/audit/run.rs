//! One audit, on a blocking thread: the dataset's images, their backbone
//! features (through `train`, cached), out-of-sample probabilities, then
//! each finding. Reports its phase as it goes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};
use utoipa::ToSchema;

use super::confident::{find_label_issues, find_multi_label_issues};
use super::duplicates::{crosses_splits, exact_groups, near_groups, Group};
use super::outliers::{flagged, knn_outlier_scores};
use super::probe::{out_of_sample_probs, ProbeConfig};
use super::report::{to_csv, AuditFindings, CsvRow, DuplicateGroup, ImageRef, LabelIssue, Outlier};
use crate::data::Manifest;
use crate::task::Task;
use crate::train::{backbone_features, StopFlag, TrainError};

/// What one audit needs.
#[derive(Debug, Clone)]
pub struct AuditInput {
    pub dataset_dir: PathBuf,
    pub base_model_dir: PathBuf,
    /// Where the features are cached (per dataset and base model).
    pub work_dir: PathBuf,
    pub device: Device,
    pub probe: ProbeConfig,
    pub near_duplicate_threshold: f64,
}

/// Where a running audit is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum AuditProgress {
    /// Hashing the images' bytes.
    Hashing { images: usize },
    /// Computing backbone features.
    Features { done: usize, total: usize },
    /// Training the K-fold probes.
    Probes { done: usize, total: usize },
    /// Confident learning, duplicates, outliers, balance.
    Findings,
}

/// The findings and the per-image CSV.
pub struct AuditOutput {
    pub findings: AuditFindings,
    pub csv: String,
}

/// The dataset's images in one list.
struct Images {
    refs: Vec<ImageRef>,
    paths: Vec<PathBuf>,
    labels: Vec<Vec<usize>>,
    names: Vec<String>,
    task: Task,
}

fn images_of(dir: &Path) -> Result<Images, TrainError> {
    let m = Manifest::load(dir).map_err(|e| TrainError::fatal(format!("{e:#}")))?;
    let mut images = Images {
        refs: Vec::new(),
        paths: Vec::new(),
        labels: Vec::new(),
        names: m.labels.clone(),
        task: m.task,
    };
    // Paths as in the archive: the extracted files live under `files/`.
    let root = dir.join(crate::data::ingest::FILES_DIR);
    let splits = [
        ("train", Some(m.train)),
        ("validation", m.validation),
        ("test", m.test),
    ];
    for (split, samples) in splits {
        for s in samples.into_iter().flatten() {
            let rel = s
                .path
                .strip_prefix(&root)
                .or_else(|_| s.path.strip_prefix(dir))
                .unwrap_or(&s.path);
            images.refs.push(ImageRef {
                path: rel.to_string_lossy().replace('\\', "/"),
                split: split.into(),
            });
            images.paths.push(s.path);
            images.labels.push(s.labels);
        }
    }
    Ok(images)
}

/// Runs the audit; `None` when stopped.
pub fn run_audit(
    input: &AuditInput,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
    stop: &StopFlag,
) -> Result<Option<AuditOutput>, TrainError> {
    let started = Instant::now();
    let images = images_of(&input.dataset_dir)?;
    progress(AuditProgress::Hashing {
        images: images.paths.len(),
    });
    let hashes: Vec<String> = images
        .paths
        .par_iter()
        .map(|p| std::fs::read(p).map(|b| hex::encode(Sha256::digest(b))))
        .collect::<Result<_, _>>()
        .map_err(TrainError::retry)?;
    let feature_start = Instant::now();
    let features = backbone_features(
        &input.base_model_dir,
        images.paths.clone(),
        input.device,
        &input.work_dir,
        &mut |done, total| progress(AuditProgress::Features { done, total }),
        stop,
    )?;
    let Some(features) = features else {
        return Ok(None);
    };
    let feature_seconds = feature_start.elapsed().as_secs_f64();
    let folds = input.probe.folds;
    let probs = out_of_sample_probs(
        &features,
        &images.labels,
        images.names.len(),
        images.task,
        &input.probe,
        &mut |done| progress(AuditProgress::Probes { done, total: folds }),
    );
    progress(AuditProgress::Findings);
    let mut out = findings(&images, &probs, &hashes, &features, input)?;
    out.findings.feature_seconds = feature_seconds;
    out.findings.total_seconds = started.elapsed().as_secs_f64();
    Ok(Some(out))
}

/// Per image: label quality, issue, suggestion, suspect labels.
struct Labelled {
    quality: Vec<f64>,
    is_issue: Vec<bool>,
    suggested: Vec<Option<usize>>,
    suspects: Vec<Vec<usize>>,
    accuracy: f64,
}

fn label_quality(images: &Images, probs: &[Vec<f64>]) -> Labelled {
    let n = probs.len().max(1) as f64;
    match images.task {
        Task::MultiClass => {
            let given: Vec<usize> = images.labels.iter().map(|l| l[0]).collect();
            let found = find_label_issues(probs, &given);
            let right = probs
                .iter()
                .zip(&given)
                .filter(|(p, &g)| p.iter().all(|&v| v <= p[g]))
                .count();
            Labelled {
                quality: found.quality,
                is_issue: found.is_issue,
                suggested: found.suggested,
                suspects: vec![Vec::new(); probs.len()],
                accuracy: right as f64 / n,
            }
        }
        Task::MultiLabel => {
            let found = find_multi_label_issues(probs, &images.labels);
            let k = images.names.len().max(1) as f64;
            let right: usize = probs
                .iter()
                .zip(&images.labels)
                .map(|(p, l)| {
                    (0..p.len())
                        .filter(|c| (p[*c] >= 0.5) == l.contains(c))
                        .count()
                })
                .sum();
            Labelled {
                quality: found.quality,
                is_issue: found.is_issue,
                suggested: vec![None; probs.len()],
                suspects: found.suspect_labels,
                accuracy: right as f64 / (n * k),
            }
        }
    }
}

fn groups_view(groups: &[Group], images: &Images) -> Vec<DuplicateGroup> {
    let splits: Vec<&str> = images.refs.iter().map(|r| r.split.as_str()).collect();
    groups
        .iter()
        .map(|g| DuplicateGroup {
            images: g.members.iter().map(|&i| images.refs[i].clone()).collect(),
            similarity: g.min_similarity,
            leakage: crosses_splits(g, &splits),
        })
        .collect()
}

/// The group index of each image, if any.
fn membership(groups: &[Group], n: usize) -> Vec<Option<usize>> {
    let mut of = vec![None; n];
    for (gi, g) in groups.iter().enumerate() {
        for &i in &g.members {
            of[i] = Some(gi);
        }
    }
    of
}

fn findings(
    images: &Images,
    probs: &[Vec<f64>],
    hashes: &[String],
    features: &Tensor,
    input: &AuditInput,
) -> Result<AuditOutput, TrainError> {
    let n = images.paths.len();
    let labelled = label_quality(images, probs);
    let exact = exact_groups(hashes);
    let near = near_groups(features, input.near_duplicate_threshold);
    let outlier_scores = knn_outlier_scores(features);
    let (exact_view, near_view) = (groups_view(&exact, images), groups_view(&near, images));
    let names = |ls: &[usize]| {
        ls.iter()
            .map(|&l| images.names[l].clone())
            .collect::<Vec<_>>()
    };
    let mut issues: Vec<LabelIssue> = (0..n)
        .filter(|&i| labelled.is_issue[i])
        .map(|i| LabelIssue {
            image: images.refs[i].clone(),
            given: names(&images.labels[i]),
            suggested: labelled.suggested[i].map(|s| images.names[s].clone()),
            suspect_labels: names(&labelled.suspects[i]),
            score: labelled.quality[i],
        })
        .collect();
    issues.sort_by(|a, b| a.score.total_cmp(&b.score));
    let splits: Vec<&str> = images.refs.iter().map(|r| r.split.as_str()).collect();
    let class_balance =
        super::balance::class_balance(&images.names, &splits, &images.labels, input.probe.folds);
    let (exact_of, near_of) = (membership(&exact, n), membership(&near, n));
    let leaking = |g: Option<usize>, v: &[DuplicateGroup]| g.is_some_and(|g| v[g].leakage);
    let rows: Vec<CsvRow> = (0..n)
        .map(|i| CsvRow {
            path: images.refs[i].path.clone(),
            split: images.refs[i].split.clone(),
            given: names(&images.labels[i]).join(";"),
            suggested: labelled.suggested[i].map_or(String::new(), |s| images.names[s].clone()),
            label_quality: labelled.quality[i],
            label_issue: labelled.is_issue[i],
            outlier_score: outlier_scores[i],
            exact_group: exact_of[i],
            near_group: near_of[i],
            leakage: leaking(exact_of[i], &exact_view) || leaking(near_of[i], &near_view),
        })
        .collect();
    let findings = AuditFindings {
        images: n,
        task: images.task,
        labels: images.names.clone(),
        folds: input.probe.folds,
        probe_accuracy: labelled.accuracy,
        label_issues: issues,
        leakage_groups: exact_view
            .iter()
            .chain(&near_view)
            .filter(|g| g.leakage)
            .count(),
        exact_duplicates: exact_view,
        near_duplicates: near_view,
        near_duplicate_threshold: input.near_duplicate_threshold,
        outliers: flagged(&outlier_scores)
            .into_iter()
            .map(|i| Outlier {
                image: images.refs[i].clone(),
                score: outlier_scores[i],
            })
            .collect(),
        class_balance,
        feature_seconds: 0.0,
        total_seconds: 0.0,
    };
    let csv = to_csv(&rows).map_err(TrainError::retry)?;
    Ok(AuditOutput { findings, csv })
}
