//! Turning a split's logits into losses and metrics.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};
use utoipa::ToSchema;

use super::config::SelectionMetric;
use super::metrics::{self, ClassMetrics, LabelSetMetrics};
use crate::task::Task;

/// Metrics of one split at one point in training.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Evaluation {
    MultiClass(ClassMetrics),
    MultiLabel(LabelSetMetrics),
}

impl Evaluation {
    /// The number early stopping and model selection maximise: accuracy
    /// (multi-class) or mAP (multi-label, threshold-free).
    pub fn score(&self) -> f64 {
        match self {
            Self::MultiClass(m) => m.accuracy,
            Self::MultiLabel(m) => m.map,
        }
    }

    /// The job's selection metric (see [`SelectionMetric`]); its default
    /// is [`Self::score`].
    pub fn score_by(&self, metric: Option<SelectionMetric>) -> f64 {
        match (self, metric) {
            (Self::MultiClass(m), Some(SelectionMetric::MacroF1)) => m.macro_f1,
            (Self::MultiLabel(m), Some(SelectionMetric::MacroF1)) => m.macro_f1,
            _ => self.score(),
        }
    }

    /// Per-label thresholds (multi-label).
    pub fn thresholds(&self) -> Option<Vec<f64>> {
        match self {
            Self::MultiClass(_) => None,
            Self::MultiLabel(m) => Some(m.per_label.iter().filter_map(|l| l.threshold).collect()),
        }
    }
}

/// One epoch's record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub learning_rate: f64,
    pub seconds: f64,
    pub train_images_per_sec: f64,
    /// Where the epoch's wall time went (absent in records written before
    /// it was measured).
    #[serde(default)]
    pub time_shares: super::timing::TimeShares,
    #[schema(value_type = Object)]
    pub validation: Evaluation,
}

/// Targets as a tensor: class ids (multi-class) or a multi-hot matrix.
pub fn targets_tensor(targets: &[Vec<usize>], task: Task, num_labels: usize) -> Tensor {
    match task {
        Task::MultiClass => {
            let ids: Vec<i64> = targets.iter().map(|t| t[0] as i64).collect();
            Tensor::from_slice(&ids)
        }
        Task::MultiLabel => {
            let mut hot = vec![0f32; targets.len() * num_labels];
            for (i, t) in targets.iter().enumerate() {
                for &c in t {
                    hot[i * num_labels + c] = 1.0;
                }
            }
            Tensor::from_slice(&hot).view([targets.len() as i64, num_labels as i64])
        }
    }
}

/// The training loss of a batch: cross-entropy (with label smoothing) or
/// binary cross-entropy on logits. Multi-class targets are class ids, or
/// `[B, K]` probabilities (MixUp / CutMix), which torch's cross-entropy
/// smooths the same way (`(1 - e) * p + e / K`).
pub fn loss(logits: &Tensor, targets: &Tensor, task: Task, label_smoothing: f64) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    match task {
        Task::MultiClass => logits.cross_entropy_loss::<Tensor>(
            targets,
            None,
            Reduction::Mean,
            -100,
            label_smoothing,
        ),
        Task::MultiLabel => {
            logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::Mean)
        }
    }
}

/// Loss and metrics of a whole split from its logits. For multi-label
/// splits, `thresholds` None means: choose them here (validation).
pub fn evaluate(
    logits: &Tensor,
    targets: &[Vec<usize>],
    task: Task,
    labels: &[String],
    thresholds: Option<&[f64]>,
) -> (f64, Evaluation) {
    let logits = logits.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let t = targets_tensor(targets, task, labels.len());
    let loss = loss(&logits, &t, task, 0.0).double_value(&[]);
    match task {
        Task::MultiClass => {
            let rows = to_rows(&logits);
            let ids: Vec<usize> = targets.iter().map(|t| t[0]).collect();
            (
                loss,
                Evaluation::MultiClass(metrics::multi_class(&rows, &ids, labels)),
            )
        }
        Task::MultiLabel => {
            let probs = to_rows(&logits.sigmoid());
            let chosen: Vec<f64> = match thresholds {
                Some(t) => t.to_vec(),
                None => (0..labels.len())
                    .map(|c| {
                        let col: Vec<f32> = probs.iter().map(|r| r[c]).collect();
                        let truth: Vec<bool> = targets.iter().map(|t| t.contains(&c)).collect();
                        metrics::best_threshold(&col, &truth)
                    })
                    .collect(),
            };
            (
                loss,
                Evaluation::MultiLabel(metrics::multi_label(&probs, targets, labels, &chosen)),
            )
        }
    }
}

fn to_rows(t: &Tensor) -> Vec<Vec<f32>> {
    let (n, c) = t.size2().expect("a matrix");
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).expect("f32 values");
    (0..n as usize)
        .map(|i| flat[i * c as usize..(i + 1) * c as usize].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_metric_picks_what_is_maximised() {
        let m: ClassMetrics = serde_json::from_value(serde_json::json!({
            "accuracy": 0.9, "macro_f1": 0.6, "per_class": [], "confusion_matrix": []
        }))
        .unwrap();
        let e = Evaluation::MultiClass(m);
        assert_eq!(e.score_by(None), 0.9);
        assert_eq!(e.score_by(Some(SelectionMetric::Accuracy)), 0.9);
        assert_eq!(e.score_by(Some(SelectionMetric::MacroF1)), 0.6);
    }
}
