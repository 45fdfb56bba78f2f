//! Resize, crop, rescale and normalise, as a Hugging Face image processor
//! configured by `preprocessor_config.json` does, into `tch` tensors.
//!
//! Evaluation follows `ViTImageProcessorPil` (the PIL backend of
//! `transformers`): resize the whole image to the target size with the
//! configured filter (convolution with a support widened by the scale factor,
//! as Pillow does; `fast_image_resize` implements the same kernels), round to
//! 8 bits, centre-crop when asked, then `(v * rescale_factor - mean) / std`.
//! Training replaces resize + crop with a seeded random resized crop, flip and
//! optional colour jitter.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rayon::prelude::*;
use tch::Tensor;

use super::augment::{jitter_pixel, randaugment_rng, rng_for, AugmentConfig, Draw};
use super::config::{Geometry, PreprocessorConfig, ResizeTarget, SizeSpec};
use super::decode::{decode, file_header, DecodeLimits};
use super::input_cache::CachedImages;
use super::randaugment::RandAugment;
use super::ImageError;
use crate::budget::DecodeBudget;

/// How long a training batch waits for decoding memory before the job
/// fails: long, since the budget is only ever held for one decode at a time.
const BATCH_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// A ready-to-run preprocessing pipeline. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Pipeline {
    resize: Option<ResizeTarget>,
    filter: ResizeAlg,
    /// The PIL code `filter` came from, for [`Pipeline::spec`].
    resample: u8,
    /// Rescale factor, mean and std as configured (f64), for [`Pipeline::spec`].
    exact: (f64, [f64; 3], [f64; 3]),
    crop: Option<(u32, u32)>,
    /// Per channel, per 8-bit value: the normalised float.
    lut: [[f32; 256]; 3],
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
    limits: DecodeLimits,
    augment: AugmentConfig,
    /// Applied to the decoded image before the crop when augmenting.
    randaugment: Option<RandAugment>,
    /// Where [`Self::load_batch`] leases its decoding memory (training
    /// input); `None`: batches decode without a budget.
    budget: Option<DecodeBudget>,
}

/// How preprocessing turns 8-bit values into the model's input, to undo it
/// (explanation overlays): `x = (v * scale - mean) / std` per channel.
#[derive(Debug, Clone, Copy)]
pub struct Normalisation {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Maps a PIL resampling code to the matching `fast_image_resize` algorithm.
pub fn resize_alg(pil_code: u8) -> ResizeAlg {
    match pil_code {
        0 => ResizeAlg::Nearest,
        1 => ResizeAlg::Convolution(FilterType::Lanczos3),
        3 => ResizeAlg::Convolution(FilterType::CatmullRom),
        4 => ResizeAlg::Convolution(FilterType::Box),
        5 => ResizeAlg::Convolution(FilterType::Hamming),
        _ => ResizeAlg::Convolution(FilterType::Bilinear),
    }
}

/// The name Pillow gives a resampling code.
pub fn resample_name(pil_code: u8) -> &'static str {
    match pil_code {
        0 => "nearest",
        1 => "lanczos",
        3 => "bicubic",
        4 => "box",
        5 => "hamming",
        _ => "bilinear",
    }
}

/// A pipeline's evaluation steps, in order: convert to RGB; resize the
/// whole image to `resize` (`[height, width]`) or so that its shorter side
/// is `shortest_edge` (the longer one capped at `longest_edge`, sizes
/// truncated to integers) with the Pillow filter `resample`; round to 8
/// bits; centre-crop `center_crop` (`[height, width]`, top-left offset
/// `(size - crop) // 2`, zero padding when the image is smaller); then per
/// channel `(v * rescale_factor - mean) / std`, in RGB order, as `[C, H, W]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessingSpec {
    pub resize: Option<[u32; 2]>,
    pub shortest_edge: Option<u32>,
    pub longest_edge: Option<u32>,
    pub resample: String,
    /// The same filter as a PIL code (`Image.Resampling`).
    pub resample_pil: u8,
    pub center_crop: Option<[u32; 2]>,
    pub rescale_factor: f64,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

/// A place in the resized image to read the output from: an offset that may
/// be negative (padding, as HF's centre crop pads small images with zeros).
#[derive(Debug, Clone, Copy)]
struct Window {
    left: i64,
    top: i64,
    width: u32,
    height: u32,
}

impl Pipeline {
    /// Builds the pipeline a preprocessor config describes, as is: without a
    /// fixed output size (see [`Self::output_size`]) images keep their own
    /// sizes. Models run through [`Self::for_model`]. `image_size`
    /// overrides the output side (e.g. a model fine-tuned at 384): the
    /// crop (or the exact size) becomes `image_size` squared, and a
    /// shortest-edge resize is scaled in proportion.
    pub fn from_preprocessor(cfg: &PreprocessorConfig, image_size: Option<u32>) -> Pipeline {
        let Geometry { resize, crop } = cfg.geometry(image_size);
        let scale = if cfg.do_rescale {
            cfg.rescale_factor as f32
        } else {
            1.0
        };
        let (mean, std) = if cfg.do_normalize {
            (cfg.image_mean.rgb(), cfg.image_std.rgb())
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                // HF rescales in float64, then normalises in float32.
                let x = (v as f64
                    * if cfg.do_rescale {
                        cfg.rescale_factor
                    } else {
                        1.0
                    }) as f32;
                *slot = (x - mean[c]) / std[c];
            }
        }
        Pipeline {
            resize,
            filter: resize_alg(cfg.resample),
            resample: cfg.resample,
            exact: (
                if cfg.do_rescale {
                    cfg.rescale_factor
                } else {
                    1.0
                },
                if cfg.do_normalize {
                    cfg.image_mean.rgb64()
                } else {
                    [0.0; 3]
                },
                if cfg.do_normalize {
                    cfg.image_std.rgb64()
                } else {
                    [1.0; 3]
                },
            ),
            crop,
            lut,
            scale,
            mean,
            std,
            limits: DecodeLimits::default(),
            augment: AugmentConfig::default(),
            randaugment: None,
            budget: None,
        }
    }

    /// The pipeline a model runs with: its preprocessor's, except that when
    /// the preprocessor does not pin the output size (`do_resize: false`, or
    /// a shortest-edge resize without a centre crop, so every image would
    /// come out at its own size), images are resized to the model's
    /// `image_size` squared. A ViT takes that size only (`transformers`
    /// raises "Input image size doesn't match model" otherwise), and one
    /// size per model is what lets images of any shape share a batch.
    pub fn for_model(cfg: &PreprocessorConfig, image_size: u32) -> Pipeline {
        Self::from_preprocessor(cfg, None).with_model_size(image_size)
    }

    /// Pins an output size the preprocessor leaves open to `side` x `side`
    /// (see [`Self::for_model`]); a no-op when the output size is fixed.
    pub fn with_model_size(mut self, side: u32) -> Self {
        if self.output_size().is_none() {
            self.resize = SizeSpec::square(side.max(1)).target();
        }
        self
    }

    /// Sets the decode limits (the service passes its configured pixel cap).
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Makes [`Self::load_batch`] and [`Self::load_batch_u8`] lease each
    /// batch's decoding memory from `budget` first, waiting for it (see
    /// [`Self::batch_decode_bytes`]): training input shares the server's
    /// one decoding budget with validations and requests.
    pub fn with_decode_budget(mut self, budget: DecodeBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Bytes decoding the files `paths` as one batch holds at its peak: the
    /// output (`elem_bytes` per value), plus, for as many images as the
    /// decoding pool runs at once, the largest files read whole and their
    /// decoded pixels (from each file's header; an unreadable one counts
    /// nothing here and fails in the decode).
    pub fn batch_decode_bytes(&self, paths: &[PathBuf], elem_bytes: u64) -> u64 {
        let (h, w) = self.output_size().unwrap_or_else(|| self.train_size());
        let output = paths.len() as u64 * 3 * u64::from(h) * u64::from(w) * elem_bytes;
        let mut each: Vec<u64> = paths
            .iter()
            .filter_map(|p| file_header(p, u64::MAX).ok())
            .map(|f| f.file_bytes + f.image.decode_bytes)
            .collect();
        each.sort_unstable_by(|a, b| b.cmp(a));
        output + each.iter().take(rayon::current_num_threads()).sum::<u64>()
    }

    /// A lease for one batch of `paths`, when this pipeline has a budget.
    /// A batch larger than the whole budget takes all of it (it runs alone
    /// rather than failing the job).
    fn batch_lease(
        &self,
        paths: &[PathBuf],
        elem_bytes: u64,
    ) -> Result<Option<crate::budget::Lease>, ImageError> {
        let Some(budget) = &self.budget else {
            return Ok(None);
        };
        let bytes = self
            .batch_decode_bytes(paths, elem_bytes)
            .min(budget.total());
        budget
            .acquire_blocking(bytes, BATCH_LEASE_WAIT, "a training batch")
            .map(Some)
            .map_err(|e| ImageError::Budget(e.to_string()))
    }

    /// Sets the augmentation used when a seed is given to [`Self::load_batch`].
    pub fn with_augmentation(mut self, augment: AugmentConfig) -> Self {
        self.augment = augment;
        self
    }

    /// Sets RandAugment, applied (when a seed is given to
    /// [`Self::load_batch`]) to the decoded 8-bit image before the random
    /// resized crop, from its own RNG stream of `(seed, index)`.
    pub fn with_randaugment(mut self, randaugment: Option<RandAugment>) -> Self {
        self.randaugment = randaugment;
        self
    }

    /// The decoded image, RandAugmented when augmenting with it.
    fn randaugmented(&self, img: RgbImage, seed: Option<u64>, index: usize) -> RgbImage {
        match (seed, self.randaugment) {
            (Some(seed), Some(ra)) => ra.apply(img, &mut randaugment_rng(seed, index)),
            _ => img,
        }
    }

    /// The evaluation preprocessing as data, for a consumer that must
    /// reproduce it outside vitrine (the ONNX export's metadata).
    pub fn spec(&self) -> PreprocessingSpec {
        let (resize, shortest_edge, longest_edge) = match self.resize {
            Some(ResizeTarget::Exact { height, width }) => (Some([height, width]), None, None),
            Some(ResizeTarget::ShortestEdge { shortest, longest }) => {
                (None, Some(shortest), longest)
            }
            None => (None, None, None),
        };
        PreprocessingSpec {
            resize,
            shortest_edge,
            longest_edge,
            resample: resample_name(self.resample).to_string(),
            resample_pil: self.resample,
            center_crop: self.crop.map(|(h, w)| [h, w]),
            rescale_factor: self.exact.0,
            image_mean: self.exact.1,
            image_std: self.exact.2,
        }
    }

    pub fn normalisation(&self) -> Normalisation {
        Normalisation {
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Output `(height, width)` when it does not depend on the input image.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        if let Some(c) = self.crop {
            return Some(c);
        }
        match self.resize {
            Some(ResizeTarget::Exact { height, width }) => Some((height, width)),
            _ => None,
        }
    }

    /// The output size of a training sample: the evaluation size, or a square
    /// of the shortest edge when evaluation keeps the aspect ratio.
    pub fn train_size(&self) -> (u32, u32) {
        self.output_size().unwrap_or(match self.resize {
            Some(ResizeTarget::ShortestEdge { shortest, .. }) => (shortest, shortest),
            _ => (224, 224),
        })
    }

    /// The size the resize step gives a `width` x `height` image, as
    /// `transformers`' `get_resize_output_image_size` computes it.
    fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            None => (width, height),
            Some(ResizeTarget::Exact {
                height: h,
                width: w,
            }) => (w, h),
            Some(ResizeTarget::ShortestEdge { shortest, longest }) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let mut new_short = shortest;
                let mut new_long =
                    (f64::from(shortest) * f64::from(long) / f64::from(short)) as u32;
                if let Some(max) = longest {
                    if new_long > max {
                        new_short =
                            (f64::from(max) * f64::from(new_short) / f64::from(new_long)) as u32;
                        new_long = max;
                    }
                }
                let (new_short, new_long) = (new_short.max(1), new_long.max(1));
                if width <= height {
                    (new_short, new_long)
                } else {
                    (new_long, new_short)
                }
            }
        }
    }

    fn resize(
        &self,
        src: &RgbImage,
        width: u32,
        height: u32,
        draw: Option<&Draw>,
    ) -> Result<RgbImage, ImageError> {
        if draw.is_none() && (width, height) == src.dimensions() {
            return Ok(src.clone());
        }
        if let Some(d) = draw {
            let (l, t, w, h) = d.crop;
            let opts = ResizeOptions::new()
                .resize_alg(self.filter)
                .crop(l, t, w, h);
            return fir_resize(src, width, height, &opts);
        }
        if self.filter == ResizeAlg::Nearest {
            return Ok(nearest_like_pillow(src, width, height));
        }
        // Pillow (as `transformers` calls it) resamples one axis, rounds to
        // 8 bits, then the other; `fast_image_resize` always does the
        // vertical pass first for 8-bit images. Two single-axis resizes
        // reproduce Pillow's order and rounding.
        let opts = ResizeOptions::new().resize_alg(self.filter);
        let first = if pillow_vertical_first(src.dimensions(), (width, height)) {
            (src.width(), height)
        } else {
            (width, src.height())
        };
        let stage = if first != src.dimensions() {
            Some(fir_resize(src, first.0, first.1, &opts)?)
        } else {
            None
        };
        let from = stage.as_ref().unwrap_or(src);
        if (width, height) != from.dimensions() {
            fir_resize(from, width, height, &opts)
        } else {
            Ok(stage.unwrap_or_else(|| src.clone()))
        }
    }

    /// Where the model's input lies on a `width` x `height` image, in that
    /// image's pixels: `[left, top, width, height]` of the (resized, then
    /// centre-cropped) window; it reaches outside the image where the crop
    /// pads. Explanations place their maps with it.
    pub fn input_window(&self, width: u32, height: u32) -> [f64; 4] {
        let (w, h) = self.resized_size(width, height);
        let (sx, sy) = (
            f64::from(width) / f64::from(w.max(1)),
            f64::from(height) / f64::from(h.max(1)),
        );
        match self.crop {
            None => [0.0, 0.0, f64::from(width), f64::from(height)],
            Some((ch, cw)) => {
                let left = (i64::from(w) - i64::from(cw)).div_euclid(2) as f64;
                let top = (i64::from(h) - i64::from(ch)).div_euclid(2) as f64;
                [left * sx, top * sy, f64::from(cw) * sx, f64::from(ch) * sy]
            }
        }
    }

    /// Evaluation geometry: the resized image and where to read the output.
    fn eval_geometry(&self, img: &RgbImage) -> Result<(RgbImage, Window), ImageError> {
        let (w, h) = self.resized_size(img.width(), img.height());
        let resized = self.resize(img, w, h, None)?;
        let window = match self.crop {
            None => Window {
                left: 0,
                top: 0,
                width: w,
                height: h,
            },
            Some((ch, cw)) => Window {
                // HF: top = (height - crop_height) // 2, padding when negative.
                left: (i64::from(w) - i64::from(cw)).div_euclid(2),
                top: (i64::from(h) - i64::from(ch)).div_euclid(2),
                width: cw,
                height: ch,
            },
        };
        Ok((resized, window))
    }

    /// The geometry of one image: the resized pixels, the window the output
    /// reads, and the augmentation draw.
    fn place(
        &self,
        img: &RgbImage,
        augment: Option<Draw>,
    ) -> Result<(RgbImage, Window, Option<Draw>), ImageError> {
        match augment {
            None => {
                let (r, w) = self.eval_geometry(img)?;
                Ok((r, w, None))
            }
            Some(d) => {
                let (h, w) = self.train_size();
                let r = self.resize(img, w, h, Some(&d))?;
                let window = Window {
                    left: 0,
                    top: 0,
                    width: w,
                    height: h,
                };
                Ok((r, window, Some(d)))
            }
        }
    }

    /// Preprocesses one decoded image into `out` (`3 * H * W` floats, CHW).
    /// Returns `(H, W)`.
    fn process_into(
        &self,
        img: &RgbImage,
        augment: Option<Draw>,
        out: &mut Vec<f32>,
    ) -> Result<(u32, u32), ImageError> {
        let (resized, window, draw) = self.place(img, augment)?;
        let flip = draw.map(|d| d.flip).unwrap_or(false);
        match draw.and_then(|d| d.jitter) {
            None => write_planes(&resized, window, flip, out, |c, v| {
                self.lut[c][usize::from(v)]
            }),
            Some(f) => self.write_jittered(&resized, window, flip, f, out),
        }
        Ok((window.height, window.width))
    }

    /// Like [`Self::process_into`], but the 8-bit values before rescaling
    /// and normalisation (padding is value 0, which normalises to the same
    /// float as in `process_into`). Colour jitter makes values that are not
    /// 8-bit: an error.
    fn process_into_u8(
        &self,
        img: &RgbImage,
        augment: Option<Draw>,
        out: &mut Vec<u8>,
    ) -> Result<(u32, u32), ImageError> {
        let (resized, window, draw) = self.place(img, augment)?;
        if draw.and_then(|d| d.jitter).is_some() {
            return Err(ImageError::NotEightBit);
        }
        let flip = draw.map(|d| d.flip).unwrap_or(false);
        write_planes(&resized, window, flip, out, |_, v| v);
        Ok((window.height, window.width))
    }

    /// The colour-jittered output, in floats.
    fn write_jittered(
        &self,
        resized: &RgbImage,
        window: Window,
        flip: bool,
        factors: [f32; 3],
        out: &mut Vec<f32>,
    ) {
        let (ow, oh) = (window.width as usize, window.height as usize);
        let plane = ow * oh;
        out.clear();
        out.resize(3 * plane, 0.0);
        let (rw, rh) = (i64::from(resized.width()), i64::from(resized.height()));
        let raw = resized.as_raw();
        let mean_grey = mean_grey(resized);
        let (r_plane, rest) = out.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        for y in 0..oh {
            let sy = window.top + y as i64;
            for x in 0..ow {
                let xx = if flip { ow - 1 - x } else { x };
                let sx = window.left + xx as i64;
                let o = y * ow + x;
                if sy < 0 || sy >= rh || sx < 0 || sx >= rw {
                    // Padding: a zero pixel, rescaled and normalised.
                    r_plane[o] = self.lut[0][0];
                    g_plane[o] = self.lut[1][0];
                    b_plane[o] = self.lut[2][0];
                    continue;
                }
                let i = ((sy * rw + sx) * 3) as usize;
                let p = jitter_pixel(
                    [
                        f32::from(raw[i]) / 255.0,
                        f32::from(raw[i + 1]) / 255.0,
                        f32::from(raw[i + 2]) / 255.0,
                    ],
                    factors,
                    mean_grey,
                );
                let norm = |c: usize| (p[c] * 255.0 * self.scale - self.mean[c]) / self.std[c];
                r_plane[o] = norm(0);
                g_plane[o] = norm(1);
                b_plane[o] = norm(2);
            }
        }
    }

    /// The per-channel table that turns an 8-bit value into the model's
    /// input float (rescale, then normalise, exactly as this pipeline does):
    /// what a device applies to [`Self::load_batch_u8`]'s output to get
    /// [`Self::load_batch`]'s, bit for bit.
    pub fn normalisation_table(&self) -> [[f32; 256]; 3] {
        self.lut
    }

    /// Whether [`Self::load_batch_u8`] can serve batches of this kind
    /// (augmented or not): not with colour jitter.
    pub fn has_u8_batches(&self, augmented: bool) -> bool {
        !(augmented && self.augment.colour_jitter > 0.0)
    }

    /// `[3, H, W]` float values of one decoded image, without augmentation.
    pub fn process(&self, img: &RgbImage) -> Result<(Vec<f32>, u32, u32), ImageError> {
        let mut out = Vec::new();
        let (h, w) = self.process_into(img, None, &mut out)?;
        Ok((out, h, w))
    }

    /// `[3, H, W]` float values of one decoded image, augmented with the
    /// draw of `(seed, index)`.
    pub fn process_augmented(
        &self,
        img: &RgbImage,
        seed: u64,
        index: usize,
    ) -> Result<(Vec<f32>, u32, u32), ImageError> {
        let img = self.randaugmented(img.clone(), Some(seed), index);
        let draw = self
            .augment
            .draw(img.width(), img.height(), &mut rng_for(seed, index));
        let mut out = Vec::new();
        let (h, w) = self.process_into(&img, Some(draw), &mut out)?;
        Ok((out, h, w))
    }

    /// The evaluation output of one decoded image as 8-bit CHW planes and
    /// its `(H, W)`: what [`super::input_cache`] stores.
    pub(crate) fn eval_u8(&self, img: &RgbImage) -> Result<(Vec<u8>, u32, u32), ImageError> {
        let mut out = Vec::new();
        let (h, w) = self.process_into_u8(img, None, &mut out)?;
        Ok((out, h, w))
    }

    /// `img` with its shorter side at most `max_short` (aspect kept, never
    /// enlarged), resampled as the pipeline resizes: the training copy of
    /// [`super::input_cache`].
    pub(crate) fn bounded_copy(
        &self,
        img: &RgbImage,
        max_short: u32,
    ) -> Result<RgbImage, ImageError> {
        let (w, h) = img.dimensions();
        let short = w.min(h);
        if short <= max_short {
            return Ok(img.clone());
        }
        let scale = f64::from(max_short) / f64::from(short);
        let (nw, nh) = if w <= h {
            (
                max_short,
                ((f64::from(h) * scale).round() as u32).max(max_short),
            )
        } else {
            (
                ((f64::from(w) * scale).round() as u32).max(max_short),
                max_short,
            )
        };
        self.resize(img, nw, nh, None)
    }

    /// The decoding lease of a batch of `paths` read as 8-bit images, when
    /// this pipeline has a budget.
    pub(crate) fn decode_lease(
        &self,
        paths: &[PathBuf],
    ) -> Result<Option<crate::budget::Lease>, ImageError> {
        self.batch_lease(paths, 1)
    }

    /// A `[3, H, W]` f32 tensor from an encoded image (for `/predict`).
    pub fn tensor_from_bytes(&self, bytes: &[u8]) -> Result<Tensor, ImageError> {
        let img = decode(bytes, &self.limits)?;
        self.tensor_from_image(&img)
    }

    /// A `[3, H, W]` f32 tensor from a decoded image.
    pub fn tensor_from_image(&self, img: &RgbImage) -> Result<Tensor, ImageError> {
        let (v, h, w) = self.process(img)?;
        Ok(Tensor::from_slice(&v).view([3, i64::from(h), i64::from(w)]))
    }

    /// A `[B, 3, H, W]` f32 tensor from encoded images, decoded in parallel
    /// (as many at once as there are images and rayon threads). An image
    /// that does not decode is named by its index ([`ImageError::InBatch`]).
    pub fn batch_from_bytes(&self, images: &[&[u8]]) -> Result<Tensor, ImageError> {
        self.batch(
            images.len(),
            |i| {
                decode(images[i], &self.limits).map_err(|e| ImageError::InBatch {
                    index: i,
                    source: Box::new(e),
                })
            },
            None,
            |img, draw, out| self.process_into(img, draw, out),
        )
    }

    /// A `[B, 3, H, W]` f32 tensor from image files, read, decoded and
    /// preprocessed in parallel on rayon's pool. `augment: Some(seed)` applies
    /// the training augmentation (image `i` draws from stream `i` of `seed`,
    /// so pass a different seed per batch, e.g. mixed from job seed, epoch and
    /// step); `None` is evaluation preprocessing. Call it from a blocking
    /// thread, never on the async runtime.
    pub fn load_batch(
        &self,
        paths: &[PathBuf],
        augment: Option<u64>,
    ) -> Result<Tensor, ImageError> {
        self.load_batch_from(None, paths, augment)
    }

    /// [`Self::load_batch`] reading from a decode-once cache where it holds
    /// the images (see [`super::input_cache`]): an evaluation batch from
    /// stored outputs, a training batch augmented from stored copies.
    pub fn load_batch_from(
        &self,
        cache: Option<&CachedImages>,
        paths: &[PathBuf],
        augment: Option<u64>,
    ) -> Result<Tensor, ImageError> {
        self.load_through(
            cache,
            paths,
            augment,
            4,
            |c, v| self.lut[c][usize::from(v)],
            |img, draw, out| self.process_into(img, draw, out),
        )
    }

    /// [`Self::load_batch`] as a `[B, 3, H, W]` u8 tensor of the pixel values
    /// before rescaling and normalisation: a quarter of the bytes to copy to
    /// a GPU, which then normalises with [`Self::normalisation_table`].
    /// Not available with colour jitter (see [`Self::has_u8_batches`]).
    pub fn load_batch_u8(
        &self,
        paths: &[PathBuf],
        augment: Option<u64>,
    ) -> Result<Tensor, ImageError> {
        self.load_batch_u8_from(None, paths, augment)
    }

    /// [`Self::load_batch_u8`] through a decode-once cache, as
    /// [`Self::load_batch_from`].
    pub fn load_batch_u8_from(
        &self,
        cache: Option<&CachedImages>,
        paths: &[PathBuf],
        augment: Option<u64>,
    ) -> Result<Tensor, ImageError> {
        self.load_through(
            cache,
            paths,
            augment,
            1,
            |_, v| v,
            |img, draw, out| self.process_into_u8(img, draw, out),
        )
    }

    /// A batch of `paths` in `T`: an evaluation batch wholly in `cache`
    /// straight from its stored outputs (`value` maps each 8-bit value),
    /// anything else decoded (training copies from `cache` where it holds
    /// them) and preprocessed with `process`.
    #[allow(clippy::too_many_arguments)]
    fn load_through<T: tch::kind::Element + Copy + Default + Send + Sync>(
        &self,
        cache: Option<&CachedImages>,
        paths: &[PathBuf],
        augment: Option<u64>,
        elem_bytes: u64,
        value: impl Fn(usize, u8) -> T + Sync,
        process: impl Fn(&RgbImage, Option<Draw>, &mut Vec<T>) -> Result<(u32, u32), ImageError> + Sync,
    ) -> Result<Tensor, ImageError> {
        if augment.is_none() {
            if let Some(t) = cache.and_then(|c| c.eval_batch(paths, &value)) {
                return Ok(t);
            }
        }
        let _lease = self.uncached_lease(cache, paths, augment, elem_bytes)?;
        self.batch(
            paths.len(),
            |i| self.load_cached(cache, &paths[i]),
            augment,
            process,
        )
    }

    /// The stored training copy of `path` when `cache` holds one, else the
    /// decoded file.
    fn load_cached(
        &self,
        cache: Option<&CachedImages>,
        path: &Path,
    ) -> Result<RgbImage, ImageError> {
        match cache.and_then(|c| c.image(path)) {
            Some(img) => Ok(img),
            None => load_file(path, &self.limits),
        }
    }

    /// The decoding lease of a batch, unless a training cache holds all of
    /// it (stored copies are small and already decoded).
    fn uncached_lease(
        &self,
        cache: Option<&CachedImages>,
        paths: &[PathBuf],
        augment: Option<u64>,
        elem_bytes: u64,
    ) -> Result<Option<crate::budget::Lease>, ImageError> {
        let all_cached =
            augment.is_some() && cache.is_some_and(|c| paths.iter().all(|p| c.holds(p)));
        if all_cached {
            return Ok(None);
        }
        self.batch_lease(paths, elem_bytes)
    }

    fn batch<T: tch::kind::Element + Copy + Default + Send + Sync>(
        &self,
        n: usize,
        load: impl Fn(usize) -> Result<RgbImage, ImageError> + Sync,
        augment: Option<u64>,
        process: impl Fn(&RgbImage, Option<Draw>, &mut Vec<T>) -> Result<(u32, u32), ImageError> + Sync,
    ) -> Result<Tensor, ImageError> {
        let fixed = match augment {
            Some(_) => Some(self.train_size()),
            None => self.output_size(),
        };
        let one = |i: usize, out: &mut Vec<T>| -> Result<(u32, u32), ImageError> {
            let img = self.randaugmented(load(i)?, augment, i);
            let draw = augment.map(|seed| {
                self.augment
                    .draw(img.width(), img.height(), &mut rng_for(seed, i))
            });
            process(&img, draw, out)
        };
        let (h, w) = match fixed {
            Some(hw) => hw,
            None => {
                // Aspect-preserving resize without a crop: sizes may differ.
                let items: Vec<(Vec<T>, (u32, u32))> = (0..n)
                    .into_par_iter()
                    .map(|i| {
                        let mut v = Vec::new();
                        one(i, &mut v).map(|hw| (v, hw))
                    })
                    .collect::<Result<_, _>>()?;
                let first = items.first().map(|x| x.1).unwrap_or((0, 0));
                if let Some((_, hw)) = items.iter().find(|x| x.1 != first) {
                    return Err(ImageError::MixedSizes(format!("{first:?} and {hw:?}")));
                }
                let flat: Vec<T> = items.into_iter().flat_map(|x| x.0).collect();
                return Ok(Tensor::from_slice(&flat).view([
                    n as i64,
                    3,
                    i64::from(first.0),
                    i64::from(first.1),
                ]));
            }
        };
        let per = 3 * h as usize * w as usize;
        let mut flat = vec![T::default(); n * per];
        flat.par_chunks_mut(per.max(1))
            .enumerate()
            .try_for_each_init(Vec::new, |buf, (i, chunk)| {
                let got = one(i, buf)?;
                if got != (h, w) {
                    return Err(ImageError::MixedSizes(format!("{got:?} and {:?}", (h, w))));
                }
                chunk.copy_from_slice(&buf[..per]);
                Ok::<(), ImageError>(())
            })?;
        Ok(Tensor::from_slice(&flat).view([n as i64, 3, i64::from(h), i64::from(w)]))
    }
}

/// Writes the output planes (CHW) of 8-bit-valued output: `value(c, v)`
/// maps value `v` of channel `c`; padding outside the resized image is
/// value 0, as HF's centre crop pads with zeros.
fn write_planes<T: Copy>(
    resized: &RgbImage,
    window: Window,
    flip: bool,
    out: &mut Vec<T>,
    value: impl Fn(usize, u8) -> T,
) {
    let (ow, oh) = (window.width as usize, window.height as usize);
    let plane = ow * oh;
    out.clear();
    out.resize(3 * plane, value(0, 0));
    let (rw, rh) = (i64::from(resized.width()), i64::from(resized.height()));
    let raw = resized.as_raw();
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    let inside = window.left >= 0
        && window.top >= 0
        && window.left + ow as i64 <= rw
        && window.top + oh as i64 <= rh;
    if inside && !flip {
        // The common case (evaluation, no padding): row by row.
        for y in 0..oh {
            let start = (((window.top + y as i64) * rw + window.left) * 3) as usize;
            let row = &raw[start..start + 3 * ow];
            let o = y * ow;
            let (r, g, b) = (
                &mut r_plane[o..o + ow],
                &mut g_plane[o..o + ow],
                &mut b_plane[o..o + ow],
            );
            for (x, px) in row.chunks_exact(3).enumerate() {
                r[x] = value(0, px[0]);
                g[x] = value(1, px[1]);
                b[x] = value(2, px[2]);
            }
        }
        return;
    }
    for y in 0..oh {
        let sy = window.top + y as i64;
        for x in 0..ow {
            let xx = if flip { ow - 1 - x } else { x };
            let sx = window.left + xx as i64;
            let o = y * ow + x;
            if sy < 0 || sy >= rh || sx < 0 || sx >= rw {
                r_plane[o] = value(0, 0);
                g_plane[o] = value(1, 0);
                b_plane[o] = value(2, 0);
                continue;
            }
            let i = ((sy * rw + sx) * 3) as usize;
            r_plane[o] = value(0, raw[i]);
            g_plane[o] = value(1, raw[i + 1]);
            b_plane[o] = value(2, raw[i + 2]);
        }
    }
}

/// Whether Pillow runs its vertical pass first when resizing `from` to
/// `to`: since Pillow 12 (`ImagingResampleInner`), when the height shrinks
/// by more than twice as many pixels as the width does, to make the
/// horizontal pass cheaper; otherwise horizontal first. The order changes
/// the 8-bit rounding between the passes (by up to a level).
fn pillow_vertical_first(from: (u32, u32), to: (u32, u32)) -> bool {
    let shrink_h = i64::from(from.1) - i64::from(to.1);
    let shrink_w = i64::from(from.0) - i64::from(to.0);
    shrink_h > 0 && shrink_h > shrink_w * 2
}

fn fir_resize(
    src: &RgbImage,
    width: u32,
    height: u32,
    opts: &ResizeOptions,
) -> Result<RgbImage, ImageError> {
    let mut dst = RgbImage::new(width, height);
    RESIZER
        .with(|r| r.borrow_mut().resize(src, &mut dst, opts))
        .map_err(|e| ImageError::Resize(e.to_string()))?;
    Ok(dst)
}

/// Pillow's `NEAREST`: the source pixel under the destination pixel's
/// centre, with the position accumulated step by step in `f64` exactly as
/// Pillow's affine transform does (so ties fall the same way).
fn nearest_like_pillow(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    fn indices(n_in: u32, n_out: u32) -> Vec<u32> {
        let step = f64::from(n_in) / f64::from(n_out);
        let mut pos = step * 0.5;
        (0..n_out)
            .map(|_| {
                let i = (pos as u32).min(n_in - 1);
                pos += step;
                i
            })
            .collect()
    }
    let cols = indices(src.width(), width);
    let rows = indices(src.height(), height);
    RgbImage::from_fn(width, height, |x, y| {
        *src.get_pixel(cols[x as usize], rows[y as usize])
    })
}

/// Reads and decodes one file, naming it in any error.
pub fn load_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, limits).map_err(|e| e.in_file(path))
}

fn mean_grey(img: &RgbImage) -> f32 {
    let n = (img.width() as usize * img.height() as usize).max(1);
    let sum: f64 = img
        .pixels()
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .sum();
    (sum / n as f64 / 255.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_pass_order_is_pillows() {
        // (from, to, vertical first?) as Pillow 13 resizes random images:
        // each case matched one order exactly and not the other.
        for (from, to, vertical) in [
            ((147, 1143), (224, 224), true),
            ((996, 753), (518, 256), false),
            ((502, 460), (518, 96), true),
            ((1195, 1318), (518, 518), false),
            ((165, 639), (96, 384), true),
            ((303, 329), (384, 384), false),
            ((480, 640), (224, 224), false),
            ((480, 1640), (224, 224), true),
            ((640, 480), (224, 224), false),
        ] {
            assert_eq!(
                pillow_vertical_first(from, to),
                vertical,
                "{from:?} -> {to:?}"
            );
        }
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    #[test]
    fn vit_defaults_give_224_square_normalised() {
        let p = Pipeline::from_preprocessor(&PreprocessorConfig::default(), None);
        let (v, h, w) = p.process(&gradient(500, 300)).unwrap();
        assert_eq!((h, w), (224, 224));
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
        // The blue channel is constant 128: (128/255 - 0.5)/0.5.
        let b = &v[2 * 224 * 224..];
        assert!(b
            .iter()
            .all(|x| (x - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6));
    }

    #[test]
    fn the_input_window_maps_the_crop_back_onto_the_image() {
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"size":{"shortest_edge":256},"do_center_crop":true,"crop_size":{"height":224,"width":224}}"#,
        )
        .unwrap();
        let p = Pipeline::from_preprocessor(&cfg, None);
        // 640x480 -> 341x256 -> the centre 224x224, scaled back by 480/256.
        let [l, t, w, h] = p.input_window(640, 480);
        let s = 480.0 / 256.0;
        assert!((l - 58.0 * 640.0 / 341.0).abs() < 1e-9, "{l}");
        assert!(
            (t - 16.0 * s).abs() < 1e-9 && (h - 224.0 * s).abs() < 1e-9,
            "{t} {h}"
        );
        assert!((w - 224.0 * 640.0 / 341.0).abs() < 1e-9, "{w}");
        let exact: PreprocessorConfig =
            serde_json::from_str(r#"{"size":{"height":224,"width":224}}"#).unwrap();
        let p = Pipeline::from_preprocessor(&exact, None);
        assert_eq!(p.input_window(640, 480), [0.0, 0.0, 640.0, 480.0]);
    }

    #[test]
    fn shortest_edge_then_centre_crop() {
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"size":{"shortest_edge":256},"do_center_crop":true,"crop_size":{"height":224,"width":224}}"#,
        )
        .unwrap();
        let p = Pipeline::from_preprocessor(&cfg, None);
        assert_eq!(p.resized_size(640, 480), (341, 256));
        assert_eq!(p.output_size(), Some((224, 224)));
        let p384 = Pipeline::from_preprocessor(&cfg, Some(384));
        assert_eq!(p384.output_size(), Some((384, 384)));
        assert_eq!(p384.resized_size(480, 480), (439, 439));
    }

    /// RandAugment changes training images only, seeded per image, and
    /// leaves evaluation as it was.
    #[test]
    fn randaugment_changes_training_images_only() {
        let p = Pipeline::from_preprocessor(&PreprocessorConfig::default(), Some(32));
        let ra = p
            .clone()
            .with_randaugment(Some(RandAugment { n: 3, m: 20 }));
        let img = gradient(120, 90);
        let a = ra.process_augmented(&img, 5, 1).unwrap();
        assert_eq!(a.0, ra.process_augmented(&img, 5, 1).unwrap().0);
        let changed = (0..8)
            .filter(|&i| {
                ra.process_augmented(&img, 5, i).unwrap().0
                    != p.process_augmented(&img, 5, i).unwrap().0
            })
            .count();
        assert!(changed >= 6, "{changed} of 8 images changed");
        assert_eq!(ra.process(&img).unwrap().0, p.process(&img).unwrap().0);
    }

    #[test]
    fn augmentation_is_seeded_and_differs_from_eval() {
        let p = Pipeline::from_preprocessor(&PreprocessorConfig::default(), Some(64))
            .with_augmentation(AugmentConfig {
                colour_jitter: 0.3,
                ..Default::default()
            });
        let img = gradient(200, 120);
        let a = p.process_augmented(&img, 1, 0).unwrap();
        let b = p.process_augmented(&img, 1, 0).unwrap();
        let c = p.process_augmented(&img, 2, 0).unwrap();
        let e = p.process(&img).unwrap();
        assert_eq!(a.0, b.0);
        assert_ne!(a.0, c.0);
        assert_ne!(a.0, e.0);
        assert_eq!((a.1, a.2), (64, 64));
    }

    /// Training batches lease their decode from the budget: they wait for
    /// memory another decode holds, and give it back when built.
    #[test]
    fn batches_wait_for_their_lease_and_give_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("{i}.png"));
                gradient(64, 48).save(&p).unwrap();
                p
            })
            .collect();
        let budget = DecodeBudget::new(64 << 20);
        let pipeline = Pipeline::for_model(&PreprocessorConfig::default(), 32)
            .with_decode_budget(budget.clone());
        let need = pipeline.batch_decode_bytes(&paths, 4);
        let one_image = 64 * 48 * 3 + std::fs::metadata(&paths[0]).unwrap().len();
        let parallel = rayon::current_num_threads().min(3) as u64;
        let (h, w) = pipeline.output_size().unwrap();
        let output = 3 * 3 * u64::from(h) * u64::from(w) * 4;
        assert_eq!(need, output + parallel * one_image);

        let held = budget.try_acquire(64 << 20, "held").unwrap();
        let (p2, paths2) = (pipeline.clone(), paths.clone());
        let started = std::time::Instant::now();
        let loader = std::thread::spawn(move || p2.load_batch(&paths2, None).map(|t| t.size()));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!loader.is_finished(), "the batch waits for its memory");
        drop(held);
        assert_eq!(
            loader.join().unwrap().unwrap(),
            [3, 3, i64::from(h), i64::from(w)]
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
        assert_eq!(budget.in_use(), 0);
    }
}
