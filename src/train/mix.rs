//! MixUp and CutMix of a training batch, as `torchvision.transforms.v2`'s
//! `MixUp` and `CutMix` do it: each sample is paired with the previous one
//! (the batch rolled by one), `lam ~ Beta(alpha, alpha)` per batch, and the
//! targets mixed with the same weight (CutMix: the weight its box actually
//! covers, after clipping to the image). With both alphas set, each batch
//! uses one of the two with probability 0.5 (timm's and torchvision's
//! `RandomChoice`). Multi-class targets become one-hot probabilities;
//! multi-label target vectors mix the same way.
//!
//! The draws come from a ChaCha RNG seeded from `(seed, epoch)` with the
//! step as its stream, so a resumed job mixes as the uninterrupted one would.

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::task::Task;

/// One batch's mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// `lam * x + (1 - lam) * x.roll(1, 0)`.
    MixUp { lam: f64 },
    /// The box `[y1, y2) x [x1, x2)` of the rolled batch pasted into the
    /// batch; `lam` = 1 - the box's share of the image.
    CutMix {
        lam: f64,
        bbox: (i64, i64, i64, i64),
    },
}

/// The job's mixing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixer {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    pub task: Task,
    pub num_labels: i64,
}

impl Mixer {
    /// `None` when both alphas are 0.
    pub fn new(mixup_alpha: f64, cutmix_alpha: f64, task: Task, num_labels: usize) -> Option<Self> {
        (mixup_alpha > 0.0 || cutmix_alpha > 0.0).then_some(Self {
            mixup_alpha,
            cutmix_alpha,
            task,
            num_labels: num_labels as i64,
        })
    }

    /// The RNG of step `step` of the epoch whose seed is `epoch_seed`.
    pub fn rng(epoch_seed: u64, step: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed ^ 0x6D69_7875_705F_6375);
        rng.set_stream(step);
        rng
    }

    /// Draws the mix of a batch of `height` x `width` images.
    pub fn draw(&self, height: i64, width: i64, rng: &mut impl Rng) -> Mix {
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.gen_bool(0.5),
            (false, true) => true,
            _ => false,
        };
        if !cutmix {
            return Mix::MixUp {
                lam: beta(self.mixup_alpha, rng),
            };
        }
        let lam = beta(self.cutmix_alpha, rng);
        cutmix_box(
            lam,
            height,
            width,
            rng.gen_range(0..width),
            rng.gen_range(0..height),
        )
    }

    /// Mixes a batch: `x` `[B, C, H, W]` floats, `y` the task's targets
    /// (class ids or multi-hot rows). Returns the mixed inputs and the soft
    /// targets `[B, num_labels]`.
    pub fn apply(&self, mix: Mix, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let soft = match self.task {
            Task::MultiClass => y.one_hot(self.num_labels).to_kind(Kind::Float),
            Task::MultiLabel => y.to_kind(Kind::Float),
        };
        (mix.inputs(x), mix.targets(&soft))
    }
}

/// torchvision's `CutMix.make_params` given `lam` and the box centre.
pub fn cutmix_box(lam: f64, height: i64, width: i64, r_x: i64, r_y: i64) -> Mix {
    let r = 0.5 * (1.0 - lam).sqrt();
    let r_w_half = (r * width as f64) as i64;
    let r_h_half = (r * height as f64) as i64;
    let x1 = (r_x - r_w_half).max(0);
    let y1 = (r_y - r_h_half).max(0);
    let x2 = (r_x + r_w_half).min(width);
    let y2 = (r_y + r_h_half).min(height);
    let lam = 1.0 - ((x2 - x1) * (y2 - y1)) as f64 / (width * height) as f64;
    Mix::CutMix {
        lam,
        bbox: (x1, y1, x2, y2),
    }
}

impl Mix {
    /// The weight of each sample's own target.
    pub fn lam(&self) -> f64 {
        match *self {
            Mix::MixUp { lam } | Mix::CutMix { lam, .. } => lam,
        }
    }

    /// The mixed `[B, C, H, W]` batch.
    pub fn inputs(&self, x: &Tensor) -> Tensor {
        let rolled = x.roll([1], [0]);
        match *self {
            Mix::MixUp { lam } => rolled * (1.0 - lam) + x * lam,
            Mix::CutMix {
                bbox: (x1, y1, x2, y2),
                ..
            } => {
                let out = x.copy();
                if x2 > x1 && y2 > y1 {
                    let patch = rolled.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1);
                    out.narrow(2, y1, y2 - y1)
                        .narrow(3, x1, x2 - x1)
                        .copy_(&patch);
                }
                out
            }
        }
    }

    /// Soft targets `[B, K]` mixed: `lam * y + (1 - lam) * y.roll(1, 0)`.
    pub fn targets(&self, soft: &Tensor) -> Tensor {
        let lam = self.lam();
        soft.roll([1], [0]) * (1.0 - lam) + soft * lam
    }
}

/// A draw of `Beta(alpha, alpha)`, as the ratio of two gamma draws.
pub fn beta(alpha: f64, rng: &mut impl Rng) -> f64 {
    let a = gamma(alpha, rng);
    let b = gamma(alpha, rng);
    if a + b == 0.0 {
        0.5
    } else {
        a / (a + b)
    }
}

/// Gamma(shape, 1) by Marsaglia and Tsang (2000), with the `U^(1/shape)`
/// boost for shapes below 1.
fn gamma(shape: f64, rng: &mut impl Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and variance of `lam` against Beta(alpha, alpha)'s (1/2 and
    /// 1 / (4 (2 alpha + 1))), within 5 standard errors over 40 000 draws.
    #[test]
    fn lambda_follows_beta() {
        for alpha in [0.2, 0.8, 1.0, 2.0] {
            let mut rng = Mixer::rng(7, 0);
            let n = 40_000;
            let draws: Vec<f64> = (0..n).map(|_| beta(alpha, &mut rng)).collect();
            assert!(draws.iter().all(|l| (0.0..=1.0).contains(l)));
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64;
            let want_var = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            let se_mean = (want_var / n as f64).sqrt();
            assert!(
                (mean - 0.5).abs() < 5.0 * se_mean,
                "alpha {alpha}: mean {mean}"
            );
            // The variance's standard error, from the fourth moment.
            let m4 = draws.iter().map(|l| (l - mean).powi(4)).sum::<f64>() / n as f64;
            let se_var = ((m4 - var * var) / n as f64).sqrt();
            assert!(
                (var - want_var).abs() < 5.0 * se_var,
                "alpha {alpha}: var {var} vs {want_var}"
            );
        }
    }

    /// The box covers `1 - lam` of the image: exactly by the returned lam,
    /// and close to the drawn lam when the box is not clipped (the half
    /// sides are truncated to whole pixels).
    #[test]
    fn cutmix_box_area_follows_lambda() {
        let mixer = Mixer::new(0.0, 1.0, Task::MultiClass, 3).unwrap();
        let (h, w) = (480i64, 640i64);
        let mut unclipped = 0;
        for step in 0..5_000 {
            let mut rng = Mixer::rng(3, step);
            let mut probe = rng.clone();
            let drawn = beta(1.0, &mut probe);
            let Mix::CutMix { lam, bbox } = mixer.draw(h, w, &mut rng) else {
                panic!("cutmix only")
            };
            let (x1, y1, x2, y2) = bbox;
            assert!(0 <= x1 && x1 <= x2 && x2 <= w && 0 <= y1 && y1 <= y2 && y2 <= h);
            let share = ((x2 - x1) * (y2 - y1)) as f64 / (w * h) as f64;
            assert_eq!(lam, 1.0 - share);
            let r = 0.5 * (1.0 - drawn).sqrt();
            let half = ((r * w as f64) as i64, (r * h as f64) as i64);
            if x2 - x1 == 2 * half.0 && y2 - y1 == 2 * half.1 {
                unclipped += 1;
                assert!((lam - drawn).abs() < 4.0 / h as f64, "{lam} vs {drawn}");
            }
        }
        assert!(unclipped > 500, "{unclipped}");
    }

    #[test]
    fn both_alphas_choose_each_half_the_time() {
        let mixer = Mixer::new(0.2, 1.0, Task::MultiClass, 3).unwrap();
        let n = 10_000;
        let cutmix = (0..n)
            .filter(|&s| matches!(mixer.draw(8, 8, &mut Mixer::rng(1, s)), Mix::CutMix { .. }))
            .count();
        let sigma = (0.25 * n as f64).sqrt();
        assert!(
            (cutmix as f64 - n as f64 / 2.0).abs() < 4.5 * sigma,
            "{cutmix}"
        );
        assert!(Mixer::new(0.0, 0.0, Task::MultiClass, 3).is_none());
    }

    /// One-hot probability targets give the class-id loss, label smoothing
    /// included, so mixed targets go through the same cross-entropy.
    #[test]
    fn probability_targets_give_the_class_id_loss() {
        let logits = Tensor::from_slice(&[0.3f32, -1.2, 2.0, 0.5, 0.1, -0.4]).view([2, 3]);
        let ids = Tensor::from_slice(&[2i64, 0]);
        let soft = ids.one_hot(3).to_kind(Kind::Float);
        for smoothing in [0.0, 0.1] {
            let a = crate::train::eval::loss(&logits, &ids, Task::MultiClass, smoothing);
            let b = crate::train::eval::loss(&logits, &soft, Task::MultiClass, smoothing);
            assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-6);
        }
    }

    #[test]
    fn mixing_rolls_the_batch_and_mixes_targets() {
        let x = Tensor::arange(8, (Kind::Float, tch::Device::Cpu)).view([2, 1, 2, 2]);
        let y = Tensor::from_slice(&[0i64, 2]);
        let mixer = Mixer::new(1.0, 0.0, Task::MultiClass, 3).unwrap();
        let (xm, ym) = mixer.apply(Mix::MixUp { lam: 0.75 }, &x, &y);
        let first: Vec<f32> = Vec::try_from(xm.get(0).flatten(0, -1)).unwrap();
        assert_eq!(first, vec![1.0, 2.0, 3.0, 4.0]); // 0.75 * [0..4] + 0.25 * [4..8]
        let t: Vec<f32> = Vec::try_from(ym.flatten(0, -1)).unwrap();
        assert_eq!(t, vec![0.75, 0.0, 0.25, 0.25, 0.0, 0.75]);
        let cut = Mix::CutMix {
            lam: 0.75,
            bbox: (1, 0, 2, 1),
        };
        let xc: Vec<f32> = Vec::try_from(cut.inputs(&x).flatten(0, -1)).unwrap();
        assert_eq!(xc, vec![0.0, 5.0, 2.0, 3.0, 4.0, 1.0, 6.0, 7.0]);
    }
}
