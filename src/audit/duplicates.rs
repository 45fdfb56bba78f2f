//! Duplicates: exact copies by content hash, near copies (resized,
//! recompressed, lightly cropped) by the cosine similarity of their
//! embeddings, grouped transitively; a group with members in more than
//! one split is leakage (the same picture in train and test inflates the
//! accuracy the user sees).
//!
//! Embeddings are centred on the dataset's mean before the cosine: a
//! backbone's features share a large common direction, which makes every
//! pair look alike; centred, only what sets images apart counts. The
//! search holds a block of rows' similarities at a time (`block × n`),
//! never the `n × n` matrix.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::outliers::unit_rows;

/// Rows whose similarities are held at once.
const BLOCK: i64 = 1024;

/// Images grouped as copies of one another: indices, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<usize>,
    /// The lowest similarity of the pairs that joined the group (1 for
    /// exact copies).
    pub min_similarity: f64,
}

/// Groups of images whose bytes hash the same.
pub fn exact_groups(hashes: &[String]) -> Vec<Group> {
    let mut by_hash: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, h) in hashes.iter().enumerate() {
        by_hash.entry(h).or_default().push(i);
    }
    let mut groups: Vec<Group> = by_hash
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|members| Group {
            members,
            min_similarity: 1.0,
        })
        .collect();
    groups.sort_by_key(|g| g.members[0]);
    groups
}

/// Groups of images joined by pairs whose centred-embedding cosine
/// similarity is at least `threshold`; also the count of pairs checked.
pub fn near_groups(features: &Tensor, threshold: f64) -> Vec<Group> {
    let n = features.size()[0];
    if n < 2 {
        return Vec::new();
    }
    let x = features.to_kind(Kind::Float);
    let x = unit_rows(&(&x - x.mean_dim(0, true, Kind::Float)));
    let mut sets = DisjointSets::new(n as usize);
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let sim = x.narrow(0, start, len).matmul(&x.tr());
        let pairs = sim.ge(threshold).nonzero();
        let rows = Vec::<i64>::try_from(pairs.select(1, 0)).unwrap();
        let cols = Vec::<i64>::try_from(pairs.select(1, 1)).unwrap();
        for (r, c) in rows.into_iter().zip(cols) {
            let (i, j) = ((start + r) as usize, c as usize);
            if i < j {
                let s = sim.double_value(&[r, c]);
                sets.join(i, j, s);
            }
        }
        start += len;
    }
    sets.groups()
}

/// Union-find with each set's weakest joining similarity.
struct DisjointSets {
    parent: Vec<usize>,
    weakest: Vec<f64>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            weakest: vec![1.0; n],
        }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize, similarity: f64) {
        let (ra, rb) = (self.root(a), self.root(b));
        let weakest = self.weakest[ra].min(self.weakest[rb]).min(similarity);
        let (keep, gone) = (ra.min(rb), ra.max(rb));
        self.parent[gone] = keep;
        self.weakest[keep] = weakest;
    }

    fn groups(mut self) -> Vec<Group> {
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..self.parent.len() {
            let r = self.root(i);
            by_root.entry(r).or_default().push(i);
        }
        let mut groups: Vec<Group> = by_root
            .into_iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(r, members)| Group {
                members,
                min_similarity: self.weakest[r].min(1.0),
            })
            .collect();
        groups.sort_by_key(|g| g.members[0]);
        groups
    }
}

/// Whether a group's members come from more than one split.
pub fn crosses_splits(group: &Group, splits: &[&str]) -> bool {
    let first = splits[group.members[0]];
    group.members.iter().any(|&i| splits[i] != first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_near_groups_and_leakage() {
        let hashes: Vec<String> = ["a", "b", "a", "c", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let exact = exact_groups(&hashes);
        assert_eq!(exact.len(), 2);
        assert_eq!(exact[0].members, vec![0, 2]);
        assert_eq!(exact[1].members, vec![1, 4]);
        let splits = ["train", "train", "test", "train", "train"];
        assert!(crosses_splits(&exact[0], &splits));
        assert!(!crosses_splits(&exact[1], &splits));

        // Rows 0 and 3 nearly the same, 1 and 4 nearly the same, 2 alone.
        let x = Tensor::from_slice(&[
            1.0f32, 0.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, 0.0, //
            0.0, 0.0, 1.0, 0.0, //
            0.98, 0.02, 0.0, 0.01, //
            0.01, 0.97, 0.0, 0.02, //
            0.0, 0.0, 0.0, 1.0,
        ])
        .view([6, 4]);
        let near = near_groups(&x, 0.95);
        let members: Vec<Vec<usize>> = near.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, vec![vec![0, 3], vec![1, 4]]);
        assert!(near
            .iter()
            .all(|g| g.min_similarity >= 0.95 && g.min_similarity <= 1.0));
    }
}
