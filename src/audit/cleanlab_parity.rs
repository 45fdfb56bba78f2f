//! The audit's maths against cleanlab 2.9.0 itself (in the venv), on the
//! same predicted probabilities, labels and features: the label-issue
//! sets are equal, the quality and outlier scores within 1e-6.

use std::path::Path;

use rand::{Rng, SeedableRng};
use tch::Tensor;

use super::confident::{find_label_issues, find_multi_label_issues};
use super::outliers::knn_outlier_scores;

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Probabilities a decent but imperfect model would give, and labels
/// with about 10% flipped: `(probs, given labels)`.
fn multi_class(rng: &mut impl Rng, n: usize, k: usize) -> (Vec<Vec<f64>>, Vec<usize>) {
    (0..n)
        .map(|_| {
            let truth = rng.gen_range(0..k);
            let logits: Vec<f64> = (0..k)
                .map(|c| rng.gen_range(-1.0..1.0) + if c == truth { 2.5 } else { 0.0 })
                .collect();
            let given = if rng.gen_bool(0.1) {
                rng.gen_range(0..k)
            } else {
                truth
            };
            (softmax(&logits), given)
        })
        .unzip()
}

fn multi_label(rng: &mut impl Rng, n: usize, k: usize) -> (Vec<Vec<f64>>, Vec<Vec<usize>>) {
    (0..n)
        .map(|_| {
            let truth: Vec<bool> = (0..k).map(|_| rng.gen_bool(0.35)).collect();
            let probs: Vec<f64> = truth
                .iter()
                .map(|&t| {
                    let z: f64 = rng.gen_range(-1.5..1.5) + if t { 2.0 } else { -2.0 };
                    1.0 / (1.0 + (-z).exp())
                })
                .collect();
            let given = (0..k).filter(|&c| truth[c] != rng.gen_bool(0.06)).collect();
            (probs, given)
        })
        .unzip()
}

fn python() -> std::path::PathBuf {
    std::env::var_os("VITRINE_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn mask_indices(mask: &[bool]) -> Vec<usize> {
    (0..mask.len()).filter(|&i| mask[i]).collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-6, "{what}: max abs diff {worst}");
}

#[test]
fn label_issues_and_scores_equal_cleanlabs() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    let (probs, labels) = multi_class(&mut rng, 600, 6);
    let (ml_probs, ml_labels) = multi_label(&mut rng, 300, 4);
    let features: Vec<Vec<f64>> = (0..200)
        .map(|i| {
            // Three clusters in the positive orthant; image 7 points the
            // other way (cosine ignores length).
            let centre = (i % 3) as f64;
            let sign = if i == 7 { -1.0 } else { 1.0 };
            (0..8)
                .map(|d| sign * (3.0 + centre * (d % 2) as f64) + rng.gen_range(-1.0..1.0))
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    let doc = serde_json::json!({
        "multi_class": {"probs": probs, "labels": labels},
        "multi_label": {"probs": ml_probs, "labels": ml_labels},
        "features": features,
    });
    std::fs::write(&input, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/cleanlab_reference.py"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bools = |key: &str| -> Vec<bool> { serde_json::from_value(want[key].clone()).unwrap() };
    let floats = |key: &str| -> Vec<f64> { serde_json::from_value(want[key].clone()).unwrap() };

    let found = find_label_issues(&probs, &labels);
    let expected = mask_indices(&bools("multi_class_issues"));
    assert!(
        expected.len() > 20,
        "a test of nothing: {} issues",
        expected.len()
    );
    assert_eq!(mask_indices(&found.is_issue), expected);
    assert_close(
        "self-confidence",
        &found.quality,
        &floats("multi_class_scores"),
    );

    let ml = find_multi_label_issues(&ml_probs, &ml_labels);
    let expected = mask_indices(&bools("multi_label_issues"));
    assert!(
        expected.len() > 10,
        "a test of nothing: {} issues",
        expected.len()
    );
    assert_eq!(mask_indices(&ml.is_issue), expected);
    assert_close(
        "multi-label quality",
        &ml.quality,
        &floats("multi_label_scores"),
    );

    let flat: Vec<f64> = features.iter().flatten().copied().collect();
    let x = Tensor::from_slice(&flat).view([200, 8]);
    let scores = knn_outlier_scores(&x);
    let want_scores = floats("outlier_scores");
    assert_close("outlier scores", &scores, &want_scores);
    let lowest = (0..200)
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    assert_eq!(lowest, 7, "the spread-out point is the outlier");
}
