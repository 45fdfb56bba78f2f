//! Out-of-sample predicted probabilities: K-fold linear probes on the
//! backbone's features. Each image's probabilities come from a probe
//! trained on the other folds only, which is what confident learning
//! needs: a probe that saw an image's (wrong) label would agree with it.
//!
//! A probe is multinomial logistic regression (softmax; sigmoid per label
//! for multi-label) on standardised features, trained full-batch with
//! Adam and a small L2 penalty: the features of a few thousand images fit
//! in one batch, and a fixed step count keeps the audit's time known.
//! Folds are stratified by (first) label, from a seeded shuffle.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::task::Task;

/// How the probes are trained.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    pub folds: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            steps: 300,
            learning_rate: 0.01,
            l2: 1e-3,
            seed: 0,
        }
    }
}

/// The fold of each image: per class (first label), a seeded shuffle dealt
/// round-robin, continuing where the previous class stopped.
pub fn stratified_folds(labels: &[Vec<usize>], folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let classes = labels
        .iter()
        .filter_map(|l| l.first())
        .max()
        .map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes + 1];
    for (i, l) in labels.iter().enumerate() {
        by_class[l.first().copied().unwrap_or(classes)].push(i);
    }
    let mut fold_of = vec![0; labels.len()];
    let mut next = 0;
    for members in &mut by_class {
        members.shuffle(&mut rng);
        for &i in members.iter() {
            fold_of[i] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// Out-of-sample probabilities, `[n][classes]`, for `features` `[n, d]`.
/// `progress(done_folds)` is called after each fold.
pub fn out_of_sample_probs(
    features: &Tensor,
    labels: &[Vec<usize>],
    classes: usize,
    task: Task,
    cfg: &ProbeConfig,
    progress: &mut dyn FnMut(usize),
) -> Vec<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let x = features.to_kind(Kind::Float).to_device(Device::Cpu);
    let n = labels.len();
    let folds = cfg.folds.clamp(2, n.max(2));
    let fold_of = stratified_folds(labels, folds, cfg.seed);
    let mut out = vec![vec![0.0; classes]; n];
    for fold in 0..folds {
        let held: Vec<i64> = (0..n)
            .filter(|&i| fold_of[i] == fold)
            .map(|i| i as i64)
            .collect();
        let kept: Vec<i64> = (0..n)
            .filter(|&i| fold_of[i] != fold)
            .map(|i| i as i64)
            .collect();
        if held.is_empty() {
            progress(fold + 1);
            continue;
        }
        let kept_labels: Vec<&Vec<usize>> = kept.iter().map(|&i| &labels[i as usize]).collect();
        let probs = fit_and_predict(
            &x.index_select(0, &Tensor::from_slice(&kept)),
            &kept_labels,
            &x.index_select(0, &Tensor::from_slice(&held)),
            classes,
            task,
            cfg,
        );
        for (row, &i) in probs.into_iter().zip(&held) {
            out[i as usize] = row;
        }
        progress(fold + 1);
    }
    out
}

/// Trains one probe on `(train, labels)` and returns its probabilities
/// for `test`.
fn fit_and_predict(
    train: &Tensor,
    labels: &[&Vec<usize>],
    test: &Tensor,
    classes: usize,
    task: Task,
    cfg: &ProbeConfig,
) -> Vec<Vec<f64>> {
    let mean = train.mean_dim(0, true, Kind::Float);
    let std = train.std_dim(0, false, true).clamp_min(1e-6);
    let standard = |t: &Tensor| (t - &mean) / &std;
    let (xs, xt) = (standard(train), standard(test));
    let vs = nn::VarStore::new(Device::Cpu);
    let d = train.size()[1];
    // Zeros: the problem is convex (L2-penalised logistic regression), so
    // the fit needs no random start, and the audit neither draws from nor
    // disturbs libtorch's global generator (which training jobs seed).
    let zeros = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    let linear = nn::linear(vs.root(), d, classes as i64, zeros);
    let mut opt = nn::Adam::default().build(&vs, cfg.learning_rate).unwrap();
    let target = targets(labels, classes, task);
    for _ in 0..cfg.steps {
        tch::with_grad(|| {
            let logits = linear.forward(&xs);
            let loss = match task {
                Task::MultiClass => logits.cross_entropy_for_logits(&target),
                Task::MultiLabel => logits.binary_cross_entropy_with_logits::<Tensor>(
                    &target,
                    None,
                    None,
                    tch::Reduction::Mean,
                ),
            };
            let penalty = linear.ws.square().sum(Kind::Float) * cfg.l2;
            opt.backward_step(&(loss + penalty));
        });
    }
    let logits = linear.forward(&xt).to_kind(Kind::Double);
    let probs = match task {
        Task::MultiClass => logits.softmax(1, Kind::Double),
        Task::MultiLabel => logits.sigmoid(),
    };
    let flat = Vec::<f64>::try_from(probs.flatten(0, -1)).unwrap();
    flat.chunks(classes).map(<[f64]>::to_vec).collect()
}

/// Class ids (multi-class) or a multi-hot matrix (multi-label).
fn targets(labels: &[&Vec<usize>], classes: usize, task: Task) -> Tensor {
    match task {
        Task::MultiClass => {
            let ids: Vec<i64> = labels.iter().map(|l| l[0] as i64).collect();
            Tensor::from_slice(&ids)
        }
        Task::MultiLabel => {
            let mut hot = vec![0f32; labels.len() * classes];
            for (i, l) in labels.iter().enumerate() {
                for &c in l.iter() {
                    hot[i * classes + c] = 1.0;
                }
            }
            Tensor::from_slice(&hot).view([labels.len() as i64, classes as i64])
        }
    }
}
