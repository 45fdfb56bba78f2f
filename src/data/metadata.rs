//! `metadata.csv` and `metadata.jsonl`, as imagefolder reads them: a
//! `file_name` column and a label column (`labels`, `label`, or the only
//! other column).
//!
//! Multi-label rows: in JSON Lines a JSON list (`"labels": ["cat", "indoor"]`);
//! in CSV a cell with labels separated by `|` (`cat|indoor`) or a JSON list
//! (`"[""cat"", ""indoor""]"`). Any such row makes the dataset multi-label;
//! an empty list is an image with no label, allowed only there.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::error::DatasetError;

/// The separator between labels in a CSV cell.
pub const CSV_LABEL_SEPARATOR: char = '|';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRow {
    /// 1-based line in the file (the CSV header is line 1).
    pub line: usize,
    pub file_name: String,
    pub labels: Vec<String>,
    /// The row gave a list (multi-label), not a single value.
    pub is_list: bool,
}

fn invalid(meta: &Path, detail: impl std::fmt::Display) -> DatasetError {
    DatasetError::invalid(
        "invalid_metadata",
        format!("`{}`: {detail}", meta.display()),
    )
}

fn empty_label(meta: &Path, line: usize) -> DatasetError {
    DatasetError::invalid(
        "empty_label",
        format!("`{}` line {line}: the label is empty", meta.display()),
    )
}

/// Picks the label column among the header names.
fn label_column<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    for want in ["labels", "label"] {
        if let Some(n) = names.clone().find(|n| *n == want) {
            return Some(n);
        }
    }
    let others: Vec<&str> = names.filter(|n| *n != "file_name").collect();
    (others.len() == 1).then(|| others[0])
}

/// Reads a metadata file; `shown` is the name used in messages.
pub fn read(path: &Path, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    let rows = if is_csv {
        read_csv(path, shown)?
    } else {
        read_jsonl(path, shown)?
    };
    if rows.is_empty() {
        return Err(invalid(shown, "no rows"));
    }
    Ok(rows)
}

fn labels_from_json(
    v: &Value,
    meta: &Path,
    line: usize,
) -> Result<(Vec<String>, bool), DatasetError> {
    let one = |v: &Value| -> Result<String, DatasetError> {
        let s = match v {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(invalid(
                    meta,
                    format!("line {line}: a label must be a string or a number, not {v}"),
                ))
            }
        };
        if s.is_empty() {
            return Err(empty_label(meta, line));
        }
        Ok(s)
    };
    match v {
        Value::Array(items) => Ok((items.iter().map(one).collect::<Result<_, _>>()?, true)),
        Value::Null => Err(empty_label(meta, line)),
        other => Ok((vec![one(other)?], false)),
    }
}

fn read_jsonl(path: &Path, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(shown, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| invalid(shown, format!("line {line_no} is not a JSON object: {e}")))?;
        let file_name = obj
            .get("file_name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(shown, format!("line {line_no} has no string `file_name`")))?
            .to_string();
        let col = label_column(obj.keys().map(String::as_str)).ok_or_else(|| {
            invalid(
                shown,
                format!(
                    "line {line_no}: no label column (`label`, `labels`, or a single other field)"
                ),
            )
        })?;
        let (labels, is_list) = labels_from_json(&obj[col], shown, line_no)?;
        rows.push(MetadataRow {
            line: line_no,
            file_name,
            labels,
            is_list,
        });
    }
    Ok(rows)
}

fn read_csv(path: &Path, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| invalid(shown, e))?;
    let headers = rdr.headers().map_err(|e| invalid(shown, e))?.clone();
    let file_col = headers
        .iter()
        .position(|h| h == "file_name")
        .ok_or_else(|| invalid(shown, "no `file_name` column"))?;
    let label_name = label_column(headers.iter()).ok_or_else(|| {
        invalid(
            shown,
            "no label column (`label`, `labels`, or a single other column)",
        )
    })?;
    let label_col = headers.iter().position(|h| h == label_name).unwrap_or(0);
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| invalid(shown, format!("line {line}: {e}")))?;
        let file_name = rec.get(file_col).unwrap_or_default().to_string();
        let cell = rec.get(label_col).unwrap_or_default().trim();
        let (labels, is_list) = if cell.starts_with('[') {
            let v: Value = serde_json::from_str(cell)
                .map_err(|e| invalid(shown, format!("line {line}: label list is not JSON: {e}")))?;
            labels_from_json(&v, shown, line)?
        } else if cell.contains(CSV_LABEL_SEPARATOR) {
            let parts: Vec<String> = cell
                .split(CSV_LABEL_SEPARATOR)
                .map(|s| s.trim().to_string())
                .collect();
            if parts.iter().any(String::is_empty) {
                return Err(empty_label(shown, line));
            }
            (parts, true)
        } else if cell.is_empty() {
            return Err(empty_label(shown, line));
        } else {
            (vec![cell.to_string()], false)
        };
        rows.push(MetadataRow {
            line,
            file_name,
            labels,
            is_list,
        });
    }
    Ok(rows)
}

/// A metadata `file_name` as a safe relative path (`None`: absolute or `..`).
pub fn safe_file_name(name: &str) -> Option<PathBuf> {
    let normalised = name.replace('\\', "/");
    let mut out = PathBuf::new();
    for c in Path::new(&normalised).components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}
