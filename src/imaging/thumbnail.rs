//! Small previews of dataset images for the web page: decoded as training
//! decodes them (EXIF orientation, RGB), shrunk to fit a square, as PNG.

use std::io::Cursor;

use super::{decode, DecodeLimits, ImageError};

/// The smallest and largest side a thumbnail may be asked for.
pub const SIDES: std::ops::RangeInclusive<u32> = 16..=512;

/// `bytes` decoded and shrunk (never enlarged) to fit in `side` x `side`,
/// keeping the aspect ratio, encoded as PNG.
pub fn thumbnail_png(
    bytes: &[u8],
    limits: &DecodeLimits,
    side: u32,
) -> Result<Vec<u8>, ImageError> {
    let img = decode(bytes, limits)?;
    let (w, h) = img.dimensions();
    let scale = (f64::from(side) / f64::from(w.max(h))).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = if (tw, th) == (w, h) {
        img
    } else {
        image::imageops::thumbnail(&img, tw, th)
    };
    let mut out = Cursor::new(Vec::new());
    small
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ImageError::Decode(format!("encoding the thumbnail: {e}")))?;
    Ok(out.into_inner())
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
}
