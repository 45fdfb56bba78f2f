//! Heat maps as files: a PNG overlay on the image as the model saw it, and
//! NumPy's `.npy` for the float grids.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};
use tch::{Kind, Tensor};

use crate::imaging::Normalisation;

/// `[H, W]` floats, row by row.
pub fn grid(map: &Tensor) -> Vec<Vec<f32>> {
    let map = map.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let (h, w) = map.size2().expect("[H, W]");
    let flat: Vec<f32> = Vec::try_from(map.reshape([-1])).unwrap_or_default();
    flat.chunks(w.max(1) as usize)
        .take(h as usize)
        .map(<[f32]>::to_vec)
        .collect()
}

/// The `.npy` (format 1.0, little-endian f32) of `maps` stacked: `[L, H, W]`.
pub fn npy(maps: &[Tensor]) -> Vec<u8> {
    let stacked = Tensor::stack(maps, 0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    let shape = stacked.size();
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // Magic (6) + version (2) + length (2) + header, padded to 64 bytes
    // with spaces and a final newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let values: Vec<f32> = Vec::try_from(stacked.reshape([-1])).unwrap_or_default();
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// The image the model saw (`pixels`, `[1, 3, H, W]` normalised) with
/// `map` (`[H, W]` in `[0, 1]`) laid over it in the jet colour map, half
/// and half, as PNG bytes.
pub fn overlay_png(pixels: &Tensor, map: &Tensor, norm: &Normalisation) -> Vec<u8> {
    let pixels = pixels
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .select(0, 0);
    let (_, h, w) = pixels.size3().expect("[3, H, W]");
    let rgb: Vec<f32> = Vec::try_from(pixels.reshape([-1])).unwrap_or_default();
    let heat: Vec<f32> = Vec::try_from(
        map.to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .reshape([-1]),
    )
    .unwrap_or_default();
    let plane = (h * w) as usize;
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w as usize + x as usize;
        let colour = jet(heat.get(i).copied().unwrap_or(0.0));
        Rgb(std::array::from_fn(|c| {
            let v = (rgb[c * plane + i] * norm.std[c] + norm.mean[c]) / norm.scale;
            (0.5 * v.clamp(0.0, 255.0) + 0.5 * colour[c]).round() as u8
        }))
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .expect("encoding a PNG in memory");
    out.into_inner()
}

/// The jet colour map (blue, cyan, yellow, red) at `v` in `[0, 1]`, 0-255.
fn jet(v: f32) -> [f32; 3] {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let ramp = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_names_the_shape() {
        let maps = [Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu))];
        let bytes = npy(&maps);
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (1, 2, 3,)"), "{header}");
        assert_eq!(bytes.len(), 10 + len + 6 * 4);
        assert_eq!(&bytes[10 + len..10 + len + 4], &1f32.to_le_bytes());
    }

    #[test]
    fn jet_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0.0, 0.0, 127.5]);
        assert_eq!(jet(1.0), [127.5, 0.0, 0.0]);
        assert_eq!(jet(0.5), [127.5, 255.0, 127.5]);
    }
}
