//! Thumbnails of PNG files decoded one row at a time. A PNG that is not
//! interlaced can be shrunk while it is read: each decoded row is added
//! into the output row it falls in (an area average, as
//! `image::imageops::thumbnail` computes), so an 8000x8000 PNG costs a
//! few rows of memory instead of its 192 MiB of pixels.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::RgbImage;

use super::ImageError;

fn png_error(e: png::DecodingError) -> ImageError {
    ImageError::Decode(format!("PNG: {e}"))
}

fn open(path: &Path) -> Result<png::Decoder<BufReader<File>>, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(png::Decoder::new(BufReader::new(file)))
}

/// Whether the PNG file at `path` can be shrunk row by row (it is not
/// interlaced: Adam7 passes deliver rows out of order).
pub fn streamable(path: &Path) -> Result<bool, ImageError> {
    let mut decoder = open(path)?;
    let info = decoder.read_header_info().map_err(png_error)?;
    Ok(!info.interlaced)
}

/// Bytes shrinking a `width`-wide PNG row by row holds: the decoder's
/// current and previous rows (up to 16-bit RGBA), the zlib window, and
/// the sums of one output row.
pub fn streamed_bytes(width: u32, out_width: u32) -> u64 {
    2 * u64::from(width) * 8 + (64 << 10) + u64::from(out_width) * 3 * 8
}

/// The PNG at `path`, not interlaced, decoded row by row into an RGB
/// image of `out_w` x `out_h` (at most its own size). Grey is replicated
/// and alpha dropped, as [`super::decode`] does. Returns the image as
/// stored, and the EXIF orientation (`eXIf`) it declares for the caller
/// to apply.
pub fn shrink(
    path: &Path,
    out_w: u32,
    out_h: u32,
) -> Result<(RgbImage, image::metadata::Orientation), ImageError> {
    let mut decoder = open(path)?;
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (w, h) = (reader.info().width, reader.info().height);
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let channels = match reader.output_color_type().0 {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(ImageError::Decode("unexpanded palette".into())),
    };
    let (out_w, out_h) = (out_w.clamp(1, w), out_h.clamp(1, h));
    // Output column of each input column, and how many input columns each gets.
    let column: Vec<usize> = (0..w)
        .map(|x| (u64::from(x) * u64::from(out_w) / u64::from(w)) as usize)
        .collect();
    let mut width_of = vec![0u64; out_w as usize];
    column.iter().for_each(|&c| width_of[c] += 1);
    let mut out = RgbImage::new(out_w, out_h);
    let mut sums = vec![0u64; out_w as usize * 3];
    let (mut band, mut rows_in_band) = (0u32, 0u64);
    for y in 0..h {
        let row = reader
            .next_row()
            .map_err(png_error)?
            .ok_or_else(|| ImageError::Decode("PNG: fewer rows than its header says".into()))?;
        let oy = (u64::from(y) * u64::from(out_h) / u64::from(h)) as u32;
        if oy != band {
            flush(&mut out, band, &mut sums, &width_of, rows_in_band);
            (band, rows_in_band) = (oy, 0);
        }
        for (x, px) in row.data().chunks_exact(channels).enumerate() {
            let rgb = if channels < 3 {
                [px[0]; 3]
            } else {
                [px[0], px[1], px[2]]
            };
            let s = &mut sums[column[x] * 3..column[x] * 3 + 3];
            (0..3).for_each(|c| s[c] += u64::from(rgb[c]));
        }
        rows_in_band += 1;
    }
    flush(&mut out, band, &mut sums, &width_of, rows_in_band);
    Ok((out, orientation))
}

/// Writes output row `y` as the mean of its sums, and clears them.
fn flush(out: &mut RgbImage, y: u32, sums: &mut [u64], width_of: &[u64], rows: u64) {
    for (x, s) in sums.chunks_exact_mut(3).enumerate() {
        let n = (width_of[x] * rows).max(1);
        let px = image::Rgb([0, 1, 2].map(|c| ((s[c] + n / 2) / n) as u8));
        out.put_pixel(x as u32, y, px);
        s.fill(0);
    }
}
