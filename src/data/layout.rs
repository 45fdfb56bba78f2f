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
use super::summary::Skipped;
use super::{is_ignored_component, split_name, Task, IMAGE_EXTENSIONS};

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
    pub skipped: Vec<Skipped>,
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
    DatasetError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        detail: format!("reading the extracted dataset: {e}"),
    }
}

fn is_metadata(name: &str) -> bool {
    name == "metadata.csv" || name == "metadata.jsonl"
}

/// Finds the layout and every labelled image below `files` (the extracted
/// archive).
pub fn detect(files: &Path) -> Result<Found, DatasetError> {
    // Look through wrapper directories (at most a few levels).
    let mut root = PathBuf::new();
    for _ in 0..4 {
        let (dirs, names) = list(&files.join(&root)).map_err(io)?;
        if names.is_empty() && dirs.len() == 1 && split_name(&dirs[0]).is_none() {
            root.push(&dirs[0]);
        } else {
            break;
        }
    }
    let (dirs, names) = list(&files.join(&root)).map_err(io)?;
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
        let mut skipped = Vec::new();
        for (split, d) in &split_dirs {
            from_label_dirs(files, &root.join(d), split, &mut items, &mut skipped)?;
        }
        for d in dirs.iter().filter(|d| split_name(d).is_none()) {
            skipped.push(Skipped::new(
                root.join(d),
                "directory is not a split (train, validation, val, test)",
            ));
        }
        for n in &names {
            skipped.push(Skipped::new(
                root.join(n),
                "file outside the split directories",
            ));
        }
        return Ok(Found {
            layout: "splits",
            task: Task::MultiClass,
            items,
            skipped,
        });
    }
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    from_label_dirs(files, &root, "train", &mut items, &mut skipped)?;
    Ok(Found {
        layout: "labels",
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
    skipped: &mut Vec<Skipped>,
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
        let mut any = false;
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
                skipped.push(Skipped::new(rel, "not an image file (by extension)"));
            }
        }
        if !any {
            return Err(DatasetError::invalid(
                "label_without_images",
                format!(
                    "label directory `{}` contains no images",
                    label_dir.display()
                ),
            ));
        }
    }
    Ok(())
}

fn from_metadata(
    files: &Path,
    root: &Path,
    root_meta: Option<&str>,
    split_dirs: &[(&'static str, String)],
) -> Result<Found, DatasetError> {
    // (directory the file names are relative to, metadata file, default split)
    let mut sources: Vec<(PathBuf, PathBuf, &'static str)> = Vec::new();
    if let Some(m) = root_meta {
        sources.push((root.to_path_buf(), root.join(m), "train"));
    }
    for (split, d) in split_dirs {
        let dir = root.join(d);
        let (_, names) = list(&files.join(&dir)).map_err(io)?;
        if let Some(m) = names.iter().find(|n| is_metadata(n)) {
            sources.push((dir.clone(), dir.join(m), split));
        }
    }
    let mut items = Vec::new();
    let mut listed = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    let mut multi_label = false;
    for (base, meta, default_split) in &sources {
        let rows: Vec<MetadataRow> = metadata::read(&files.join(meta), meta)?;
        for row in rows {
            multi_label |= row.is_list;
            let rel = match metadata::safe_file_name(&row.file_name) {
                Some(r) => base.join(r),
                None => {
                    return Err(DatasetError::invalid(
                        "invalid_metadata",
                        format!(
                        "`{}` line {}: file_name `{}` is not a relative path inside the archive",
                        meta.display(),
                        row.line,
                        row.file_name
                    ),
                    ))
                }
            };
            if !files.join(&rel).is_file() {
                missing.push(format!(
                    "{} (line {} of {})",
                    row.file_name,
                    row.line,
                    meta.display()
                ));
                continue;
            }
            // A root metadata file may name `train/x.jpg`: the split is its first directory.
            let split = if base == root {
                row.file_name
                    .split(['/', '\\'])
                    .next()
                    .filter(|_| row.file_name.contains(['/', '\\']))
                    .and_then(split_name)
                    .unwrap_or(default_split)
            } else {
                default_split
            };
            listed.insert(rel.clone());
            items.push(Item {
                split,
                rel,
                labels: row.labels,
            });
        }
    }
    if !missing.is_empty() {
        return Err(DatasetError::invalid(
            "missing_file",
            format!(
                "metadata names files that are not in the archive: {}",
                name_some(&missing, 10)
            ),
        ));
    }
    let mut skipped = Vec::new();
    for rel in walk(&files.join(root)).map_err(io)? {
        let rel = root.join(rel);
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_metadata(name) || listed.contains(&rel) {
            continue;
        }
        let reason = if has_image_extension(&rel) {
            "image not listed in the metadata file"
        } else {
            "not an image file (by extension)"
        };
        skipped.push(Skipped::new(rel, reason));
    }
    // Duplicate rows for one file: keep the first.
    let mut seen = BTreeMap::new();
    items.retain(|i| seen.insert(i.rel.clone(), ()).is_none());
    Ok(Found {
        layout: "metadata",
        task: if multi_label {
            Task::MultiLabel
        } else {
            Task::MultiClass
        },
        items,
        skipped,
    })
}
