//! `metadata.csv` and `metadata.jsonl`, as imagefolder reads them: a
//! `file_name` column and a label column (`labels`, `label`, or the only
//! other column).
//!
//! Multi-label rows: in JSON Lines a JSON list (`"labels": ["cat", "indoor"]`);
//! in CSV a cell with labels separated by `|` (`cat|indoor`), a JSON list
//! (`"[""cat"", ""indoor""]"`) or the Python list pandas writes
//! (`"['cat', 'indoor']"`). Any such row makes the dataset multi-label;
//! an empty list is an image with no label, allowed only there.
//!
//! What spreadsheets and scripts produce is accepted too: a UTF-8 byte order
//! mark, CRLF line ends, quoted fields, extra columns, column names in any
//! letter case. Files must be UTF-8. Labels and file names are compared in
//! Unicode NFC, as archive entry names are.

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

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

/// A column name as matched: trimmed, any letter case.
fn is_column(name: &str, want: &str) -> bool {
    name.trim().eq_ignore_ascii_case(want)
}

/// Picks the label column among the header names.
fn label_column<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    for want in ["labels", "label"] {
        if let Some(n) = names.clone().find(|n| is_column(n, want)) {
            return Some(n);
        }
    }
    let others: Vec<&str> = names.filter(|n| !is_column(n, "file_name")).collect();
    (others.len() == 1).then(|| others[0])
}

fn columns<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nfc(s: &str) -> String {
    s.nfc().collect()
}

/// The largest metadata file read: it is read as a stream, but every row
/// it lists is held until the dataset is checked.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// The longest label accepted, in bytes (UTF-8). A label is shown in every
/// answer about the dataset and its models; a Parquet cell could hold
/// megabytes.
pub const MAX_LABEL_BYTES: usize = 256;

fn not_utf8(shown: &Path, line: usize, utf16: bool) -> DatasetError {
    invalid(
        shown,
        format!(
            "line {line} is not UTF-8 text{}; save the file as UTF-8",
            if utf16 { " (the file is UTF-16)" } else { "" }
        ),
    )
}

/// Reads a metadata file; `shown` is the name used in messages. The file
/// is read as a stream, after its size is checked against
/// [`MAX_METADATA_BYTES`].
pub fn read(path: &Path, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|e| invalid(shown, e))?;
    let size = file.metadata().map_err(|e| invalid(shown, e))?.len();
    if size > MAX_METADATA_BYTES {
        return Err(DatasetError::too_large(
            "metadata_too_large",
            format!(
                "`{}` is {size} bytes, more than the {MAX_METADATA_BYTES} accepted for a metadata file",
                shown.display()
            ),
        ));
    }
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let head = reader.fill_buf().map_err(|e| invalid(shown, e))?;
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        return Err(not_utf8(shown, 1, true));
    }
    if head.starts_with("\u{feff}".as_bytes()) {
        reader.consume(3);
    }
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows = if is_csv {
        read_csv(reader, shown)?
    } else {
        read_jsonl(reader, shown)?
    };
    if rows.is_empty() {
        return Err(invalid(shown, "no rows"));
    }
    Ok(rows)
}

/// Refuses a label longer than [`MAX_LABEL_BYTES`].
fn check_length(label: String, meta: &Path, line: usize) -> Result<String, DatasetError> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(DatasetError::label_too_long(
            &format!("`{}` line {line}", meta.display()),
            label.len(),
        ));
    }
    Ok(label)
}

fn labels_from_json(
    v: &Value,
    meta: &Path,
    line: usize,
) -> Result<(Vec<String>, bool), DatasetError> {
    let one = |v: &Value| -> Result<String, DatasetError> {
        let s = match v {
            Value::String(s) => nfc(s.trim()),
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
        check_length(s, meta, line)
    };
    match v {
        Value::Array(items) => Ok((items.iter().map(one).collect::<Result<_, _>>()?, true)),
        Value::Null => Err(empty_label(meta, line)),
        other => Ok((vec![one(other)?], false)),
    }
}

fn read_jsonl(mut reader: impl BufRead, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| invalid(shown, e))?;
        if n == 0 {
            break;
        }
        let line = std::str::from_utf8(&buf).map_err(|_| not_utf8(shown, line_no, false))?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| invalid(shown, format!("line {line_no} is not a JSON object: {e}")))?;
        let file_name = obj
            .iter()
            .find(|(k, _)| is_column(k, "file_name"))
            .and_then(|(_, v)| v.as_str())
            .ok_or_else(|| {
                invalid(
                    shown,
                    format!(
                        "line {line_no} has no string `file_name` (fields: {})",
                        columns(obj.keys().map(String::as_str))
                    ),
                )
            })?
            .to_string();
        let col = label_column(obj.keys().map(String::as_str)).ok_or_else(|| {
            invalid(
                shown,
                format!(
                    "line {line_no}: no label field (`label`, `labels`, or a single field besides `file_name`; fields: {})",
                    columns(obj.keys().map(String::as_str))
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

/// A CSV error, naming its line (and the encoding, when that is what is wrong).
fn csv_error(shown: &Path, e: csv::Error, line: usize) -> DatasetError {
    match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => not_utf8(
            shown,
            pos.as_ref().map_or(line, |p| p.line() as usize),
            false,
        ),
        _ => invalid(shown, format!("line {line}: {e}")),
    }
}

fn read_csv(reader: impl Read, shown: &Path) -> Result<Vec<MetadataRow>, DatasetError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = rdr.headers().map_err(|e| csv_error(shown, e, 1))?.clone();
    let file_col = headers
        .iter()
        .position(|h| is_column(h, "file_name"))
        .ok_or_else(|| {
            invalid(
                shown,
                format!(
                    "no `file_name` column (columns: {})",
                    columns(headers.iter())
                ),
            )
        })?;
    let label_name = label_column(headers.iter()).ok_or_else(|| {
        invalid(
            shown,
            format!(
                "no label column (`label`, `labels`, or a single column besides `file_name`; columns: {})",
                columns(headers.iter())
            ),
        )
    })?;
    let label_col = headers.iter().position(|h| h == label_name).unwrap_or(0);
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(shown, e, i + 2))?;
        // The real line (quoted cells may span lines).
        let line = rec.position().map_or(i + 2, |p| p.line() as usize);
        let file_name = rec.get(file_col).unwrap_or_default().to_string();
        let cell = rec.get(label_col).unwrap_or_default().trim();
        let (labels, is_list) = if cell.starts_with('[') {
            let v: Value = serde_json::from_str(cell)
                .ok()
                .or_else(|| python_list(cell))
                .ok_or_else(|| {
                    invalid(
                        shown,
                        format!("line {line}: label list `{cell}` is neither a JSON nor a Python list of labels"),
                    )
                })?;
            labels_from_json(&v, shown, line)?
        } else if cell.contains(CSV_LABEL_SEPARATOR) {
            let parts: Vec<String> = cell
                .split(CSV_LABEL_SEPARATOR)
                .map(|s| nfc(s.trim()))
                .collect();
            if parts.iter().any(String::is_empty) {
                return Err(empty_label(shown, line));
            }
            let parts = parts
                .into_iter()
                .map(|p| check_length(p, shown, line))
                .collect::<Result<_, _>>()?;
            (parts, true)
        } else if cell.is_empty() {
            return Err(empty_label(shown, line));
        } else {
            (vec![check_length(nfc(cell), shown, line)?], false)
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

/// A Python list literal of strings and numbers, as `str(list)` and pandas'
/// `to_csv` write it: `['cat', "dog's bed", 3]`. `None` if it is anything
/// else.
fn python_list(cell: &str) -> Option<Value> {
    let inner = cell.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(chars.next()?),
                    q if q == c => break,
                    other => s.push(other),
                }
            }
            out.push(Value::String(s));
        } else {
            let mut token = String::new();
            while chars.peek().is_some_and(|&c| c != ',') {
                token.push(chars.next()?);
            }
            let n: serde_json::Number = token.trim().parse().ok()?;
            out.push(Value::Number(n));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(_) => return None,
        }
    }
    Some(Value::Array(out))
}

/// A metadata `file_name` as a safe relative path (`None`: absolute or `..`).
pub fn safe_file_name(name: &str) -> Option<PathBuf> {
    let normalised = name.replace('\\', "/");
    let mut out = PathBuf::new();
    for c in Path::new(&normalised).components() {
        match c {
            Component::Normal(c) => out.push(nfc(&c.to_string_lossy())),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_rows(text: &str) -> Result<Vec<MetadataRow>, DatasetError> {
        read_csv(text.as_bytes(), Path::new("metadata.csv"))
    }

    fn labels(rows: &[MetadataRow]) -> Vec<(String, Vec<String>, bool)> {
        rows.iter()
            .map(|r| (r.file_name.clone(), r.labels.clone(), r.is_list))
            .collect()
    }

    #[test]
    fn python_lists_as_pandas_writes_them() {
        let rows = csv_rows(
            "file_name,labels\na.png,\"['cat', 'indoor']\"\nb.png,\"['a \\' b', \"\"dog's bed\"\", 3]\"\nc.png,[]\n",
        )
        .unwrap();
        assert_eq!(
            labels(&rows),
            [
                ("a.png".into(), vec!["cat".into(), "indoor".into()], true),
                (
                    "b.png".into(),
                    vec!["a ' b".into(), "dog's bed".into(), "3".into()],
                    true
                ),
                ("c.png".into(), vec![], true),
            ]
        );
        for bad in ["['cat' 'dog']", "['cat", "[cat]"] {
            let e = csv_rows(&format!("file_name,labels\na.png,\"{bad}\"\n")).unwrap_err();
            assert!(e.detail.contains("line 2"), "{bad}: {}", e.detail);
        }
    }

    #[test]
    fn header_in_any_case_and_errors_list_the_columns() {
        let rows = csv_rows("File_Name , Label,source\na.png,cat,web\n").unwrap();
        assert_eq!(labels(&rows), [("a.png".into(), vec!["cat".into()], false)]);
        let e = csv_rows("filename,label\na.png,cat\n").unwrap_err();
        assert!(e.detail.contains("`filename`, `label`"), "{}", e.detail);
        let e = csv_rows("file_name,class,source\na.png,cat,web\n").unwrap_err();
        assert!(e.detail.contains("`class`, `source`"), "{}", e.detail);
    }

    #[test]
    fn bom_non_utf8_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.jsonl");
        std::fs::write(
            &p,
            "\u{feff}{\"file_name\": \"a.png\", \"label\": \"cat\"}\r\n",
        )
        .unwrap();
        let rows = read(&p, Path::new("metadata.jsonl")).unwrap();
        assert_eq!(labels(&rows), [("a.png".into(), vec!["cat".into()], false)]);
        let p = dir.path().join("METADATA.CSV");
        std::fs::write(&p, b"file_name,label\na.png,cat\nb.png,caf\xe9\n").unwrap();
        let e = read(&p, Path::new("METADATA.CSV")).unwrap_err();
        assert!(e.detail.contains("line 3 is not UTF-8"), "{}", e.detail);
        // A quoted cell over two lines: the next row is on line 4.
        let rows = csv_rows("file_name,label\n\"a\nb.png\",cat\nc.png,\n").unwrap_err();
        assert!(rows.detail.contains("line 4"), "{}", rows.detail);
    }

    #[test]
    fn labels_and_names_are_nfc() {
        let rows = csv_rows("file_name,label\ncafe\u{301}/a.png,cafe\u{301}\n").unwrap();
        assert_eq!(rows[0].labels, ["caf\u{e9}"]);
        assert_eq!(
            safe_file_name(&rows[0].file_name).unwrap(),
            PathBuf::from("caf\u{e9}/a.png")
        );
    }

    #[test]
    fn metadata_files_are_capped_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.csv");
        // Sparse: nothing of it is written, or read.
        std::fs::File::create(&p)
            .unwrap()
            .set_len(MAX_METADATA_BYTES + 1)
            .unwrap();
        let e = read(&p, Path::new("metadata.csv")).unwrap_err();
        assert_eq!(e.code, "metadata_too_large", "{e}");
    }

    #[test]
    fn long_labels_are_refused_by_line() {
        let long = "z".repeat(MAX_LABEL_BYTES + 1);
        let ok = "z".repeat(MAX_LABEL_BYTES);
        assert!(csv_rows(&format!("file_name,label\na.png,{ok}\n")).is_ok());
        for cell in [
            long.clone(),
            format!("cat|{long}"),
            format!("\"['cat', '{long}']\""),
        ] {
            let e = csv_rows(&format!("file_name,label\na.png,cat\nb.png,{cell}\n")).unwrap_err();
            assert_eq!(e.code, "label_too_long", "{e}");
            assert!(e.detail.contains("line 3"), "{e}");
        }
        let e = read_jsonl(
            format!("{{\"file_name\": \"a\", \"labels\": [\"{long}\"]}}\n").as_bytes(),
            Path::new("metadata.jsonl"),
        )
        .unwrap_err();
        assert_eq!(e.code, "label_too_long", "{e}");
    }
}
