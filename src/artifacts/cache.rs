//! The local side of fetched artefacts: one download at a time per key
//! ([`SingleFlight`]), and the byte bound on model directories fetched
//! from the store ([`ModelCache`], least recently used evicted first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A lock per key: concurrent first requests for one artefact wait for
/// the one that fetches it, then find it on disk.
#[derive(Default)]
pub struct SingleFlight {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl SingleFlight {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap();
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Model directories on local disk, by their path relative to the data
/// dir, with their size and when they were last used.
pub struct ModelCache {
    data_dir: PathBuf,
    max_bytes: u64,
    state: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, (u64, u64)>,
    tick: u64,
    total: u64,
}

impl ModelCache {
    /// A cache over `data_dir`, holding at most `max_bytes` of model
    /// directories (a single larger model is still kept: it is in use).
    pub fn new(data_dir: &Path, max_bytes: u64) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(Lru::default()),
        }
    }

    /// Registers the model directories already on disk (`models/*`),
    /// oldest first, so the bound counts them too.
    pub fn scan(&self) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("models")) else {
            return;
        };
        let mut found: Vec<(std::time::SystemTime, String, u64)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let rel = format!("models/{}", e.file_name().to_string_lossy());
                (modified, rel, dir_size(&e.path()))
            })
            .collect();
        found.sort();
        for (_, rel, bytes) in found {
            self.insert(&rel, bytes);
        }
    }

    /// Marks `rel` used now; false when it is not cached.
    pub fn touch(&self, rel: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        s.tick += 1;
        let tick = s.tick;
        match s.entries.get_mut(rel) {
            Some(e) => {
                e.1 = tick;
                true
            }
            None => false,
        }
    }

    /// Records `rel` (just fetched or stored) and returns the directories
    /// to evict to get back under the bound, least recently used first
    /// (never `rel` itself). They are forgotten here; the caller removes them.
    pub fn insert(&self, rel: &str, bytes: u64) -> Vec<PathBuf> {
        let mut s = self.state.lock().unwrap();
        s.tick += 1;
        let tick = s.tick;
        if let Some((old, _)) = s.entries.insert(rel.to_string(), (bytes, tick)) {
            s.total -= old;
        }
        s.total += bytes;
        let mut evicted = Vec::new();
        while s.total > self.max_bytes {
            let victim = s
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != rel)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            let (size, _) = s.entries.remove(&victim).unwrap_or_default();
            s.total -= size;
            evicted.push(self.data_dir.join(&victim));
        }
        evicted
    }

    /// Forgets a deleted model.
    pub fn forget(&self, rel: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some((size, _)) = s.entries.remove(rel) {
            s.total -= size;
        }
    }

    /// The cached directories (relative paths), most recently used first,
    /// and their total size in bytes.
    pub fn contents(&self) -> (Vec<String>, u64) {
        let s = self.state.lock().unwrap();
        let mut list: Vec<_> = s
            .entries
            .iter()
            .map(|(k, (_, t))| (*t, k.clone()))
            .collect();
        list.sort_by(|a, b| b.cmp(a));
        (list.into_iter().map(|(_, k)| k).collect(), s.total)
    }
}

/// The bytes of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_beyond_the_bound() {
        let cache = ModelCache::new(Path::new("/d"), 100);
        assert!(cache.insert("models/a", 40).is_empty());
        assert!(cache.insert("models/b", 40).is_empty());
        assert!(cache.touch("models/a"), "a is now the most recent");
        let evicted = cache.insert("models/c", 40);
        assert_eq!(evicted, vec![PathBuf::from("/d/models/b")]);
        let (list, total) = cache.contents();
        assert_eq!(list, vec!["models/c", "models/a"]);
        assert_eq!(total, 80);
    }

    #[test]
    fn one_model_over_the_bound_is_kept() {
        let cache = ModelCache::new(Path::new("/d"), 10);
        cache.insert("models/a", 5);
        let evicted = cache.insert("models/big", 50);
        assert_eq!(evicted, vec![PathBuf::from("/d/models/a")]);
        assert_eq!(cache.contents().0, vec!["models/big"]);
    }

    #[tokio::test]
    async fn single_flight_serialises_one_key_only() {
        let flights = Arc::new(SingleFlight::default());
        let a = flights.lock("a").await;
        // Another key is free at once.
        let _b = tokio::time::timeout(std::time::Duration::from_secs(1), flights.lock("b"))
            .await
            .expect("another key does not wait");
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.lock("a").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
