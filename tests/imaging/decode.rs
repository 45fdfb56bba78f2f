//! Decoding untrusted bytes: limits are checked from the header before any
//! pixel buffer exists, and broken files are errors, not panics.

use std::io::Cursor;
use std::time::Instant;

use vitrine::imaging::{decode, DecodeLimits, ImageError, Pipeline, PreprocessorConfig};

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::new(w, h)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A valid 1x1 PNG whose IHDR (CRC fixed up) declares `w` x `h`.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    // Signature (8) + length (4) + "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    bytes
}

#[test]
fn declared_dimensions_over_the_limit_are_refused_without_allocating() {
    let limits = DecodeLimits {
        max_pixels: 10_000_000,
    };
    let t = Instant::now();
    match decode(&png_declaring(100_000, 100_000), &limits) {
        Err(ImageError::TooLarge {
            width,
            height,
            max_pixels,
        }) => {
            assert_eq!((width, height, max_pixels), (100_000, 100_000, 10_000_000))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(t.elapsed().as_millis() < 500);
    // Under the limit but lying about its size: a decode error; what is
    // allocated is bounded by the limit, not by the header.
    let limits = DecodeLimits {
        max_pixels: 64_000_000,
    };
    assert!(matches!(
        decode(&png_declaring(7_000, 7_000), &limits),
        Err(ImageError::Decode(_))
    ));
}

#[test]
fn broken_and_foreign_bytes_are_errors() {
    let limits = DecodeLimits::default();
    assert!(matches!(
        decode(b"hello", &limits),
        Err(ImageError::UnsupportedFormat)
    ));
    let good = png(64, 48);
    assert!(decode(&good[..good.len() / 2], &limits).is_err());
    let mut jpeg = Cursor::new(Vec::new());
    image::RgbImage::new(64, 48)
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    assert!(decode(&jpeg[..40], &limits).is_err());
    assert_eq!(decode(&good, &limits).unwrap().dimensions(), (64, 48));
}

#[test]
fn batches_are_parallel_decoded_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (w, h)) in [(300, 200), (64, 512), (224, 224)].into_iter().enumerate() {
        let p = dir.path().join(format!("{i}.png"));
        std::fs::write(&p, png(w, h)).unwrap();
        paths.push(p);
    }
    let p = Pipeline::from_preprocessor(&PreprocessorConfig::default(), None);
    let eval = p.load_batch(&paths, None).unwrap();
    assert_eq!(eval.size(), [3, 3, 224, 224]);
    let a = p.load_batch(&paths, Some(3)).unwrap();
    let b = p.load_batch(&paths, Some(3)).unwrap();
    assert!(a.equal(&b));
    paths.push(dir.path().join("missing.png"));
    let err = p.load_batch(&paths, None).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");
    let t = p
        .tensor_from_bytes(&std::fs::read(&paths[0]).unwrap())
        .unwrap();
    assert_eq!(t.size(), [3, 224, 224]);
}

#[test]
fn a_truncated_jpeg_is_an_error_not_grey_pixels() {
    let limits = DecodeLimits::default();
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut jpeg = Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    assert_eq!(decode(&jpeg, &limits).unwrap().dimensions(), (64, 48));
    // Bytes after the end-of-image marker (camera trailers) are fine.
    let mut trailer = jpeg.clone();
    trailer.extend_from_slice(b"trailer \xff\xd8 junk");
    assert_eq!(decode(&trailer, &limits).unwrap().dimensions(), (64, 48));
    // Cut in the headers: the decoder's own error.
    let sos = jpeg.windows(2).position(|w| w == [0xff, 0xda]).unwrap();
    assert!(decode(&jpeg[..sos / 2], &limits).is_err());
    // Cut anywhere in the image data, even just the marker: refused, as
    // Pillow refuses it ("image file is truncated"), where the decoder
    // would fill the rest with grey.
    let data = jpeg.len() - sos;
    for cut in [sos + data / 2, sos + data * 9 / 10, jpeg.len() - 2] {
        match decode(&jpeg[..cut], &limits) {
            Err(ImageError::Decode(m)) => assert!(m.contains("truncated JPEG"), "{m}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}
