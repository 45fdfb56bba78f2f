//! Turning logits into the labels and scores a client reads.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use utoipa::ToSchema;

use crate::task::Task;

/// A label and its score (softmax for multi-class, sigmoid for multi-label).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    pub label: String,
    pub score: f64,
}

/// The answer for one image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageResult {
    /// Multi-class: the `top_k` labels. Multi-label: the labels at or above
    /// their threshold. Highest score first.
    pub predictions: Vec<Prediction>,
    /// Every label's score, when `all_scores` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<Prediction>>,
}

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    pub top_k: Option<usize>,
    /// One threshold for every label (multi-label).
    pub threshold: Option<f64>,
    pub all_scores: bool,
    /// Raw scores even when the model is calibrated (`calibrated=false`).
    pub raw: bool,
}

/// Which scores an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScoreCalibration {
    /// Temperature-scaled scores (the default for a calibrated model).
    Temperature,
    /// Raw scores, as asked (`calibrated=false`).
    Off,
    /// Raw scores: the model has no calibration (an imported model, or one
    /// trained before calibration existed).
    None,
}

/// Scores of one row, ranked.
fn ranked(scores: &[f32], labels: &[String]) -> Vec<Prediction> {
    let mut out: Vec<Prediction> = scores
        .iter()
        .zip(labels)
        .map(|(&s, l)| Prediction {
            label: l.clone(),
            score: s as f64,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// `logits`: [n, labels]. `thresholds`: per label, chosen in training.
pub fn format(
    logits: &Tensor,
    task: Task,
    labels: &[String],
    thresholds: Option<&[f64]>,
    opts: &OutputOptions,
) -> Vec<ImageResult> {
    let probs = match task {
        Task::MultiClass => logits.softmax(-1, Kind::Float),
        Task::MultiLabel => logits.sigmoid(),
    };
    let n = probs.size()[0];
    (0..n)
        .map(|i| {
            let row: Vec<f32> = Vec::try_from(probs.get(i)).unwrap_or_default();
            let all = ranked(&row, labels);
            let predictions = match task {
                Task::MultiClass => {
                    let k = opts.top_k.unwrap_or(5).clamp(1, labels.len().max(1));
                    all.iter().take(k).cloned().collect()
                }
                Task::MultiLabel => all
                    .iter()
                    .filter(|p| {
                        let idx = labels.iter().position(|l| *l == p.label).unwrap_or(0);
                        let t = opts
                            .threshold
                            .or_else(|| thresholds.and_then(|t| t.get(idx).copied()))
                            .unwrap_or(0.5);
                        p.score >= t
                    })
                    .cloned()
                    .collect(),
            };
            ImageResult {
                predictions,
                scores: opts.all_scores.then_some(all),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn multi_class_ranks_softmax_scores_and_caps_top_k() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0]).view([1, 3]);
        let opts = OutputOptions {
            top_k: Some(10),
            ..Default::default()
        };
        let r = &format(&logits, Task::MultiClass, &labels(), None, &opts)[0];
        assert_eq!(r.predictions.len(), 3);
        assert_eq!(r.predictions[0].label, "b");
        let total: f64 = r.predictions.iter().map(|p| p.score).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let one = OutputOptions {
            top_k: Some(1),
            ..Default::default()
        };
        assert_eq!(
            format(&logits, Task::MultiClass, &labels(), None, &one)[0]
                .predictions
                .len(),
            1
        );
    }

    #[test]
    fn multi_label_uses_per_label_thresholds_unless_overridden() {
        // sigmoid(0) = 0.5, sigmoid(2) = 0.88, sigmoid(-2) = 0.12
        let logits = Tensor::from_slice(&[0.0f32, 2.0, -2.0]).view([1, 3]);
        let t = [0.6, 0.6, 0.1];
        let r = &format(
            &logits,
            Task::MultiLabel,
            &labels(),
            Some(&t),
            &OutputOptions::default(),
        )[0];
        let got: Vec<&str> = r.predictions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(got, ["b", "c"]);
        let opts = OutputOptions {
            threshold: Some(0.4),
            all_scores: true,
            ..Default::default()
        };
        let r = &format(&logits, Task::MultiLabel, &labels(), Some(&t), &opts)[0];
        let got: Vec<&str> = r.predictions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(got, ["b", "a"]);
        assert_eq!(r.scores.as_ref().unwrap().len(), 3);
    }
}
