//! The image operations of RandAugment on 8-bit RGB images, as
//! `torchvision.transforms.v2.functional` computes them on a `uint8` tensor:
//! the same float32 arithmetic in the same order, truncation back to 8 bits
//! where torchvision casts (`.to(uint8)` truncates) and rounding where it
//! rounds. Geometric operations sample with nearest interpolation through
//! torchvision's affine grid (`_affine_grid` + `grid_sample`,
//! `align_corners=False`), black outside the image.
//!
//! Bit-exactness is what the tests measure against torchvision; where
//! libtorch's vectorised kernels may fuse a multiply-add (blends, the grid's
//! matrix product) a value can land one level (or, for a geometric op, one
//! pixel) apart.

use image::RgbImage;

/// `_get_inverse_affine_matrix` (float64, as torchvision computes it): the
/// matrix mapping output pixel positions (relative to the image centre) to
/// input positions.
pub fn inverse_affine_matrix(
    center: (f64, f64),
    angle: f64,
    translate: (f64, f64),
    scale: f64,
    shear: (f64, f64),
) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear.0.to_radians(), shear.1.to_radians());
    let (cx, cy) = center;
    let (tx, ty) = translate;
    let cos_sy = sy.cos();
    let tan_sx = sx.tan();
    let rot_minus_sy = rot - sy;
    let cx_plus_tx = cx + tx;
    let cy_plus_ty = cy + ty;
    let a = rot_minus_sy.cos() / cos_sy;
    let b = -(a * tan_sx + rot.sin());
    let c = rot_minus_sy.sin() / cos_sy;
    let d = rot.cos() - c * tan_sx;
    let mut m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0];
    m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
    m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
    m
}

/// `F.affine` of a tensor image with scale 1 and nearest interpolation.
/// `center_at_origin`: torchvision's `center=[0, 0]` (the top-left corner,
/// as RandAugment's shears use); otherwise the image centre.
pub fn affine(
    img: &RgbImage,
    angle: f64,
    translate: (f64, f64),
    shear: (f64, f64),
    center_at_origin: bool,
) -> RgbImage {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let center = if center_at_origin {
        (-w * 0.5, -h * 0.5)
    } else {
        (0.0, 0.0)
    };
    let m = inverse_affine_matrix(center, angle, translate, 1.0, shear);
    grid_transform(img, &m)
}

/// `F.rotate` of a tensor image (counter-clockwise degrees, about the
/// centre, same size, nearest). An angle of 0 (mod 360) is a copy, as in
/// torchvision; RandAugment's angles (at most 30 degrees) never reach
/// torchvision's other fast paths (90, 180, 270).
pub fn rotate(img: &RgbImage, angle: f64) -> RgbImage {
    // Python's `angle % 360`.
    let mut a = angle % 360.0;
    if a != 0.0 && a < 0.0 {
        a += 360.0;
    }
    if a == 0.0 {
        return img.clone();
    }
    let m = inverse_affine_matrix((0.0, 0.0), -a, (0.0, 0.0), 1.0, (0.0, 0.0));
    grid_transform(img, &m)
}

/// `_affine_grid` + `grid_sample(mode="nearest", padding_mode="zeros",
/// align_corners=False)` + `round_().to(uint8)`, in float32.
fn grid_transform(img: &RgbImage, matrix: &[f64; 6]) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let theta: Vec<f32> = matrix.iter().map(|&v| v as f32).collect();
    let (half_w, half_h) = ((0.5 * f64::from(w)) as f32, (0.5 * f64::from(h)) as f32);
    // `theta.transpose(1, 2) / [0.5 w, 0.5 h]`: column k of the rescaled
    // matrix multiplies base coordinate k (x, y, 1).
    let rx = [theta[0] / half_w, theta[1] / half_w, theta[2] / half_w];
    let ry = [theta[3] / half_h, theta[4] / half_h, theta[5] / half_h];
    let (wf, hf) = (w as f32, h as f32);
    let raw = img.as_raw();
    let mut out = RgbImage::new(w, h);
    let dst: &mut [u8] = &mut out;
    for j in 0..h {
        let by = (1.0 - hf) * 0.5 + j as f32;
        for i in 0..w {
            let bx = (1.0 - wf) * 0.5 + i as f32;
            let gx = bx * rx[0] + by * rx[1] + rx[2];
            let gy = bx * ry[0] + by * ry[1] + ry[2];
            // grid_sample's unnormalisation for align_corners=False.
            let ix = ((gx + 1.0) * (wf / 2.0) - 0.5).round_ties_even();
            let iy = ((gy + 1.0) * (hf / 2.0) - 0.5).round_ties_even();
            if ix < 0.0 || iy < 0.0 || ix > wf - 1.0 || iy > hf - 1.0 {
                continue; // zero padding
            }
            let s = ((iy as usize) * w as usize + ix as usize) * 3;
            let d = ((j as usize) * w as usize + i as usize) * 3;
            dst[d..d + 3].copy_from_slice(&raw[s..s + 3]);
        }
    }
    out
}

/// Float32 to 8 bits as `clamp_(0, 255).to(uint8)` does: truncation.
#[inline]
fn to_u8(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// `adjust_brightness_image`: `image * factor`, truncated.
pub fn brightness(img: &RgbImage, factor: f64) -> RgbImage {
    let f = factor as f32;
    map_values(img, |v| to_u8(f32::from(v) * f))
}

/// `_rgb_to_grayscale_image(..., preserve_dtype=False).floor_()`.
fn grey(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| {
            let l = f32::from(p[0]) * 0.2989f32;
            let l = l + 0.587f32 * f32::from(p[1]);
            let l = l + 0.114f32 * f32::from(p[2]);
            l.floor()
        })
        .collect()
}

/// `_blend(image, other, ratio)`: `image * ratio + other * (1 - ratio)`,
/// clamped and truncated; `other` gives one value per pixel. libtorch's
/// vectorised `add_(other, alpha)` fuses the multiply-add (measured: the
/// unfused sum differs by a level on ~1 % of values), so this fuses too.
fn blend(img: &RgbImage, ratio: f64, other: impl Fn(usize) -> f32) -> RgbImage {
    let r = ratio as f32;
    let alpha = (1.0 - ratio) as f32;
    let mut out = img.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        let o = other(i);
        for c in p.0.iter_mut() {
            *c = to_u8(alpha.mul_add(o, f32::from(*c) * r));
        }
    }
    out
}

/// `adjust_saturation_image`: blend with the (floored) grey image.
pub fn saturation(img: &RgbImage, factor: f64) -> RgbImage {
    let g = grey(img);
    blend(img, factor, |i| g[i])
}

/// `adjust_contrast_image`: blend with the mean of the floored grey image.
pub fn contrast(img: &RgbImage, factor: f64) -> RgbImage {
    let g = grey(img);
    // Sums of whole numbers: exact in f64, as in torch's f32 sum up to 2^24.
    let sum: f64 = g.iter().map(|&v| f64::from(v)).sum();
    let mean = sum as f32 / g.len().max(1) as f32;
    blend(img, factor, |_| mean)
}

/// `adjust_sharpness_image`: the interior blended with a 3x3 smoothing
/// (1/13 around, 5/13 in the centre, rounded); the border row and column
/// keep their values.
pub fn sharpness(img: &RgbImage, factor: f64) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w <= 2 || h <= 2 {
        return img.clone();
    }
    let alpha = (1.0 - factor) as f32;
    let raw = img.as_raw();
    let mut out = img.clone();
    let dst: &mut [u8] = &mut out;
    let row = w * 3;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let at = |i: usize| u32::from(raw[i]);
                let centre = y * row + x * 3 + c;
                let (up, down) = (centre - row, centre + row);
                let ring = at(up - 3)
                    + at(up)
                    + at(up + 3)
                    + at(centre - 3)
                    + at(centre + 3)
                    + at(down - 3)
                    + at(down)
                    + at(down + 3);
                // torchvision's float32 convolution, rounded: (ring + 5 v) / 13
                // is never within float error of a half, so the integer
                // rounding gives the same level.
                let blurred = ((2 * (ring + 5 * at(centre)) + 13) / 26) as f32;
                let v = at(centre) as f32;
                dst[centre] = to_u8(v + alpha * (blurred - v));
            }
        }
    }
    out
}

/// `posterize_image`: keeps the top `bits` bits.
pub fn posterize(img: &RgbImage, bits: u32) -> RgbImage {
    if bits >= 8 {
        return img.clone();
    }
    let mask = !((1u8 << (8 - bits)) - 1);
    map_values(img, |v| v & mask)
}

/// `solarize_image`: values at or above `threshold` are inverted.
pub fn solarize(img: &RgbImage, threshold: f64) -> RgbImage {
    let t = threshold as f32;
    map_values(img, |v| if f32::from(v) >= t { 255 - v } else { v })
}

/// `autocontrast_image`: each channel stretched to 0..=255 (a constant
/// channel is left as is).
pub fn autocontrast(img: &RgbImage) -> RgbImage {
    let mut lo = [255u8; 3];
    let mut hi = [0u8; 3];
    for p in img.pixels() {
        for c in 0..3 {
            lo[c] = lo[c].min(p[c]);
            hi[c] = hi[c].max(p[c]);
        }
    }
    let step = (1.0f64 / 255.0) as f32;
    let params: Vec<(f32, f32)> = (0..3)
        .map(|c| {
            if lo[c] == hi[c] {
                (0.0, 1.0)
            } else {
                (
                    f32::from(lo[c]),
                    (f32::from(hi[c]) - f32::from(lo[c])) * step,
                )
            }
        })
        .collect();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for (c, v) in p.0.iter_mut().enumerate() {
            let (min, inv_scale) = params[c];
            *v = to_u8((f32::from(*v) - min) / inv_scale);
        }
    }
    out
}

/// `equalize_image`: per channel, PIL's histogram equalisation (integer
/// arithmetic; a channel whose non-maximum pixels are fewer than 255 is left
/// as is).
pub fn equalize(img: &RgbImage) -> RgbImage {
    let n = img.width() as i64 * img.height() as i64;
    let mut luts = [[0u8; 256]; 3];
    let mut valid = [false; 3];
    for c in 0..3 {
        let mut hist = [0i64; 256];
        for p in img.pixels() {
            hist[usize::from(p[c])] += 1;
        }
        // The last non-empty bin holds the image's maximum value.
        let last = (0..256).rev().find(|&v| hist[v] > 0).unwrap_or(0);
        let step = (n - hist[last]) / 255;
        valid[c] = step != 0;
        let step = step.max(1);
        let mut cum = 0i64;
        for v in 1..256 {
            cum += hist[v - 1];
            luts[c][v] = ((cum + step / 2) / step).clamp(0, 255) as u8;
        }
    }
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for (c, v) in p.0.iter_mut().enumerate() {
            if valid[c] {
                *v = luts[c][usize::from(*v)];
            }
        }
    }
    out
}

fn map_values(img: &RgbImage, f: impl Fn(u8) -> u8) -> RgbImage {
    let mut out = img.clone();
    for v in out.iter_mut() {
        *v = f(*v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RgbImage {
        RgbImage::from_fn(23, 17, |x, y| {
            image::Rgb([(x * 11) as u8, (y * 13) as u8, ((x * y) % 256) as u8])
        })
    }

    #[test]
    fn whole_pixel_translation_shifts_and_pads_with_black() {
        let img = image();
        let moved = affine(&img, 0.0, (3.0, 0.0), (0.0, 0.0), false);
        assert_eq!(moved.get_pixel(5, 4), img.get_pixel(2, 4));
        assert_eq!(moved.get_pixel(1, 4), &image::Rgb([0, 0, 0]));
        assert_eq!(rotate(&img, 0.0), img);
        assert_eq!(rotate(&img, -0.0), img);
    }

    #[test]
    fn colour_identities() {
        let img = image();
        assert_eq!(brightness(&img, 1.0), img);
        assert_eq!(posterize(&img, 8), img);
        assert_eq!(solarize(&img, 256.0), img);
        let flat = RgbImage::from_pixel(4, 4, image::Rgb([7, 7, 7]));
        assert_eq!(autocontrast(&flat), flat);
        assert_eq!(equalize(&flat), flat);
    }
}
