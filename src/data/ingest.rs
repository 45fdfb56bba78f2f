//! From an archive on disk to a validated dataset directory: extract, find
//! the layout, decode every image under limits, check the labels, write the
//! manifest and summary. Blocking; the service runs it in `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveFormat, ExtractLimits};
use super::error::{name_some, DatasetError};
use super::layout::{self, Item};
use super::manifest::{Manifest, Sample};
use super::parquet::{self, ParquetColumns};
use super::progress::IngestProgress;
use super::summary::{DatasetSummary, SizeRange, SkipList, Skipped};
use crate::budget::{self, DecodeBudget};
use crate::imaging::{self, DecodeLimits, ImageError};
use crate::task::Task;

/// Where the extracted archive lives inside a dataset directory.
pub const FILES_DIR: &str = "files";
pub const SUMMARY_FILE: &str = "summary.json";

/// A train split with one label this many times more frequent than another
/// gets a warning.
const IMBALANCE_RATIO: f64 = 10.0;

/// The limits a dataset is checked against (the service takes them from
/// its configuration).
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_entries: u64,
    pub max_uncompressed_bytes: u64,
    pub max_image_pixels: u64,
    /// Fraction of undecodable images tolerated (skipped); above it, refused.
    pub max_undecodable_fraction: f64,
    /// Largest image file, in bytes, checked before it is read (an archive
    /// member named as an image, while extracting; a Parquet cell; every
    /// image, before decoding).
    pub max_image_file_bytes: u64,
    /// The server's one decoding budget: what a validation decodes (Parquet
    /// row groups, images) is drawn from it first, waiting for it.
    pub decode_budget: DecodeBudget,
}

/// A validated dataset.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub format: ArchiveFormat,
    pub task: Task,
    pub summary: DatasetSummary,
    /// Sample paths relative to the dataset directory.
    pub manifest: Manifest,
}

struct Checked {
    width: u32,
    height: u32,
    sha256: [u8; 32],
}

/// Why an image was not kept.
enum Unchecked {
    /// Not a usable image: skipped, within the tolerance.
    Image(ImageError),
    /// Over `--max-image-file-bytes` (its size in bytes): refused unread.
    FileTooLarge(u64),
    /// The decoding budget could not be had (it never could: the image
    /// needs more than all of it; or it stayed in use): refused.
    Budget(DatasetError),
}

/// How long an image waits for decoding memory others hold before the
/// validation gives up (a validation is background work: it waits).
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Extracts `archive` into `<dir>/files` and validates it; on success writes
/// `<dir>/manifest.json` and `<dir>/summary.json`. On error `dir` holds
/// partial output: the caller removes it. Images are decoded on the
/// current rayon pool (the service runs this inside its ingestion pool);
/// `progress` counts them as they are checked.
pub fn ingest_archive(
    archive: &Path,
    dir: &Path,
    limits: &IngestLimits,
    progress: &IngestProgress,
) -> Result<Ingested, DatasetError> {
    ingest_upload(archive, dir, limits, &ParquetColumns::default(), progress)
}

/// [`ingest_archive`] with the columns of a Parquet dataset named by the
/// uploader. Its decodes (images, Parquet) draw from
/// `limits.decode_budget`, waiting for it.
pub fn ingest_upload(
    archive: &Path,
    dir: &Path,
    limits: &IngestLimits,
    columns: &ParquetColumns,
    progress: &IngestProgress,
) -> Result<Ingested, DatasetError> {
    let format = archive::detect(archive)?;
    let files = dir.join(FILES_DIR);
    let (found, skipped, extracted_bytes) =
        extract_files(archive, format, dir, &files, limits, columns)?;
    let checked = check_all(&found.items, &files, limits, progress)?;
    let (items, skipped) = keep_usable(found.items, checked, skipped, limits)?;
    let labels = check_labels(&items, found.task)?;
    let mut summary = DatasetSummary {
        layout: found.layout.to_string(),
        task: found.task,
        labels: labels.clone(),
        images: items.len(),
        splits: BTreeMap::new(),
        image_size: None,
        extracted_bytes,
        skipped,
        duplicates_across_splits: Vec::new(),
        warnings: Vec::new(),
    };
    let manifest = summarise(&items, labels, found.task, &mut summary);
    manifest
        .save(dir)
        .map_err(|e| internal(std::io::Error::other(e.to_string())))?;
    std::fs::write(
        dir.join(SUMMARY_FILE),
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(internal)?;
    Ok(Ingested {
        format,
        task: found.task,
        summary,
        manifest,
    })
}

/// Extracts the archive into `files` (a Parquet dataset unpacked into the
/// imagefolder layout) and finds its layout: the items, the files left
/// out, and the bytes extracted.
fn extract_files(
    archive: &Path,
    format: ArchiveFormat,
    dir: &Path,
    files: &Path,
    limits: &IngestLimits,
    columns: &ParquetColumns,
) -> Result<(layout::Found, SkipList, u64), DatasetError> {
    std::fs::create_dir_all(files).map_err(internal)?;
    let extract_limits = ExtractLimits {
        max_entries: limits.max_entries,
        max_bytes: limits.max_uncompressed_bytes,
    };
    let stats = archive::extract(
        archive,
        format,
        files,
        extract_limits,
        limits.max_image_file_bytes,
    )?;
    let unpacked = unpack_parquet(dir, files, limits, columns)?;
    let mut found = layout::detect(files)?;
    let mut skipped = std::mem::take(&mut found.skipped);
    let extracted_bytes = match unpacked {
        Some(u) => {
            found.layout = "parquet";
            skipped.append(u.skipped);
            u.bytes
        }
        None => stats.bytes,
    };
    Ok((found, skipped, extracted_bytes))
}

/// Checks every image in parallel on the current rayon pool, counting them
/// in `progress`; stops early (an error) when the validation is stopped.
fn check_all(
    items: &[Item],
    files: &Path,
    limits: &IngestLimits,
    progress: &IngestProgress,
) -> Result<Vec<Result<Checked, Unchecked>>, DatasetError> {
    progress.start_checking(items.len());
    let checked = items
        .par_iter()
        .map(|item| {
            if progress.stopped() {
                return Err(Unchecked::Image(ImageError::Decode(
                    "validation interrupted".into(),
                )));
            }
            let checked = check_image(
                &files.join(&item.rel),
                &item.rel,
                limits,
                &limits.decode_budget,
            );
            progress.checked_one();
            checked
        })
        .collect();
    if progress.stopped() {
        return Err(DatasetError::internal("interrupted by shutdown"));
    }
    Ok(checked)
}

/// The items whose image is usable. Images over the limits refuse the
/// dataset; undecodable ones are skipped (and listed) within the
/// tolerated fraction, and refuse it beyond.
fn keep_usable(
    found: Vec<Item>,
    checked: Vec<Result<Checked, Unchecked>>,
    mut skipped: SkipList,
    limits: &IngestLimits,
) -> Result<(Vec<(Item, Checked)>, SkipList), DatasetError> {
    let mut too_large = Vec::new();
    let mut too_large_files = Vec::new();
    let mut undecodable = Vec::new();
    let mut items: Vec<(Item, Checked)> = Vec::new();
    for (item, result) in found.into_iter().zip(checked) {
        let name = item.rel.display().to_string();
        match result {
            Ok(c) => items.push((item, c)),
            Err(Unchecked::Image(ImageError::TooLarge { width, height, .. })) => {
                too_large.push(format!("{name} ({width}x{height})"))
            }
            Err(Unchecked::Image(e)) => undecodable.push((name, e.to_string())),
            Err(Unchecked::FileTooLarge(bytes)) => {
                too_large_files.push(format!("{name} ({bytes} bytes)"))
            }
            Err(Unchecked::Budget(e)) => return Err(e),
        }
    }
    refuse_too_large(limits, &too_large, &too_large_files)?;
    let total = items.len() + undecodable.len();
    if !undecodable.is_empty() {
        let fraction = undecodable.len() as f64 / total.max(1) as f64;
        if fraction > limits.max_undecodable_fraction {
            let named: Vec<String> = undecodable
                .iter()
                .map(|(f, e)| format!("{f}: {e}"))
                .collect();
            return Err(DatasetError::invalid(
                "undecodable_images",
                format!(
                    "{} of {total} images cannot be decoded, more than the tolerated {:.2}% (VITRINE_MAX_UNDECODABLE_FRACTION): {}",
                    undecodable.len(),
                    limits.max_undecodable_fraction * 100.0,
                    name_some(&named, 10)
                ),
            ));
        }
        skipped.extend(
            undecodable
                .iter()
                .map(|(f, e)| Skipped::new(f, format!("undecodable image: {e}"))),
        );
    }
    if items.is_empty() {
        return Err(DatasetError::invalid(
            "no_images",
            "the archive contains no usable images",
        ));
    }
    Ok((items, skipped))
}

/// Fills the summary's per-split counts, size range, cross-split
/// duplicates and warnings, and returns the manifest the trainer reads.
fn summarise(
    items: &[(Item, Checked)],
    labels: Vec<String>,
    task: Task,
    summary: &mut DatasetSummary,
) -> Manifest {
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut by_split: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut by_hash: BTreeMap<[u8; 32], Vec<(&str, String)>> = BTreeMap::new();
    for (item, c) in items {
        let split = summary.splits.entry(item.split.to_string()).or_default();
        split.images += 1;
        for l in &item.labels {
            *split.per_label.entry(l.clone()).or_default() += 1;
        }
        summary.image_size = Some(SizeRange::include(summary.image_size, c.width, c.height));
        by_hash
            .entry(c.sha256)
            .or_default()
            .push((item.split, item.rel.display().to_string()));
        let mut ids: Vec<usize> = item.labels.iter().map(|l| index[l.as_str()]).collect();
        ids.sort_unstable();
        ids.dedup();
        by_split.entry(item.split).or_default().push(Sample {
            path: Path::new(FILES_DIR).join(&item.rel),
            labels: ids,
        });
    }
    for group in by_hash.into_values() {
        let splits: BTreeSet<&str> = group.iter().map(|g| g.0).collect();
        if splits.len() > 1 {
            summary
                .duplicates_across_splits
                .push(group.into_iter().map(|g| g.1).collect());
        }
    }
    warn(summary);
    Manifest {
        labels,
        task,
        train: by_split.remove("train").unwrap_or_default(),
        validation: by_split.remove("validation"),
        test: by_split.remove("test"),
    }
}

/// A Parquet dataset (the upload itself, or Parquet files in the archive)
/// is unpacked into the imagefolder layout in place of what was extracted;
/// `None` for any other archive.
fn unpack_parquet(
    dir: &Path,
    files: &Path,
    limits: &IngestLimits,
    columns: &ParquetColumns,
) -> Result<Option<parquet::Unpacked>, DatasetError> {
    let Some(mut found) = parquet::find(files)? else {
        return Ok(None);
    };
    // The Parquet files move aside; their rows become the files.
    let raw = dir.join("parquet");
    std::fs::rename(files, &raw).map_err(internal)?;
    std::fs::create_dir_all(files).map_err(internal)?;
    for source in &mut found.sources {
        source.path = raw.join(&source.shown);
    }
    let mut unpacked = parquet::unpack(&found.sources, files, limits, columns)?;
    unpacked.skipped.prepend(found.others);
    std::fs::remove_dir_all(&raw).map_err(internal)?;
    Ok(Some(unpacked))
}

fn internal(e: std::io::Error) -> DatasetError {
    DatasetError::internal(format!("writing the dataset: {e}"))
}

/// Images over a pixel or file-size limit refuse the dataset, naming them.
fn refuse_too_large(
    limits: &IngestLimits,
    pixels: &[String],
    files: &[String],
) -> Result<(), DatasetError> {
    if !files.is_empty() {
        return Err(archive::image_file_too_large(
            limits.max_image_file_bytes,
            &name_some(files, 10),
        ));
    }
    if !pixels.is_empty() {
        return Err(DatasetError::too_large(
            "image_too_large",
            format!(
                "images larger than {} pixels (VITRINE_MAX_IMAGE_PIXELS): {}",
                limits.max_image_pixels,
                name_some(pixels, 10)
            ),
        ));
    }
    Ok(())
}

/// Decodes one image under the limits: its size checked before a byte is
/// read, its bytes read (and hashed as they come) under a lease of the
/// decoding budget, which grows by what the header says decoding will
/// hold before any pixel is decoded.
fn check_image(
    path: &Path,
    shown: &Path,
    limits: &IngestLimits,
    budget: &DecodeBudget,
) -> Result<Checked, Unchecked> {
    let io = |source| {
        Unchecked::Image(ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_image_file_bytes {
        return Err(Unchecked::FileTooLarge(size));
    }
    // Named by its path in the dataset: where the server keeps it is no
    // business of the client's.
    let what = format!("checking `{}`", shown.display());
    let mut lease = lease(budget, size, &what)?;
    let (bytes, sha256) = read_hashing(file, size, limits.max_image_file_bytes).map_err(io)?;
    let Some(bytes) = bytes else {
        return Err(Unchecked::FileTooLarge(limits.max_image_file_bytes + 1));
    };
    let decode_limits = DecodeLimits {
        max_pixels: limits.max_image_pixels,
    };
    // What decoding this format and colour type holds, from its header.
    // Past the pixel limit `verify` refuses before decoding: nothing to hold.
    let decoding = imaging::decode::header(&bytes)
        .ok()
        .filter(|h| h.pixels() <= limits.max_image_pixels)
        .map_or(0, |h| h.decode_bytes);
    if !lease.try_grow(decoding) {
        // Taken anew rather than waited for while holding bytes, which
        // could leave every thread holding a part and waiting for more.
        drop(lease);
        lease = self::lease(budget, bytes.len() as u64 + decoding, &what)?;
    }
    let (width, height) =
        imaging::decode::verify(&bytes, &decode_limits).map_err(Unchecked::Image)?;
    drop(lease);
    Ok(Checked {
        width,
        height,
        sha256,
    })
}

/// `bytes` of the decoding budget, waited for.
fn lease(budget: &DecodeBudget, bytes: u64, what: &str) -> Result<budget::Lease, Unchecked> {
    budget
        .acquire_blocking(bytes, BUDGET_WAIT, what)
        .map_err(|e| match e {
            crate::AppError::Client { kind, code, detail } => Unchecked::Budget(DatasetError {
                kind: Some(kind),
                code,
                detail,
            }),
            other => Unchecked::Budget(DatasetError::internal(other.to_string())),
        })
}

/// Reads `file` (of `size` bytes when checked) whole, hashing it as it is
/// read; `None` when it holds more than `max` bytes (it grew since).
fn read_hashing(
    file: std::fs::File,
    size: u64,
    max: u64,
) -> std::io::Result<(Option<Vec<u8>>, [u8; 32])> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut bytes = Vec::with_capacity(size.min(max) as usize);
    let mut reader = file.take(max.saturating_add(1));
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        bytes.extend_from_slice(&chunk[..n]);
    }
    let within = (bytes.len() as u64 <= max).then_some(bytes);
    Ok((within, hasher.finalize().into()))
}

/// The sorted label set, refusing fewer than two labels and labels with no
/// training image.
fn check_labels(items: &[(Item, Checked)], task: Task) -> Result<Vec<String>, DatasetError> {
    let all: BTreeSet<&str> = items
        .iter()
        .flat_map(|(i, _)| i.labels.iter().map(String::as_str))
        .collect();
    let train: BTreeSet<&str> = items
        .iter()
        .filter(|(i, _)| i.split == "train")
        .flat_map(|(i, _)| i.labels.iter().map(String::as_str))
        .collect();
    if let Some(empty) = all.iter().find(|l| l.trim().is_empty()) {
        return Err(DatasetError::invalid(
            "empty_label",
            format!("a label is empty (`{empty}`)"),
        ));
    }
    if all.len() < 2 {
        return Err(DatasetError::invalid(
            "too_few_labels",
            format!(
                "a classifier needs at least two labels; found {} ({})",
                all.len(),
                all.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let untrained: Vec<String> = all.difference(&train).map(|s| s.to_string()).collect();
    if !untrained.is_empty() {
        return Err(DatasetError::invalid(
            "label_without_images",
            format!(
                "labels with no usable training images: {}",
                name_some(&untrained, 10)
            ),
        ));
    }
    if task == Task::MultiClass {
        if let Some((i, _)) = items.iter().find(|(i, _)| i.labels.len() != 1) {
            return Err(DatasetError::invalid(
                "invalid_metadata",
                format!(
                    "`{}` has {} labels in a multi-class dataset",
                    i.rel.display(),
                    i.labels.len()
                ),
            ));
        }
    }
    Ok(all.into_iter().map(str::to_string).collect())
}

fn warn(summary: &mut DatasetSummary) {
    if summary.layout == "metadata" && summary.task == Task::MultiClass {
        // `cat;indoor` is one label unless it uses the documented separator.
        let odd: Vec<String> = summary
            .labels
            .iter()
            .filter(|l| l.contains([';', ',']))
            .cloned()
            .collect();
        if !odd.is_empty() {
            summary.warnings.push(format!(
                "label(s) {} contain `;` or `,` and are each one label; for several labels per image separate them with `{}` (`cat|indoor`) or give a list",
                name_some(&odd, 5),
                super::metadata::CSV_LABEL_SEPARATOR
            ));
        }
    }
    if let Some(train) = summary.splits.get("train") {
        let counts: Vec<(&String, &usize)> = train.per_label.iter().collect();
        if let (Some(max), Some(min)) = (
            counts.iter().max_by_key(|c| c.1),
            counts.iter().min_by_key(|c| c.1),
        ) {
            if *min.1 > 0 && *max.1 as f64 / *min.1 as f64 > IMBALANCE_RATIO {
                summary.warnings.push(format!(
                    "class imbalance: `{}` has {} training images, `{}` only {}",
                    max.0, max.1, min.0, min.1
                ));
            }
        }
    }
    if !summary.duplicates_across_splits.is_empty() {
        summary.warnings.push(format!(
            "{} image(s) appear in more than one split (identical bytes); evaluation may be optimistic",
            summary.duplicates_across_splits.len()
        ));
    }
    if !summary.skipped.is_empty() {
        summary.warnings.push(format!(
            "{} file(s) skipped; see `skipped`",
            summary.skipped.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> IngestLimits {
        IngestLimits {
            max_entries: 100,
            max_uncompressed_bytes: 1 << 30,
            max_image_pixels: 1 << 20,
            max_undecodable_fraction: 0.0,
            max_image_file_bytes: 64 << 20,
            decode_budget: DecodeBudget::new(256 << 20),
        }
    }

    /// A 10 GiB "image" (a sparse file) is refused from its size alone:
    /// not a byte of it is read, and no decoding memory is taken.
    #[test]
    fn an_image_file_over_the_cap_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zeros.png");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(10 << 30)
            .unwrap();
        let budget = DecodeBudget::new(256 << 20);
        let started = std::time::Instant::now();
        match check_image(&path, Path::new("a.png"), &limits(), &budget) {
            Err(Unchecked::FileTooLarge(bytes)) => assert_eq!(bytes, 10 << 30),
            Err(Unchecked::Image(e)) => panic!("refused as undecodable: {e}"),
            Err(Unchecked::Budget(e)) => panic!("refused by the budget: {e}"),
            Ok(_) => panic!("accepted"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(budget.in_use(), 0);
    }

    /// An image within the caps is decoded under a lease of the budget
    /// (given back after), and hashed as it was read.
    #[test]
    fn an_image_is_checked_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]))
            .save(&path)
            .unwrap();
        let budget = DecodeBudget::new(1 << 20);
        let Ok(c) = check_image(&path, Path::new("a.png"), &limits(), &budget) else {
            panic!("refused");
        };
        assert_eq!((c.width, c.height), (40, 30));
        let expected: [u8; 32] = Sha256::digest(std::fs::read(&path).unwrap()).into();
        assert_eq!(c.sha256, expected);
        assert_eq!(budget.in_use(), 0);
        // More than the whole budget: refused with the budget's code.
        let tiny = DecodeBudget::new(1000);
        match check_image(&path, Path::new("a.png"), &limits(), &tiny) {
            Err(Unchecked::Budget(e)) => assert_eq!(e.code, "decode_too_large"),
            _ => panic!("not refused by the budget"),
        }
    }
}
