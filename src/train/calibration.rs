//! Calibration: how far a model's scores can be trusted, and temperature
//! scaling, which makes them trustworthy without changing any decision.
//!
//! A fine-tuned network's softmax is over-confident: a 0.95 is right far
//! less often than 95% of the time. Temperature scaling (Guo et al., 2017)
//! divides the logits by one number `T` fitted on the validation split by
//! minimising the negative log-likelihood; the arg-max cannot move. A
//! multi-label model gets one `T` per label (each label is its own binary
//! problem).
//!
//! The fit: with `b = 1/T`, the NLL of `b * z` is convex in `b` (its second
//! derivative is a variance), so its derivative is monotone and bisection
//! on `log b` finds the minimum to machine precision with no step size to
//! tune. `T` is kept within [`T_RANGE`]; a validation split the model
//! separates perfectly drives the NLL's minimum to `T -> 0`, and then `T`
//! stays 1 (no evidence to sharpen on).
//!
//! The measures follow `torchmetrics`' `calibration_error` (`norm="l1"`)
//! exactly, so the numbers can be checked against it: 15 equal-width bins
//! `[i/15, (i+1)/15)`, a score of exactly 1 in a bin of its own; top-label
//! confidence for multi-class; for multi-label, the mean of each label's
//! binary ECE. Everything is computed in f64.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::task::Task;

/// Equal-width bins of the ECE and the reliability diagram.
pub const BINS: usize = 15;

/// The temperatures a fit may return.
pub const T_RANGE: (f64, f64) = (0.05, 20.0);

/// A split's logits `[n][labels]` and targets (a class id per image, or the
/// set of labels present).
pub struct Split<'a> {
    pub logits: &'a [Vec<f64>],
    pub targets: &'a [Vec<usize>],
}

/// A model's calibration, in its card.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Calibration {
    pub method: Method,
    /// One temperature (multi-class) or one per label (multi-label): the
    /// served scores are `softmax(z / T)` or `sigmoid(z_c / T_c)`.
    pub temperatures: Vec<f64>,
    /// Multi-label decision thresholds on the calibrated scores, tuned on
    /// them (the card's `thresholds` are the same decisions on raw scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<f64>>,
    /// Before and after on the validation split (where it was fitted).
    pub validation: Comparison,
    /// Before and after on the test split, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Comparison>,
}

/// How scores are calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Logits divided by a temperature fitted by minimising the NLL.
    Temperature,
}

/// What calibration did to one split.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Comparison {
    /// With the raw scores.
    pub before: Measures,
    /// With the temperature-scaled scores (what `/predict` serves).
    pub after: Measures,
}

/// How well one set of scores is calibrated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Measures {
    /// Expected calibration error (15 bins, L1; multi-label: mean over labels).
    pub ece: f64,
    /// Brier score: mean squared error of the probabilities (multi-class:
    /// summed over classes per image; multi-label: mean over labels).
    pub brier: f64,
    /// Negative log-likelihood (cross-entropy, or mean binary cross-entropy).
    pub nll: f64,
    /// The reliability diagram (multi-label: every image-label pair).
    pub bins: Vec<Bin>,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    /// Scores in the bin.
    pub count: u64,
    /// Their mean score (0 when empty).
    pub confidence: f64,
    /// How often they were right (multi-class: the top label was the
    /// true one; multi-label: the label was present).
    pub accuracy: f64,
}

/// The temperature(s) fitted on `split`: one for multi-class, one per
/// label for multi-label.
pub fn fit(task: Task, split: &Split) -> Vec<f64> {
    match task {
        Task::MultiClass => vec![fit_one(|b| multi_class_slope(split, b))],
        Task::MultiLabel => (0..width(split))
            .map(|c| fit_one(|b| label_slope(split, c, b)))
            .collect(),
    }
}

/// Minimises a convex NLL over `b = 1/T` given its derivative in `b`:
/// bisection on `log b` within the allowed temperatures.
fn fit_one(slope: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = ((1.0 / T_RANGE.1).ln(), (1.0 / T_RANGE.0).ln());
    if slope(lo.exp()) >= 0.0 {
        return T_RANGE.1;
    }
    // Still falling at the smallest temperature: the split is (all but)
    // perfectly separated and gives no evidence for any finite one, so the
    // scores stay as they are rather than be sharpened to 0 and 1.
    if slope(hi.exp()) <= 0.0 {
        return 1.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if slope(mid.exp()) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-14 {
            break;
        }
    }
    1.0 / (0.5 * (lo + hi)).exp()
}

/// d/db of the mean cross-entropy of `b * z`: `E_p[z] - z_y`, averaged.
fn multi_class_slope(split: &Split, b: f64) -> f64 {
    let mut sum = 0.0;
    for (z, t) in split.logits.iter().zip(split.targets) {
        let scaled: Vec<f64> = z.iter().map(|v| v * b).collect();
        let p = softmax(&scaled);
        sum += p.iter().zip(z).map(|(p, z)| p * z).sum::<f64>() - z[t[0]];
    }
    sum / split.logits.len().max(1) as f64
}

/// d/db of label `c`'s mean binary cross-entropy of `b * z`: `(σ(bz) - y) z`.
fn label_slope(split: &Split, c: usize, b: f64) -> f64 {
    let mut sum = 0.0;
    for (z, t) in split.logits.iter().zip(split.targets) {
        let y = if t.contains(&c) { 1.0 } else { 0.0 };
        sum += (sigmoid(b * z[c]) - y) * z[c];
    }
    sum / split.logits.len().max(1) as f64
}

/// Logits divided by their temperature (one, or one per label).
pub fn scale(logits: &[Vec<f64>], temperatures: &[f64]) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(c, z)| z / temperatures.get(c).or(temperatures.first()).unwrap_or(&1.0))
                .collect()
        })
        .collect()
}

/// The split's scores (softmax or sigmoid) measured.
pub fn measure(task: Task, split: &Split) -> Measures {
    let probs = probabilities(task, split.logits);
    let truth = Truth::new(task, split.targets, width(split));
    let (ece, bins) = match task {
        Task::MultiClass => {
            let (conf, acc) = top_label(&probs, &truth);
            (ece(&conf, &acc), bins(&conf, &acc))
        }
        Task::MultiLabel => {
            let k = width(split);
            let per_label: f64 = (0..k)
                .map(|c| {
                    let (conf, acc) = label_column(&probs, &truth, c);
                    ece(&conf, &acc)
                })
                .sum();
            let (conf, acc) = pooled(&probs, &truth);
            (per_label / k.max(1) as f64, bins(&conf, &acc))
        }
    };
    Measures {
        ece,
        brier: brier(task, &probs, &truth),
        nll: nll(task, split.logits, &truth),
        bins,
    }
}

/// Before and after scaling by `temperatures`.
pub fn compare(task: Task, split: &Split, temperatures: &[f64]) -> Comparison {
    let scaled = scale(split.logits, temperatures);
    Comparison {
        before: measure(task, split),
        after: measure(
            task,
            &Split {
                logits: &scaled,
                targets: split.targets,
            },
        ),
    }
}

fn width(split: &Split) -> usize {
    split.logits.first().map_or(0, Vec::len)
}

/// Softmax rows (multi-class) or element-wise sigmoids (multi-label).
pub fn probabilities(task: Task, logits: &[Vec<f64>]) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|z| match task {
            Task::MultiClass => softmax(z),
            Task::MultiLabel => z.iter().map(|&v| sigmoid(v)).collect(),
        })
        .collect()
}

/// One-hot (multi-class) or multi-hot (multi-label) targets.
struct Truth(Vec<Vec<f64>>);

impl Truth {
    fn new(task: Task, targets: &[Vec<usize>], k: usize) -> Self {
        Self(
            targets
                .iter()
                .map(|t| {
                    let mut row = vec![0.0; k];
                    let present: &[usize] = match task {
                        Task::MultiClass => &t[..1],
                        Task::MultiLabel => t,
                    };
                    for &c in present {
                        row[c] = 1.0;
                    }
                    row
                })
                .collect(),
        )
    }
}

/// Top-label confidence and whether the top label is the true one (the
/// first of equal maxima, as `torch.max`).
fn top_label(probs: &[Vec<f64>], truth: &Truth) -> (Vec<f64>, Vec<f64>) {
    probs
        .iter()
        .zip(&truth.0)
        .map(|(p, y)| {
            let top = (0..p.len()).fold(0, |best, c| if p[c] > p[best] { c } else { best });
            (p[top], y[top])
        })
        .unzip()
}

fn label_column(probs: &[Vec<f64>], truth: &Truth, c: usize) -> (Vec<f64>, Vec<f64>) {
    probs
        .iter()
        .zip(&truth.0)
        .map(|(p, y)| (p[c], y[c]))
        .unzip()
}

fn pooled(probs: &[Vec<f64>], truth: &Truth) -> (Vec<f64>, Vec<f64>) {
    probs
        .iter()
        .zip(&truth.0)
        .flat_map(|(p, y)| p.iter().copied().zip(y.iter().copied()))
        .unzip()
}

/// `torch.bucketize(conf, linspace(0, 1, 16), right=True) - 1`: bin `i`
/// holds `[i/15, (i+1)/15)`, and a score of exactly 1 has bin 15.
fn bucket(conf: f64) -> usize {
    (0..=BINS)
        .filter(|&i| i as f64 / BINS as f64 <= conf)
        .count()
        .saturating_sub(1)
}

/// Count, summed confidence and summed accuracy per bucket (16 of them).
fn buckets(conf: &[f64], acc: &[f64]) -> Vec<(u64, f64, f64)> {
    let mut out = vec![(0u64, 0.0, 0.0); BINS + 1];
    for (&c, &a) in conf.iter().zip(acc) {
        let b = &mut out[bucket(c)];
        b.0 += 1;
        b.1 += c;
        b.2 += a;
    }
    out
}

/// Expected calibration error, L1, as `torchmetrics` computes it.
fn ece(conf: &[f64], acc: &[f64]) -> f64 {
    let n = conf.len().max(1) as f64;
    buckets(conf, acc)
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(count, c, a)| (a / count as f64 - c / count as f64).abs() * count as f64 / n)
        .sum()
}

/// The 15 bins of the reliability diagram; a score of exactly 1 is shown
/// in the last.
fn bins(conf: &[f64], acc: &[f64]) -> Vec<Bin> {
    let mut b = buckets(conf, acc);
    let top = b.pop().expect("16 buckets");
    let last = b.last_mut().expect("15 bins");
    *last = (last.0 + top.0, last.1 + top.1, last.2 + top.2);
    b.iter()
        .enumerate()
        .map(|(i, &(count, c, a))| {
            let mean = |s: f64| if count > 0 { s / count as f64 } else { 0.0 };
            Bin {
                lower: i as f64 / BINS as f64,
                upper: (i + 1) as f64 / BINS as f64,
                count,
                confidence: mean(c),
                accuracy: mean(a),
            }
        })
        .collect()
}

fn brier(task: Task, probs: &[Vec<f64>], truth: &Truth) -> f64 {
    let squares: f64 = probs
        .iter()
        .zip(&truth.0)
        .flat_map(|(p, y)| p.iter().zip(y).map(|(p, y)| (p - y) * (p - y)))
        .sum();
    let n = probs.len().max(1) as f64;
    match task {
        Task::MultiClass => squares / n,
        Task::MultiLabel => squares / (n * probs.first().map_or(1, Vec::len).max(1) as f64),
    }
}

/// Cross-entropy, or binary cross-entropy averaged over every element,
/// from the logits (log-sum-exp and softplus, so no score rounds to 0).
fn nll(task: Task, logits: &[Vec<f64>], truth: &Truth) -> f64 {
    let n = logits.len().max(1) as f64;
    match task {
        Task::MultiClass => {
            let total: f64 = logits
                .iter()
                .zip(&truth.0)
                .map(|(z, y)| {
                    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                    let zy: f64 = z.iter().zip(y).map(|(z, y)| z * y).sum();
                    lse - zy
                })
                .sum();
            total / n
        }
        Task::MultiLabel => {
            let k = logits.first().map_or(1, Vec::len).max(1) as f64;
            let total: f64 = logits
                .iter()
                .zip(&truth.0)
                .flat_map(|(z, y)| z.iter().zip(y).map(|(&z, &y)| softplus(z) - y * z))
                .sum();
            total / (n * k)
        }
    }
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^z)`, without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// A multi-label threshold on calibrated scores as the threshold on raw
/// scores that makes the same decisions: `σ(z/T) >= t` iff
/// `σ(z) >= σ(T logit(t))`.
pub fn raw_threshold(calibrated: f64, temperature: f64) -> f64 {
    if calibrated <= 0.0 || calibrated >= 1.0 {
        return calibrated;
    }
    sigmoid(temperature * (calibrated / (1.0 - calibrated)).ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator, so the tests need no RNG crate state.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
    }

    /// Over-confident logits: labels drawn from `softmax(z)`, so `z` is
    /// calibrated, and the model reports `3 z`: its scores claim more than
    /// it gets right, and `T = 3` undoes that.
    pub(crate) fn over_confident(
        n: usize,
        k: usize,
        seed: u64,
    ) -> (Vec<Vec<f64>>, Vec<Vec<usize>>) {
        let mut s = seed;
        let mut logits = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..n {
            let z: Vec<f64> = (0..k).map(|_| (lcg(&mut s) - 0.5) * 6.0).collect();
            let p = softmax(&z);
            let u = lcg(&mut s);
            let mut acc = 0.0;
            let y = (0..k)
                .find(|&c| {
                    acc += p[c];
                    u < acc
                })
                .unwrap_or(k - 1);
            logits.push(z.iter().map(|v| 3.0 * v).collect());
            targets.push(vec![y]);
        }
        (logits, targets)
    }

    #[test]
    fn scaling_over_confident_logits_calibrates_them_and_keeps_the_arg_max() {
        let (logits, targets) = over_confident(4000, 5, 7);
        let split = Split {
            logits: &logits,
            targets: &targets,
        };
        let t = fit(Task::MultiClass, &split);
        let cmp = compare(Task::MultiClass, &split, &t);
        println!("T = {t:?}, ECE {} -> {}", cmp.before.ece, cmp.after.ece);
        assert!(t[0] > 2.0, "over-confident logits need T > 1: {t:?}");
        assert!(cmp.before.ece > 0.1, "{}", cmp.before.ece);
        assert!(cmp.after.ece < 0.03, "{}", cmp.after.ece);
        assert!(cmp.after.nll < cmp.before.nll);
        let argmax = |rows: &[Vec<f64>]| -> Vec<usize> {
            rows.iter()
                .map(|p| (0..p.len()).fold(0, |b, c| if p[c] > p[b] { c } else { b }))
                .collect()
        };
        assert_eq!(argmax(&logits), argmax(&scale(&logits, &t)));
        let total: u64 = cmp.after.bins.iter().map(|b| b.count).sum();
        assert_eq!((cmp.after.bins.len(), total), (BINS, 4000));
    }

    #[test]
    fn buckets_match_torch_bucketize_with_right_edges() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(1.0 / 15.0), 1);
        assert_eq!(bucket(0.99), 14);
        assert_eq!(bucket(1.0), 15);
    }

    #[test]
    fn raw_thresholds_make_the_same_decisions() {
        for &(z, t, thr) in &[(1.3, 2.0, 0.6), (-0.4, 0.5, 0.3), (0.0, 3.0, 0.5)] {
            let calibrated = sigmoid(z / t) >= thr;
            let raw = sigmoid(z) >= raw_threshold(thr, t);
            assert_eq!(calibrated, raw, "z {z} T {t} threshold {thr}");
        }
    }

    #[test]
    fn a_perfectly_separated_split_keeps_its_scores() {
        let logits = vec![vec![5.0, -5.0], vec![-5.0, 5.0]];
        let targets = vec![vec![0], vec![1]];
        let t = fit(
            Task::MultiClass,
            &Split {
                logits: &logits,
                targets: &targets,
            },
        );
        assert_eq!(t, vec![1.0]);
    }
}
