//! Confident learning (Northcutt, Jiang and Chuang, JAIR 2021): which
//! given labels disagree with out-of-sample predicted probabilities
//! strongly enough to be called label issues.
//!
//! This is cleanlab 2.9.0's `filter.find_label_issues` with its defaults
//! (`filter_by="prune_by_noise_rate"`, `frac_noise=1`,
//! `min_examples_per_class=1`), step for step, so that the set it finds
//! is cleanlab's set (a test checks it against cleanlab itself):
//!
//! 1. per-class thresholds `t_k`: the mean predicted probability of class
//!    `k` over the images labelled `k`;
//! 2. the confident joint `C[given][guess]`: an image counts towards the
//!    class whose probability reaches its threshold (the most probable
//!    of several), its diagonal at least 1, then calibrated to the label
//!    counts and rounded keeping row totals;
//! 3. for each off-diagonal cell `(k, j)`, the `C[k][j]` images labelled
//!    `k` with the largest margin `p_j - p_k` are issues (after keeping at
//!    least one image per class);
//! 4. an image whose given label is still the model's top prediction is
//!    not an issue.
//!
//! Ties are broken by a stable sort: numpy's quicksort is not stable, so
//! exactly tied margins (identical images) may pick different images
//! than cleanlab, never a different number of them.
//!
//! The label-quality score is the self-confidence `p[given]`
//! (`rank.get_label_quality_scores(method="self_confidence")`). A
//! suggested label is given only on strong evidence: the image is
//! confidently another class (its probability of that class reaches the
//! class's threshold, step 2) and is a label issue.
//!
//! Multi-label datasets are audited per label as cleanlab's multi-label
//! variant does: each label is a binary problem (`[1 - p, p]`, absent or
//! present), an image is an issue when any of its labels is, and its score
//! is the exponential moving average (alpha 0.8) of its per-label scores
//! sorted from best to worst (`multilabel_classification.rank`).

/// cleanlab's `FLOATING_POINT_COMPARISON`: the slack of threshold tests.
const SLACK: f64 = 1e-6;
/// cleanlab's `CONFIDENT_THRESHOLDS_LOWER_BOUND`.
const THRESHOLD_FLOOR: f64 = 2e-6;
/// cleanlab's threshold of a class no image is labelled with (unreachable).
const MISSING_CLASS_THRESHOLD: f64 = 2.0;
/// cleanlab's `TINY_VALUE`, guarding divisions.
const TINY: f64 = 1e-100;

/// What confident learning says of one multi-class labelling.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelIssues {
    /// Per image: is its given label a suspected error?
    pub is_issue: Vec<bool>,
    /// Per image: self-confidence, `p[given]` (low: suspicious).
    pub quality: Vec<f64>,
    /// Per image: the class it confidently belongs to instead of its given
    /// one, only for issues with that evidence.
    pub suggested: Vec<Option<usize>>,
    /// Per class: the confident threshold `t_k`.
    pub thresholds: Vec<f64>,
    /// `[given][guess]`, calibrated (what the pruning counts from).
    pub confident_joint: Vec<Vec<i64>>,
}

/// Confident learning on `probs` (`n` rows of `k` probabilities, each
/// summing to about 1) and one given class per image.
pub fn find_label_issues(probs: &[Vec<f64>], labels: &[usize]) -> LabelIssues {
    assert_eq!(probs.len(), labels.len(), "one label per row");
    let k = probs.first().map_or(0, Vec::len);
    let counts = label_counts(labels, k);
    let thresholds = confident_thresholds(probs, labels, &counts);
    let guesses: Vec<Option<usize>> = probs
        .iter()
        .map(|p| confident_guess(p, &thresholds))
        .collect();
    let joint = calibrate(&raw_joint(labels, &guesses, k), &counts);
    let prune = keep_one_per_class(&joint);
    let mut is_issue = vec![false; probs.len()];
    for given in 0..k {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == given).collect();
        if members.len() <= 1 {
            continue;
        }
        for (guess, &count) in prune[given].iter().enumerate() {
            if guess == given || count <= 0 {
                continue;
            }
            let mut order = members.clone();
            let margin = |i: usize| probs[i][guess] - probs[i][given];
            order.sort_by(|&a, &b| margin(b).total_cmp(&margin(a)));
            for &i in order.iter().take(count as usize) {
                is_issue[i] = true;
            }
        }
    }
    for (i, issue) in is_issue.iter_mut().enumerate() {
        if top_with_slack(&probs[i], labels[i]) == labels[i] {
            *issue = false;
        }
    }
    let suggested = (0..probs.len())
        .map(|i| guesses[i].filter(|&g| is_issue[i] && g != labels[i]))
        .collect();
    LabelIssues {
        quality: (0..probs.len()).map(|i| probs[i][labels[i]]).collect(),
        is_issue,
        suggested,
        thresholds,
        confident_joint: joint,
    }
}

/// Images per class (`value_counts_fill_missing_classes`).
fn label_counts(labels: &[usize], k: usize) -> Vec<i64> {
    let mut counts = vec![0i64; k];
    for &l in labels {
        counts[l] += 1;
    }
    counts
}

/// `t_k`: the mean `p_k` of the images labelled `k` (`get_confident_thresholds`).
fn confident_thresholds(probs: &[Vec<f64>], labels: &[usize], counts: &[i64]) -> Vec<f64> {
    (0..counts.len())
        .map(|c| {
            if counts[c] == 0 {
                return MISSING_CLASS_THRESHOLD;
            }
            let sum: f64 = (0..labels.len())
                .filter(|&i| labels[i] == c)
                .map(|i| probs[i][c])
                .sum();
            (sum / counts[c] as f64).max(THRESHOLD_FLOOR)
        })
        .collect()
}

/// The class an image confidently belongs to: the one whose probability
/// reaches its threshold, the most probable of several, `None` for none.
fn confident_guess(p: &[f64], thresholds: &[f64]) -> Option<usize> {
    let confident: Vec<usize> = (0..p.len())
        .filter(|&c| p[c] >= thresholds[c] - SLACK)
        .collect();
    match confident.len() {
        0 => None,
        1 => Some(confident[0]),
        _ => Some(argmax(p)),
    }
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

/// The top class once the given one is nudged up by the slack
/// (cleanlab's `_reduce_issues`).
fn top_with_slack(p: &[f64], given: usize) -> usize {
    let mut nudged = p.to_vec();
    nudged[given] += SLACK;
    argmax(&nudged)
}

/// `[given][guess]` counts of confidently placed images, diagonal ≥ 1.
fn raw_joint(labels: &[usize], guesses: &[Option<usize>], k: usize) -> Vec<Vec<i64>> {
    let mut joint = vec![vec![0i64; k]; k];
    for (&l, g) in labels.iter().zip(guesses) {
        if let Some(g) = *g {
            joint[l][g] += 1;
        }
    }
    for (c, row) in joint.iter_mut().enumerate() {
        row[c] = row[c].max(1);
    }
    joint
}

/// Rows scaled to the label counts, the whole to the image count, rounded
/// keeping each row's total (`calibrate_confident_joint`).
fn calibrate(joint: &[Vec<i64>], counts: &[i64]) -> Vec<Vec<i64>> {
    let scaled: Vec<Vec<f64>> = joint
        .iter()
        .zip(counts)
        .map(|(row, &n)| {
            let total = (row.iter().sum::<i64>() as f64).max(TINY);
            row.iter().map(|&v| v as f64 / total * n as f64).collect()
        })
        .collect();
    let all: f64 = scaled.iter().flatten().sum::<f64>().max(TINY);
    let images: i64 = counts.iter().sum();
    scaled
        .iter()
        .map(|row| {
            let row: Vec<f64> = row.iter().map(|v| v / all * images as f64).collect();
            round_preserving_sum(&row)
        })
        .collect()
}

/// Rounds half to even, then moves the rows' rounding errors onto the
/// entries closest to rounding the other way, until the total matches
/// (cleanlab's `round_preserving_sum`).
pub fn round_preserving_sum(values: &[f64]) -> Vec<i64> {
    let mut ints: Vec<f64> = values.iter().map(|v| v.round_ties_even()).collect();
    let target = values.iter().sum::<f64>().round_ties_even();
    let mut sum = ints.iter().sum::<f64>().round_ties_even();
    while (sum - target).abs() > SLACK {
        let diff = (target - sum).round_ties_even();
        let step = if diff < 0.0 { -1.0 } else { 1.0 };
        let changes = (diff.abs() as usize).min(values.len());
        // numpy's argsort of a short row is stable; `[::-1]` reverses it.
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| (values[a] - ints[a]).total_cmp(&(values[b] - ints[b])));
        if step > 0.0 {
            order.reverse();
        }
        for &i in order.iter().take(changes) {
            ints[i] += step;
        }
        sum = ints.iter().sum::<f64>().round_ties_even();
    }
    ints.iter().map(|&v| v as i64).collect()
}

/// The joint with each diagonal at least 1, the difference taken evenly
/// off the row's non-zero off-diagonal cells (`_keep_at_least_n_per_class`
/// with n = 1, on the transpose: its columns are our rows).
fn keep_one_per_class(joint: &[Vec<i64>]) -> Vec<Vec<i64>> {
    joint
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let diag = row[c];
            let raised = diag.max(1);
            let nonzero = row.iter().filter(|&&v| v != 0).count() as f64;
            let per_cell = (raised - diag) as f64 / (nonzero - 1.0).max(1.0);
            row.iter()
                .enumerate()
                .map(|(j, &v)| {
                    if j == c {
                        raised
                    } else {
                        // `astype(int)`: truncation of a non-negative value.
                        (v as f64 - per_cell).max(0.0) as i64
                    }
                })
                .collect()
        })
        .collect()
}

/// What confident learning says of a multi-label labelling, label by label.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabelIssues {
    /// Per image: is any of its labels a suspected error?
    pub is_issue: Vec<bool>,
    /// Per image: the exponential moving average of its per-label scores.
    pub quality: Vec<f64>,
    /// Per image: the labels in question (given but likely absent, or
    /// absent but likely present).
    pub suspect_labels: Vec<Vec<usize>>,
    /// Per image and label: self-confidence of the label's presence or
    /// absence as given.
    pub per_label_quality: Vec<Vec<f64>>,
}

/// cleanlab's weight of each next (worse) score in the image's average.
const MULTI_LABEL_ALPHA: f64 = 0.8;

/// Confident learning per label: `probs[i][c]` is the probability that
/// label `c` applies to image `i`; `labels[i]` the labels it was given.
pub fn find_multi_label_issues(probs: &[Vec<f64>], labels: &[Vec<usize>]) -> MultiLabelIssues {
    let n = probs.len();
    let k = probs.first().map_or(0, Vec::len);
    let mut is_issue = vec![false; n];
    let mut suspect_labels = vec![Vec::new(); n];
    let mut per_label_quality = vec![vec![0.0; k]; n];
    for c in 0..k {
        let binary: Vec<Vec<f64>> = probs.iter().map(|p| vec![1.0 - p[c], p[c]]).collect();
        let given: Vec<usize> = labels.iter().map(|l| usize::from(l.contains(&c))).collect();
        let found = find_label_issues(&binary, &given);
        for i in 0..n {
            per_label_quality[i][c] = found.quality[i];
            if found.is_issue[i] {
                is_issue[i] = true;
                suspect_labels[i].push(c);
            }
        }
    }
    let quality = per_label_quality
        .iter()
        .map(|s| exponential_moving_average(s, MULTI_LABEL_ALPHA))
        .collect();
    MultiLabelIssues {
        is_issue,
        quality,
        suspect_labels,
        per_label_quality,
    }
}

/// The scores sorted from best to worst, averaged with weight `alpha` on
/// each next one (cleanlab's `exponential_moving_average`).
fn exponential_moving_average(scores: &[f64], alpha: f64) -> f64 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let Some((&first, rest)) = sorted.split_first() else {
        return 1.0;
    };
    rest.iter()
        .fold(first, |ema, &s| alpha * s + (1.0 - alpha) * ema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_the_total() {
        // cleanlab's own answers: a tie goes to the later entry.
        assert_eq!(round_preserving_sum(&[1.4, 1.4, 1.2]), vec![1, 2, 1]);
        assert_eq!(round_preserving_sum(&[0.5, 0.5, 1.0]), vec![0, 1, 1]);
        assert_eq!(round_preserving_sum(&[3.3, 3.3, 3.4]), vec![3, 3, 4]);
    }

    /// A clear mislabelled image is found, its suggestion is the class it
    /// looks like, and a confident correct one is not flagged.
    #[test]
    fn an_obvious_flip_is_an_issue_with_a_suggestion() {
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            let c = i % 2;
            let p = 0.9 - 0.01 * (i / 2) as f64;
            probs.push(if c == 0 {
                vec![p, 1.0 - p]
            } else {
                vec![1.0 - p, p]
            });
            labels.push(c);
        }
        // Looks like class 1, labelled 0.
        probs.push(vec![0.05, 0.95]);
        labels.push(0);
        let found = find_label_issues(&probs, &labels);
        assert!(found.is_issue[20]);
        assert_eq!(found.suggested[20], Some(1));
        assert!((found.quality[20] - 0.05).abs() < 1e-12);
        assert_eq!(found.is_issue.iter().filter(|&&b| b).count(), 1);
    }
}
