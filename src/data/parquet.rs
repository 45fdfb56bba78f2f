//! Hugging Face Parquet datasets: what `datasets`' `push_to_hub` and
//! `to_parquet` write, turned into the imagefolder layout the rest of
//! ingestion already validates.
//!
//! An upload is a Parquet dataset when it is one `.parquet` file (its rows
//! are the train split) or an archive holding `.parquet` files, laid out as
//! the Hub does (`data/<split>-NNNNN-of-NNNNN.parquet`, `<split>/*.parquet`,
//! `<config>/<split>/NNNN.parquet`, `<split>.parquet`).
//!
//! Each row becomes a file `<split>/<parquet stem>/<row>.<ext>` plus a line of
//! `<split>/metadata.jsonl`, so decoding, limits, skipped-image rules, the
//! label checks and the summary are exactly those of an archive.
//!
//! Columns: the image column is a `struct{bytes, path}` (the `Image`
//! feature) or plain binary; the label column holds `ClassLabel` ids (names
//! from the schema's `huggingface` metadata), plain integers or strings, or
//! a list of them (multi-label). Both are found as `datasets` names them
//! (`image`/`img`, `label`/`labels`), from the features metadata, or given
//! by the uploader.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::basic::Compression;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{name_some, DatasetError};
use super::ingest::IngestLimits;
use super::metadata::MAX_LABEL_BYTES;
use super::parquet_guard::{self, ChunkSizes, Codec, Footer, Refusal, MAX_SCHEMA_DEPTH};
use super::summary::{SkipList, Skipped};
use super::{is_ignored_component, split_name};

/// The first bytes of every Parquet file.
pub const MAGIC: &[u8] = b"PAR1";

/// Rows decoded per batch: a few MB of images at a time, whatever the
/// file's size (the row group's memory is reckoned per batch).
const BATCH_ROWS: usize = 16;

/// Column names given by the uploader; `None` finds them by convention.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParquetColumns {
    pub image: Option<String>,
    pub label: Option<String>,
}

impl ParquetColumns {
    pub fn is_default(&self) -> bool {
        self.image.is_none() && self.label.is_none()
    }

    /// The key a dataset is stored under: the upload's SHA-256, or with
    /// named columns a SHA-256 of it and the names, since the same file
    /// read with other columns is another dataset.
    pub fn dataset_key(&self, upload_sha256: &str) -> String {
        if self.is_default() {
            return upload_sha256.to_string();
        }
        let mut h = Sha256::new();
        h.update(upload_sha256.as_bytes());
        for (name, value) in [("image_column", &self.image), ("label_column", &self.label)] {
            let value = value.as_deref().unwrap_or("");
            h.update(format!("\n{name}={value}").as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// One Parquet file of the upload and the split its rows belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub split: &'static str,
    pub path: PathBuf,
    /// Its path relative to the extracted upload, the name messages use.
    pub shown: String,
}

/// The Parquet files of an upload, and what else was found beside them.
#[derive(Debug, Clone)]
pub struct ParquetFiles {
    pub sources: Vec<Source>,
    /// Other files (skipped).
    pub others: SkipList,
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    pub images: u64,
    pub bytes: u64,
    /// Rows with no image or no label, and files beside the Parquet files.
    pub skipped: SkipList,
    /// Rows with no image (counted as undecodable images).
    pub missing_images: u64,
    /// Where the first of them is.
    pub first_missing: Option<String>,
}

/// True for a file whose content starts like a Parquet file.
pub fn is_parquet(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// The Parquet files below `files` (an extracted archive) with their
/// splits, plus the other files found beside them (skipped); `None` when
/// the archive holds no Parquet file.
pub fn find(files: &Path) -> Result<Option<ParquetFiles>, DatasetError> {
    let mut all = Vec::new();
    walk(files, Path::new(""), &mut all)
        .map_err(|e| DatasetError::internal(format!("listing the extracted archive: {e}")))?;
    let (parquet, others): (Vec<PathBuf>, Vec<PathBuf>) = all.into_iter().partition(|rel| {
        rel.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    });
    if parquet.is_empty() {
        return Ok(None);
    }
    let named: Vec<(Option<&'static str>, &PathBuf)> =
        parquet.iter().map(|rel| (split_of(rel), rel)).collect();
    let any_named = named.iter().any(|(s, _)| s.is_some());
    let unnamed: Vec<String> = named
        .iter()
        .filter(|(s, _)| s.is_none())
        .map(|(_, r)| r.display().to_string())
        .collect();
    if any_named && !unnamed.is_empty() {
        return Err(DatasetError::invalid(
            "parquet_split_unknown",
            format!(
                "cannot tell the split of {}: name Parquet files as the Hub does (`data/train-00000-of-00001.parquet`, `train/0000.parquet`; splits train, validation, test)",
                name_some(&unnamed, 5)
            ),
        ));
    }
    let sources = named
        .into_iter()
        .map(|(split, rel)| Source {
            split: split.unwrap_or("train"),
            path: files.join(rel),
            shown: rel.display().to_string(),
        })
        .collect();
    let others = others
        .into_iter()
        .map(|rel| Skipped::new(rel, "not a Parquet file of the dataset"))
        .collect();
    Ok(Some(ParquetFiles { sources, others }))
}

/// The split a Parquet file's path names: the file's own name
/// (`train-00000-of-00003.parquet`, `test.parquet`), else the nearest
/// directory named for a split (`train/0000.parquet`,
/// `default/validation/0000.parquet`).
fn split_of(rel: &Path) -> Option<&'static str> {
    let stem = rel.file_stem()?.to_str()?;
    let head = stem.split(['-', '.', '_']).next().unwrap_or(stem);
    split_name(head).or_else(|| {
        rel.parent()?
            .components()
            .rev()
            .find_map(|c| split_name(c.as_os_str().to_str()?))
    })
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_str().is_some_and(is_ignored_component) {
            continue;
        }
        let child = rel.join(&name);
        if e.file_type()?.is_dir() {
            walk(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Writes every row of `sources` as an image file under `out/<split>/` and
/// a `metadata.jsonl` per split, within `limits`: rows count as entries,
/// image bytes as uncompressed bytes, each image against the per-file cap,
/// and what each row group decodes is drawn from the decode budget before
/// it is decoded ([`read_row_groups`]).
pub fn unpack(
    sources: &[Source],
    out: &Path,
    limits: &IngestLimits,
    columns: &ParquetColumns,
) -> Result<Unpacked, DatasetError> {
    let mut done = Unpacked::default();
    let mut metadata: BTreeMap<&'static str, BufWriter<File>> = BTreeMap::new();
    for source in sources {
        let split_dir = out.join(source.split);
        let meta = match metadata.entry(source.split) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                fs::create_dir_all(&split_dir).map_err(write_error)?;
                let f = File::create(split_dir.join("metadata.jsonl")).map_err(write_error)?;
                v.insert(BufWriter::new(f))
            }
        };
        unpack_file(source, &split_dir, meta, limits, columns, &mut done)?;
    }
    for (_, mut w) in metadata {
        w.flush().map_err(write_error)?;
    }
    check_missing_images(&done, limits)?;
    Ok(done)
}

/// Rows without an image count as undecodable images: beyond the
/// tolerated fraction the dataset is refused, as an archive with as many
/// broken images would be.
fn check_missing_images(done: &Unpacked, limits: &IngestLimits) -> Result<(), DatasetError> {
    let total = done.images + done.missing_images;
    if done.missing_images == 0 {
        return Ok(());
    }
    let fraction = done.missing_images as f64 / total as f64;
    if fraction > limits.max_undecodable_fraction {
        return Err(DatasetError::invalid(
            "missing_images",
            format!(
                "{} of {total} rows have no image, more than the tolerated {:.2}% (VITRINE_MAX_UNDECODABLE_FRACTION); the first: {}",
                done.missing_images,
                limits.max_undecodable_fraction * 100.0,
                done.first_missing.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok(())
}

fn write_error(e: std::io::Error) -> DatasetError {
    DatasetError::internal(format!("writing the unpacked Parquet dataset: {e}"))
}

fn unreadable(source: &Source, e: impl std::fmt::Display) -> DatasetError {
    DatasetError::invalid(
        "invalid_parquet",
        format!("`{}` is not a readable Parquet file: {e}", source.shown),
    )
}

/// A refusal of [`parquet_guard`], naming the file.
fn refused(source: &Source, r: Refusal, limits: &IngestLimits) -> DatasetError {
    match r {
        Refusal::Malformed(m) => unreadable(source, m),
        Refusal::TooDeep(depth) => DatasetError::invalid(
            "invalid_parquet",
            format!(
                "`{}` has a column nested {depth} levels deep or more; at most {MAX_SCHEMA_DEPTH} are accepted",
                source.shown
            ),
        ),
        Refusal::TooLarge(m) => DatasetError::too_large(
            "archive_too_large",
            format!(
                "`{}`: {m} (VITRINE_MAX_UNCOMPRESSED_BYTES is {}, the decode budget {} bytes)",
                source.shown,
                limits.max_uncompressed_bytes,
                limits.decode_budget.total()
            ),
        ),
    }
}

/// Where a file's rows go: the image column, the label column and how to
/// turn its values into label names.
struct Plan {
    image: String,
    label: String,
    /// `ClassLabel` names, when the features metadata gives them.
    names: Option<Vec<String>>,
    list: bool,
}

/// Memory the crate holds for a footer, per byte of it and per column
/// chunk and schema element it describes (an estimate, on the high side).
fn footer_memory(footer: &Footer) -> u64 {
    footer.len * 4 + (footer.column_chunks + footer.schema_elements) * 1024
}

/// How long a validation waits for decoding memory other work holds.
const BUDGET_WAIT: Duration = Duration::from_secs(600);

fn unpack_file(
    source: &Source,
    split_dir: &Path,
    meta: &mut BufWriter<File>,
    limits: &IngestLimits,
    columns: &ParquetColumns,
    done: &mut Unpacked,
) -> Result<(), DatasetError> {
    let file = File::open(&source.path).map_err(|e| unreadable(source, e))?;
    let size = file.metadata().map_err(|e| unreadable(source, e))?.len();
    // Before the crate reads anything: its schema code recurses.
    let footer =
        parquet_guard::check_footer(&file, size).map_err(|r| refused(source, r, limits))?;
    let what = format!("the footer of `{}`", source.shown);
    let footer_lease = limits
        .decode_budget
        .acquire_blocking(footer_memory(&footer), BUDGET_WAIT, &what)
        .map_err(DatasetError::from_budget)?;
    // The Arrow schema `pyarrow` embeds (`ARROW:schema`, a flatbuffer) is a
    // second, redundant description of the columns: not parsed. The
    // `huggingface` features are read from the footer's key-value pairs.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let arrow = ArrowReaderMetadata::load(&file, options).map_err(|e| unreadable(source, e))?;
    let rows = arrow.metadata().file_metadata().num_rows().max(0) as u64;
    if done.images + rows > limits.max_entries {
        return Err(too_many(limits));
    }
    let hf = arrow
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == "huggingface"))
        .and_then(|kv| kv.value.as_deref());
    let plan = plan(source, arrow.schema(), hf, columns)?;
    let stem = Path::new(&source.shown)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .to_string();
    let dir = split_dir.join(&stem);
    fs::create_dir_all(&dir).map_err(write_error)?;
    let mut out = Out {
        source,
        held: footer_lease.bytes(),
        plan: &plan,
        stem: &stem,
        dir: &dir,
        meta,
        row: 0,
        limits,
        done,
    };
    read_row_groups(&file, &arrow, &mut out)
}

/// Reads the image and label columns (no other) one row group at a time:
/// the row group's page headers say what it decompresses to, which is
/// checked against the limits and drawn from the decode budget before any
/// of it is decoded.
fn read_row_groups(
    file: &File,
    arrow: &ArrowReaderMetadata,
    out: &mut Out,
) -> Result<(), DatasetError> {
    let source = out.source;
    let schema = arrow.parquet_schema();
    let roots: Vec<usize> = [&out.plan.image, &out.plan.label]
        .iter()
        .filter_map(|name| arrow.schema().index_of(name).ok())
        .collect();
    let leaves: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| roots.contains(&schema.get_column_root_idx(i)))
        .collect();
    let image_root = arrow.schema().index_of(&out.plan.image).ok();
    let mask = ProjectionMask::roots(schema, roots.iter().copied());
    for group in 0..arrow.metadata().num_row_groups() {
        let chunks = row_group_chunks(file, arrow, group, &leaves, image_root, out)?;
        // What this validation holds already (the footer) counts too: a
        // wait for bytes it holds itself would never end. Fewer rows per
        // batch when a batch of large values would not fit.
        let room = out.limits.decode_budget.total().saturating_sub(out.held);
        let rows = [BATCH_ROWS, 4, 1]
            .into_iter()
            .find(|&rows| chunks_memory(&chunks, rows) <= room)
            .unwrap_or(1);
        let need = chunks_memory(&chunks, rows);
        let what = format!("row group {group} of `{}`", source.shown);
        if need > room {
            return Err(DatasetError::too_large(
                "parquet_row_group_too_large",
                format!(
                    "{what} needs about {} MiB of memory to read, more than the server's decode budget of {} MiB; write the file with smaller row groups (`datasets` writes 100 images per row group)",
                    need >> 20,
                    out.limits.decode_budget.total() >> 20
                ),
            ));
        }
        let _lease = out
            .limits
            .decode_budget
            .acquire_blocking(need, BUDGET_WAIT, &what)
            .map_err(DatasetError::from_budget)?;
        let input = file.try_clone().map_err(|e| unreadable(source, e))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(input, arrow.clone())
            .with_projection(mask.clone())
            .with_row_groups(vec![group])
            .with_batch_size(rows)
            .build()
            .map_err(|e| unreadable(source, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| unreadable(source, e))?;
            write_batch(out, &batch)?;
        }
    }
    Ok(())
}

/// The page sizes of one row group's chunks of the `leaves` columns, from
/// their page headers. The image column's pages are checked against what
/// is left of the uncompressed-bytes limit first.
fn row_group_chunks(
    file: &File,
    arrow: &ArrowReaderMetadata,
    group: usize,
    leaves: &[usize],
    image_root: Option<usize>,
    out: &Out,
) -> Result<Vec<ChunkSizes>, DatasetError> {
    let limits = out.limits;
    let left = limits.max_uncompressed_bytes.saturating_sub(out.done.bytes);
    // A page is decompressed whole: one larger than the archive may expand
    // to, or than the whole decode budget, is refused unread.
    let budget = limits.decode_budget.total();
    let (largest_allowed, too_large) = if limits.max_uncompressed_bytes <= budget {
        (limits.max_uncompressed_bytes, "archive_too_large")
    } else {
        (budget, "parquet_row_group_too_large")
    };
    let row_group = arrow.metadata().row_group(group);
    let schema = arrow.parquet_schema();
    let mut chunks = Vec::with_capacity(leaves.len());
    for &leaf in leaves {
        let column = row_group.column(leaf);
        let (start, len) = column.byte_range();
        let codec = match column.compression() {
            Compression::UNCOMPRESSED => Codec::Uncompressed,
            Compression::GZIP(_) => Codec::Gzip,
            Compression::LZ4 => Codec::LegacyLz4,
            _ => Codec::Bounded,
        };
        let sizes = match parquet_guard::scan_pages(file, start, len, codec, largest_allowed) {
            Ok(sizes) => sizes,
            Err(Refusal::TooLarge(m)) => {
                return Err(DatasetError::too_large(
                    too_large,
                    format!(
                        "row group {group} of `{}`, column `{}`: {m} (VITRINE_MAX_UNCOMPRESSED_BYTES is {}, the decode budget {budget} bytes)",
                        out.source.shown,
                        schema.column(leaf).path().string(),
                        limits.max_uncompressed_bytes
                    ),
                ))
            }
            Err(r) => return Err(refused(out.source, r, limits)),
        };
        let is_image = Some(schema.get_column_root_idx(leaf)) == image_root
            && schema.column(leaf).physical_type() == parquet::basic::Type::BYTE_ARRAY
            && schema
                .column(leaf)
                .path()
                .parts()
                .last()
                .map(String::as_str)
                != Some("path");
        if is_image && sizes.data > left {
            return Err(DatasetError::too_large(
                "archive_too_large",
                format!(
                    "the images of the Parquet dataset add up to more than {} bytes (VITRINE_MAX_UNCOMPRESSED_BYTES): row group {group} of `{}` alone holds {} bytes of them",
                    limits.max_uncompressed_bytes, out.source.shown, sizes.data
                ),
            ));
        }
        chunks.push(sizes);
    }
    Ok(chunks)
}

/// The memory reading a row group's `chunks` takes at its peak, `rows` at
/// a time: per column, one batch of values (each at most a page or a
/// dictionary entry, and twice: the decoded batch and its conversion),
/// the page being decompressed and the dictionary.
fn chunks_memory(chunks: &[ChunkSizes], rows: usize) -> u64 {
    let batch = rows as u64;
    chunks.iter().fold(0u64, |need, sizes| {
        let value = sizes.largest_page.max(sizes.dictionary);
        let values = if sizes.dictionary > 0 {
            batch.saturating_mul(value)
        } else {
            sizes.data.min(batch.saturating_mul(value))
        };
        need.saturating_add(values.saturating_mul(2))
            .saturating_add(sizes.largest_page)
            .saturating_add(sizes.dictionary)
            .saturating_add(batch * 64)
    })
}

/// Where rows of one file go, and the counts so far.
struct Out<'a> {
    source: &'a Source,
    /// Budget bytes held for the file's footer while its rows are read.
    held: u64,
    plan: &'a Plan,
    stem: &'a str,
    dir: &'a Path,
    meta: &'a mut BufWriter<File>,
    /// The file's next row.
    row: usize,
    limits: &'a IngestLimits,
    done: &'a mut Unpacked,
}

fn write_batch(out: &mut Out, batch: &RecordBatch) -> Result<(), DatasetError> {
    let (source, plan) = (out.source, out.plan);
    let images = ImageColumn::of(source, plan, batch)?;
    let labels = label_values(source, plan, batch)?;
    for (i, labels) in labels.into_iter().enumerate() {
        let at = format!("{} row {}", source.shown, out.row);
        out.row += 1;
        let (bytes, path) = images.get(i);
        let Some(bytes) = bytes else {
            if let Some(path) = path {
                return Err(DatasetError::invalid(
                    "parquet_image_paths_only",
                    format!(
                        "{at}: the image column `{}` holds only a file path (`{path}`), not the image's bytes, and vitrine cannot read files on the machine that wrote it; write the dataset with the images embedded (`datasets` embeds them in `push_to_hub`; for `to_parquet`, load the images with the `Image()` feature first)",
                        plan.image
                    ),
                ));
            }
            out.done.missing_images += 1;
            out.done.first_missing.get_or_insert_with(|| at.clone());
            out.done.skipped.push(Skipped::new(&at, "no image"));
            continue;
        };
        let Some(labels) = labels else {
            out.done.skipped.push(Skipped::new(&at, "no label"));
            continue;
        };
        write_row(out, &at, bytes, path, labels)?;
    }
    Ok(())
}

/// One image file and its metadata line, within the limits.
fn write_row(
    out: &mut Out,
    at: &str,
    bytes: &[u8],
    path: Option<&str>,
    labels: Vec<String>,
) -> Result<(), DatasetError> {
    let limits = out.limits;
    if bytes.len() as u64 > limits.max_image_file_bytes {
        return Err(DatasetError::too_large(
            "image_file_too_large",
            format!(
                "{at}: the image is {} bytes, more than the {} accepted for one image (VITRINE_MAX_IMAGE_FILE_BYTES)",
                bytes.len(),
                limits.max_image_file_bytes
            ),
        ));
    }
    let done = &mut *out.done;
    done.images += 1;
    if done.images > limits.max_entries {
        return Err(too_many(limits));
    }
    done.bytes += bytes.len() as u64;
    if done.bytes > limits.max_uncompressed_bytes {
        return Err(DatasetError::too_large(
            "archive_too_large",
            format!(
                "the images of the Parquet dataset add up to more than {} bytes (VITRINE_MAX_UNCOMPRESSED_BYTES), reached at {at}",
                limits.max_uncompressed_bytes
            ),
        ));
    }
    let name = format!("{:06}.{}", out.row - 1, extension(bytes, path));
    fs::write(out.dir.join(&name), bytes).map_err(write_error)?;
    let file_name = format!("{}/{name}", out.stem);
    let line = if out.plan.list {
        serde_json::json!({ "file_name": file_name, "labels": labels })
    } else {
        serde_json::json!({ "file_name": file_name, "label": labels[0] })
    };
    serde_json::to_writer(&mut *out.meta, &line)
        .map_err(|e| write_error(std::io::Error::other(e)))?;
    out.meta.write_all(b"\n").map_err(write_error)?;
    Ok(())
}

fn too_many(limits: &IngestLimits) -> DatasetError {
    DatasetError::too_large(
        "too_many_entries",
        format!(
            "the Parquet dataset has more than {} images (VITRINE_MAX_ARCHIVE_ENTRIES)",
            limits.max_entries
        ),
    )
}

/// The file extension for an image's bytes (by content; the stored path's
/// extension only when the content is not recognised, so that decoding
/// names the file as the user knows it).
fn extension(bytes: &[u8], path: Option<&str>) -> String {
    let by_content = if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.starts_with(b"\x89PNG") {
        Some("png")
    } else if bytes.starts_with(b"GIF8") {
        Some("gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"BM") {
        Some("bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("tiff")
    } else {
        None
    };
    if let Some(ext) = by_content {
        return ext.to_string();
    }
    path.and_then(|p| Path::new(p).extension()?.to_str())
        .filter(|e| e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "bin".to_string())
}

/// The features of the `huggingface` key-value metadata, if any.
fn features(raw: Option<&str>) -> Option<serde_json::Map<String, Value>> {
    let v: Value = serde_json::from_str(raw?).ok()?;
    v.get("info")?.get("features")?.as_object().cloned()
}

fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_image_type(dt: &DataType) -> bool {
    match dt {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Struct(fields) => fields.iter().any(|f| f.name() == "bytes"),
        _ => false,
    }
}

fn find_field<'a>(schema: &'a Schema, name: &str) -> Option<&'a Arc<Field>> {
    schema
        .fields()
        .iter()
        .find(|f| f.name() == name)
        .or_else(|| {
            schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(name))
        })
}

/// Picks the image and label columns of one file and how to read labels.
fn plan(
    source: &Source,
    schema: &Schema,
    hf: Option<&str>,
    columns: &ParquetColumns,
) -> Result<Plan, DatasetError> {
    let features = features(hf).unwrap_or_default();
    let image = image_column(source, schema, &features, columns)?;
    let label = label_column(source, schema, &features, columns, image)?;
    let (list, item) = match label.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            (true, f.data_type())
        }
        dt => (false, dt),
    };
    if !(item.is_integer()
        || matches!(
            item,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ))
    {
        return Err(DatasetError::invalid(
            "parquet_column_type",
            format!(
                "the label column `{}` of `{}` is {}; expected `ClassLabel` ids, integers or strings, or a list of them",
                label.name(),
                source.shown,
                label.data_type()
            ),
        ));
    }
    let names = features.get(label.name()).and_then(|f| {
        let class = if list { f.get("feature")? } else { f };
        class_names(class)
    });
    Ok(Plan {
        image: image.name().clone(),
        label: label.name().clone(),
        names,
        list,
    })
}

/// The column a user named, refused by name when the file lacks it.
fn named_column<'a>(
    source: &Source,
    schema: &'a Schema,
    what: &str,
    name: &str,
) -> Result<&'a Arc<Field>, DatasetError> {
    find_field(schema, name).ok_or_else(|| {
        DatasetError::invalid(
            "parquet_column_not_found",
            format!(
                "`{}` has no {what} column `{name}`; its columns: {}",
                source.shown,
                column_names(schema)
            ),
        )
    })
}

/// The image column: the one named, else `image` / `img`, else the one
/// column the features metadata types as `Image`. It must hold bytes.
fn image_column<'a>(
    source: &Source,
    schema: &'a Schema,
    features: &serde_json::Map<String, Value>,
    columns: &ParquetColumns,
) -> Result<&'a Arc<Field>, DatasetError> {
    let feature_type = |name: &str| -> Option<String> {
        features
            .get(name)?
            .get("_type")?
            .as_str()
            .map(str::to_string)
    };
    let image = match &columns.image {
        Some(name) => named_column(source, schema, "image", name)?,
        None => ["image", "img"]
            .iter()
            .find_map(|n| find_field(schema, n))
            .or_else(|| {
                let typed: Vec<_> = schema
                    .fields()
                    .iter()
                    .filter(|f| feature_type(f.name()).as_deref() == Some("Image"))
                    .collect();
                (typed.len() == 1).then(|| typed[0])
            })
            .ok_or_else(|| {
                DatasetError::invalid(
                    "parquet_column_not_found",
                    format!(
                        "cannot tell which column of `{}` holds the images (columns: {}); name it with `image_column`",
                        source.shown,
                        column_names(schema)
                    ),
                )
            })?,
    };
    if !is_image_type(image.data_type()) {
        return Err(DatasetError::invalid(
            "parquet_column_type",
            format!(
                "the image column `{}` of `{}` is {}, not image bytes (a `struct{{bytes, path}}` as the `Image` feature writes, or binary)",
                image.name(),
                source.shown,
                image.data_type()
            ),
        ));
    }
    Ok(image)
}

/// The label column: the one named, else `label` / `labels`, else the one
/// `ClassLabel` column, else the one column besides the images.
fn label_column<'a>(
    source: &Source,
    schema: &'a Schema,
    features: &serde_json::Map<String, Value>,
    columns: &ParquetColumns,
    image: &Field,
) -> Result<&'a Arc<Field>, DatasetError> {
    if let Some(name) = &columns.label {
        return named_column(source, schema, "label", name);
    }
    ["label", "labels"]
        .iter()
        .find_map(|n| find_field(schema, n))
        .or_else(|| {
            let class_labels: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| features.get(f.name()).is_some_and(is_class_label))
                .collect();
            let others: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| f.name() != image.name())
                .collect();
            if class_labels.len() == 1 {
                Some(class_labels[0])
            } else {
                (others.len() == 1).then(|| others[0])
            }
        })
        .ok_or_else(|| {
            DatasetError::invalid(
                "parquet_column_not_found",
                format!(
                    "cannot tell which column of `{}` holds the labels (columns: {}); name it with `label_column`",
                    source.shown,
                    column_names(schema)
                ),
            )
        })
}

fn is_class_label(feature: &Value) -> bool {
    let class = match feature.get("_type").and_then(Value::as_str) {
        Some("List" | "Sequence" | "LargeList") => feature.get("feature"),
        _ => Some(feature),
    };
    class.and_then(|c| c.get("_type")).and_then(Value::as_str) == Some("ClassLabel")
}

fn class_names(feature: &Value) -> Option<Vec<String>> {
    if feature.get("_type")?.as_str()? != "ClassLabel" {
        return None;
    }
    feature
        .get("names")?
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// The image column of a batch: each row's bytes and stored path, read in
/// place (no copy of the batch's images).
struct ImageColumn {
    bytes: ArrayRef,
    paths: Option<ArrayRef>,
    /// Per row: the image struct itself is null.
    null_rows: Vec<bool>,
}

impl ImageColumn {
    fn of(source: &Source, plan: &Plan, batch: &RecordBatch) -> Result<Self, DatasetError> {
        let column = batch
            .column_by_name(&plan.image)
            .ok_or_else(|| unreadable(source, format!("column `{}` vanished", plan.image)))?;
        let (bytes, paths) = match column.as_struct_opt() {
            Some(s) => (
                s.column_by_name("bytes")
                    .cloned()
                    .ok_or_else(|| unreadable(source, "image struct without `bytes`"))?,
                s.column_by_name("path").cloned(),
            ),
            None => (column.clone(), None),
        };
        let bytes = match bytes.data_type() {
            DataType::Binary | DataType::LargeBinary => bytes,
            _ => arrow_cast::cast(&bytes, &DataType::LargeBinary)
                .map_err(|e| unreadable(source, e))?,
        };
        let paths = match paths {
            Some(p)
                if p.data_type() == &DataType::Utf8 || p.data_type() == &DataType::LargeUtf8 =>
            {
                Some(p)
            }
            Some(p) => Some(
                arrow_cast::cast(&p, &DataType::LargeUtf8).map_err(|e| unreadable(source, e))?,
            ),
            None => None,
        };
        let nulls = column.logical_nulls();
        let null_rows = (0..column.len())
            .map(|i| nulls.as_ref().is_some_and(|n| n.is_null(i)))
            .collect();
        Ok(Self {
            bytes,
            paths,
            null_rows,
        })
    }

    /// Row `i`'s image bytes and stored path (`None`: null or empty).
    fn get(&self, i: usize) -> (Option<&[u8]>, Option<&str>) {
        if self.null_rows[i] {
            return (None, None);
        }
        let bytes = (!self.bytes.is_null(i)).then(|| match self.bytes.as_binary_opt::<i32>() {
            Some(b) => b.value(i),
            None => self.bytes.as_binary::<i64>().value(i),
        });
        let path = self
            .paths
            .as_ref()
            .filter(|p| !p.is_null(i))
            .map(|p| match p.as_string_opt::<i32>() {
                Some(s) => s.value(i),
                None => p.as_string::<i64>().value(i),
            })
            .filter(|p| !p.is_empty());
        (bytes, path)
    }
}

/// Each row's label names (`None`: no label, as `ClassLabel`'s -1 or a
/// null).
fn label_values(
    source: &Source,
    plan: &Plan,
    batch: &RecordBatch,
) -> Result<Vec<Option<Vec<String>>>, DatasetError> {
    let column = batch
        .column_by_name(&plan.label)
        .ok_or_else(|| unreadable(source, format!("column `{}` vanished", plan.label)))?;
    let mut out = Vec::with_capacity(column.len());
    if plan.list {
        let lists = arrow_cast::cast(
            column,
            &DataType::LargeList(Arc::new(Field::new_list_field(item_type(column), true))),
        )
        .map_err(|e| unreadable(source, e))?;
        let lists = lists.as_list::<i64>();
        for i in 0..lists.len() {
            if lists.is_null(i) {
                out.push(None);
                continue;
            }
            let values = scalar_labels(source, plan, &lists.value(i))?;
            out.push(Some(values.into_iter().flatten().collect()));
        }
    } else {
        for v in scalar_labels(source, plan, column)? {
            out.push(v.map(|l| vec![l]));
        }
    }
    Ok(out)
}

fn item_type(column: &ArrayRef) -> DataType {
    match column.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().clone()
        }
        dt => dt.clone(),
    }
}

/// Label names of a flat array of ids or strings.
fn scalar_labels(
    source: &Source,
    plan: &Plan,
    values: &ArrayRef,
) -> Result<Vec<Option<String>>, DatasetError> {
    if values.data_type().is_integer() {
        let ids = arrow_cast::cast(values, &DataType::Int64).map_err(|e| unreadable(source, e))?;
        let ids = ids.as_primitive::<arrow_array::types::Int64Type>();
        return (0..ids.len())
            .map(|i| {
                if ids.is_null(i) || ids.value(i) < 0 {
                    return Ok(None);
                }
                let id = ids.value(i);
                match &plan.names {
                    Some(names) => names.get(id as usize).cloned().map(Some).ok_or_else(|| {
                        DatasetError::invalid(
                            "invalid_metadata",
                            format!(
                                "`{}`: label id {id} in column `{}` is outside its `ClassLabel` names ({} of them)",
                                source.shown,
                                plan.label,
                                names.len()
                            ),
                        )
                    }),
                    None => Ok(Some(id.to_string())),
                }
            })
            .collect();
    }
    let text = arrow_cast::cast(values, &DataType::LargeUtf8).map_err(|e| unreadable(source, e))?;
    let text = text.as_string::<i64>();
    (0..text.len())
        .map(|i| {
            if text.is_null(i) {
                return Ok(None);
            }
            let label = text.value(i);
            if label.len() > MAX_LABEL_BYTES {
                return Err(DatasetError::label_too_long(
                    &format!("`{}` column `{}`", source.shown, plan.label),
                    label.len(),
                ));
            }
            Ok(Some(label.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_come_from_hub_names() {
        let s = |p: &str| split_of(Path::new(p));
        assert_eq!(s("data/train-00000-of-00002.parquet"), Some("train"));
        assert_eq!(
            s("data/validation-00000-of-00001.parquet"),
            Some("validation")
        );
        assert_eq!(s("test.parquet"), Some("test"));
        assert_eq!(s("default/train/0000.parquet"), Some("train"));
        assert_eq!(s("val/part.parquet"), Some("validation"));
        assert_eq!(s("data/part-1.parquet"), None);
    }

    #[test]
    fn named_columns_make_another_dataset() {
        let sha = "ab".repeat(32);
        assert_eq!(ParquetColumns::default().dataset_key(&sha), sha);
        let image = ParquetColumns {
            image: Some("photo".into()),
            label: None,
        };
        let label = ParquetColumns {
            image: None,
            label: Some("photo".into()),
        };
        assert_ne!(image.dataset_key(&sha), sha);
        assert_ne!(image.dataset_key(&sha), label.dataset_key(&sha));
        assert_eq!(image.dataset_key(&sha), image.clone().dataset_key(&sha));
        assert_eq!(image.dataset_key(&sha).len(), 64);
    }

    #[test]
    fn extensions_come_from_content_first() {
        assert_eq!(extension(b"\xff\xd8\xff\xe0rest", Some("x.png")), "jpg");
        assert_eq!(extension(b"\x89PNG\r\n", None), "png");
        assert_eq!(extension(b"RIFF1234WEBPVP8 ", None), "webp");
        assert_eq!(extension(b"garbage", Some("photo.HEIC")), "heic");
        assert_eq!(extension(b"garbage", Some("../../x")), "bin");
        assert_eq!(extension(b"garbage", None), "bin");
    }

    #[test]
    fn class_label_features_are_recognised() {
        let single = serde_json::json!({"names": ["a", "b"], "_type": "ClassLabel"});
        let list = serde_json::json!({"feature": single.clone(), "_type": "List"});
        let old = serde_json::json!({"feature": single.clone(), "_type": "Sequence"});
        assert!(is_class_label(&single) && is_class_label(&list) && is_class_label(&old));
        assert!(!is_class_label(
            &serde_json::json!({"_type": "Value", "dtype": "string"})
        ));
        assert_eq!(class_names(&single), Some(vec!["a".into(), "b".into()]));
    }
}
