//! Recognising and safely extracting zip and tar.gz archives.
//!
//! Safety rules, checked for every entry before anything is written:
//! no absolute paths, no `..`, no symbolic or hard links, no device files;
//! at most `max_entries` entries; at most `max_bytes` bytes written in total,
//! counted while decompressing (headers are only used to refuse early, never
//! trusted). Everything is written below `dest`, which the caller removes
//! on any error.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DatasetError;
use super::is_ignored_component;

/// The archive formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveFormat {
    #[serde(rename = "zip")]
    Zip,
    #[serde(rename = "tar.gz")]
    TarGz,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Zip => "zip",
            ArchiveFormat::TarGz => "tar.gz",
        }
    }
}

/// Limits on what an archive may expand to.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// What extraction produced.
#[derive(Debug, Clone, Default)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Recognises the format from the first bytes (names are not trusted).
pub fn detect(path: &Path) -> Result<ArchiveFormat, DatasetError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(io_internal)?;
    let n = read_up_to(&mut f, &mut head).map_err(io_internal)?;
    detect_bytes(&head[..n])
}

/// Recognises the format from a buffer's first bytes.
pub fn detect_bytes(head: &[u8]) -> Result<ArchiveFormat, DatasetError> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(ArchiveFormat::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(ArchiveFormat::TarGz)
    } else {
        Err(DatasetError::bad(
            "not_an_archive",
            "the upload is neither a zip nor a tar.gz archive (recognised by content, not name)",
        ))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn io_internal(e: io::Error) -> DatasetError {
    DatasetError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        detail: format!("i/o error while extracting: {e}"),
    }
}

/// Checks an entry name and turns it into a relative path. `Ok(None)`: an
/// entry to skip silently (`__MACOSX/`, hidden files, the root itself).
pub fn safe_relative(name: &str) -> Result<Option<PathBuf>, DatasetError> {
    let unsafe_path = |why: &str| {
        DatasetError::bad(
            "unsafe_entry_path",
            format!("archive entry `{name}` {why}; nothing outside the dataset may be written"),
        )
    };
    let normalised = name.replace('\\', "/");
    if normalised.starts_with('/') || normalised.as_bytes().get(1) == Some(&b':') {
        return Err(unsafe_path("is an absolute path"));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(&normalised).components() {
        match comp {
            Component::Normal(c) => {
                let c = c
                    .to_str()
                    .ok_or_else(|| unsafe_path("is not valid UTF-8"))?;
                if is_ignored_component(c) {
                    return Ok(None);
                }
                out.push(c);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("is an absolute path"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Extracts `archive` into `dest` (which must exist and be empty).
pub fn extract(
    archive: &Path,
    format: ArchiveFormat,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<ExtractStats, DatasetError> {
    match format {
        ArchiveFormat::Zip => extract_zip(archive, dest, limits),
        ArchiveFormat::TarGz => extract_tar_gz(archive, dest, limits),
    }
}

fn too_many(limits: &ExtractLimits) -> DatasetError {
    DatasetError::too_large(
        "too_many_entries",
        format!(
            "the archive has more than {} entries (VITRINE_MAX_ARCHIVE_ENTRIES)",
            limits.max_entries
        ),
    )
}

fn too_big(limits: &ExtractLimits, entry: &str) -> DatasetError {
    DatasetError::too_large(
        "archive_too_large",
        format!(
            "the archive expands to more than {} bytes (VITRINE_MAX_UNCOMPRESSED_BYTES), reached at entry `{entry}`",
            limits.max_bytes
        ),
    )
}

fn corrupt(entry: Option<&str>, e: impl std::fmt::Display, eof: bool) -> DatasetError {
    let (code, what) = if eof {
        ("truncated_archive", "is truncated")
    } else {
        ("corrupt_archive", "is corrupt")
    };
    let at = entry
        .map(|n| format!(" at entry `{n}`"))
        .unwrap_or_default();
    DatasetError::bad(code, format!("the archive {what}{at}: {e}"))
}

/// Copies at most `budget` bytes; `Ok(None)` when the source had more.
fn copy_capped(src: &mut impl Read, dst: &mut impl Write, budget: u64) -> io::Result<Option<u64>> {
    let copied = io::copy(&mut src.take(budget.saturating_add(1)), dst)?;
    Ok((copied <= budget).then_some(copied))
}

fn create_file(dest: &Path, rel: &Path) -> Result<File, DatasetError> {
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_internal)?;
    }
    File::create(&path).map_err(io_internal)
}

fn extract_zip(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<ExtractStats, DatasetError> {
    let file = File::open(archive).map_err(io_internal)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| corrupt(None, e, true))?;
    if zip.len() as u64 > limits.max_entries {
        return Err(too_many(&limits));
    }
    // Early refusal on declared sizes; the real count below catches liars.
    let mut declared: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| corrupt(None, e, false))?;
        declared = declared.saturating_add(entry.size());
        if declared > limits.max_bytes {
            return Err(too_big(&limits, entry.name()));
        }
    }
    let mut stats = ExtractStats::default();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| corrupt(None, e, false))?;
        let name = entry.name().to_string();
        stats.entries += 1;
        let is_link =
            entry.is_symlink() || entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
        if is_link {
            return Err(DatasetError::bad(
                "unsafe_entry_path",
                format!("archive entry `{name}` is a symbolic link; links are not accepted"),
            ));
        }
        let Some(rel) = safe_relative(&name)? else {
            continue;
        };
        if entry.is_dir() {
            fs::create_dir_all(dest.join(&rel)).map_err(io_internal)?;
            continue;
        }
        let mut out = create_file(dest, &rel)?;
        let budget = limits.max_bytes - stats.bytes;
        match copy_capped(&mut entry, &mut out, budget) {
            Ok(Some(n)) => stats.bytes += n,
            Ok(None) => return Err(too_big(&limits, &name)),
            Err(e) => {
                let eof = e.kind() == io::ErrorKind::UnexpectedEof;
                return Err(corrupt(Some(&name), e, eof));
            }
        }
        stats.files += 1;
    }
    Ok(stats)
}

fn extract_tar_gz(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<ExtractStats, DatasetError> {
    let file = File::open(archive).map_err(io_internal)?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
    let mut tar = tar::Archive::new(gz);
    let mut stats = ExtractStats::default();
    let read_err = |entry: Option<&str>, e: io::Error| {
        let eof = e.kind() == io::ErrorKind::UnexpectedEof;
        corrupt(entry, e, eof)
    };
    {
        let entries = tar.entries().map_err(|e| read_err(None, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| read_err(None, e))?;
            stats.entries += 1;
            if stats.entries > limits.max_entries {
                return Err(too_many(&limits));
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                return Err(DatasetError::bad(
                    "unsafe_entry_path",
                    format!("archive entry `{name}` is a link; links are not accepted"),
                ));
            }
            if !(kind.is_file() || kind.is_dir() || kind.is_contiguous()) {
                if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                    continue;
                }
                return Err(DatasetError::bad(
                    "unsafe_entry_path",
                    format!("archive entry `{name}` is not a regular file or directory"),
                ));
            }
            let Some(rel) = safe_relative(&name)? else {
                continue;
            };
            if kind.is_dir() {
                fs::create_dir_all(dest.join(&rel)).map_err(io_internal)?;
                continue;
            }
            let budget = limits.max_bytes - stats.bytes;
            if entry.size() > budget {
                return Err(too_big(&limits, &name));
            }
            let mut out = create_file(dest, &rel)?;
            match copy_capped(&mut entry, &mut out, budget) {
                Ok(Some(n)) => stats.bytes += n,
                Ok(None) => return Err(too_big(&limits, &name)),
                Err(e) => return Err(read_err(Some(&name), e)),
            }
            stats.files += 1;
        }
    }
    // Read the gzip stream to its end so a truncated or corrupt trailer is
    // noticed, still within the byte budget.
    let mut rest = tar.into_inner();
    let budget = limits.max_bytes - stats.bytes;
    match copy_capped(&mut rest, &mut io::sink(), budget) {
        Ok(Some(_)) => Ok(stats),
        Ok(None) => Err(too_big(&limits, "(data after the tar end)")),
        Err(e) => Err(read_err(None, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(
            safe_relative("a/b.png").unwrap(),
            Some(PathBuf::from("a/b.png"))
        );
        assert_eq!(
            safe_relative("./a/./b.png").unwrap(),
            Some(PathBuf::from("a/b.png"))
        );
        assert_eq!(safe_relative("__MACOSX/a/._b.png").unwrap(), None);
        assert_eq!(safe_relative("a/.DS_Store").unwrap(), None);
        for bad in [
            "../evil.png",
            "a/../../evil",
            "/etc/passwd",
            "C:\\evil",
            "a\\..\\..\\x",
        ] {
            assert_eq!(
                safe_relative(bad).unwrap_err().code,
                "unsafe_entry_path",
                "{bad}"
            );
        }
    }
}
