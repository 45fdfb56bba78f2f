//! What a Parquet file claims, read before the `parquet` crate touches it,
//! with no recursion a hostile file can drive.
//!
//! The crate builds its schema tree recursively, one stack frame per level
//! of nesting (a struct nested 5,000 deep overflows a 2 MiB stack and
//! aborts the process), and it sizes its buffers from page headers it
//! trusts. So, before it reads anything:
//!
//! - [`check_footer`] reads the footer (`FileMetaData`, Thrift compact
//!   protocol) with a small reader of its own whose skipping of unknown
//!   values keeps an explicit, bounded stack. The schema is a flat list of
//!   elements with child counts; its depth is counted with a stack of
//!   counts, and a schema deeper than [`MAX_SCHEMA_DEPTH`] is refused. The
//!   footer's length and its numbers of schema elements and column chunks
//!   are capped too, since the crate holds all of them in memory.
//! - [`scan_pages`] walks the page headers of one column chunk (only the
//!   columns vitrine reads) and sums what they say each page decompresses
//!   to, so that a row group's memory is known, and drawn from the decode
//!   budget, before a byte of it is decompressed. GZIP pages, whose
//!   decompressor does not stop at the size the header gives, are
//!   decompressed once into a counter that stops there.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// The deepest schema accepted: a column nested this many levels (the root
/// is level 0, a top-level column level 1). `datasets`' own features nest a
/// handful of levels (`struct{bytes, path}`, a list of `ClassLabel`).
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// The largest footer accepted. The crate reads it whole and holds what it
/// describes; a Hub shard's footer is a few KB to a few MB.
pub const MAX_FOOTER_BYTES: u64 = 16 << 20;
/// The most schema elements (columns and groups) accepted.
pub const MAX_SCHEMA_ELEMENTS: u64 = 10_000;
/// The most column chunks (row groups x columns) accepted.
pub const MAX_COLUMN_CHUNKS: u64 = 200_000;
/// Nesting of Thrift values this reader follows while skipping: the format
/// itself nests a few levels (`FileMetaData` > `RowGroup` > `ColumnChunk` >
/// `ColumnMetaData` > `Statistics`).
const MAX_THRIFT_NESTING: usize = 32;
/// The largest page header read (statistics are small; writers drop them
/// beyond a few KB).
const MAX_PAGE_HEADER_BYTES: usize = 1 << 20;

/// What a file's footer says, as far as vitrine checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Bytes of the footer's metadata.
    pub len: u64,
    pub schema_elements: u64,
    /// The deepest nesting of its schema (a flat table is 1).
    pub depth: usize,
    pub column_chunks: u64,
}

/// Why a file was refused before the crate read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a Parquet file, or its footer cannot be read.
    Malformed(String),
    /// A readable file beyond a limit of this module.
    TooLarge(String),
    /// A schema nested deeper than [`MAX_SCHEMA_DEPTH`].
    TooDeep(usize),
}

/// Reads and checks the footer of the Parquet file `file` of `size` bytes.
pub fn check_footer(file: &File, size: u64) -> Result<Footer, Refusal> {
    if size < 12 {
        return Err(Refusal::Malformed("the file is too short".into()));
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, size - 8)
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    if &tail[4..] != b"PAR1" {
        return Err(Refusal::Malformed(
            "no `PAR1` at its end (an encrypted or truncated file)".into(),
        ));
    }
    let len = u64::from(u32::from_le_bytes(tail[..4].try_into().unwrap()));
    if len + 12 > size {
        return Err(Refusal::Malformed(format!(
            "its footer claims {len} bytes, more than the file holds"
        )));
    }
    if len > MAX_FOOTER_BYTES {
        return Err(Refusal::TooLarge(format!(
            "its footer is {len} bytes, more than the {MAX_FOOTER_BYTES} accepted"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, size - 8 - len)
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    let mut footer = read_file_metadata(&mut Thrift::new(&buf))?;
    footer.len = len;
    Ok(footer)
}

/// The walk of `FileMetaData`: field 2 is the schema (a list of
/// `SchemaElement`, field 5 of which is `num_children`), field 4 the row
/// groups (field 1 of each: its column chunks).
fn read_file_metadata(t: &mut Thrift) -> Result<Footer, Refusal> {
    let mut footer = Footer {
        len: 0,
        schema_elements: 0,
        depth: 0,
        column_chunks: 0,
    };
    let mut last = 0;
    while let Some((id, ty)) = t.field(&mut last)? {
        match (id, ty) {
            (2, LIST) => {
                let (n, elem) = t.list()?;
                if n > MAX_SCHEMA_ELEMENTS {
                    return Err(Refusal::TooLarge(format!(
                        "its schema has {n} elements, more than the {MAX_SCHEMA_ELEMENTS} accepted"
                    )));
                }
                expect_struct(elem)?;
                let mut depth = Depth::default();
                for _ in 0..n {
                    depth.element(schema_children(t)?)?;
                }
                footer.schema_elements = n;
                footer.depth = depth.max;
            }
            (4, LIST) => {
                let (n, elem) = t.list()?;
                expect_struct(elem)?;
                for _ in 0..n {
                    footer.column_chunks += row_group_columns(t)?;
                    if footer.column_chunks > MAX_COLUMN_CHUNKS {
                        return Err(Refusal::TooLarge(format!(
                            "it has more than {MAX_COLUMN_CHUNKS} column chunks (row groups x columns)"
                        )));
                    }
                }
            }
            _ => t.skip(ty)?,
        }
    }
    Ok(footer)
}

fn expect_struct(elem: u8) -> Result<(), Refusal> {
    if elem != STRUCT {
        return Err(Refusal::Malformed("its footer is malformed".into()));
    }
    Ok(())
}

/// `num_children` of one `SchemaElement` (0 for a leaf).
fn schema_children(t: &mut Thrift) -> Result<i64, Refusal> {
    let mut children = 0;
    let mut last = 0;
    while let Some((id, ty)) = t.field(&mut last)? {
        match (id, ty) {
            (5, I32) => children = t.int()?,
            _ => t.skip(ty)?,
        }
    }
    Ok(children)
}

/// The number of column chunks of one `RowGroup`.
fn row_group_columns(t: &mut Thrift) -> Result<u64, Refusal> {
    let mut columns = 0;
    let mut last = 0;
    while let Some((id, ty)) = t.field(&mut last)? {
        match (id, ty) {
            (1, LIST) => {
                let (n, elem) = t.list()?;
                for _ in 0..n {
                    t.skip(elem)?;
                }
                columns += n;
            }
            _ => t.skip(ty)?,
        }
    }
    Ok(columns)
}

/// The depth of a schema given as its flat, depth-first list of elements
/// with child counts: a stack of the children each open group still has.
#[derive(Default)]
struct Depth {
    open: Vec<i64>,
    seen: u64,
    max: usize,
}

impl Depth {
    fn element(&mut self, children: i64) -> Result<(), Refusal> {
        while self.open.last() == Some(&0) {
            self.open.pop();
        }
        if self.seen > 0 {
            match self.open.last_mut() {
                Some(left) => *left -= 1,
                None => {
                    return Err(Refusal::Malformed(
                        "its schema has elements outside its root".into(),
                    ))
                }
            }
        }
        self.seen += 1;
        self.max = self.max.max(self.open.len());
        if children < 0 {
            return Err(Refusal::Malformed(
                "its schema has a negative child count".into(),
            ));
        }
        if children > 0 {
            if self.open.len() + 1 > MAX_SCHEMA_DEPTH {
                return Err(Refusal::TooDeep(self.open.len() + 1));
            }
            self.open.push(children);
        }
        Ok(())
    }
}

/// One page's header, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizes {
    pub dictionary: bool,
    /// What the page decompresses to, as the header says.
    pub uncompressed: u64,
    pub compressed: u64,
    /// Levels stored uncompressed before the data (data page v2).
    pub levels: u64,
    /// False for a v2 page stored uncompressed.
    pub compressed_flag: bool,
}

/// The memory one column chunk needs, from its page headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSizes {
    pub pages: u64,
    /// Sum of the decompressed sizes of the data pages.
    pub data: u64,
    /// The largest decompressed page (one is held while it is decoded).
    pub largest_page: u64,
    /// The decompressed dictionary page, if any: a dictionary-encoded
    /// value is copied out of it once per row that names it.
    pub dictionary: u64,
}

/// How a chunk's pages are compressed, as far as [`scan_pages`] cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Decompressors that stop at the size the header gives (or none).
    Bounded,
    /// Stored as is: a page takes its compressed size in memory.
    Uncompressed,
    /// GZIP: its decompressor reads to the stream's end, whatever the
    /// header says; each page is checked by decompressing it into a
    /// counter first.
    Gzip,
    /// The legacy LZ4 codec, whose fallback decoder is unbounded too: a
    /// page counts as its compressed size times LZ4's largest ratio.
    LegacyLz4,
}

/// The largest expansion of an LZ4 frame.
const LZ4_MAX_RATIO: u64 = 255;

/// Walks the page headers of the column chunk at `start..start + len` of
/// `file`. `largest_page_allowed` refuses, before anything is decompressed,
/// a page that claims more (`Refusal::TooLarge`).
pub fn scan_pages(
    file: &File,
    start: u64,
    len: u64,
    codec: Codec,
    largest_page_allowed: u64,
) -> Result<ChunkSizes, Refusal> {
    let mut sizes = ChunkSizes::default();
    let end = start
        .checked_add(len)
        .ok_or_else(|| Refusal::Malformed("a column chunk's range overflows".into()))?;
    let mut at = start;
    let mut window = Window::default();
    while at < end {
        let (header_len, page) = window.header(file, at, end)?;
        at += header_len;
        if page.compressed > end - at {
            return Err(Refusal::Malformed(
                "a page runs past its column chunk".into(),
            ));
        }
        let held = match codec {
            Codec::Uncompressed => page.compressed,
            Codec::LegacyLz4 => page
                .uncompressed
                .max(page.compressed.saturating_mul(LZ4_MAX_RATIO)),
            Codec::Bounded | Codec::Gzip => page.uncompressed,
        };
        if held > largest_page_allowed {
            return Err(Refusal::TooLarge(format!(
                "a page decompresses to {held} bytes, more than the {largest_page_allowed} allowed"
            )));
        }
        if codec == Codec::Gzip && page.compressed_flag {
            check_gzip_page(file, at, &page)?;
        }
        sizes.pages += 1;
        sizes.largest_page = sizes.largest_page.max(held);
        if page.dictionary {
            sizes.dictionary = sizes.dictionary.max(held);
        } else {
            sizes.data = sizes.data.saturating_add(held);
        }
        at += page.compressed;
    }
    Ok(sizes)
}

/// Decompresses a GZIP page into a counter, refusing it as soon as it
/// yields more than its header says.
fn check_gzip_page(file: &File, at: u64, page: &PageSizes) -> Result<(), Refusal> {
    let levels = page.levels.min(page.compressed);
    let reader = PositionedReader {
        file,
        at: at + levels,
        end: at + page.compressed,
    };
    let expect = page.uncompressed.saturating_sub(levels);
    let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(reader));
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = decoder
            .read(&mut buf)
            .map_err(|e| Refusal::Malformed(format!("a GZIP page does not decompress: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if total > expect {
            return Err(Refusal::Malformed(format!(
                "a GZIP page decompresses to more than the {expect} bytes its header says"
            )));
        }
    }
}

struct PositionedReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A window of the file that page headers are parsed from, refilled when
/// a header runs past it.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    /// The page header at `at` (before `end`): its length and sizes.
    fn header(&mut self, file: &File, at: u64, end: u64) -> Result<(u64, PageSizes), Refusal> {
        let mut want = 64usize << 10;
        loop {
            let covered = at >= self.start && at < self.start + self.bytes.len() as u64;
            if covered {
                let from = (at - self.start) as usize;
                let mut t = Thrift::new(&self.bytes[from..]);
                match page_header(&mut t) {
                    Ok(page) => return Ok((t.pos as u64, page)),
                    Err(Refusal::Malformed(_)) if t.ran_out && self.can_grow(at, end, want) => {}
                    Err(e) => return Err(e),
                }
            }
            let n = (end - at).min(want as u64) as usize;
            self.bytes.resize(n, 0);
            file.read_exact_at(&mut self.bytes, at)
                .map_err(|e| Refusal::Malformed(format!("reading a page header: {e}")))?;
            self.start = at;
            want = (want * 4).min(MAX_PAGE_HEADER_BYTES);
        }
    }

    /// True when a bigger window could hold a header that did not fit.
    fn can_grow(&self, at: u64, end: u64, want: usize) -> bool {
        let have = self.start + self.bytes.len() as u64 - at;
        have < end - at && (have as usize) < MAX_PAGE_HEADER_BYTES && want > have as usize
    }
}

/// `PageHeader`: 1 type, 2 uncompressed size, 3 compressed size,
/// 8 `DataPageHeaderV2` (5 and 6: the level lengths, 7 `is_compressed`).
fn page_header(t: &mut Thrift) -> Result<PageSizes, Refusal> {
    let mut page = PageSizes {
        dictionary: false,
        uncompressed: 0,
        compressed: 0,
        levels: 0,
        compressed_flag: true,
    };
    let mut last = 0;
    let size = |v: i64| -> Result<u64, Refusal> {
        u64::try_from(v).map_err(|_| Refusal::Malformed("a page has a negative size".into()))
    };
    while let Some((id, ty)) = t.field(&mut last)? {
        match (id, ty) {
            (1, I32) => page.dictionary = t.int()? == 2,
            (2, I32) => page.uncompressed = size(t.int()?)?,
            (3, I32) => page.compressed = size(t.int()?)?,
            (8, STRUCT) => {
                let mut last = 0;
                while let Some((id, ty)) = t.field(&mut last)? {
                    match (id, ty) {
                        (5 | 6, I32) => page.levels += size(t.int()?)?,
                        (7, TRUE) => page.compressed_flag = true,
                        (7, FALSE) => page.compressed_flag = false,
                        _ => t.skip(ty)?,
                    }
                }
            }
            _ => t.skip(ty)?,
        }
    }
    Ok(page)
}

const TRUE: u8 = 1;
const FALSE: u8 = 2;
const I32: u8 = 5;
const LIST: u8 = 9;
const STRUCT: u8 = 12;

/// A reader of the Thrift compact protocol over a byte slice.
struct Thrift<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The last error came from reaching the end of `buf`.
    ran_out: bool,
}

enum Frame {
    Struct {
        last: i16,
    },
    /// Values left and their type.
    List {
        left: u64,
        elem: u8,
    },
    /// Keys and values left (twice the pairs), and their types.
    Map {
        left: u64,
        key: u8,
        value: u8,
    },
}

impl<'a> Thrift<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            ran_out: false,
        }
    }

    fn malformed(&self) -> Refusal {
        Refusal::Malformed("its footer or a page header is malformed".into())
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], Refusal> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            self.ran_out = true;
            return Err(self.malformed());
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Refusal> {
        Ok(self.bytes(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, Refusal> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.malformed())
    }

    /// A zigzag integer (i16, i32 or i64).
    fn int(&mut self) -> Result<i64, Refusal> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// The next field's id and type; `None` at the struct's end.
    fn field(&mut self, last: &mut i16) -> Result<Option<(i16, u8)>, Refusal> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            self.int()? as i16
        } else {
            last.wrapping_add(delta)
        };
        *last = id;
        Ok(Some((id, b & 0x0f)))
    }

    /// A list's (or set's) size and element type.
    fn list(&mut self) -> Result<(u64, u8), Refusal> {
        let b = self.byte()?;
        let mut n = u64::from(b >> 4);
        if n == 15 {
            n = self.varint()?;
        }
        // Every element takes at least a byte.
        if n > (self.buf.len() - self.pos) as u64 {
            self.ran_out = true;
            return Err(self.malformed());
        }
        Ok((n, b & 0x0f))
    }

    /// Skips a value of type `ty`, with an explicit stack of the
    /// containers it is inside (never recursion).
    fn skip(&mut self, ty: u8) -> Result<(), Refusal> {
        let mut stack = Vec::new();
        self.start(ty, false, &mut stack)?;
        while let Some(top) = stack.last_mut() {
            let next = match top {
                Frame::Struct { last } => self.field(last)?.map(|(_, ty)| (ty, false)),
                Frame::List { left, elem } => (*left > 0).then(|| {
                    *left -= 1;
                    (*elem, true)
                }),
                Frame::Map { left, key, value } => (*left > 0).then(|| {
                    *left -= 1;
                    (if *left % 2 == 1 { *key } else { *value }, true)
                }),
            };
            match next {
                Some((ty, in_collection)) => self.start(ty, in_collection, &mut stack)?,
                None => {
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// Reads a primitive of type `ty`, or opens a container on `stack`.
    fn start(
        &mut self,
        ty: u8,
        in_collection: bool,
        stack: &mut Vec<Frame>,
    ) -> Result<(), Refusal> {
        match ty {
            // A struct field's booleans live in its type; a collection's
            // take a byte each.
            TRUE | FALSE if !in_collection => {}
            TRUE | FALSE | 3 => {
                self.bytes(1)?;
            }
            4..=6 => {
                self.varint()?;
            }
            7 => {
                self.bytes(8)?;
            }
            8 => {
                let n = self.varint()?;
                self.bytes(n)?;
            }
            9 | 10 | 11 | STRUCT => {
                if stack.len() >= MAX_THRIFT_NESTING {
                    return Err(Refusal::Malformed(
                        "its footer nests values too deeply".into(),
                    ));
                }
                let frame = match ty {
                    STRUCT => Frame::Struct { last: 0 },
                    11 => {
                        let n = self.varint()?;
                        let types = if n > 0 { self.byte()? } else { 0 };
                        Frame::Map {
                            left: n.saturating_mul(2),
                            key: types >> 4,
                            value: types & 0x0f,
                        }
                    }
                    _ => {
                        let (left, elem) = self.list()?;
                        Frame::List { left, elem }
                    }
                };
                stack.push(frame);
            }
            _ => return Err(self.malformed()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A footer whose schema is a root, one leaf and a group nested
    /// `depth` levels, written in the compact protocol by hand.
    fn footer_bytes(depth: usize) -> Vec<u8> {
        let mut b = vec![0x15, 0x02]; // field 1 (i32): version 1
        let elements = 2 + depth;
        b.push(0x19); // field 2 (list)
        b.push(0xfc); // size 15+: struct elements
        varint(&mut b, elements as u64);
        let element = |b: &mut Vec<u8>, name: &str, children: u64| {
            b.push(0x48); // field 4 (binary): name
            varint(b, name.len() as u64);
            b.extend_from_slice(name.as_bytes());
            if children > 0 {
                b.push(0x15); // field 5 (i32): num_children
                varint(b, children << 1);
            } else {
                b.push(0x5c); // field 9 (struct, skipped): an empty one
                b.push(0);
            }
            b.push(0);
        };
        element(&mut b, "schema", 2);
        element(&mut b, "label", 0);
        for level in 0..depth {
            let last = level + 1 == depth;
            element(&mut b, "s", if last { 0 } else { 1 });
        }
        b.push(0);
        b
    }

    fn varint(b: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }

    #[test]
    fn schema_depth_is_counted_without_recursion() {
        let shallow = read_file_metadata(&mut Thrift::new(&footer_bytes(3))).unwrap();
        assert_eq!((shallow.schema_elements, shallow.depth), (5, 3));
        let e = read_file_metadata(&mut Thrift::new(&footer_bytes(5_000))).unwrap_err();
        assert_eq!(e, Refusal::TooDeep(MAX_SCHEMA_DEPTH + 1));
    }

    #[test]
    fn a_deep_schema_is_refused_on_a_tiny_stack() {
        let bytes = footer_bytes(5_000);
        let refused = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || read_file_metadata(&mut Thrift::new(&bytes)))
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(refused, Err(Refusal::TooDeep(_))), "{refused:?}");
    }

    #[test]
    fn nested_thrift_values_are_skipped_within_a_bound() {
        // Field 9 of the file: structs nested 10,000 deep.
        let mut b = vec![0x9c];
        b.extend(std::iter::repeat_n(0x1c, 10_000));
        let e = read_file_metadata(&mut Thrift::new(&b)).unwrap_err();
        assert!(
            matches!(e, Refusal::Malformed(ref m) if m.contains("too deeply")),
            "{e:?}"
        );
        // A list claiming more elements than bytes left.
        let e = read_file_metadata(&mut Thrift::new(&[0x29, 0xfc, 0xff, 0xff, 0x03])).unwrap_err();
        assert!(matches!(e, Refusal::Malformed(_)), "{e:?}");
    }

    #[test]
    fn schemas_with_strays_are_malformed() {
        let mut d = Depth::default();
        d.element(1).unwrap();
        d.element(0).unwrap();
        assert!(d.element(0).is_err());
        assert!(Depth::default().element(-1).is_err());
    }
}
