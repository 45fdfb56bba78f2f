//! Where the artefact store is: `--artifacts` parsed into an object store
//! client, and the start-up probe whose failures are one clear line each
//! (missing bucket, wrong credentials, unreachable endpoint), naming the
//! URL and never a secret.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, PutPayload, RetryConfig};

/// The schemes `--artifacts` takes.
pub const SUPPORTED_SCHEMES: &str = "s3://bucket/prefix (S3 or any S3-compatible server, \
configured by the AWS_* environment variables) and file:///path (a shared mount)";

/// `url` with anything between `://` and `@` (user, password) hidden.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://***@{}", &url[..i], &url[j + 1..]),
        _ => url.to_string(),
    }
}

/// How long the start-up probe may take in all before it is an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `--artifacts` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    File { root: std::path::PathBuf },
}

impl Location {
    /// Parses `s3://bucket/prefix`, `file:///path` or a plain absolute
    /// path (`/mnt/shared`, taken as `file:///mnt/shared`); any other
    /// scheme is an error naming it and the supported ones. Credentials in
    /// the URL are refused (they belong in `AWS_*`), and no message repeats
    /// them.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with('/') {
            return Ok(Self::File {
                root: std::path::PathBuf::from(url),
            });
        }
        let shown = redacted(url);
        let parsed = url::Url::parse(url).map_err(|e| {
            anyhow::anyhow!(
                "invalid artifact store URL `{shown}` (--artifacts, VITRINE_ARTIFACTS): {e}; \
                 supported are {SUPPORTED_SCHEMES}"
            )
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            anyhow::bail!(
                "artifact store URL `{shown}` carries credentials: they are not read from the \
                 URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
            );
        }
        match parsed.scheme() {
            "s3" => {
                let bucket = parsed.host_str().unwrap_or_default().to_string();
                if bucket.is_empty() {
                    anyhow::bail!(
                        "artifact store URL `{shown}` names no bucket (expected s3://bucket/prefix)"
                    );
                }
                let prefix = parsed.path().trim_matches('/').to_string();
                Ok(Self::S3 { bucket, prefix })
            }
            "file" => {
                let root = parsed.to_file_path().map_err(|()| {
                    anyhow::anyhow!("artifact store URL `{shown}` is not an absolute file path")
                })?;
                Ok(Self::File { root })
            }
            other => anyhow::bail!(
                "unsupported artifact store URL scheme `{other}` in `{shown}` (--artifacts, \
                 VITRINE_ARTIFACTS): supported are {SUPPORTED_SCHEMES}"
            ),
        }
    }

    /// The location as a URL that carries no secret: what logs and
    /// messages name.
    pub fn url(&self) -> String {
        match self {
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Self::File { root } => format!("file://{}", root.display()),
        }
    }

    /// The client for this location, keys relative to its prefix;
    /// `overrides` (`AWS_*` names and values) apply over the environment.
    pub fn build(
        &self,
        url: &str,
        overrides: &[(String, String)],
    ) -> anyhow::Result<Arc<dyn ObjectStore>> {
        match self {
            Self::S3 { bucket, prefix } => {
                let mut builder = s3_builder(bucket);
                for (k, v) in overrides {
                    if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                        builder = builder.with_config(key, v);
                    }
                }
                let store = builder.build().map_err(|e| {
                    anyhow::anyhow!("artifact store {url}: invalid S3 configuration: {e}")
                })?;
                Ok(with_prefix(Arc::new(store), prefix))
            }
            Self::File { root } => {
                if !root.is_dir() {
                    anyhow::bail!(
                        "artifact store {url}: directory {} does not exist (mount it or create it first)",
                        root.display()
                    );
                }
                // Deleting a key removes its emptied directories too, as a
                // prefix disappears from a bucket.
                let store = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| anyhow::anyhow!("artifact store {url}: {e}"))?
                    .with_automatic_cleanup(true);
                Ok(Arc::new(store))
            }
        }
    }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// The AWS environment (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, region,
/// keys), with bounded timeouts and retries where it sets none: a dead
/// endpoint is an error within seconds, not a hang.
fn s3_builder(bucket: &str) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let defaults = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "120s"),
    ];
    for (key, value) in defaults {
        let key = AmazonS3ConfigKey::Client(key);
        if builder.get_config_value(&key).is_none() {
            builder = builder.with_config(key, value);
        }
    }
    builder.with_retry(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
    })
}

/// Checks the store is usable: writes, reads back and deletes a small
/// probe object under the prefix. Each failure is one line naming the
/// problem and the URL.
pub async fn probe(
    store: &dyn ObjectStore,
    url: &str,
    location: &Location,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    let endpoint = endpoint(overrides);
    let key = StorePath::from(format!(".vitrine-probe/{}", uuid::Uuid::now_v7()));
    let steps = async {
        store.put(&key, PutPayload::from_static(b"vitrine")).await?;
        store.get(&key).await?.bytes().await?;
        store.delete(&key).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, steps).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(explain(&e, url, location, &endpoint))),
        Err(_) => Err(anyhow::anyhow!(
            "artifact store {url}: no answer within {}s (is the endpoint {} reachable?)",
            PROBE_TIMEOUT.as_secs(),
            endpoint
        )),
    }
}

/// The endpoint in use, for messages (no credentials in it).
fn endpoint(overrides: &[(String, String)]) -> String {
    let names = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"];
    overrides
        .iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.clone())
        .or_else(|| names.iter().find_map(|k| std::env::var(k).ok()))
        .unwrap_or_else(|| "of AWS S3".into())
}

/// One line saying what is wrong with the store.
fn explain(e: &object_store::Error, url: &str, location: &Location, endpoint: &str) -> String {
    let text = e.to_string();
    let bucket = match location {
        Location::S3 { bucket, .. } => bucket.as_str(),
        Location::File { .. } => "",
    };
    let has = |needle: &str| text.contains(needle);
    if has("NoSuchBucket")
        || (matches!(e, object_store::Error::NotFound { .. }) && !bucket.is_empty())
    {
        format!("artifact store {url}: bucket `{bucket}` does not exist (create it first)")
    } else if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("AccessDenied")
    {
        let code = [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ]
        .into_iter()
        .find(|c| has(c))
        .unwrap_or("denied");
        format!(
            "artifact store {url}: access refused ({code}): check the credentials \
             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy"
        )
    } else if has("error sending request") || has("connect") || has("timed out") {
        format!(
            "artifact store {url}: endpoint {endpoint} is unreachable: {}",
            one_line(&text)
        )
    } else {
        format!("artifact store {url}: probe failed: {}", one_line(&text))
    }
}

/// The first line of an error, at most 300 characters.
pub(crate) fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_absolute_path_is_a_file_store() {
        let l = Location::parse("/mnt/shared").unwrap();
        assert_eq!(
            l,
            Location::File {
                root: "/mnt/shared".into()
            }
        );
        assert_eq!(l.url(), "file:///mnt/shared");
        let e = Location::parse("relative/dir").unwrap_err().to_string();
        assert!(e.contains("supported are"), "{e}");
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_being_repeated() {
        let e = Location::parse("s3://AKIA:hunter2@bucket/p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("AKIA"), "{e}");
        let e = Location::parse("gs://u:hunter2@b").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn urls_parse_into_locations() {
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("file:///mnt/shared").unwrap(),
            Location::File {
                root: "/mnt/shared".into()
            }
        );
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        let e = Location::parse("gs://bucket/x").unwrap_err().to_string();
        assert!(
            e.contains("unsupported artifact store URL scheme `gs`"),
            "{e}"
        );
        assert!(e.contains("s3://") && e.contains("file://"), "{e}");
        let e = Location::parse("not a url").unwrap_err().to_string();
        assert!(e.contains("invalid artifact store URL"), "{e}");
    }

    #[test]
    fn a_missing_shared_directory_is_an_error() {
        let url = "file:///no/such/vitrine/dir";
        let e = Location::parse(url)
            .unwrap()
            .build(url, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist") && e.contains(url), "{e}");
    }
}
