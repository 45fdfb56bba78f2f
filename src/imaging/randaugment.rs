//! RandAugment (Cubuk et al., 2020) as `torchvision.transforms.v2.RandAugment`
//! applies it to a `uint8` tensor image: `n` operations per image, each
//! drawn uniformly from the 14 below (torchvision's list and order), at bin
//! `m` of 31 magnitude bins, the signed ones negated with probability 0.5;
//! nearest interpolation, geometric padding with black (torchvision's
//! defaults). The operations themselves live in [`super::randaugment_ops`].
//!
//! The draws come from this crate's seeded RNG, not torch's, so a job is
//! reproducible but its draws are not torchvision's; the operations given
//! their parameters are tested against torchvision, the draws by their
//! distribution.

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::randaugment_ops as ops;

/// Number of magnitude bins (torchvision's default `num_magnitude_bins`).
pub const NUM_BINS: u32 = 31;

/// The client's RandAugment setting: `n` operations per image at magnitude
/// bin `m` (0..=30; torchvision's default is `n` 2, `m` 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RandAugment {
    /// Operations per image, 1..=10.
    pub n: u32,
    /// Magnitude bin, 0..=30 (of 31).
    pub m: u32,
}

/// One RandAugment operation, in torchvision's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

/// torchvision's `_AUGMENTATION_SPACE`, in its order.
pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// `torch.linspace(start, end, NUM_BINS)[m]` in f32 (torch's CPU formula:
/// from the start for the first half, from the end for the second).
fn linspace(start: f32, end: f32, m: u32) -> f32 {
    let steps = NUM_BINS as i64;
    let step = (end - start) / (steps - 1) as f32;
    let i = i64::from(m);
    if i < steps / 2 {
        start + step * i as f32
    } else {
        end - step * (steps - i - 1) as f32
    }
}

impl Op {
    /// Whether the magnitude is negated with probability 0.5.
    pub fn signed(self) -> bool {
        matches!(
            self,
            Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Rotate
                | Op::Brightness
                | Op::Color
                | Op::Contrast
                | Op::Sharpness
        )
    }

    /// The magnitude of bin `m` for a `width` x `height` image, as
    /// torchvision tabulates it (unsigned); 0 for the operations without one.
    pub fn magnitude(self, m: u32, width: u32, height: u32) -> f64 {
        let m = m.min(NUM_BINS - 1);
        let v = match self {
            Op::Identity | Op::AutoContrast | Op::Equalize => return 0.0,
            Op::ShearX | Op::ShearY => linspace(0.0, 0.3, m),
            Op::TranslateX => linspace(0.0, (150.0 / 331.0 * f64::from(width)) as f32, m),
            Op::TranslateY => linspace(0.0, (150.0 / 331.0 * f64::from(height)) as f32, m),
            Op::Rotate => linspace(0.0, 30.0, m),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => linspace(0.0, 0.9, m),
            // `(8 - arange(bins) / ((bins - 1) / 4)).round().int()`
            Op::Posterize => (8.0 - m as f32 / ((NUM_BINS - 1) as f32 / 4.0)).round_ties_even(),
            Op::Solarize => linspace(1.0, 0.0, m),
        };
        f64::from(v)
    }

    /// Applies the operation with a (signed) `magnitude`, as
    /// `RandAugment._apply_image_or_video_transform` does.
    pub fn apply(self, img: &RgbImage, magnitude: f64) -> RgbImage {
        match self {
            Op::Identity => img.clone(),
            Op::ShearX => ops::affine(
                img,
                0.0,
                (0.0, 0.0),
                (magnitude.atan().to_degrees(), 0.0),
                true,
            ),
            Op::ShearY => ops::affine(
                img,
                0.0,
                (0.0, 0.0),
                (0.0, magnitude.atan().to_degrees()),
                true,
            ),
            Op::TranslateX => ops::affine(
                img,
                0.0,
                ((magnitude as i64) as f64, 0.0),
                (0.0, 0.0),
                false,
            ),
            Op::TranslateY => ops::affine(
                img,
                0.0,
                (0.0, (magnitude as i64) as f64),
                (0.0, 0.0),
                false,
            ),
            Op::Rotate => ops::rotate(img, magnitude),
            Op::Brightness => ops::brightness(img, 1.0 + magnitude),
            Op::Color => ops::saturation(img, 1.0 + magnitude),
            Op::Contrast => ops::contrast(img, 1.0 + magnitude),
            Op::Sharpness => ops::sharpness(img, 1.0 + magnitude),
            Op::Posterize => ops::posterize(img, magnitude as u32),
            Op::Solarize => ops::solarize(img, 255.0 * magnitude),
            Op::AutoContrast => ops::autocontrast(img),
            Op::Equalize => ops::equalize(img),
        }
    }
}

impl RandAugment {
    /// Draws the `n` operations and their signed magnitudes for a `width` x
    /// `height` image.
    pub fn draw(&self, width: u32, height: u32, rng: &mut impl Rng) -> Vec<(Op, f64)> {
        (0..self.n)
            .map(|_| {
                let op = OPS[rng.gen_range(0..OPS.len())];
                let mut magnitude = op.magnitude(self.m, width, height);
                if op.signed() && rng.gen_bool(0.5) {
                    magnitude = -magnitude;
                }
                (op, magnitude)
            })
            .collect()
    }

    /// The augmented image: the draw applied in order.
    pub fn apply(&self, img: RgbImage, rng: &mut impl Rng) -> RgbImage {
        let draw = self.draw(img.width(), img.height(), rng);
        draw.into_iter()
            .fold(img, |img, (op, magnitude)| op.apply(&img, magnitude))
    }

    /// Checks the ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10).contains(&self.n) {
            return Err(format!("`randaugment.n` must be 1..=10, got {}", self.n));
        }
        if self.m >= NUM_BINS {
            return Err(format!(
                "`randaugment.m` must be 0..={} (of {NUM_BINS} magnitude bins), got {}",
                NUM_BINS - 1,
                self.m
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::augment::rng_for;
    use std::collections::HashMap;

    #[test]
    fn magnitude_tables_follow_torchvision() {
        assert_eq!(Op::Rotate.magnitude(30, 10, 10), 30.0);
        assert_eq!(Op::Rotate.magnitude(0, 10, 10), 0.0);
        assert_eq!(Op::Solarize.magnitude(0, 10, 10), 1.0);
        assert_eq!(Op::Solarize.magnitude(30, 10, 10), 0.0);
        let bits: Vec<u32> = (0..31)
            .map(|m| Op::Posterize.magnitude(m, 1, 1) as u32)
            .collect();
        assert_eq!(bits[0], 8);
        assert_eq!(bits[30], 4);
        assert!(bits.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(Op::Equalize.magnitude(9, 1, 1), 0.0);
        assert!((Op::TranslateX.magnitude(30, 331, 10) - 150.0).abs() < 1e-4);
    }

    #[test]
    fn validation_names_the_field() {
        let e = RandAugment { n: 0, m: 9 }.validate().unwrap_err();
        assert!(e.contains("randaugment.n"), "{e}");
        let e = RandAugment { n: 2, m: 31 }.validate().unwrap_err();
        assert!(e.contains("randaugment.m"), "{e}");
        RandAugment { n: 2, m: 30 }.validate().unwrap();
    }

    /// The op choice is uniform over the 14 operations and each signed
    /// magnitude is negative half the time: chi-square over 14 ops (13
    /// degrees of freedom; 99.9 % quantile 34.5) and a binomial bound
    /// (4.5 sigma) on the sign, over 70 000 draws.
    #[test]
    fn op_choice_and_sign_are_uniform() {
        let ra = RandAugment { n: 2, m: 15 };
        let mut counts: HashMap<Op, usize> = HashMap::new();
        let (mut signed, mut negative) = (0usize, 0usize);
        for i in 0..35_000 {
            for (op, mag) in ra.draw(224, 224, &mut rng_for(3, i)) {
                *counts.entry(op).or_default() += 1;
                if op.signed() {
                    signed += 1;
                    negative += usize::from(mag < 0.0);
                    assert_eq!(mag.abs(), op.magnitude(15, 224, 224));
                }
            }
        }
        let total: usize = counts.values().sum();
        assert_eq!(total, 70_000);
        let expected = total as f64 / 14.0;
        let chi2: f64 = OPS
            .iter()
            .map(|op| {
                let c = *counts.get(op).unwrap_or(&0) as f64;
                (c - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 34.5, "chi-square {chi2} over {counts:?}");
        let p = negative as f64 / signed as f64;
        let sigma = (0.25 / signed as f64).sqrt();
        assert!((p - 0.5).abs() < 4.5 * sigma, "{negative} of {signed}");
    }

    #[test]
    fn draws_are_seeded() {
        let ra = RandAugment { n: 3, m: 9 };
        let a = ra.draw(100, 80, &mut rng_for(1, 4));
        assert_eq!(a, ra.draw(100, 80, &mut rng_for(1, 4)));
        assert_eq!(a.len(), 3);
    }
}
