//! Decoding untrusted image bytes into RGB, with limits.
//!
//! The declared dimensions are checked against the pixel limit before any
//! pixel buffer is allocated, and the decoder itself runs under
//! [`image::Limits`], so a 60000x60000 PNG header costs nothing.
//!
//! JPEGs decode with `zune-jpeg` (through `image`). Its chroma upsampling
//! for subsampled files rounds twice for 4:2:0 (`(3a + b + 2) >> 2`
//! vertically, then again horizontally) where libjpeg-turbo (Pillow) keeps
//! the column sums and rounds once (`+ 8` / `+ 7` alternately); 4:2:2 rounds
//! `+ 2` on both sides where libjpeg-turbo alternates `+ 1` / `+ 2`. The
//! chroma comes out about +0.25 level high for 4:2:0 (R +0.35, G -0.26,
//! B +0.44 on flat colour), +0.1-0.2 on average on photo-like images, at most
//! 4 levels; 4:4:4 files are unaffected. `jpeg-decoder` halves that mean
//! difference (0.06-0.10 vs 0.10-0.22 mean |diff|, max 3 vs 4) but decodes
//! 2x slower and is worse on 4:2:2, and `zune-jpeg` exposes no raw chroma
//! planes to upsample ourselves, so the bias stays (see docs/benchmarks.md,
//! "Preprocessing parity with transformers").

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::ImageError;

/// Limits applied to every decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64_000_000,
        }
    }
}

impl DecodeLimits {
    /// The decoder's allocation cap: the output buffer at 16 bits x 4 channels
    /// plus slack for the decoder's own state.
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(64 << 20)
    }
}

/// The container format of `bytes`, guessed from their magic number.
pub fn sniff_format(bytes: &[u8]) -> Option<image::ImageFormat> {
    image::guess_format(bytes).ok().filter(|f| {
        matches!(
            f,
            image::ImageFormat::Jpeg
                | image::ImageFormat::Png
                | image::ImageFormat::WebP
                | image::ImageFormat::Bmp
                | image::ImageFormat::Gif
                | image::ImageFormat::Tiff
        )
    })
}

/// A JPEG cut short. The decoder fills what is missing with grey and says
/// nothing; Pillow (so `transformers`' `load_image`) refuses such a file
/// ("image file is truncated"), and training on half-grey images is
/// wrong. Complete files have an end-of-image marker after the first scan
/// (marker bytes cannot occur inside entropy-coded data); anything may
/// follow it.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
                   // Walk the marker segments up to the first start of scan. Headers the
                   // walk cannot follow are left to the decoder (false: not judged here).
    loop {
        while bytes.get(i) == Some(&0xff) && bytes.get(i + 1) == Some(&0xff) {
            i += 1; // fill bytes
        }
        let (Some(&0xff), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return false;
        };
        i += 2;
        if marker == 0xd9 {
            return false; // EOI before any scan: nothing to decode, not cut
        }
        if (0xd0..=0xd7).contains(&marker) || marker == 0x01 {
            continue;
        }
        let Some(len) = bytes
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        i += len;
        if marker == 0xda {
            break;
        }
    }
    !bytes
        .get(i..)
        .is_some_and(|scan| scan.windows(2).any(|w| w == [0xff, 0xd9]))
}

/// Decodes JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF (first page)
/// into 8-bit RGB with the EXIF orientation applied, as `transformers`'
/// `load_image` does. Grayscale is replicated, alpha dropped (as PIL's
/// `convert("RGB")` does), CMYK converted and 16-bit samples scaled to 8
/// bits; a truncated JPEG is an error, as in Pillow.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    decode_dynamic(bytes, limits).map(|img| match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Like [`decode`], but keeps the decoded colour type.
pub fn decode_dynamic(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, ImageError> {
    let (mut img, orientation) = decode_unoriented(bytes, limits)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Decodes every pixel, as [`decode`] would, and refuses what it refuses,
/// but neither turns nor converts the result: the dimensions as shown
/// (EXIF orientation applied). What checking an image needs, without the
/// copy a rotation makes of a 12-megapixel photo.
pub fn verify(bytes: &[u8], limits: &DecodeLimits) -> Result<(u32, u32), ImageError> {
    use image::metadata::Orientation;
    let (img, orientation) = decode_unoriented(bytes, limits)?;
    let (w, h) = (img.width(), img.height());
    Ok(match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

fn decode_unoriented(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(DynamicImage, image::metadata::Orientation), ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    if format == image::ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        return Err(ImageError::Decode(
            "truncated JPEG (no end-of-image marker after the image data)".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_alloc());
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(ImageError::from_image)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Decode("image has a zero dimension".into()));
    }
    // A missing or malformed EXIF block is not a reason to refuse the image.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(ImageError::from_image)?;
    Ok((img, orientation))
}

/// The declared dimensions of an image, reading only its header.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    let decoder = reader.into_decoder().map_err(ImageError::from_image)?;
    Ok(decoder.dimensions())
}

/// Reads the image file at `path` whole, refusing it before reading when it
/// is larger than `max_bytes` (`--max-image-file-bytes`): never an
/// `fs::read` of an unknown size. The length is checked again while
/// reading, so a file that grows meanwhile is still cut at the cap.
pub fn read_capped(path: &std::path::Path, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(ImageError::FileTooLarge {
            bytes: len,
            max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ImageError::FileTooLarge {
            bytes: bytes.len() as u64,
            max_bytes,
        });
    }
    Ok(bytes)
}

/// What an image declares before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: image::ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes decoding it into RGB may hold at its peak ([`decode_bytes`]).
    pub decode_bytes: u64,
}

impl Header {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Bytes decoding an image into 8-bit RGB holds at its peak, known from
/// its header: the decoder's output buffer (`total_bytes`: its own colour
/// type and bit depth), the decoder's working copy where it keeps one
/// (WebP decodes through an ARGB buffer, a progressive JPEG keeps its
/// coefficients; PNG and BMP write straight into the output: 4 bytes a
/// pixel for every format but those two), and the RGB8 copy when the
/// output is not RGB8 already. At most [`crate::budget::image_decode_bytes`]
/// plus the working copy.
pub fn decode_bytes(
    format: image::ImageFormat,
    color: image::ColorType,
    output_bytes: u64,
    width: u32,
    height: u32,
) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    let working = match format {
        image::ImageFormat::Png | image::ImageFormat::Bmp => 0,
        _ => pixels * 4,
    };
    let conversion = if color == image::ColorType::Rgb8 {
        0
    } else {
        pixels * 3
    };
    output_bytes + working + conversion
}

fn header_of<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    format: image::ImageFormat,
) -> Result<Header, ImageError> {
    let decoder = ImageReader::with_format(reader, format)
        .into_decoder()
        .map_err(ImageError::from_image)?;
    let (width, height) = decoder.dimensions();
    Ok(Header {
        format,
        width,
        height,
        decode_bytes: decode_bytes(
            format,
            decoder.color_type(),
            decoder.total_bytes(),
            width,
            height,
        ),
    })
}

/// The header of the encoded image `bytes` (dimensions and decoding
/// cost), reading nothing past it.
pub fn header(bytes: &[u8]) -> Result<Header, ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    header_of(Cursor::new(bytes), format)
}

/// An image file's length and header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// The file's length in bytes.
    pub file_bytes: u64,
    pub image: Header,
}

/// The length and header of the image file at `path`, reading only its
/// first bytes; a file over `max_bytes` is refused unread.
pub fn file_header(path: &std::path::Path, max_bytes: u64) -> Result<FileHeader, ImageError> {
    use std::io::{BufReader, Read, Seek};
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    if file_bytes > max_bytes {
        return Err(ImageError::FileTooLarge {
            bytes: file_bytes,
            max_bytes,
        });
    }
    let mut reader = BufReader::new(file);
    let mut magic = Vec::with_capacity(32);
    (&mut reader).take(32).read_to_end(&mut magic).map_err(io)?;
    let format = sniff_format(&magic).ok_or(ImageError::UnsupportedFormat)?;
    reader.rewind().map_err(io)?;
    Ok(FileHeader {
        file_bytes,
        image: header_of(reader, format)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(img: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// The decoding cost is known from the header: the output in the
    /// file's own colour type, a working copy for WebP, an RGB8 copy when
    /// converting.
    #[test]
    fn headers_tell_the_cost_of_decoding() {
        use image::ImageFormat::{Png, WebP};
        let rgb = DynamicImage::ImageRgb8(RgbImage::new(40, 30));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::new(40, 30));
        let px = 40 * 30;
        let h = header(&encoded(rgb.clone(), Png)).unwrap();
        assert_eq!((h.width, h.height, h.decode_bytes), (40, 30, 3 * px));
        assert_eq!(
            header(&encoded(rgba, Png)).unwrap().decode_bytes,
            4 * px + 3 * px
        );
        let webp = header(&encoded(rgb, WebP)).unwrap().decode_bytes;
        assert!(webp >= 3 * px + 4 * px, "{webp}");
        assert!(header(b"not an image").is_err());
    }

    #[test]
    fn files_over_the_cap_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(
            &path,
            encoded(
                DynamicImage::ImageRgb8(RgbImage::new(8, 8)),
                image::ImageFormat::Png,
            ),
        )
        .unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let h = file_header(&path, len).unwrap();
        assert_eq!((h.file_bytes, h.image.width), (len, 8));
        assert_eq!(read_capped(&path, len).unwrap().len() as u64, len);
        for e in [
            file_header(&path, len - 1).err(),
            read_capped(&path, len - 1).err(),
        ] {
            assert!(matches!(e, Some(ImageError::FileTooLarge { .. })), "{e:?}");
        }
        // A sparse 10 GiB "image" is refused without reading a byte.
        let huge = dir.path().join("huge.png");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(10 << 30)
            .unwrap();
        assert!(matches!(
            read_capped(&huge, 64 << 20),
            Err(ImageError::FileTooLarge { .. })
        ));
    }
}
