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
use super::summary::{DatasetSummary, SizeRange, Skipped};
use super::Task;
use crate::imaging::{self, DecodeLimits, ImageError};

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
    /// The largest image file (an archive member, a Parquet cell), in bytes
    /// (`--max-image-file-bytes`).
    pub max_image_file_bytes: u64,
    /// The server's one decoding budget: what a validation decodes (Parquet
    /// row groups, images) is drawn from it first.
    pub decode_budget: crate::budget::DecodeBudget,
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
/// uploader.
pub fn ingest_upload(
    archive: &Path,
    dir: &Path,
    limits: &IngestLimits,
    columns: &ParquetColumns,
    progress: &IngestProgress,
) -> Result<Ingested, DatasetError> {
    let format = archive::detect(archive)?;
    let files = dir.join(FILES_DIR);
    std::fs::create_dir_all(&files).map_err(internal)?;
    let extract_limits = ExtractLimits {
        max_entries: limits.max_entries,
        max_bytes: limits.max_uncompressed_bytes,
    };
    let stats = archive::extract(archive, format, &files, extract_limits)?;
    let unpacked = unpack_parquet(dir, &files, limits, columns)?;
    let mut found = layout::detect(&files)?;
    let mut skipped = found.skipped;
    let extracted_bytes = match unpacked {
        Some(u) => {
            found.layout = "parquet";
            skipped.append(u.skipped);
            u.bytes
        }
        None => stats.bytes,
    };
    progress.start_checking(found.items.len());

    let decode_limits = DecodeLimits {
        max_pixels: limits.max_image_pixels,
    };
    let checked: Vec<Result<Checked, ImageError>> = found
        .items
        .par_iter()
        .map(|item| {
            if progress.stopped() {
                return Err(ImageError::Decode("validation interrupted".into()));
            }
            let checked = check_image(&files.join(&item.rel), &decode_limits);
            progress.checked_one();
            checked
        })
        .collect();
    if progress.stopped() {
        return Err(DatasetError::internal("interrupted by shutdown"));
    }

    let mut too_large = Vec::new();
    let mut undecodable = Vec::new();
    let mut items: Vec<(Item, Checked)> = Vec::new();
    for (item, result) in found.items.into_iter().zip(checked) {
        match result {
            Ok(c) => items.push((item, c)),
            Err(ImageError::TooLarge { width, height, .. }) => {
                too_large.push(format!("{} ({width}x{height})", item.rel.display()))
            }
            Err(e) => undecodable.push((item.rel.display().to_string(), e.to_string())),
        }
    }
    if !too_large.is_empty() {
        return Err(DatasetError::too_large(
            "image_too_large",
            format!(
                "images larger than {} pixels (VITRINE_MAX_IMAGE_PIXELS): {}",
                limits.max_image_pixels,
                name_some(&too_large, 10)
            ),
        ));
    }
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

    let labels = check_labels(&items, found.task)?;
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();

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
    let mut by_split: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut by_hash: BTreeMap<[u8; 32], Vec<(&str, String)>> = BTreeMap::new();
    for (item, c) in &items {
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
    warn(&mut summary);

    let manifest = Manifest {
        labels,
        task: found.task,
        train: by_split.remove("train").unwrap_or_default(),
        validation: by_split.remove("validation"),
        test: by_split.remove("test"),
    };
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

fn check_image(path: &Path, limits: &DecodeLimits) -> Result<Checked, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (width, height) = imaging::decode::verify(&bytes, limits)?;
    Ok(Checked {
        width,
        height,
        sha256: Sha256::digest(&bytes).into(),
    })
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
