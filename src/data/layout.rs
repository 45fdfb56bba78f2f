//! Finding the labelled images in an extracted archive, as Hugging Face
//! `datasets`' imagefolder does:
//!
//! - `<split>/<label>/<image>` with splits `train`, `validation` (or `val`),
//!   `test`;
//! - `<label>/<image>` (no splits; a validation split is drawn later);
//! - images plus `metadata.csv` / `metadata.jsonl` (at the root or in each
//!   split directory) with a `file_name` column and a label column.
//!
//! A single wrapper directory around all of it (what zipping a folder
//! produces, `pets/train/...`) is looked through.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{name_some, DatasetError};
use super::metadata::{self, MetadataRow};
use super::summary::{SkipList, Skipped};
use super::{is_ignored_component, split_name, IMAGE_EXTENSIONS};
use crate::task::Task;

/// One labelled image, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub split: &'static str,
    /// Relative to the extracted files' directory.
    pub rel: PathBuf,
    pub labels: Vec<String>,
}

/// What [`detect`] found.
#[derive(Debug, Clone)]
pub struct Found {
    /// `splits`, `labels` or `metadata`.
    pub layout: &'static str,
    pub task: Task,
    pub items: Vec<Item>,
    pub skipped: SkipList,
}

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every regular file below `dir`, relative to it, sorted.
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_ignored_component(name) {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(rel.join(name));
            } else if ft.is_file() {
                out.push(rel.join(name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The visible entries of a directory: (subdirectories, files).
fn list(dir: &Path) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_ignored_component(&name) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn io(e: std::io::Error) -> DatasetError {
    DatasetError::internal(format!("reading the extracted dataset: {e}"))
}

/// `metadata.csv` / `metadata.jsonl`, in any letter case (`Metadata.CSV`
/// from Windows tools).
fn is_metadata(name: &str) -> bool {
    name.eq_ignore_ascii_case("metadata.csv") || name.eq_ignore_ascii_case("metadata.jsonl")
}

/// Finds the layout and every labelled image below `files` (the extracted
/// archive).
pub fn detect(files: &Path) -> Result<Found, DatasetError> {
    let (root, dirs, names) = find_root(files)?;
    if dirs.is_empty() && names.is_empty() {
        return Err(DatasetError::invalid(
            "empty_archive",
            "the archive contains no files",
        ));
    }
    let split_dirs: Vec<(&'static str, String)> = dirs
        .iter()
        .filter_map(|d| split_name(d).map(|s| (s, d.clone())))
        .collect();
    let root_meta = names.iter().find(|n| is_metadata(n));
    let split_meta = split_dirs.iter().any(|(_, d)| {
        list(&files.join(&root).join(d))
            .map(|(_, f)| f.iter().any(|n| is_metadata(n)))
            .unwrap_or(false)
    });
    if root_meta.is_some() || split_meta {
        return from_metadata(files, &root, root_meta.map(String::as_str), &split_dirs);
    }
    if !split_dirs.is_empty() {
        return from_split_dirs(files, &root, &dirs, &names, &split_dirs);
    }
    let mut items = Vec::new();
    let mut skipped = SkipList::default();
    from_label_dirs(files, &root, "train", &mut items, &mut skipped)?;
    Ok(Found {
        layout: "labels",
        task: Task::MultiClass,
        items,
        skipped,
    })
}

/// The dataset's root below `files`, looking through wrapper directories
/// (at most a few levels), with its (subdirectories, files). Images alone
/// at the top, with nothing naming their labels, are refused.
fn find_root(files: &Path) -> Result<(PathBuf, Vec<String>, Vec<String>), DatasetError> {
    let mut root = PathBuf::new();
    for _ in 0..4 {
        let (dirs, names) = list(&files.join(&root)).map_err(io)?;
        if names.is_empty() && dirs.len() == 1 && split_name(&dirs[0]).is_none() {
            root.push(&dirs[0]);
        } else {
            break;
        }
    }
    let (mut dirs, mut names) = list(&files.join(&root)).map_err(io)?;
    if dirs.is_empty() && !names.iter().any(|n| is_metadata(n)) && !names.is_empty() {
        if root.pop() {
            // `cat/*.jpg` alone: that folder is a label, not a wrapper (the
            // label rules then refuse a single-label dataset by name).
            (dirs, names) = list(&files.join(&root)).map_err(io)?;
        } else {
            let images: Vec<String> = names
                .iter()
                .filter(|n| has_image_extension(Path::new(n)))
                .cloned()
                .collect();
            if !images.is_empty() {
                return Err(DatasetError::invalid(
                    "no_labels",
                    format!(
                        "{} image(s) at the top of the archive ({}) and nothing saying their labels: put each in a folder named for its label (`<label>/<image>`, or `train/<label>/<image>`), or list them in a metadata.csv / metadata.jsonl with `file_name` and `label` columns",
                        images.len(),
                        name_some(&images, 3)
                    ),
                ));
            }
        }
    }
    Ok((root, dirs, names))
}

/// `<split>/<label>/<image>`: a `train/` is required; other directories and
/// loose files at the root are listed as skipped.
fn from_split_dirs(
    files: &Path,
    root: &Path,
    dirs: &[String],
    names: &[String],
    split_dirs: &[(&'static str, String)],
) -> Result<Found, DatasetError> {
    if !split_dirs.iter().any(|(s, _)| *s == "train") {
        return Err(DatasetError::invalid(
            "missing_train_split",
            format!(
                "the archive has split directories ({}) but no `train/`",
                split_dirs
                    .iter()
                    .map(|(_, d)| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut items = Vec::new();
    let mut skipped = SkipList::default();
    for (split, d) in split_dirs {
        from_label_dirs(files, &root.join(d), split, &mut items, &mut skipped)?;
    }
    for d in dirs.iter().filter(|d| split_name(d).is_none()) {
        skipped.push(Skipped::new(
            root.join(d),
            "directory is not a split (train, validation, val, test)",
        ));
    }
    for n in names {
        skipped.push(Skipped::new(
            root.join(n),
            "file outside the split directories",
        ));
    }
    Ok(Found {
        layout: "splits",
        task: Task::MultiClass,
        items,
        skipped,
    })
}

/// `<dir>/<label>/**/<image>`: the label is the first directory below `dir`.
fn from_label_dirs(
    files: &Path,
    dir: &Path,
    split: &'static str,
    items: &mut Vec<Item>,
    skipped: &mut SkipList,
) -> Result<(), DatasetError> {
    let (labels, names) = list(&files.join(dir)).map_err(io)?;
    for n in names {
        skipped.push(Skipped::new(
            dir.join(n),
            "file is not inside a label directory",
        ));
    }
    for label in labels {
        let label_dir = dir.join(&label);
        if label.len() > metadata::MAX_LABEL_BYTES {
            return Err(DatasetError::label_too_long(
                &format!("the label directory `{}`", label_dir.display()),
                label.len(),
            ));
        }
        let mut any = false;
        let mut others = Vec::new();
        for rel in walk(&files.join(&label_dir)).map_err(io)? {
            let rel = label_dir.join(rel);
            if has_image_extension(&rel) {
                any = true;
                items.push(Item {
                    split,
                    rel,
                    labels: vec![label.clone()],
                });
            } else {
                others.push(rel);
            }
        }
        if !any && !others.is_empty() {
            let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
            return Err(DatasetError::invalid(
                "label_without_images",
                format!(
                    "label directory `{}` contains no images, only {} other file(s): {}; images are recognised by extension: {}",
                    label_dir.display(),
                    names.len(),
                    name_some(&names, 3),
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        if !any {
            // An empty folder holds no examples: like imagefolder, it is no
            // label; listed so nobody wonders where it went.
            skipped.push(Skipped::new(
                &label_dir,
                "empty directory: not a label (no images)",
            ));
        }
        for rel in others {
            skipped.push(Skipped::new(rel, "not an image file (by extension)"));
        }
    }
    Ok(())
}

/// Names the files metadata lists but the archive lacks, pointing at a file
/// of the same name elsewhere (a `file_name` without its folder, or in
/// another letter case).
fn missing_files(files: &Path, root: &Path, missing: &[(String, PathBuf)]) -> DatasetError {
    let present = walk(&files.join(root)).unwrap_or_default();
    let mut named: Vec<String> = missing
        .iter()
        .take(10)
        .map(|(shown, want)| {
            let want_name = want.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let near = present.iter().find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.eq_ignore_ascii_case(want_name))
            });
            match near {
                Some(p) => format!("{shown}: the archive has `{}`", root.join(p).display()),
                None => shown.clone(),
            }
        })
        .collect();
    if missing.len() > 10 {
        named.push(format!("and {} more", missing.len() - 10));
    }
    DatasetError::invalid(
        "missing_file",
        format!(
            "metadata names files that are not in the archive (`file_name` is relative to the folder holding the metadata file, and case matters): {}",
            named.join(", ")
        ),
    )
}

/// Images listed in `metadata.csv` / `metadata.jsonl` files, at the root
/// and in split directories; files the metadata does not list are skipped.
fn from_metadata(
    files: &Path,
    root: &Path,
    root_meta: Option<&str>,
    split_dirs: &[(&'static str, String)],
) -> Result<Found, DatasetError> {
    let mut listing = Listing::default();
    for source in metadata_sources(files, root, root_meta, split_dirs)? {
        let rows: Vec<MetadataRow> = metadata::read(&files.join(&source.file), &source.file)?;
        for row in rows {
            listing.add(files, root, &source, row)?;
        }
    }
    listing.check(files, root)?;
    let skipped = unlisted(files, root, &listing.listed)?;
    Ok(Found {
        layout: "metadata",
        task: if listing.multi_label {
            Task::MultiLabel
        } else {
            Task::MultiClass
        },
        items: listing.items,
        skipped,
    })
}

/// One metadata file.
struct MetadataSource {
    /// The directory its file names are relative to.
    base: PathBuf,
    file: PathBuf,
    /// The split of its rows, unless a root file's row names one.
    default_split: &'static str,
}

/// The metadata files: the root's first, then each split directory's.
fn metadata_sources(
    files: &Path,
    root: &Path,
    root_meta: Option<&str>,
    split_dirs: &[(&'static str, String)],
) -> Result<Vec<MetadataSource>, DatasetError> {
    let mut sources = Vec::new();
    if let Some(m) = root_meta {
        sources.push(MetadataSource {
            base: root.to_path_buf(),
            file: root.join(m),
            default_split: "train",
        });
    }
    for (split, d) in split_dirs {
        let dir = root.join(d);
        let (_, names) = list(&files.join(&dir)).map_err(io)?;
        if let Some(m) = names.iter().find(|n| is_metadata(n)) {
            sources.push(MetadataSource {
                file: dir.join(m),
                base: dir,
                default_split: split,
            });
        }
    }
    Ok(sources)
}

/// The rows of the metadata files read so far.
#[derive(Default)]
struct Listing {
    items: Vec<Item>,
    /// First row seen for each file: (index in `items`, where it was said).
    listed: BTreeMap<PathBuf, (usize, String)>,
    conflicts: Vec<String>,
    /// (the row, as shown to the user; the file it names).
    missing: Vec<(String, PathBuf)>,
    multi_label: bool,
}

impl Listing {
    /// Adds a row; a file that is not in the archive, or listed again with
    /// other labels, is noted for [`Listing::check`].
    fn add(
        &mut self,
        files: &Path,
        root: &Path,
        source: &MetadataSource,
        row: MetadataRow,
    ) -> Result<(), DatasetError> {
        let meta = &source.file;
        self.multi_label |= row.is_list;
        let Some(rel) = metadata::safe_file_name(&row.file_name).map(|r| source.base.join(r))
        else {
            return Err(DatasetError::invalid(
                "invalid_metadata",
                format!(
                    "`{}` line {}: file_name `{}` is not a relative path inside the archive",
                    meta.display(),
                    row.line,
                    row.file_name
                ),
            ));
        };
        if !files.join(&rel).is_file() {
            let shown = format!(
                "`{}` (line {} of {})",
                row.file_name,
                row.line,
                meta.display()
            );
            self.missing.push((shown, rel));
            return Ok(());
        }
        // A root metadata file may name `train/x.jpg`: the split is its first directory.
        let split = if source.base == root {
            row.file_name
                .split(['/', '\\'])
                .next()
                .filter(|_| row.file_name.contains(['/', '\\']))
                .and_then(split_name)
                .unwrap_or(source.default_split)
        } else {
            source.default_split
        };
        let here = format!("line {} of {}", row.line, meta.display());
        if let Some((first, there)) = self.listed.get(&rel) {
            // Repeated rows: the same labels are harmless; different
            // ones are a mistake or a one-row-per-label file, and
            // guessing either way would train on wrong labels.
            let mut a = self.items[*first].labels.clone();
            let mut b = row.labels.clone();
            a.sort();
            b.sort();
            if a != b {
                self.conflicts.push(format!(
                    "`{}`: {there} says {:?}, {here} says {:?}",
                    row.file_name, self.items[*first].labels, row.labels
                ));
            }
            return Ok(());
        }
        self.listed.insert(rel.clone(), (self.items.len(), here));
        self.items.push(Item {
            split,
            rel,
            labels: row.labels,
        });
        Ok(())
    }

    /// Refuses metadata that names missing files or gives a file two sets
    /// of labels.
    fn check(&self, files: &Path, root: &Path) -> Result<(), DatasetError> {
        if !self.missing.is_empty() {
            return Err(missing_files(files, root, &self.missing));
        }
        if self.conflicts.is_empty() {
            return Ok(());
        }
        let more = self.conflicts.len().saturating_sub(5);
        let mut shown: Vec<String> = self.conflicts.iter().take(5).cloned().collect();
        if more > 0 {
            shown.push(format!("and {more} more"));
        }
        Err(DatasetError::invalid(
            "invalid_metadata",
            format!(
                "files listed more than once with different labels: {}; give each file one row (several labels: `cat|indoor` in CSV, a list in JSON Lines)",
                shown.join("; ")
            ),
        ))
    }
}

/// Every file below the root that no metadata row lists (the metadata
/// files themselves aside), with why it is left out.
fn unlisted(
    files: &Path,
    root: &Path,
    listed: &BTreeMap<PathBuf, (usize, String)>,
) -> Result<SkipList, DatasetError> {
    let mut skipped = SkipList::default();
    for rel in walk(&files.join(root)).map_err(io)? {
        let rel = root.join(rel);
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_metadata(name) || listed.contains_key(&rel) {
            continue;
        }
        let reason = if has_image_extension(&rel) {
            "image not listed in the metadata file"
        } else {
            "not an image file (by extension)"
        };
        skipped.push(Skipped::new(rel, reason));
    }
    Ok(skipped)
}
