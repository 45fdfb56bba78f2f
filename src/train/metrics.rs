//! Evaluation metrics computed from scores and targets (plain Rust over
//! `Vec`s: validation sets are small next to the cost of the forward pass).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Precision/recall for one label.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Images whose true labels include this one.
    pub support: usize,
    /// Multi-label: the decision threshold chosen on validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Multi-label: average precision of this label's ranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_precision: Option<f64>,
}

/// Multi-class metrics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClassMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<LabelMetrics>,
    /// Rows: true class; columns: predicted class.
    pub confusion_matrix: Vec<Vec<u32>>,
}

/// Multi-label metrics at the per-label thresholds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelSetMetrics {
    pub micro_f1: f64,
    pub macro_f1: f64,
    /// Mean average precision over labels that occur.
    pub map: f64,
    /// Share of images whose predicted label set is exactly right.
    pub exact_match: f64,
    pub per_label: Vec<LabelMetrics>,
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// `logits`: one row of scores per image; `targets`: the true class ids.
pub fn multi_class(logits: &[Vec<f32>], targets: &[usize], labels: &[String]) -> ClassMetrics {
    let n = labels.len();
    let mut cm = vec![vec![0u32; n]; n];
    for (row, &t) in logits.iter().zip(targets) {
        cm[t][argmax(row)] += 1;
    }
    let correct: usize = (0..n).map(|i| cm[i][i] as usize).sum();
    let per_class: Vec<LabelMetrics> = (0..n)
        .map(|c| {
            let tp = cm[c][c] as usize;
            let predicted: usize = (0..n).map(|r| cm[r][c] as usize).sum();
            let support: usize = cm[c].iter().map(|&x| x as usize).sum();
            let (p, r) = (ratio(tp, predicted), ratio(tp, support));
            LabelMetrics {
                label: labels[c].clone(),
                precision: p,
                recall: r,
                f1: f1(p, r),
                support,
                threshold: None,
                average_precision: None,
            }
        })
        .collect();
    ClassMetrics {
        accuracy: ratio(correct, targets.len()),
        macro_f1: per_class.iter().map(|m| m.f1).sum::<f64>() / n.max(1) as f64,
        per_class,
        confusion_matrix: cm,
    }
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Average precision of one label: scores ranked high to low, precision
/// averaged at each true positive.
pub fn average_precision(scores: &[f32], truth: &[bool]) -> Option<f64> {
    let positives = truth.iter().filter(|&&t| t).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut hits, mut sum) = (0usize, 0.0);
    for (rank, &i) in order.iter().enumerate() {
        if truth[i] {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    Some(sum / positives as f64)
}

/// The threshold on `probs` maximising this label's F1 (0.5 when the label
/// never occurs, so it is not predicted everywhere).
pub fn best_threshold(probs: &[f32], truth: &[bool]) -> f64 {
    if !truth.iter().any(|&t| t) {
        return 0.5;
    }
    let mut candidates: Vec<f32> = probs.to_vec();
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    let (mut best_t, mut best_f) = (0.5f64, -1.0f64);
    for &t in &candidates {
        let (tp, fp, fn_) = counts(probs, truth, t as f64);
        let f = f1(ratio(tp, tp + fp), ratio(tp, tp + fn_));
        if f > best_f {
            best_f = f;
            best_t = t as f64;
        }
    }
    // Midway to the next lower score generalises better than the exact score.
    let below = candidates
        .iter()
        .rev()
        .find(|&&c| (c as f64) < best_t)
        .map(|&c| c as f64);
    match below {
        Some(b) => (b + best_t) / 2.0,
        None => best_t.min(0.5),
    }
}

fn counts(probs: &[f32], truth: &[bool], threshold: f64) -> (usize, usize, usize) {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (&p, &t) in probs.iter().zip(truth) {
        match ((p as f64) >= threshold, t) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    (tp, fp, fn_)
}

/// `probs`: sigmoid scores per image; `targets`: the true label sets;
/// `thresholds`: one per label (chosen on validation).
pub fn multi_label(
    probs: &[Vec<f32>],
    targets: &[Vec<usize>],
    labels: &[String],
    thresholds: &[f64],
) -> LabelSetMetrics {
    let n = labels.len();
    let truth: Vec<Vec<bool>> = targets
        .iter()
        .map(|t| (0..n).map(|c| t.contains(&c)).collect())
        .collect();
    let (mut tp_all, mut fp_all, mut fn_all) = (0, 0, 0);
    let mut per_label = Vec::with_capacity(n);
    let mut aps = Vec::new();
    for c in 0..n {
        let col: Vec<f32> = probs.iter().map(|r| r[c]).collect();
        let tcol: Vec<bool> = truth.iter().map(|r| r[c]).collect();
        let (tp, fp, fn_) = counts(&col, &tcol, thresholds[c]);
        tp_all += tp;
        fp_all += fp;
        fn_all += fn_;
        let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
        let ap = average_precision(&col, &tcol);
        aps.extend(ap);
        per_label.push(LabelMetrics {
            label: labels[c].clone(),
            precision: p,
            recall: r,
            f1: f1(p, r),
            support: tp + fn_,
            threshold: Some(thresholds[c]),
            average_precision: ap,
        });
    }
    let exact = probs
        .iter()
        .zip(&truth)
        .filter(|(row, t)| (0..n).all(|c| ((row[c] as f64) >= thresholds[c]) == t[c]))
        .count();
    LabelSetMetrics {
        micro_f1: f1(
            ratio(tp_all, tp_all + fp_all),
            ratio(tp_all, tp_all + fn_all),
        ),
        macro_f1: per_label.iter().map(|m| m.f1).sum::<f64>() / n.max(1) as f64,
        map: if aps.is_empty() {
            0.0
        } else {
            aps.iter().sum::<f64>() / aps.len() as f64
        },
        exact_match: ratio(exact, probs.len()),
        per_label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn multi_class_counts_a_known_confusion() {
        // truth: 0,0,1,1,2 ; predicted: 0,1,1,1,0
        let logits = vec![
            vec![2.0, 0.0, 0.0],
            vec![0.0, 2.0, 0.0],
            vec![0.0, 2.0, 0.0],
            vec![0.0, 2.0, 1.0],
            vec![3.0, 0.0, 1.0],
        ];
        let m = multi_class(&logits, &[0, 0, 1, 1, 2], &names(3));
        assert!((m.accuracy - 0.6).abs() < 1e-9);
        assert_eq!(
            m.confusion_matrix,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        // class 0: p = 1/2, r = 1/2; class 1: p = 2/3, r = 1; class 2: 0.
        assert!((m.per_class[0].precision - 0.5).abs() < 1e-9);
        assert!((m.per_class[1].recall - 1.0).abs() < 1e-9);
        let f1_1 = 2.0 * (2.0 / 3.0) / (2.0 / 3.0 + 1.0);
        assert!((m.macro_f1 - (0.5 + f1_1 + 0.0) / 3.0).abs() < 1e-9);
    }

    #[test]
    fn average_precision_of_a_perfect_and_a_mixed_ranking() {
        assert_eq!(
            average_precision(&[0.9, 0.8, 0.1], &[true, true, false]),
            Some(1.0)
        );
        // ranking: T F T -> (1/1 + 2/3) / 2
        let ap = average_precision(&[0.9, 0.8, 0.7], &[true, false, true]).unwrap();
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
        assert_eq!(average_precision(&[0.3], &[false]), None);
    }

    #[test]
    fn thresholds_separate_separable_scores() {
        let probs = [0.1, 0.2, 0.35, 0.6, 0.7];
        let truth = [false, false, false, true, true];
        let t = best_threshold(&probs, &truth);
        assert!(t > 0.35 && t <= 0.6, "{t}");
        let m = multi_label(
            &probs.iter().map(|&p| vec![p, 1.0 - p]).collect::<Vec<_>>(),
            &[vec![1], vec![1], vec![1], vec![0], vec![0]],
            &names(2),
            &[t, 0.5],
        );
        assert!((m.per_label[0].f1 - 1.0).abs() < 1e-9);
        assert!((m.map - 1.0).abs() < 1e-9);
    }
}
