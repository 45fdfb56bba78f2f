//! Moving files and directories between the local disk and the store, as
//! streams: nothing is held whole in memory (uploads go through the
//! client's `BufWriter`, multipart above its buffer; tars are written and
//! read through a bridge on a blocking thread). Everything fetched lands
//! in a temporary path first and is renamed into place, so a crash never
//! leaves half a file or half a directory where a reader looks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use tokio::io::AsyncWriteExt;

/// Parts of a multipart upload in flight at once: with the client's 10 MB
/// buffer, one upload holds at most ~30 MB whatever the file's size.
const UPLOAD_CONCURRENCY: usize = 2;

/// A streaming writer to `key` (multipart above its buffer).
fn upload_writer(store: &Arc<dyn ObjectStore>, key: &StorePath) -> BufWriter {
    BufWriter::new(store.clone(), key.clone()).with_max_concurrency(UPLOAD_CONCURRENCY)
}

/// A store key from a `/`-separated relative path.
pub fn key(rel: &str) -> StorePath {
    StorePath::from(rel)
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// A sibling of `dest` to write into before renaming.
fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.part", uuid::Uuid::now_v7().simple()))
}

/// Streams a local file to `key`.
pub async fn put_file(
    store: &Arc<dyn ObjectStore>,
    key: &StorePath,
    path: &Path,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut writer = upload_writer(store, key);
    if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
        // Abandons a multipart upload begun (the writer must not have
        // started shutting down: it panics then).
        let _ = writer.abort().await;
        return Err(anyhow::Error::from(e).context(format!("uploading {key}")));
    }
    writer
        .shutdown()
        .await
        .with_context(|| format!("uploading {key}"))
}

/// Writes small bytes (a pointer, a probe) to `key`.
pub async fn put_bytes(
    store: &dyn ObjectStore,
    key: &StorePath,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    store
        .put(key, PutPayload::from(bytes))
        .await
        .with_context(|| format!("uploading {key}"))?;
    Ok(())
}

/// The bytes of a small object, `None` when it does not exist.
pub async fn get_bytes(
    store: &dyn ObjectStore,
    key: &StorePath,
) -> anyhow::Result<Option<Vec<u8>>> {
    match store.get(key).await {
        Ok(r) => Ok(Some(
            r.bytes()
                .await
                .with_context(|| format!("reading {key}"))?
                .to_vec(),
        )),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("reading {key}"))),
    }
}

/// Opens `key` for a fetch into `dest`: the object's stream and the path
/// beside `dest` to write it to first (its parent created). `None` when the
/// object does not exist.
async fn start_get(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> anyhow::Result<Option<(object_store::GetResult, PathBuf)>> {
    let result = match store.get(key).await {
        Ok(r) => r,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("downloading {key}"))),
    };
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    Ok(Some((result, temp_beside(dest))))
}

/// Streams `key` into the file `dest` (written aside, then renamed).
/// False when the object does not exist.
pub async fn get_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> anyhow::Result<bool> {
    let Some((result, tmp)) = start_get(store, key, dest).await? else {
        return Ok(false);
    };
    let written = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, dest).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.context(format!("downloading {key} to {}", dest.display())));
    }
    Ok(true)
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Uploads every file of `dir` under `prefix/`.
pub async fn put_dir(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    dir: &Path,
) -> anyhow::Result<usize> {
    let owned = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || files_under(&owned))
        .await?
        .with_context(|| format!("listing {}", dir.display()))?;
    for rel in &files {
        put_file(store, &key(&format!("{prefix}/{rel}")), &dir.join(rel)).await?;
    }
    Ok(files.len())
}

/// Downloads every object under `prefix/` into the directory `dest`
/// (assembled aside, then renamed over it). False when there is none.
pub async fn get_dir(store: &dyn ObjectStore, prefix: &str, dest: &Path) -> anyhow::Result<bool> {
    let root = key(prefix);
    let objects: Vec<_> = store
        .list(Some(&root))
        .try_collect()
        .await
        .with_context(|| format!("listing {prefix}/"))?;
    if objects.is_empty() {
        return Ok(false);
    }
    let tmp = temp_beside(dest);
    let fetched = async {
        for meta in &objects {
            let rel: Vec<_> = meta
                .location
                .prefix_match(&root)
                .context("a listed key outside its prefix")?
                .map(|part| part.as_ref().to_string())
                .collect();
            if rel.iter().any(|p| p == ".." || p.is_empty()) {
                anyhow::bail!("refusing the key {}", meta.location);
            }
            let target = rel.iter().fold(tmp.clone(), |p, part| p.join(part));
            if !get_file(store, &meta.location, &target).await? {
                anyhow::bail!("{} vanished while downloading", meta.location);
            }
        }
        replace_dir(&tmp, dest).await
    }
    .await;
    if let Err(e) = fetched {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Err(e);
    }
    Ok(true)
}

/// Puts the directory `from` at `to`, replacing what was there.
async fn replace_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        std::fs::rename(&from, &to)
    })
    .await??;
    Ok(())
}

/// Packs the directory `dir` as one tar object at `key`, written as it is
/// read (the archive never exists whole, on disk or in memory).
pub async fn put_tar(
    store: &Arc<dyn ObjectStore>,
    key: &StorePath,
    dir: &Path,
) -> anyhow::Result<()> {
    let writer = upload_writer(store, key);
    let mut bridge = tokio_util::io::SyncIoBridge::new(writer);
    let dir = dir.to_path_buf();
    let packed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut tar = tar::Builder::new(&mut bridge);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &dir)?;
        tar.finish()?;
        drop(tar);
        bridge.shutdown()?;
        Ok(())
    })
    .await?;
    packed.with_context(|| format!("uploading {key}"))
}

/// Unpacks the tar object at `key` into the directory `dest` as it
/// arrives (into a sibling first, renamed at the end). False when the
/// object does not exist.
pub async fn get_tar(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> anyhow::Result<bool> {
    let Some((result, tmp)) = start_get(store, key, dest).await? else {
        return Ok(false);
    };
    let stream = result
        .into_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let target = tmp.clone();
    let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&target)?;
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(false);
        archive.unpack(&target)
    })
    .await?;
    let placed = match unpacked {
        Ok(()) => replace_dir(&tmp, dest).await,
        Err(e) => Err(anyhow::Error::from(e)),
    };
    if let Err(e) = placed {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Err(e.context(format!("downloading {key} to {}", dest.display())));
    }
    Ok(true)
}

/// Deletes every object under `prefix/`.
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<()> {
    let root = key(prefix);
    let locations = store.list(Some(&root)).map_ok(|m| m.location).boxed();
    let mut deleted = store.delete_stream(locations);
    while let Some(r) = deleted.next().await {
        match r {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(anyhow::Error::from(e).context(format!("deleting {prefix}/"))),
        }
    }
    Ok(())
}

/// Deletes one object; a missing one is not an error.
pub async fn delete(store: &dyn ObjectStore, key: &StorePath) -> anyhow::Result<()> {
    match store.delete(key).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("deleting {key}"))),
    }
}

/// Whether an object exists.
pub async fn exists(store: &dyn ObjectStore, key: &StorePath) -> anyhow::Result<bool> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(anyhow::Error::from(e).context(format!("reading {key}"))),
    }
}

/// The immediate "sub-directories" of `prefix/` (common prefixes).
pub async fn children(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<Vec<String>> {
    let listed = store
        .list_with_delimiter(Some(&key(prefix)))
        .await
        .with_context(|| format!("listing {prefix}/"))?;
    Ok(listed
        .common_prefixes
        .into_iter()
        .map(|p| p.to_string())
        .collect())
}
