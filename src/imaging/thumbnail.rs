//! Small previews of dataset images for the web page: decoded as training
//! decodes them (EXIF orientation, RGB), shrunk to fit a square, as PNG.
//!
//! A PNG that is not interlaced is shrunk while it is decoded, row by row
//! ([`super::png_rows`]): its thumbnail costs a few rows of memory. Other
//! images are decoded whole, then shrunk. [`ThumbnailSource::bytes`] says
//! which, and what it will cost, before anything is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, RgbImage};

use super::decode::{file_header, read_capped, FileHeader};
use super::{decode, png_rows, DecodeLimits, ImageError};

/// The smallest and largest side a thumbnail may be asked for.
pub const SIDES: std::ops::RangeInclusive<u32> = 16..=512;

/// The size of the thumbnail of a `w` x `h` image: shrunk (never enlarged)
/// to fit in `side` x `side`, keeping the aspect ratio.
fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    let scale = (f64::from(side) / f64::from(w.max(h))).min(1.0);
    (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    )
}

fn encode_png(img: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ImageError::Decode(format!("encoding the thumbnail: {e}")))?;
    Ok(out.into_inner())
}

/// `bytes` decoded and shrunk (never enlarged) to fit in `side` x `side`,
/// keeping the aspect ratio, encoded as PNG.
pub fn thumbnail_png(
    bytes: &[u8],
    limits: &DecodeLimits,
    side: u32,
) -> Result<Vec<u8>, ImageError> {
    let img = decode(bytes, limits)?;
    let (w, h) = img.dimensions();
    let (tw, th) = fit(w, h, side);
    let small = if (tw, th) == (w, h) {
        img
    } else {
        image::imageops::thumbnail(&img, tw, th)
    };
    encode_png(&small)
}

/// An image file about to be thumbnailed: its header, and whether it can
/// be shrunk while decoding.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailSource {
    pub header: FileHeader,
    /// A PNG that is not interlaced: shrunk row by row.
    pub streamed: bool,
}

impl ThumbnailSource {
    /// Reads the header of the file at `path` (refused unread when over
    /// `max_file_bytes`).
    pub fn inspect(path: &Path, max_file_bytes: u64) -> Result<Self, ImageError> {
        let header = file_header(path, max_file_bytes)?;
        let streamed =
            header.image.format == image::ImageFormat::Png && png_rows::streamable(path)?;
        Ok(Self { header, streamed })
    }

    /// Bytes making a `side` thumbnail holds at its peak: for a streamed
    /// PNG, a few rows; else the file read whole and the decoded image.
    /// Plus the thumbnail and its PNG encoding.
    pub fn bytes(&self, side: u32) -> u64 {
        let small = u64::from(side) * u64::from(side) * 3;
        let (w, h) = (self.header.image.width, self.header.image.height);
        let decode = if self.streamed {
            png_rows::streamed_bytes(w, fit(w, h, side).0)
        } else {
            self.header.file_bytes + self.header.image.decode_bytes
        };
        decode + 2 * small
    }
}

/// The `side` thumbnail of the image file at `path`, as PNG.
pub fn thumbnail_png_file(
    path: &Path,
    source: &ThumbnailSource,
    limits: &DecodeLimits,
    max_file_bytes: u64,
    side: u32,
) -> Result<Vec<u8>, ImageError> {
    if !source.streamed {
        return thumbnail_png(&read_capped(path, max_file_bytes)?, limits, side);
    }
    let (w, h) = (source.header.image.width, source.header.image.height);
    // The fit of the image as stored; turning it swaps both sides alike.
    let (tw, th) = fit(w, h, side);
    let (small, orientation) = png_rows::shrink(path, tw, th)?;
    let mut img = DynamicImage::ImageRgb8(small);
    img.apply_orientation(orientation);
    encode_png(&img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn shrinks_to_fit_keeping_the_aspect_ratio_and_never_enlarges() {
        let limits = DecodeLimits::default();
        let small = thumbnail_png(&png(300, 150), &limits, 96).unwrap();
        let img = image::load_from_memory(&small).unwrap();
        assert_eq!((img.width(), img.height()), (96, 48));
        assert_eq!(img.to_rgb8().get_pixel(10, 10).0, [200, 10, 10]);
        let tiny = thumbnail_png(&png(20, 30), &limits, 96).unwrap();
        let img = image::load_from_memory(&tiny).unwrap();
        assert_eq!((img.width(), img.height()), (20, 30));
        assert!(thumbnail_png(b"not an image", &limits, 96).is_err());
    }

    /// A PNG shrunk row by row matches the whole decode's thumbnail (both
    /// area averages), for RGB, grey with alpha and 16-bit files, and costs
    /// a few rows instead of the image.
    #[test]
    fn streamed_png_thumbnails_match_whole_decodes() {
        assert!(png_rows::streamed_bytes(8000, 96) < 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let gradient = RgbImage::from_fn(301, 157, |x, y| {
            image::Rgb([(x % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8])
        });
        let images = [
            DynamicImage::ImageRgb8(gradient.clone()),
            DynamicImage::ImageLumaA8(DynamicImage::ImageRgb8(gradient.clone()).to_luma_alpha8()),
            DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(gradient).to_rgb16()),
        ];
        let limits = DecodeLimits::default();
        for (i, img) in images.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.png"));
            img.save(&path).unwrap();
            let source = ThumbnailSource::inspect(&path, u64::MAX).unwrap();
            assert!(source.streamed);
            let streamed = thumbnail_png_file(&path, &source, &limits, u64::MAX, 64).unwrap();
            let whole = thumbnail_png(&std::fs::read(&path).unwrap(), &limits, 64).unwrap();
            let (a, b) = (
                image::load_from_memory(&streamed).unwrap().to_rgb8(),
                image::load_from_memory(&whole).unwrap().to_rgb8(),
            );
            assert_eq!(a.dimensions(), (64, 33), "image {i}");
            assert_eq!(a.dimensions(), b.dimensions());
            let worst = a
                .pixels()
                .zip(b.pixels())
                .flat_map(|(p, q)| (0..3).map(move |c| (i16::from(p[c]) - i16::from(q[c])).abs()))
                .max()
                .unwrap();
            assert!(worst <= 8, "image {i}: differs by {worst}");
        }
    }
}
