//! A seeded, stratified train/validation split for datasets that have none.

use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::manifest::{Manifest, Sample};

/// Splits `samples` into (train, validation), drawing about `fraction` of
/// each stratum into validation. The stratum of an image is its label (for
/// multi-label: its rarest label; no label is a stratum of its own). Every
/// label keeps at least one training image; same seed, same split.
pub fn stratified_split(
    samples: &[Sample],
    num_labels: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let fraction = fraction.clamp(0.0, 1.0);
    let mut freq = vec![0usize; num_labels];
    for s in samples {
        for &l in &s.labels {
            freq[l] += 1;
        }
    }
    let mut strata: Vec<Vec<usize>> = vec![Vec::new(); num_labels + 1];
    for (i, s) in samples.iter().enumerate() {
        let key = s
            .labels
            .iter()
            .copied()
            .min_by_key(|&l| (freq[l], l))
            .unwrap_or(num_labels);
        strata[key].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut in_val = vec![false; samples.len()];
    for stratum in &mut strata {
        stratum.shuffle(&mut rng);
        let n = stratum.len();
        let take = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
        for &i in &stratum[..take] {
            in_val[i] = true;
        }
    }
    // A label whose every image went to validation gets one back.
    for l in 0..num_labels {
        let has_train = samples
            .iter()
            .enumerate()
            .any(|(i, s)| !in_val[i] && s.labels.contains(&l));
        if !has_train {
            if let Some(i) =
                (0..samples.len()).find(|&i| in_val[i] && samples[i].labels.contains(&l))
            {
                in_val[i] = false;
            }
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        if in_val[i] {
            val.push(s.clone())
        } else {
            train.push(s.clone())
        }
    }
    (train, val)
}

impl Manifest {
    /// The manifest with a validation split: unchanged when the dataset has
    /// one, else a seeded stratified draw of `fraction` of `train`
    /// (see [`stratified_split`]).
    pub fn with_validation_split(mut self, fraction: f64, seed: u64) -> Manifest {
        if self.validation.is_none() {
            let (train, val) = stratified_split(&self.train, self.labels.len(), fraction, seed);
            self.train = train;
            self.validation = Some(val);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(counts: &[usize]) -> Vec<Sample> {
        let mut v = Vec::new();
        for (label, &n) in counts.iter().enumerate() {
            for i in 0..n {
                v.push(Sample {
                    path: format!("{label}/{i}.png").into(),
                    labels: vec![label],
                });
            }
        }
        v
    }

    #[test]
    fn stratified_seeded_and_every_label_trains() {
        let s = samples(&[100, 20, 1, 2]);
        let (t1, v1) = stratified_split(&s, 4, 0.2, 42);
        let (t2, v2) = stratified_split(&s, 4, 0.2, 42);
        assert_eq!((&t1, &v1), (&t2, &v2));
        let (_, v3) = stratified_split(&s, 4, 0.2, 43);
        assert_ne!(v1, v3);
        let count = |v: &[Sample], l: usize| v.iter().filter(|s| s.labels[0] == l).count();
        assert_eq!(count(&v1, 0), 20);
        assert_eq!(count(&v1, 1), 4);
        assert_eq!(count(&t1, 2), 1);
        assert!(count(&t1, 3) >= 1);
        assert_eq!(t1.len() + v1.len(), s.len());
    }

    #[test]
    fn multi_label_keeps_every_label_in_train() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                path: format!("{i}.png").into(),
                labels: if i < 2 { vec![0, 1] } else { vec![0] },
            })
            .collect();
        for seed in 0..20 {
            let (t, _) = stratified_split(&s, 2, 0.5, seed);
            assert!(t.iter().any(|s| s.labels.contains(&1)));
        }
    }
}
