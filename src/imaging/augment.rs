//! Training-time augmentation: random resized crop, horizontal flip and an
//! optional colour jitter, all drawn from a seeded RNG so that a job with the
//! same seed sees the same images. Evaluation never augments.

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How strongly to augment; the defaults are torchvision's
/// `RandomResizedCrop` + `RandomHorizontalFlip`, as the Hugging Face
/// image-classification example uses them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Range of the crop's area as a fraction of the image's.
    pub crop_scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub crop_ratio: (f64, f64),
    /// Probability of mirroring left-right.
    pub flip_probability: f64,
    /// Brightness, contrast and saturation factors are drawn from
    /// `[1 - colour_jitter, 1 + colour_jitter]`; 0 turns the jitter off.
    pub colour_jitter: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_probability: 0.5,
            colour_jitter: 0.0,
        }
    }
}

/// One image's draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Crop in source pixels: left, top, width, height.
    pub crop: (f64, f64, f64, f64),
    pub flip: bool,
    /// Brightness, contrast, saturation factors (1 = unchanged).
    pub jitter: Option<[f32; 3]>,
}

/// The RNG for image `index` of a batch augmented with `seed`.
pub fn rng_for(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// The RNG of image `index`'s RandAugment draw: another stream of the same
/// seed, so that turning RandAugment on leaves the crop and flip draws of
/// [`rng_for`] as they were.
pub fn randaugment_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1 << 63) | index as u64);
    rng
}

impl AugmentConfig {
    /// Draws a crop, flip and jitter for a `width` x `height` image, following
    /// torchvision's `RandomResizedCrop.get_params` (10 tries, then a
    /// centred crop with the ratio clamped).
    pub fn draw(&self, width: u32, height: u32, rng: &mut impl Rng) -> Draw {
        let (w, h) = (f64::from(width), f64::from(height));
        let area = w * h;
        let (lo, hi) = (self.crop_ratio.0.ln(), self.crop_ratio.1.ln());
        let mut crop = None;
        for _ in 0..10 {
            let target = area * rng.gen_range(self.crop_scale.0..=self.crop_scale.1);
            let ratio = if hi > lo {
                rng.gen_range(lo..hi).exp()
            } else {
                lo.exp()
            };
            let cw = (target * ratio).sqrt().round();
            let ch = (target / ratio).sqrt().round();
            if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
                let left = rng.gen_range(0.0..=(w - cw)).floor();
                let top = rng.gen_range(0.0..=(h - ch)).floor();
                crop = Some((left, top, cw, ch));
                break;
            }
        }
        let crop = crop.unwrap_or_else(|| {
            let in_ratio = w / h;
            let (cw, ch) = if in_ratio < self.crop_ratio.0 {
                (w, (w / self.crop_ratio.0).round())
            } else if in_ratio > self.crop_ratio.1 {
                ((h * self.crop_ratio.1).round(), h)
            } else {
                (w, h)
            };
            (((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch)
        });
        let flip = rng.gen_bool(self.flip_probability.clamp(0.0, 1.0));
        let jitter = (self.colour_jitter > 0.0).then(|| {
            let j = self.colour_jitter.min(0.99);
            let mut f = || rng.gen_range(1.0 - j..=1.0 + j) as f32;
            [f(), f(), f()]
        });
        Draw { crop, flip, jitter }
    }
}

/// Applies brightness, contrast and saturation factors to an RGB pixel in
/// `[0, 1]`, given the image's mean grey level (for contrast).
#[inline]
pub fn jitter_pixel(rgb: [f32; 3], factors: [f32; 3], mean_grey: f32) -> [f32; 3] {
    let [b, c, s] = factors;
    let mut p = rgb.map(|v| (v * b).clamp(0.0, 1.0));
    p = p.map(|v| ((v - mean_grey) * c + mean_grey).clamp(0.0, 1.0));
    let grey = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    p.map(|v| ((v - grey) * s + grey).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_and_inside_the_image() {
        let cfg = AugmentConfig {
            colour_jitter: 0.4,
            ..Default::default()
        };
        for i in 0..200 {
            let a = cfg.draw(640, 480, &mut rng_for(7, i));
            let b = cfg.draw(640, 480, &mut rng_for(7, i));
            assert_eq!(a, b);
            let (l, t, w, h) = a.crop;
            assert!(
                l >= 0.0 && t >= 0.0 && l + w <= 640.0 && t + h <= 480.0,
                "{a:?}"
            );
            assert!(w * h >= 0.07 * 640.0 * 480.0);
            let j = a.jitter.unwrap();
            assert!(j.iter().all(|f| (0.6..=1.4).contains(f)));
        }
        assert_ne!(
            cfg.draw(640, 480, &mut rng_for(7, 0)),
            cfg.draw(640, 480, &mut rng_for(8, 0))
        );
    }
}
