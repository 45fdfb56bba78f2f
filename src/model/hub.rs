//! Resolves a model source to a local directory: an existing directory is
//! used as is; anything else is a Hugging Face Hub id (`org/name`, optional
//! `@revision`) looked up in the HF cache first (no network when every file
//! is there) and otherwise fetched with `hf-hub` into that same cache.
//!
//! The cache layout is the one `huggingface_hub` uses:
//! `<cache>/models--org--name/refs/<revision>` holds a commit hash and
//! `<cache>/models--org--name/snapshots/<hash>/` the files. The cache is
//! `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! `HF_HUB_OFFLINE=1` forbids the network.

use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};

/// Where the Hub cache is and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// `HF_ENDPOINT`, when set.
    pub endpoint: Option<String>,
    /// `HF_TOKEN`, when set (else the token file of the cache, if any).
    pub token: Option<String>,
}

impl HubOptions {
    /// From the process environment (`HF_HUB_CACHE`, `HF_HOME`,
    /// `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .unwrap_or_else(|| {
                let home = var("HOME").unwrap_or_else(|| ".".into());
                PathBuf::from(home).join(".cache/huggingface/hub")
            });
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        }
    }
}

/// A parsed Hub id: `org/name` and a revision (`main` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo_id: String,
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]` (or a bare `name`), refusing anything that
    /// could escape the cache directory.
    pub fn parse(source: &str) -> Option<Self> {
        let (repo_id, revision) = match source.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (source, "main"),
        };
        let parts: Vec<&str> = repo_id.split('/').collect();
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && !s.contains("..")
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let rev_ok = !revision.is_empty()
            && !revision.contains("..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        (matches!(parts.len(), 1 | 2) && parts.iter().all(|p| name_ok(p)) && rev_ok).then(|| Self {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
        })
    }

    fn cache_folder(&self) -> String {
        format!("models--{}", self.repo_id.replace('/', "--"))
    }
}

/// The local directory holding the model named by `source`.
pub fn resolve_model_source(source: &str, options: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let not_available = |detail: String| ModelError::NotAvailable {
        source_name: source.to_string(),
        detail,
    };
    let looks_like_path =
        source.starts_with('/') || source.starts_with('.') || source.contains('\\');
    let id = match HubId::parse(source) {
        Some(id) if !looks_like_path => id,
        _ => {
            return Err(not_available(
                "no such directory, and not a Hub id (`org/name` or `org/name@revision`)".into(),
            ))
        }
    };
    if let Some(dir) = cached_snapshot(&options.cache_dir, &id) {
        return Ok(dir);
    }
    if options.offline {
        return Err(not_available(format!(
            "no local directory of that name, HF_HUB_OFFLINE is set and the Hugging Face cache ({}) \
             has no complete copy of revision `{}`",
            options.cache_dir.join(id.cache_folder()).display(),
            id.revision
        )));
    }
    download(&id, options).map_err(|e| {
        not_available(format!(
            "no local directory of that name, and the download from the Hub failed: {e}"
        ))
    })
}

/// The snapshot directory of `id` when config and weights are all cached.
fn cached_snapshot(cache_dir: &Path, id: &HubId) -> Option<PathBuf> {
    let repo_dir = cache_dir.join(id.cache_folder());
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&id.revision)) {
        Ok(hash) => hash.trim().to_string(),
        // A commit hash given as the revision has no ref file.
        Err(_) if id.revision.len() == 40 && id.revision.chars().all(|c| c.is_ascii_hexdigit()) => {
            id.revision.clone()
        }
        Err(_) => return None,
    };
    let snapshot = repo_dir.join("snapshots").join(commit);
    is_complete(&snapshot).then_some(snapshot)
}

/// Whether a snapshot has `config.json` and all weight files.
fn is_complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    if dir.join("model.safetensors").is_file() {
        return true;
    }
    shard_names(&dir.join("model.safetensors.index.json"))
        .is_some_and(|names| names.iter().all(|n| dir.join(n).is_file()))
}

fn shard_names(index: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(index).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut names: Vec<String> = value
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Some(names)
}

/// The Hub API for `id`'s repository, honouring the endpoint and token.
fn api_repo(id: &HubId, options: &HubOptions) -> Result<hf_hub::api::sync::ApiRepo, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let mut builder =
        ApiBuilder::from_cache(Cache::new(options.cache_dir.clone())).with_progress(false);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if options.token.is_some() {
        builder = builder.with_token(options.token.clone());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    Ok(api.repo(Repo::with_revision(
        id.repo_id.clone(),
        RepoType::Model,
        id.revision.clone(),
    )))
}

/// Fetches config, preprocessor config and weights into the cache.
fn download(id: &HubId, options: &HubOptions) -> Result<PathBuf, String> {
    let repo = api_repo(id, options)?;
    tracing::info!(repo = %id.repo_id, revision = %id.revision, "downloading model from the Hub");
    let config = repo
        .get("config.json")
        .map_err(|e| format!("config.json: {e}"))?;
    if let Err(e) = repo.get("preprocessor_config.json") {
        tracing::info!(repo = %id.repo_id, error = %e, "no preprocessor_config.json; using defaults");
    }
    if let Err(single) = repo.get("model.safetensors") {
        let index = repo
            .get("model.safetensors.index.json")
            .map_err(|_| format!("model.safetensors: {single}"))?;
        for shard in shard_names(&index).ok_or("invalid model.safetensors.index.json")? {
            repo.get(&shard).map_err(|e| format!("{shard}: {e}"))?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "config.json has no parent directory".to_string())
}

/// What the Hub says about a model id before a job is queued for it.
#[derive(Debug)]
pub enum HubProbe {
    /// `config.json`, fetched into the cache (the weights are left to the
    /// worker: they can be large).
    Config(PathBuf),
    /// The Hub answered that the repository, revision or file does not exist
    /// or is not accessible (HTTP status and detail).
    Refused(String),
    /// The Hub could not be asked (network); the worker will try again.
    Unreachable(String),
}

/// Fetches only `id`'s `config.json`, so a submission can reject a
/// misspelt id or an unsupported architecture at once.
pub fn probe_config(id: &HubId, options: &HubOptions) -> HubProbe {
    use hf_hub::api::sync::ApiError;

    let repo = match api_repo(id, options) {
        Ok(repo) => repo,
        Err(e) => return HubProbe::Unreachable(e),
    };
    match repo.get("config.json") {
        Ok(path) => HubProbe::Config(path),
        Err(ApiError::RequestError(e)) => match *e {
            ureq::Error::Status(code, _) => HubProbe::Refused(format!(
                "the Hub ({}) answered HTTP {code} for `{}` revision `{}`{}",
                options
                    .endpoint
                    .as_deref()
                    .unwrap_or("https://huggingface.co"),
                id.repo_id,
                id.revision,
                match code {
                    401 | 403 => ": a private or gated model needs HF_TOKEN",
                    404 => ": no such model or revision",
                    _ => "",
                }
            )),
            other => HubProbe::Unreachable(other.to_string()),
        },
        Err(e) => HubProbe::Unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn offline(cache: &Path) -> HubOptions {
        HubOptions {
            cache_dir: cache.to_path_buf(),
            offline: true,
            endpoint: None,
            token: None,
        }
    }

    /// A cache in the `huggingface_hub` layout with `files` in the snapshot.
    fn cache_with(files: &[&str]) -> tempfile::TempDir {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny-vit");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{SHA}\n")).unwrap();
        let snap = repo.join("snapshots").join(SHA);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            let content = if f.ends_with("index.json") {
                r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#
            } else {
                "{}"
            };
            std::fs::write(snap.join(f), content).unwrap();
        }
        cache
    }

    #[test]
    fn parses_hub_ids() {
        let id = HubId::parse("google/vit-base-patch16-224@v1.0").unwrap();
        assert_eq!(
            (id.repo_id.as_str(), id.revision.as_str()),
            ("google/vit-base-patch16-224", "v1.0")
        );
        assert_eq!(HubId::parse("org/name").unwrap().revision, "main");
        for bad in ["../etc", "a/b/c", "org/..", "org/name@", "org/na me", ""] {
            assert!(HubId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_local_directory_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let got = resolve_model_source(dir.path().to_str().unwrap(), &offline(dir.path())).unwrap();
        assert_eq!(got, dir.path());
    }

    #[test]
    fn cached_snapshot_resolves_without_network() {
        let cache = cache_with(&["config.json", "model.safetensors"]);
        let got = resolve_model_source("org/tiny-vit", &offline(cache.path())).unwrap();
        assert_eq!(
            got,
            cache
                .path()
                .join("models--org--tiny-vit/snapshots")
                .join(SHA)
        );
        // A commit hash as revision needs no ref file.
        let got =
            resolve_model_source(&format!("org/tiny-vit@{SHA}"), &offline(cache.path())).unwrap();
        assert!(got.ends_with(SHA));
    }

    #[test]
    fn sharded_snapshot_needs_every_shard() {
        let cache = cache_with(&[
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
        ]);
        let err = resolve_model_source("org/tiny-vit", &offline(cache.path())).unwrap_err();
        assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
        let snap = cache
            .path()
            .join("models--org--tiny-vit/snapshots")
            .join(SHA);
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "").unwrap();
        assert_eq!(
            resolve_model_source("org/tiny-vit", &offline(cache.path())).unwrap(),
            snap
        );
    }

    #[test]
    fn offline_cache_miss_is_a_clear_error() {
        let cache = cache_with(&["config.json"]); // weights missing
        let err = resolve_model_source("org/tiny-vit", &offline(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("org/tiny-vit") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        let err = resolve_model_source("org/other@dev", &offline(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models--org--other") && err.contains("`dev`"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_path_is_not_taken_for_a_hub_id() {
        let err = resolve_model_source("./no/such/dir", &offline(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn env_precedence() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = HubOptions::from_vars(vars(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "1")]));
        assert_eq!(o.cache_dir, PathBuf::from("/h/hub"));
        assert!(o.offline);
        let o = HubOptions::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        assert!(!o.offline);
        let o = HubOptions::from_vars(vars(&[("HOME", "/root")]));
        assert_eq!(o.cache_dir, PathBuf::from("/root/.cache/huggingface/hub"));
    }
}
