//! Recognising and safely extracting zip and tar (plain, gzip or bzip2)
//! archives.
//!
//! Safety rules, checked for every entry before anything is written:
//! no absolute paths, no `..`, no symbolic or hard links, no device files,
//! no entry written twice (the same file again, or a file where a directory
//! is); at most `max_entries` entries; at most `max_bytes` bytes written in
//! total, counted while decompressing (headers are only used to refuse
//! early, never trusted). Everything is written below `dest`, which the
//! caller removes on any error. Names are stored in Unicode NFC, so a label
//! folder zipped on macOS (often NFD) and the same name typed in a metadata
//! file or another split are one label.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::error::DatasetError;
use super::is_ignored_component;

/// The archive formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveFormat {
    #[serde(rename = "zip")]
    Zip,
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar.bz2")]
    TarBz2,
    /// One Parquet file (a Hugging Face dataset split; `data::parquet`).
    #[serde(rename = "parquet")]
    Parquet,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Zip => "zip",
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarBz2 => "tar.bz2",
            ArchiveFormat::Parquet => "parquet",
        }
    }
}

/// What the refusals name as accepted.
pub const ACCEPTED: &str = "a zip, tar, tar.gz (.tgz) or tar.bz2 archive, or a Parquet file";

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

const TAR_BLOCK: usize = 512;

/// Recognises the format from the first bytes (names are not trusted).
pub fn detect(path: &Path) -> Result<ArchiveFormat, DatasetError> {
    let mut head = [0u8; TAR_BLOCK];
    let mut f = File::open(path).map_err(io_internal)?;
    let n = read_up_to(&mut f, &mut head).map_err(io_internal)?;
    detect_bytes(&head[..n])
}

/// Recognises the format from a buffer's first bytes (up to 512 of them: a
/// plain tar is recognised by its first header block).
pub fn detect_bytes(head: &[u8]) -> Result<ArchiveFormat, DatasetError> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(ArchiveFormat::Zip);
    }
    // Before the compressed formats: a plain tar starts with a file name,
    // which could be anything (`BZh-scans/...`).
    if is_tar_header(head) {
        return Ok(ArchiveFormat::Tar);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(ArchiveFormat::TarGz);
    }
    if head.starts_with(b"BZh") {
        return Ok(ArchiveFormat::TarBz2);
    }
    if super::parquet::is_parquet(head) {
        return Ok(ArchiveFormat::Parquet);
    }
    let unsupported = [
        (&b"\xfd7zXZ\x00"[..], "an xz-compressed file"),
        (&b"7z\xbc\xaf\x27\x1c"[..], "a 7z archive"),
        (&b"Rar!\x1a\x07"[..], "a RAR archive"),
        (&b"\x28\xb5\x2f\xfd"[..], "a zstd-compressed file"),
        (&b"\x5d\x00\x00"[..], "an lzma-compressed file"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(DatasetError::bad(
            "unsupported_archive",
            format!(
                "the upload is {what}, which is not accepted; repack it as {ACCEPTED} (recognised by content, not name)"
            ),
        ));
    }
    Err(DatasetError::bad(
        "not_an_archive",
        format!("the upload is not {ACCEPTED} (recognised by content, not name)"),
    ))
}

/// A tar header block: `ustar` magic, or (old v7 tars) a valid checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < TAR_BLOCK {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    // An all-zero block (an empty tar) sums to 256 with the checksum blank.
    stored == Some(sum) && block[0] != 0
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
    DatasetError::internal(format!("i/o error while extracting: {e}"))
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
                out.push(c.nfc().collect::<String>());
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

/// Extracts `archive` into `dest` (which must exist and be empty). An
/// entry named as an image may hold at most `max_image_file_bytes`: one
/// over it is refused (`image_file_too_large`) as soon as its header or
/// its bytes say so, before it fills the disk.
pub fn extract(
    archive: &Path,
    format: ArchiveFormat,
    dest: &Path,
    limits: ExtractLimits,
    max_image_file_bytes: u64,
) -> Result<ExtractStats, DatasetError> {
    let cap = max_image_file_bytes;
    match format {
        ArchiveFormat::Zip => extract_zip(archive, dest, limits, cap),
        ArchiveFormat::Tar => extract_tar(archive, dest, limits, cap, "tar", |f| Box::new(f)),
        ArchiveFormat::TarGz => extract_tar(archive, dest, limits, cap, "gzip", |f| {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        }),
        ArchiveFormat::TarBz2 => extract_tar(archive, dest, limits, cap, "bzip2", |f| {
            Box::new(bzip2::read::MultiBzDecoder::new(f))
        }),
        ArchiveFormat::Parquet => place_parquet(archive, dest),
    }
}

/// The name a single uploaded Parquet file gets (its rows are the train
/// split; `data::parquet` unpacks it).
pub const PARQUET_UPLOAD: &str = "upload.parquet";

/// A Parquet upload is its own only entry: linked (or copied) into `dest`.
fn place_parquet(upload: &Path, dest: &Path) -> Result<ExtractStats, DatasetError> {
    let to = dest.join(PARQUET_UPLOAD);
    let bytes = match fs::hard_link(upload, &to) {
        Ok(()) => fs::metadata(&to).map_err(io_internal)?.len(),
        Err(_) => fs::copy(upload, &to).map_err(io_internal)?,
    };
    Ok(ExtractStats {
        entries: 1,
        files: 1,
        bytes,
    })
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

/// The refusal of image files over `--max-image-file-bytes` (`named`).
pub fn image_file_too_large(max_image_file_bytes: u64, named: &str) -> DatasetError {
    DatasetError::too_large(
        "image_file_too_large",
        format!(
            "image files larger than {max_image_file_bytes} bytes (--max-image-file-bytes, \
             VITRINE_MAX_IMAGE_FILE_BYTES): {named}"
        ),
    )
}

/// The most bytes the entry at `rel` may hold: `image_cap` for an image.
fn entry_cap(rel: &Path, image_cap: u64) -> u64 {
    if super::layout::has_image_extension(rel) {
        image_cap
    } else {
        u64::MAX
    }
}

/// Writes one file entry (`declared` bytes by its header, not trusted)
/// within the archive's remaining bytes and the entry's own cap.
/// `Err(None)` for a read error of the entry's stream, which the caller
/// words for its format.
fn write_entry(
    entry: &mut impl Read,
    declared: u64,
    out: &mut File,
    (name, cap): (&str, u64),
    limits: &ExtractLimits,
    stats: &mut ExtractStats,
) -> Result<(), Result<DatasetError, io::Error>> {
    let budget = limits.max_bytes - stats.bytes;
    let too_large_image = || Ok(image_file_too_large(cap, &format!("`{name}`")));
    if declared > cap {
        return Err(too_large_image());
    }
    match copy_capped(entry, out, budget.min(cap)) {
        Ok(Some(n)) => stats.bytes += n,
        Ok(None) if cap < budget => return Err(too_large_image()),
        Ok(None) => return Err(Ok(too_big(limits, name))),
        Err(e) => return Err(Err(e)),
    }
    stats.files += 1;
    Ok(())
}

/// Copies at most `budget` bytes; `Ok(None)` when the source had more.
fn copy_capped(src: &mut impl Read, dst: &mut impl Write, budget: u64) -> io::Result<Option<u64>> {
    let copied = io::copy(&mut src.take(budget.saturating_add(1)), dst)?;
    Ok((copied <= budget).then_some(copied))
}

fn clash(entry: &str) -> DatasetError {
    DatasetError::bad(
        "duplicate_entry",
        format!(
            "archive entry `{entry}` clashes with an earlier entry: the same file twice, or a file and a directory of one name"
        ),
    )
}

/// A directory below `dest`; a file in its way is a clash, not an i/o error.
fn create_dir(dest: &Path, rel: &Path, entry: &str) -> Result<(), DatasetError> {
    let mut path = dest.to_path_buf();
    for comp in rel.components() {
        path.push(comp);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(clash(entry)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(io_internal)?
            }
            Err(e) => return Err(io_internal(e)),
        }
    }
    Ok(())
}

/// A new file below `dest`; one already there (a duplicate entry) is a clash.
fn create_file(dest: &Path, rel: &Path, entry: &str) -> Result<File, DatasetError> {
    if let Some(parent) = rel.parent() {
        create_dir(dest, parent, entry)?;
    }
    match File::create_new(dest.join(rel)) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(clash(entry)),
        Err(e) => Err(io_internal(e)),
    }
}

/// The entry count of a zip's end-of-central-directory record (zip64 too);
/// `None` if the record is not where the format puts it (the zip reader
/// then decides).
fn zip_listed_entries(f: &mut File) -> io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let len = f.seek(SeekFrom::End(0))?;
    // The record (22 bytes) plus a comment of at most 65535 bytes.
    let tail_len = len.min(22 + 65535);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    let Some(at) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == *b"PK\x05\x06")
    else {
        return Ok(None);
    };
    let count = u16::from_le_bytes([tail[at + 10], tail[at + 11]]);
    if count != u16::MAX {
        return Ok(Some(u64::from(count)));
    }
    // zip64: a locator just before the record points at the zip64 record.
    let Some(loc) = at.checked_sub(20).map(|i| &tail[i..i + 20]) else {
        return Ok(None);
    };
    if loc[..4] != *b"PK\x06\x07" {
        return Ok(None);
    }
    let offset = u64::from_le_bytes(loc[8..16].try_into().expect("8 bytes"));
    let mut rec = [0u8; 40];
    if offset.checked_add(40).is_none_or(|end| end > len) {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut rec)?;
    if rec[..4] != *b"PK\x06\x06" {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        rec[32..40].try_into().expect("8 bytes"),
    )))
}

fn extract_zip(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
    image_cap: u64,
) -> Result<ExtractStats, DatasetError> {
    let file = File::open(archive).map_err(io_internal)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| corrupt(None, e, true))?;
    if zip.len() as u64 > limits.max_entries {
        return Err(too_many(&limits));
    }
    // The zip reader keeps one entry per name and drops the others
    // silently: compare with the central directory's own count.
    let mut raw = File::open(archive).map_err(io_internal)?;
    if let Some(listed) = zip_listed_entries(&mut raw).map_err(io_internal)? {
        if listed > zip.len() as u64 {
            return Err(DatasetError::bad(
                "duplicate_entry",
                format!(
                    "the archive lists {listed} entries but only {} distinct names: some file appears twice, and which copy is meant is unknowable",
                    zip.len()
                ),
            ));
        }
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
            create_dir(dest, &rel, &name)?;
            continue;
        }
        let cap = entry_cap(&rel, image_cap);
        let declared = entry.size();
        let mut out = create_file(dest, &rel, &name)?;
        write_entry(
            &mut entry,
            declared,
            &mut out,
            (&name, cap),
            &limits,
            &mut stats,
        )
        .map_err(|e| {
            e.unwrap_or_else(|e| {
                let eof = e.kind() == io::ErrorKind::UnexpectedEof;
                corrupt(Some(&name), e, eof)
            })
        })?;
    }
    Ok(stats)
}

/// Extracts a tar archive, `decompress` wrapping the file in the stream's
/// decoder (`codec` names it in messages).
fn extract_tar(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
    image_cap: u64,
    codec: &str,
    decompress: impl FnOnce(BufReader<File>) -> Box<dyn Read>,
) -> Result<ExtractStats, DatasetError> {
    let file = File::open(archive).map_err(io_internal)?;
    let mut stream = decompress(BufReader::new(file));
    let head = tar_head(&mut stream, codec)?;
    let mut tar = tar::Archive::new(io::Cursor::new(head).chain(stream));
    let mut stats = ExtractStats::default();
    {
        let entries = tar.entries().map_err(|e| tar_read_error(None, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_read_error(None, e))?;
            extract_tar_entry(&mut entry, dest, &limits, image_cap, &mut stats)?;
        }
    }
    // Read the stream to its end so a truncated or corrupt trailer is
    // noticed, still within the byte budget.
    let mut rest = tar.into_inner();
    let budget = limits.max_bytes - stats.bytes;
    match copy_capped(&mut rest, &mut io::sink(), budget) {
        Ok(Some(_)) => Ok(stats),
        Ok(None) => Err(too_big(&limits, "(data after the tar end)")),
        Err(e) => Err(tar_read_error(None, e)),
    }
}

/// A read error of a tar stream as the user's problem: a corrupt or
/// truncated archive (naming the entry, when there is one).
fn tar_read_error(entry: Option<&str>, e: io::Error) -> DatasetError {
    // The tar reader reports a short plain tar as "unexpected EOF
    // during skip" of kind `Other`.
    let eof = e.kind() == io::ErrorKind::UnexpectedEof || e.to_string().contains("unexpected EOF");
    corrupt(entry, e, eof)
}

/// The stream's first block, which must be a tar header (or the zero block
/// of an empty tar). A compressed single file (`images.gz`) is not a tar:
/// say so, rather than whatever the tar reader makes of its bytes.
fn tar_head(stream: &mut Box<dyn Read>, codec: &str) -> Result<Vec<u8>, DatasetError> {
    let mut head = vec![0u8; TAR_BLOCK];
    let n = read_up_to(stream, &mut head).map_err(|e| tar_read_error(None, e))?;
    head.truncate(n);
    if n < TAR_BLOCK || !(is_tar_header(&head) || head.iter().all(|&b| b == 0)) {
        return Err(DatasetError::bad(
            "not_an_archive",
            format!(
                "the {codec} data does not hold a tar archive; accepted: {ACCEPTED} (a compressed single file is not a dataset)"
            ),
        ));
    }
    Ok(head)
}

/// Extracts one tar entry: links and special files are refused, pax
/// headers and unsafe-but-harmless names skipped, sizes checked first.
fn extract_tar_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    limits: &ExtractLimits,
    image_cap: u64,
    stats: &mut ExtractStats,
) -> Result<(), DatasetError> {
    stats.entries += 1;
    if stats.entries > limits.max_entries {
        return Err(too_many(limits));
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
            return Ok(());
        }
        return Err(DatasetError::bad(
            "unsafe_entry_path",
            format!("archive entry `{name}` is not a regular file or directory"),
        ));
    }
    let Some(rel) = safe_relative(&name)? else {
        return Ok(());
    };
    if kind.is_dir() {
        return create_dir(dest, &rel, &name);
    }
    if entry.size() > limits.max_bytes - stats.bytes {
        return Err(too_big(limits, &name));
    }
    let cap = entry_cap(&rel, image_cap);
    let declared = entry.size();
    let mut out = create_file(dest, &rel, &name)?;
    write_entry(entry, declared, &mut out, (&name, cap), limits, stats)
        .map_err(|e| e.unwrap_or_else(|e| tar_read_error(Some(&name), e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_block(name: &str, magic: bool) -> Vec<u8> {
        let mut h = if magic {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_old()
        };
        h.set_path(name).unwrap();
        h.set_size(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn formats_by_content() {
        assert_eq!(detect_bytes(b"PK\x03\x04rest").unwrap(), ArchiveFormat::Zip);
        assert_eq!(
            detect_bytes(&[0x1f, 0x8b, 8]).unwrap(),
            ArchiveFormat::TarGz
        );
        assert_eq!(detect_bytes(b"BZh91AY").unwrap(), ArchiveFormat::TarBz2);
        assert_eq!(
            detect_bytes(&tar_block("cat/a.png", true)).unwrap(),
            ArchiveFormat::Tar
        );
        assert_eq!(
            detect_bytes(&tar_block("cat/a.png", false)).unwrap(),
            ArchiveFormat::Tar
        );
        let mut broken = tar_block("cat/a.png", false);
        broken[0] ^= 1;
        assert_eq!(detect_bytes(&broken).unwrap_err().code, "not_an_archive");
        assert_eq!(detect_bytes(&[0; 512]).unwrap_err().code, "not_an_archive");
        for (magic, what) in [
            (&b"\xfd7zXZ\x00\x00"[..], "xz"),
            (b"7z\xbc\xaf\x27\x1c\x00", "7z"),
            (b"Rar!\x1a\x07\x01\x00", "RAR"),
        ] {
            let e = detect_bytes(magic).unwrap_err();
            assert_eq!(e.code, "unsupported_archive");
            assert!(e.detail.contains(what), "{}", e.detail);
        }
    }

    #[test]
    fn names_are_nfc() {
        assert_eq!(
            safe_relative("cafe\u{301}/x.png").unwrap(),
            Some(PathBuf::from("caf\u{e9}/x.png"))
        );
    }

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
