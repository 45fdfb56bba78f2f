//! The decode-once input cache: each image of a dataset is decoded once and
//! kept as 8-bit pixels in a file that later epochs, resumed jobs and every
//! other job on the same dataset and preprocessing (a sweep's candidates
//! above all) read through a memory map instead of decoding it again.
//!
//! Two forms, each its own file, keyed by (form, preprocessing, dataset):
//! - [`CacheForm::Eval`]: the evaluation preprocessing's exact output
//!   (resize, centre crop) as CHW planes. The floats made from it through
//!   the pipeline's normalisation table are bit-identical to decoding the
//!   file again, so the cache changes no pixel of validation or test.
//! - [`CacheForm::Train`]: the decoded image with its shorter side bounded
//!   (FFCV's approach, 1.15x the crop side): random crops, flips and
//!   RandAugment are drawn from this copy instead of the original, so a
//!   crop is resampled from slightly softer pixels (`docs/training.md`).
//!
//! A file is written aside (`*.tmp`) under an exclusive `flock` on its key
//! and renamed into place complete, so a crash never leaves a half cache in
//! use, and two jobs never build the same key at once. All files together
//! stay under a byte bound: the least recently used are evicted first (a
//! mapped file that is deleted stays readable to the jobs that have it).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use image::RgbImage;
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::pipeline::{load_file, Pipeline};

/// The first and last bytes of a cache file (its format version included).
const MAGIC: &[u8; 8] = b"VTRNIC01";
/// Images decoded per parallel chunk while building.
const BUILD_CHUNK: usize = 64;
/// How much larger than the crop side a stored training copy may be.
pub const TRAIN_COPY_FACTOR: f64 = 1.15;

/// What a cache file holds for each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheForm {
    /// The evaluation preprocessing's output, CHW u8.
    Eval,
    /// The decoded image, HWC RGB, shorter side at most `max_short`.
    Train { max_short: u32 },
}

impl CacheForm {
    /// The training form for a pipeline: copies whose shorter side is
    /// [`TRAIN_COPY_FACTOR`] times the larger side of a training crop.
    pub fn train_for(pipeline: &Pipeline) -> Self {
        let (h, w) = pipeline.train_size();
        Self::Train {
            max_short: (f64::from(h.max(w)) * TRAIN_COPY_FACTOR).ceil() as u32,
        }
    }
}

/// Counters shared by every user of one cache (read by `/metrics`).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Images served from a cache file.
    pub hits: AtomicU64,
    /// Images decoded from their file because no cache held them.
    pub misses: AtomicU64,
    /// Cache files built.
    pub builds: AtomicU64,
    /// Cache files evicted to stay under the bound.
    pub evictions: AtomicU64,
}

/// The cache of one node: a directory and a byte bound. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InputCache {
    root: PathBuf,
    max_bytes: u64,
    stats: Arc<CacheStats>,
}

/// Where one image sits in a cache file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    path: PathBuf,
    offset: u64,
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    form: CacheForm,
    entries: Vec<Entry>,
}

/// One opened cache file: the images of a dataset in one form.
pub struct CachedImages {
    map: Mmap,
    form: CacheForm,
    entries: HashMap<PathBuf, (u64, u32, u32)>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for CachedImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedImages")
            .field("form", &self.form)
            .field("images", &self.entries.len())
            .finish()
    }
}

impl CachedImages {
    pub fn form(&self) -> CacheForm {
        self.form
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether this cache holds `path` (a miss is not counted).
    pub fn holds(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    fn bytes_of(&self, path: &Path) -> Option<(&[u8], u32, u32)> {
        let &(offset, w, h) = self.entries.get(path)?;
        let len = 3 * w as usize * h as usize;
        let start = offset as usize;
        Some((&self.map[start..start + len], w, h))
    }

    /// The stored training copy of `path` (form `Train`), counted as a hit;
    /// `None` (a miss) when this cache does not hold it.
    pub fn image(&self, path: &Path) -> Option<RgbImage> {
        let found = match self.form {
            CacheForm::Train { .. } => self.bytes_of(path),
            CacheForm::Eval => None,
        };
        self.count(found.is_some(), 1);
        let (raw, w, h) = found?;
        RgbImage::from_raw(w, h, raw.to_vec())
    }

    /// The evaluation batch of `paths` (form `Eval`) as `[B, 3, H, W]`,
    /// each 8-bit value `v` of channel `c` written as `value(c, v)`; `None`
    /// unless every path is held.
    pub fn eval_batch<T: tch::kind::Element + Copy + Default + Send + Sync>(
        &self,
        paths: &[PathBuf],
        value: impl Fn(usize, u8) -> T + Sync,
    ) -> Option<tch::Tensor> {
        if self.form != CacheForm::Eval || paths.is_empty() {
            return None;
        }
        let found: Option<Vec<_>> = paths.iter().map(|p| self.bytes_of(p)).collect();
        let Some(found) = found else {
            self.count(false, paths.len());
            return None;
        };
        let (_, w, h) = found[0];
        if found.iter().any(|&(_, fw, fh)| (fw, fh) != (w, h)) {
            return None;
        }
        let plane = w as usize * h as usize;
        let mut flat = vec![T::default(); paths.len() * 3 * plane];
        flat.par_chunks_mut(3 * plane)
            .zip(found.par_iter())
            .for_each(|(out, (raw, _, _))| {
                for (i, (o, &v)) in out.iter_mut().zip(raw.iter()).enumerate() {
                    *o = value(i / plane, v);
                }
            });
        self.count(true, paths.len());
        let t = tch::Tensor::from_slice(&flat);
        Some(t.view([paths.len() as i64, 3, i64::from(h), i64::from(w)]))
    }

    fn count(&self, hit: bool, n: usize) {
        let counter = if hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The cache's figures in `/metrics`, read at each scrape:
/// `vitrine_input_cache_{hits,misses,builds,evictions}_total` and
/// `vitrine_input_cache_bytes` (complete files on disk).
struct Collector {
    cache: InputCache,
    descs: Vec<prometheus::core::Desc>,
}

const COUNTERS: [(&str, &str); 4] = [
    (
        "vitrine_input_cache_hits_total",
        "Images read from the decode-once input cache",
    ),
    (
        "vitrine_input_cache_misses_total",
        "Training images decoded because no cache held them",
    ),
    (
        "vitrine_input_cache_builds_total",
        "Input cache files built",
    ),
    (
        "vitrine_input_cache_evictions_total",
        "Input cache files evicted to stay under the bound",
    ),
];
const BYTES: (&str, &str) = (
    "vitrine_input_cache_bytes",
    "Bytes of input cache files on disk",
);

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let s = self.cache.stats();
        let values =
            [&s.hits, &s.misses, &s.builds, &s.evictions].map(|c| c.load(Ordering::Relaxed));
        let mut out = Vec::new();
        for ((name, help), v) in COUNTERS.iter().zip(values) {
            let c = prometheus::IntCounter::new(*name, *help).expect("valid metric");
            c.inc_by(v);
            out.extend(prometheus::core::Collector::collect(&c));
        }
        let g = prometheus::IntGauge::new(BYTES.0, BYTES.1).expect("valid metric");
        g.set(self.cache.bytes() as i64);
        out.extend(prometheus::core::Collector::collect(&g));
        out
    }
}

/// Why a cache could not be used (the job then decodes as without one).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("input cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("input cache {0}: not a complete cache file")]
    Corrupt(PathBuf),
    #[error("the job stopped while its input cache was built")]
    Stopped,
    #[error(
        "the dataset's {form:?} cache would exceed the input cache bound of {max_bytes} bytes"
    )]
    TooLarge { form: CacheForm, max_bytes: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl InputCache {
    /// A cache in `root` (created when first written) bounded by
    /// `max_bytes` on disk.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            root: root.into(),
            max_bytes,
            stats: Arc::new(CacheStats::default()),
        }
    }

    /// Adds this cache's figures to `registry` (read at each scrape).
    pub fn register(&self, registry: &prometheus::Registry) {
        let descs = COUNTERS
            .iter()
            .chain([&BYTES])
            .map(|(n, h)| {
                prometheus::core::Desc::new(
                    n.to_string(),
                    h.to_string(),
                    vec![],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        let collector = Collector {
            cache: self.clone(),
            descs,
        };
        let _ = registry.register(Box::new(collector));
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes of complete cache files on disk now.
    pub fn bytes(&self) -> u64 {
        self.files().iter().map(|f| f.1).sum()
    }

    /// The key of the images `paths` in `form` under `pipeline`: the
    /// preprocessing, the form, and each file's path, size and modification
    /// time (a replaced file is a new dataset).
    pub fn key(pipeline: &Pipeline, form: CacheForm, paths: &[PathBuf]) -> String {
        Self::form_key(&Self::dataset_digest(paths), pipeline, form)
    }

    /// The key of one form of a dataset whose files hash to `dataset`.
    fn form_key(dataset: &[u8], pipeline: &Pipeline, form: CacheForm) -> String {
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update(serde_json::to_vec(&pipeline.spec()).unwrap_or_default());
        h.update(serde_json::to_vec(&form).unwrap_or_default());
        h.update(dataset);
        hex::encode(&h.finalize()[..16])
    }

    /// The files' identity: each path, size and modification time, read
    /// once per [`Self::prepare`] whatever the number of forms.
    fn dataset_digest(paths: &[PathBuf]) -> Vec<u8> {
        let mut sorted: Vec<&PathBuf> = paths.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut h = Sha256::new();
        for p in sorted {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update([0]);
            if let Ok(m) = std::fs::metadata(p) {
                h.update(m.len().to_le_bytes());
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                h.update(mtime.map_or(0, |d| d.as_nanos()).to_le_bytes());
            }
        }
        h.finalize().to_vec()
    }

    fn file_of(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.bin"))
    }

    /// The caches of `paths` in each of `forms` (in that order), opening
    /// those on disk and building the others in one decoding pass. A form
    /// that cannot be cached (too large for the bound, an I/O error) is
    /// `None`, logged: the job decodes those images as it would without a
    /// cache. Blocking: call it from the training thread. While building,
    /// `progress(done, total)` is called after each chunk of images; when
    /// it returns `false` (the job was stopped) the build is abandoned and
    /// leaves nothing behind.
    pub fn prepare(
        &self,
        pipeline: &Pipeline,
        forms: &[CacheForm],
        paths: &[PathBuf],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Vec<Option<Arc<CachedImages>>> {
        let dataset = Self::dataset_digest(paths);
        let keys: Vec<String> = forms
            .iter()
            .map(|&f| Self::form_key(&dataset, pipeline, f))
            .collect();
        let mut out: Vec<Option<Arc<CachedImages>>> =
            keys.iter().map(|k| self.open(k).ok()).collect();
        let missing: Vec<usize> = (0..forms.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return out;
        }
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            tracing::warn!(error = %e, root = %self.root.display(), "input cache unavailable");
            return out;
        }
        // Lock every missing key, then look again: another job may have
        // built it while this one waited.
        let mut building = Vec::new();
        for i in missing {
            match KeyLock::take(&self.root, &keys[i]) {
                Ok(lock) => match self.open(&keys[i]) {
                    Ok(c) => out[i] = Some(c),
                    Err(_) => building.push((i, lock)),
                },
                Err(e) => tracing::warn!(error = %e, "input cache lock"),
            }
        }
        if building.is_empty() {
            return out;
        }
        let jobs: Vec<(CacheForm, &str)> = building
            .iter()
            .map(|(i, _)| (forms[*i], keys[*i].as_str()))
            .collect();
        for (i, result) in building
            .iter()
            .map(|b| b.0)
            .zip(self.build(pipeline, &jobs, paths, progress))
        {
            match result.and_then(|()| self.open(&keys[i])) {
                Ok(c) => out[i] = Some(c),
                Err(e) => tracing::warn!(error = %e, "input cache not used"),
            }
        }
        drop(building);
        self.evict(&keys);
        out
    }

    /// Opens the complete cache file of `key`, marking it used now.
    fn open(&self, key: &str) -> Result<Arc<CachedImages>, CacheError> {
        let path = self.file_of(key);
        let file = File::open(&path).map_err(io(&path))?;
        // SAFETY: cache files are never written after their rename into
        // place (a rebuild writes a new file and renames over it), so the
        // mapped bytes do not change under the map.
        let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
        let index = read_index(&map).ok_or_else(|| CacheError::Corrupt(path.clone()))?;
        let _ = file.set_modified(std::time::SystemTime::now());
        let entries = index
            .entries
            .into_iter()
            .map(|e| (e.path, (e.offset, e.width, e.height)))
            .collect();
        Ok(Arc::new(CachedImages {
            map,
            form: index.form,
            entries,
            stats: self.stats.clone(),
        }))
    }

    /// Decodes every image of `paths` once and writes each form of `jobs`
    /// to its own file. An image that does not decode is left out (the job
    /// meets the same error when it reads the file itself).
    fn build(
        &self,
        pipeline: &Pipeline,
        jobs: &[(CacheForm, &str)],
        paths: &[PathBuf],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Vec<Result<(), CacheError>> {
        let mut writers: Vec<Result<Writer, CacheError>> = jobs
            .iter()
            .map(|&(form, key)| Writer::create(&self.root, key, form))
            .collect();
        for (n, chunk) in paths.chunks(BUILD_CHUNK).enumerate() {
            if writers.iter().all(Result::is_err) {
                break;
            }
            let _lease = pipeline.decode_lease(chunk).ok();
            let decoded: Vec<Option<Vec<Stored>>> = chunk
                .par_iter()
                .map(|p| {
                    let img = load_file(p, pipeline.limits()).ok()?;
                    jobs.iter()
                        .map(|&(form, _)| encode(pipeline, &img, form))
                        .collect()
                })
                .collect();
            for (path, forms) in chunk.iter().zip(decoded) {
                let Some(forms) = forms else { continue };
                for (w, data) in writers.iter_mut().zip(&forms) {
                    if let Ok(writer) = w {
                        if let Err(e) = writer.push(path, data, self.max_bytes) {
                            *w = Err(e);
                        }
                    }
                }
            }
            let done = (n * BUILD_CHUNK + chunk.len()).min(paths.len());
            if !progress(done, paths.len()) {
                // Dropping the writers removes their files.
                return jobs.iter().map(|_| Err(CacheError::Stopped)).collect();
            }
        }
        writers
            .into_iter()
            .map(|w| {
                w?.finish()?;
                self.stats.builds.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .collect()
    }

    /// Complete cache files with their size and last use, oldest first.
    fn files(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut files: Vec<_> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.path(), m.len(), m.modified().ok()?))
            })
            .collect();
        files.sort_by_key(|f| f.2);
        files
    }

    /// Removes the least recently used files until the rest fit the bound,
    /// never one of `keep` (the files this job uses).
    fn evict(&self, keep: &[String]) {
        let kept: Vec<PathBuf> = keep.iter().map(|k| self.file_of(k)).collect();
        let files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (path, len, _) in files {
            if total <= self.max_bytes {
                break;
            }
            if kept.contains(&path) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %path.display(), bytes = len, "input cache evicted");
            }
        }
    }
}

/// One image as a cache stores it: its size and its pixels.
struct Stored {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

/// The stored form of one decoded image.
fn encode(pipeline: &Pipeline, img: &RgbImage, form: CacheForm) -> Option<Stored> {
    match form {
        CacheForm::Eval => pipeline
            .eval_u8(img)
            .ok()
            .map(|(pixels, height, width)| Stored {
                width,
                height,
                pixels,
            }),
        CacheForm::Train { max_short } => {
            pipeline.bounded_copy(img, max_short).ok().map(|c| Stored {
                width: c.width(),
                height: c.height(),
                pixels: c.into_raw(),
            })
        }
    }
}

/// Reads the index from a file's trailer: index JSON, its offset and
/// length (u64 LE each), then the magic.
fn read_index(map: &[u8]) -> Option<Index> {
    let n = map.len();
    if n < 8 + 24 || &map[..8] != MAGIC || &map[n - 8..] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap()) as usize;
    let (offset, len) = (word(n - 24), word(n - 16));
    let json = map.get(offset..offset.checked_add(len)?)?;
    let index: Index = serde_json::from_slice(json).ok()?;
    let fits = index
        .entries
        .iter()
        .all(|e| e.offset as usize + 3 * e.width as usize * e.height as usize <= offset);
    fits.then_some(index)
}

/// A cache file being written aside.
struct Writer {
    tmp: PathBuf,
    dest: PathBuf,
    out: BufWriter<File>,
    form: CacheForm,
    offset: u64,
    entries: Vec<Entry>,
}

impl Writer {
    fn create(root: &Path, key: &str, form: CacheForm) -> Result<Self, CacheError> {
        let tmp = root.join(format!("{key}.tmp"));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io(&tmp))?;
        Ok(Self {
            dest: root.join(format!("{key}.bin")),
            tmp,
            out,
            form,
            offset: MAGIC.len() as u64,
            entries: Vec::new(),
        })
    }

    /// Appends one image, or gives up (removing the file) when it would
    /// take the file over `max_bytes`.
    fn push(&mut self, path: &Path, image: &Stored, max_bytes: u64) -> Result<(), CacheError> {
        if self.offset + image.pixels.len() as u64 > max_bytes {
            // The caller drops this writer, which removes its file.
            return Err(CacheError::TooLarge {
                form: self.form,
                max_bytes,
            });
        }
        self.out.write_all(&image.pixels).map_err(io(&self.tmp))?;
        self.entries.push(Entry {
            path: path.to_path_buf(),
            offset: self.offset,
            width: image.width,
            height: image.height,
        });
        self.offset += image.pixels.len() as u64;
        Ok(())
    }

    /// Writes the index, syncs, and renames the file into place.
    fn finish(mut self) -> Result<(), CacheError> {
        let index = Index {
            form: self.form,
            entries: std::mem::take(&mut self.entries),
        };
        let json = serde_json::to_vec(&index).expect("an index serialises");
        let tmp = self.tmp.clone();
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            out.write_all(&json)?;
            out.write_all(&self.offset.to_le_bytes())?;
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.write_all(MAGIC)?;
            out.flush()?;
            out.get_ref().sync_all()
        };
        write(&mut self.out).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.dest).map_err(io(&tmp))?;
        if let Some(dir) = self.dest.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for Writer {
    /// A file not renamed into place (abandoned, or failed) is removed; after
    /// the rename this finds nothing.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// An exclusive `flock` on a key's lock file, held while it is built.
struct KeyLock {
    /// Closing it (on drop) releases the lock.
    _file: File,
}

impl KeyLock {
    fn take(root: &Path, key: &str) -> Result<Self, CacheError> {
        let path = root.join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a file descriptor this value owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        // A `.tmp` left by a build that died is stale now that we hold the
        // lock: nobody else writes this key.
        let _ = std::fs::remove_file(root.join(format!("{key}.tmp")));
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{AugmentConfig, PreprocessorConfig, RandAugment};

    /// A crop pipeline (shortest edge 72, centre crop 64) with augmentation.
    fn pipeline() -> Pipeline {
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"size":{"shortest_edge":72},"do_center_crop":true,"crop_size":{"height":64,"width":64}}"#,
        )
        .unwrap();
        Pipeline::from_preprocessor(&cfg, None)
            .with_augmentation(AugmentConfig::default())
            .with_randaugment(Some(RandAugment { n: 2, m: 9 }))
    }

    /// Photos of several sizes and formats, one smaller than the crop
    /// (padded), one not an image at all.
    fn dataset(dir: &Path) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for (i, (w, h)) in [(640, 480), (300, 900), (50, 40), (257, 256), (1000, 1000)]
            .into_iter()
            .enumerate()
        {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 7 + y) as u8,
                    (y * 3 + i as u32 * 40) as u8,
                    (x ^ y) as u8,
                ])
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let p = dir.join(format!("{i}.{ext}"));
            img.save(&p).unwrap();
            paths.push(p);
        }
        let broken = dir.join("broken.jpg");
        std::fs::write(&broken, b"not an image").unwrap();
        paths.push(broken);
        paths
    }

    fn count(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }

    #[test]
    fn cached_evaluation_batches_are_bit_identical_to_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let good = &paths[..5];
        let p = pipeline();
        let cache = InputCache::new(dir.path().join("cache"), 1 << 30);
        let [eval] = &cache.prepare(&p, &[CacheForm::Eval], &paths, &mut |_, _| true)[..] else {
            panic!("one form")
        };
        let eval = eval.as_ref().expect("built");
        assert_eq!(eval.len(), 5, "the undecodable file is left out");
        let f = p.load_batch_from(Some(eval), good, None).unwrap();
        let plain = p.load_batch(good, None).unwrap();
        assert_eq!(f.size(), [5, 3, 64, 64]);
        assert!(f.equal(&plain), "floats differ from decoding");
        let u = p.load_batch_u8_from(Some(eval), good, None).unwrap();
        assert!(u.equal(&p.load_batch_u8(good, None).unwrap()));
        assert_eq!(count(&cache.stats().hits), 10);
        // A batch with a file the cache lacks decodes: the same error.
        let err = p.load_batch_from(Some(eval), &paths, None).unwrap_err();
        assert!(err.to_string().contains("broken.jpg"), "{err}");
    }

    #[test]
    fn training_copies_are_bounded_and_augmented_from() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let good = &paths[..5];
        let p = pipeline();
        let form = CacheForm::train_for(&p);
        assert_eq!(form, CacheForm::Train { max_short: 74 });
        let cache = InputCache::new(dir.path().join("cache"), 1 << 30);
        let train = cache
            .prepare(&p, &[form], &paths, &mut |_, _| true)
            .remove(0)
            .expect("built");
        let copy = train.image(&paths[0]).unwrap();
        assert_eq!(
            copy.dimensions(),
            (99, 74),
            "640x480 scaled to a 74 shorter side"
        );
        assert_eq!(
            train.image(&paths[2]).unwrap().dimensions(),
            (50, 40),
            "never enlarged"
        );
        let a = p.load_batch_from(Some(&train), good, Some(7)).unwrap();
        let b = p.load_batch_from(Some(&train), good, Some(7)).unwrap();
        let c = p.load_batch_from(Some(&train), good, Some(8)).unwrap();
        assert_eq!(a.size(), [5, 3, 64, 64]);
        assert!(a.equal(&b), "seeded");
        assert!(!a.equal(&c));
        // Same augmentation draw, softer source: close to, not equal to,
        // augmenting the original.
        let orig = p.load_batch(good, Some(7)).unwrap();
        let diff = (&a - &orig).abs().mean(tch::Kind::Float).double_value(&[]);
        assert!(diff < 0.5, "mean difference {diff}");
    }

    #[test]
    fn a_second_job_opens_what_the_first_built() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let p = pipeline();
        let forms = [CacheForm::Eval, CacheForm::train_for(&p)];
        let cache = InputCache::new(dir.path().join("cache"), 1 << 30);
        assert!(cache
            .prepare(&p, &forms, &paths, &mut |_, _| true)
            .iter()
            .all(Option::is_some));
        assert_eq!(count(&cache.stats().builds), 2, "both forms in one pass");
        let other = InputCache::new(dir.path().join("cache"), 1 << 30);
        assert!(other
            .prepare(&p, &forms, &paths, &mut |_, _| true)
            .iter()
            .all(Option::is_some));
        assert_eq!(count(&other.stats().builds), 0);
        // Another preprocessing is another key.
        let p96 = Pipeline::from_preprocessor(&PreprocessorConfig::default(), Some(96));
        let k = InputCache::key(&p96, CacheForm::Eval, &paths);
        assert_ne!(k, InputCache::key(&p, CacheForm::Eval, &paths));
        // So is a replaced file: the second job then builds anew.
        let before = InputCache::key(&p, CacheForm::Eval, &paths);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::copy(&paths[1], &paths[0]).unwrap();
        assert_ne!(before, InputCache::key(&p, CacheForm::Eval, &paths));
        assert!(other
            .prepare(&p, &forms, &paths, &mut |_, _| true)
            .iter()
            .all(Option::is_some));
        assert_eq!(count(&other.stats().builds), 2);
    }

    #[test]
    fn a_half_written_file_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let p = pipeline();
        let root = dir.path().join("cache");
        std::fs::create_dir_all(&root).unwrap();
        let key = InputCache::key(&p, CacheForm::Eval, &paths);
        // What a build killed mid-write leaves: a `.tmp`, and (were it ever
        // renamed early) a `.bin` without its trailer.
        std::fs::write(root.join(format!("{key}.tmp")), b"VTRNIC01 partial").unwrap();
        std::fs::write(root.join(format!("{key}.bin")), b"VTRNIC01 partial pixels").unwrap();
        let cache = InputCache::new(&root, 1 << 30);
        let eval = cache
            .prepare(&p, &[CacheForm::Eval], &paths, &mut |_, _| true)
            .remove(0)
            .expect("rebuilt");
        assert_eq!(eval.len(), 5);
        assert_eq!(count(&cache.stats().builds), 1);
        assert!(!root.join(format!("{key}.tmp")).exists());
    }

    #[test]
    fn eviction_keeps_the_files_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let p = pipeline();
        let one_file = {
            let probe = InputCache::new(dir.path().join("probe"), 1 << 30);
            probe.prepare(&p, &[CacheForm::Eval], &paths, &mut |_, _| true);
            probe.bytes()
        };
        assert!(one_file > 5 * 3 * 64 * 64);
        // Room for two files of this size, not three.
        let cache = InputCache::new(dir.path().join("cache"), 2 * one_file + one_file / 2);
        let sizes = [Some(64), Some(48), Some(80)];
        let pipelines: Vec<Pipeline> = sizes
            .iter()
            .map(|s| Pipeline::from_preprocessor(&PreprocessorConfig::default(), *s))
            .collect();
        for q in &pipelines {
            assert!(cache.prepare(q, &[CacheForm::Eval], &paths, &mut |_, _| true)[0].is_some());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            cache.bytes() <= cache.max_bytes(),
            "{} > {}",
            cache.bytes(),
            cache.max_bytes()
        );
        assert_eq!(count(&cache.stats().evictions), 1);
        // The least recently used went: the first.
        let first = InputCache::key(&pipelines[0], CacheForm::Eval, &paths);
        assert!(!cache.file_of(&first).exists());
        // A dataset larger than the bound is not cached, and leaves nothing.
        let tiny = InputCache::new(dir.path().join("tiny"), 1000);
        assert!(tiny.prepare(&p, &[CacheForm::Eval], &paths, &mut |_, _| true)[0].is_none());
        assert_eq!(tiny.bytes(), 0);
        assert!(std::fs::read_dir(dir.path().join("tiny"))
            .unwrap()
            .flatten()
            .all(|e| e.path().extension().is_some_and(|x| x == "lock")));
    }

    #[test]
    fn a_stopped_build_reports_progress_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let p = pipeline();
        let root = dir.path().join("cache");
        let cache = InputCache::new(&root, 1 << 30);
        let mut seen = vec![];
        let mut stop = |done, total| {
            seen.push((done, total));
            false
        };
        let got = cache.prepare(
            &p,
            &[CacheForm::Eval, CacheForm::train_for(&p)],
            &paths,
            &mut stop,
        );
        assert!(got.iter().all(Option::is_none));
        assert_eq!(seen, vec![(6, 6)]);
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_none_or(|x| x != "lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(count(&cache.stats().builds), 0);
    }

    #[test]
    fn concurrent_jobs_build_a_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset(dir.path());
        let p = pipeline();
        let cache = InputCache::new(dir.path().join("cache"), 1 << 30);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    assert!(
                        cache.prepare(&p, &[CacheForm::Eval], &paths, &mut |_, _| true)[0]
                            .is_some()
                    )
                });
            }
        });
        assert_eq!(count(&cache.stats().builds), 1);
    }
}
