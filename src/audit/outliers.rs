//! Outliers: images far from every other image in embedding space, by
//! the mean cosine distance to their `k` nearest neighbours, as cleanlab
//! 2.9.0's `OutOfDistribution` scores features (`k = min(10, n - 1)`,
//! cosine above 3 dimensions, scores `exp(-d / median d)` in `(0, 1]`,
//! 1 for a distance within floating-point error of 0). Low: an outlier.
//!
//! The neighbours are found a block of rows at a time, so memory grows
//! with `block × n`, never `n²`.

use tch::{Kind, Tensor};

/// cleanlab's default neighbour count.
pub const DEFAULT_K: usize = 10;
/// Rows whose similarities are held at once.
const BLOCK: i64 = 1024;

/// Each image's outlier score (low: far from everything); `features` is
/// `[n, d]`. Fewer than two images: every score is 1.
pub fn knn_outlier_scores(features: &Tensor) -> Vec<f64> {
    let n = features.size()[0];
    if n < 2 {
        return vec![1.0; n as usize];
    }
    let k = DEFAULT_K.min(n as usize - 1) as i64;
    let distances = mean_knn_cosine_distance(features, k);
    let mut sorted = distances.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    let scale = median.max(100.0 * f64::EPSILON).max(f64::EPSILON);
    // cleanlab's precision correction for cosine: `100 * epsneg`.
    let tolerance = 100.0 * f64::EPSILON / 2.0;
    distances
        .iter()
        .map(|&d| {
            if d < tolerance {
                1.0
            } else {
                (-d / scale).exp()
            }
        })
        .collect()
}

/// Per image, the mean cosine distance to its `k` nearest other images.
fn mean_knn_cosine_distance(features: &Tensor, k: i64) -> Vec<f64> {
    let x = unit_rows(&features.to_kind(Kind::Double));
    let n = x.size()[0];
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let block = x.narrow(0, start, len);
        let mut distance = (block.matmul(&x.tr()) * -1.0 + 1.0).clamp(0.0, 2.0);
        // An image is not its own neighbour (sklearn's `kneighbors()`).
        let own = Tensor::arange_start(start, start + len, (Kind::Int64, x.device())).unsqueeze(1);
        distance = distance.scatter_value(1, &own, f64::INFINITY);
        let (nearest, _) = distance.topk(k, 1, false, true);
        out.extend(Vec::<f64>::try_from(nearest.mean_dim(1, false, Kind::Double)).unwrap());
        start += len;
    }
    out
}

/// Rows scaled to unit length (a zero row stays zero).
pub fn unit_rows(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    x / norm
}

/// The indices of the outliers to report: the lowest-scored hundredth of
/// the images (at least one when there are 20 or more), lowest first.
pub fn flagged(scores: &[f64]) -> Vec<usize> {
    let count = scores.len() / 100 + usize::from(scores.len() >= 20 && scores.len() < 100);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order.truncate(count);
    order
}
