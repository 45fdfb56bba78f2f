//! The one configuration struct of the service. Every flag is also an
//! environment variable, and `vitrine --help` is the reference for both.
//! The command-line grammar around it lives in `cli`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The flags whose values may carry a secret (a token, a password in a
/// URL): `--help` never shows their environment values, and a test checks
/// every flag whose name suggests a secret is listed here.
pub const SECRET_FLAGS: &[&str] = &["api_token", "database_url", "artifacts"];

/// Everything `vitrine serve` needs. Defaults run with no flags at all.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "VITRINE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database, datasets and models.
    #[arg(long, env = "VITRINE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL; defaults to `sqlite://<data-dir>/vitrine.db`. It may
    /// carry a password, so its value is never shown by `--help`.
    #[arg(long, env = "VITRINE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Log format.
    #[arg(long, env = "VITRINE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Devices to run workers on, comma separated: `cpu`, `cuda:0`, ... or
    /// `auto` (every CUDA device, else the CPU).
    #[arg(
        long,
        env = "VITRINE_DEVICES",
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub devices: Vec<String>,

    /// Bearer token required on every API route (all but /healthz, /readyz,
    /// /metrics, and the web page, /docs and /openapi.json, which hold no data).
    /// Unset: no authentication.
    #[arg(long, env = "VITRINE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Largest accepted dataset upload, in bytes.
    #[arg(long, env = "VITRINE_MAX_UPLOAD_BYTES", default_value_t = 2 << 30)]
    pub max_upload_bytes: u64,

    /// Most entries (files and directories) a dataset archive may hold.
    #[arg(long, env = "VITRINE_MAX_ARCHIVE_ENTRIES", default_value_t = 200_000)]
    pub max_archive_entries: u64,

    /// Most bytes a dataset archive may expand to, counted while extracting
    /// (decompression bombs are refused when they reach it).
    #[arg(long, env = "VITRINE_MAX_UNCOMPRESSED_BYTES", default_value_t = 20 << 30)]
    pub max_uncompressed_bytes: u64,

    /// Largest accepted image, in pixels (width x height), checked from the
    /// header before decoding.
    #[arg(long, env = "VITRINE_MAX_IMAGE_PIXELS", default_value_t = 64_000_000)]
    pub max_image_pixels: u64,

    /// Largest image file accepted anywhere (dataset member, Parquet cell,
    /// `/predict` part), in bytes, checked before it is read.
    #[arg(long, env = "VITRINE_MAX_IMAGE_FILE_BYTES", default_value_t = 64 << 20)]
    pub max_image_file_bytes: u64,

    /// Bytes of memory that decoding user bytes may hold at once, across
    /// validations, Parquet, thumbnails, `/predict`, exports and training
    /// input (0: a quarter of the memory this process may use). A decode
    /// that would exceed it waits (background work) or is answered 429.
    #[arg(long, env = "VITRINE_DECODE_BUDGET_BYTES", default_value_t = 0)]
    pub decode_budget_bytes: u64,

    /// Bytes of disk the decode-once input cache may fill under
    /// `<data-dir>/cache/inputs` (each dataset's images decoded once, reused
    /// by later epochs, resumed jobs and every job on the same dataset and
    /// preprocessing; least recently used evicted first). 0 turns it off.
    #[arg(long, env = "VITRINE_INPUT_CACHE_BYTES", default_value_t = 16 << 30)]
    pub input_cache_bytes: u64,

    /// Fraction of a dataset's images that may be undecodable: below it they
    /// are skipped and listed in the summary, above it the dataset is refused.
    #[arg(long, env = "VITRINE_MAX_UNDECODABLE_FRACTION", default_value_t = 0.01)]
    pub max_undecodable_fraction: f64,

    /// Datasets validated at once; further uploads wait (`queued`) for a
    /// slot. Each validation decodes its images on the ingestion threads.
    #[arg(long, env = "VITRINE_INGEST_CONCURRENCY", default_value_t = 2)]
    pub ingest_concurrency: usize,

    /// Threads decoding uploaded datasets' images (0: the cores this
    /// process may use). They run at a lower CPU priority (nice +10) than
    /// the threads answering requests, so `/predict` and `/healthz` stay
    /// fast while a large dataset is checked.
    #[arg(long, env = "VITRINE_INGEST_THREADS", default_value_t = 0)]
    pub ingest_threads: usize,

    /// Largest accepted request body for every other route (predictions), in bytes.
    #[arg(long, env = "VITRINE_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: u64,

    /// Seconds to wait for in-flight requests on shutdown.
    #[arg(long, env = "VITRINE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Seconds a worker's claim on a job lasts without renewal; a crashed
    /// worker's job goes back to the queue after this.
    #[arg(long, env = "VITRINE_JOB_LEASE_SECS", default_value_t = 30)]
    pub job_lease_secs: u64,

    /// Times a job is started before it is failed for good.
    #[arg(long, env = "VITRINE_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    pub job_max_attempts: u32,

    /// Most candidate jobs one sweep may have (`POST /sweeps`); a larger
    /// spec is refused with 422.
    #[arg(long, env = "VITRINE_MAX_SWEEP_CANDIDATES", default_value_t = 64)]
    pub max_sweep_candidates: usize,

    /// Run no training workers (serve predictions only).
    #[arg(long, env = "VITRINE_NO_WORKERS")]
    pub no_workers: bool,

    /// Most images in one inference batch.
    #[arg(long, env = "VITRINE_PREDICT_MAX_BATCH", default_value_t = 32)]
    pub predict_max_batch: usize,

    /// Milliseconds the inference thread waits for more requests to batch
    /// (only while requests are being decoded; a lone request runs at once).
    #[arg(long, env = "VITRINE_PREDICT_MAX_WAIT_MS", default_value_t = 5)]
    pub predict_max_wait_ms: u64,

    /// Prediction requests allowed to wait per device; beyond it: 429.
    #[arg(long, env = "VITRINE_PREDICT_QUEUE", default_value_t = 128)]
    pub predict_queue: usize,

    /// Explanations (`/explain`) waiting or running; beyond it: 429. They
    /// run one at a time on their own thread, off the prediction engines.
    #[arg(long, env = "VITRINE_EXPLAIN_QUEUE", default_value_t = 4)]
    pub explain_queue: usize,

    /// The most path points `/explain?method=integrated_gradients` may ask
    /// for (each is a forward and a backward pass).
    #[arg(long, env = "VITRINE_EXPLAIN_MAX_STEPS", default_value_t = 256)]
    pub explain_max_steps: usize,

    /// Numeric precision of predictions on a GPU: `auto` (bf16 autocast
    /// where the GPU has bf16, else fp16), `bf16`, or `fp32` (with TF32
    /// matmuls). The CPU always runs fp32.
    #[arg(
        long,
        env = "VITRINE_PREDICT_PRECISION",
        value_enum,
        default_value = "auto"
    )]
    pub predict_precision: crate::serve::engine::PredictPrecision,

    /// Models kept loaded per device (least recently used evicted).
    #[arg(long, env = "VITRINE_MODEL_CACHE", default_value_t = 3)]
    pub model_cache: usize,

    /// Bytes of LoRA adapters kept resident per device (least recently
    /// used evicted; loaded again on demand). Their base models stay
    /// resident besides, one per base and device, shared by all adapters.
    #[arg(long, env = "VITRINE_ADAPTER_CACHE_BYTES", default_value_t = 256 << 20)]
    pub adapter_cache_bytes: u64,

    /// CPU threads for the whole service (0: the cores this process may
    /// use). libtorch, rayon (image decoding) and tokio (HTTP) share them
    /// out (`vitrine info` shows the split) instead of each taking every
    /// core.
    #[arg(long, env = "VITRINE_CPU_THREADS", default_value_t = 0)]
    pub cpu_threads: usize,

    /// Threads libtorch may use per operation on the CPU (0: its share of
    /// `--cpu-threads`).
    #[arg(long, env = "VITRINE_TORCH_THREADS", default_value_t = 0)]
    pub torch_threads: usize,

    /// Origins allowed to call the API from a browser page of their own
    /// (CORS), comma separated: `https://app.example.com`. Unset: no CORS
    /// at all, so no other site's page can read an answer.
    #[arg(long, env = "VITRINE_CORS_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origin: Vec<String>,

    /// Names this server answers to in the `Host` header, comma separated
    /// (`vitrine.internal,ml.example.com`; `*` for any). IP addresses,
    /// `localhost` and the machine's own host name are always accepted;
    /// other names get 403, which stops DNS rebinding. Health probes are
    /// exempt.
    #[arg(long, env = "VITRINE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Times one dataset's validation may start without ending before the
    /// dataset fails (`validation_crashed`) instead of being validated
    /// again: a validation that ends only with its process (a crash, a
    /// kill) runs again at the next start, so an upload that crashes the
    /// validation cannot crash the service at every start.
    #[arg(long, env = "VITRINE_MAX_VALIDATION_STARTS", default_value_t = 3)]
    pub max_validation_starts: u32,

    /// Most images one prediction request may carry; beyond it the request
    /// is refused (413 `too_many_images`) before any image is decoded.
    #[arg(long, env = "VITRINE_MAX_IMAGES_PER_REQUEST", default_value_t = 64)]
    pub max_images_per_request: usize,

    /// Most pixels (the sum of width x height, read from the images'
    /// headers) one prediction request may carry; beyond it: 413
    /// `too_many_pixels`, before any image is decoded.
    #[arg(
        long,
        env = "VITRINE_MAX_REQUEST_PIXELS",
        default_value_t = 256_000_000
    )]
    pub max_request_pixels: u64,

    /// ONNX exports (`/models/{id}/download?format=onnx`) run at once.
    #[arg(long, env = "VITRINE_EXPORT_CONCURRENCY", default_value_t = 1)]
    pub export_concurrency: usize,

    /// ONNX exports allowed to wait for a running one; beyond it: 429.
    #[arg(long, env = "VITRINE_EXPORT_QUEUE", default_value_t = 4)]
    pub export_queue: usize,
    /// Seconds a client may take to send a request's headers, counted from
    /// when its connection opens or its previous request ends: a connection
    /// silent that long (an idle keep-alive one too) is closed.
    #[arg(long, env = "VITRINE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,

    /// Connections served at once (0: the open-file limit less 256, at
    /// most 4096; the soft limit is raised to the hard one at start). One
    /// more is answered 503 `too_many_connections` and closed.
    #[arg(long, env = "VITRINE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Event streams (`/jobs/{id}/events`, `/datasets/{id}/events`,
    /// `/sweeps/{id}/events`) open at once; beyond: 503 `too_many_streams`.
    #[arg(long, env = "VITRINE_MAX_EVENT_STREAMS", default_value_t = 1024)]
    pub max_event_streams: usize,

    /// Event streams open at once from one client address (an IPv6 client:
    /// its /64); beyond: 503 `too_many_streams`. Behind a reverse proxy all
    /// clients share its address: raise this there.
    #[arg(
        long,
        env = "VITRINE_MAX_EVENT_STREAMS_PER_CLIENT",
        default_value_t = 32
    )]
    pub max_event_streams_per_client: usize,

    /// Artefact store shared by every node: `s3://bucket/prefix` (S3 or an
    /// S3-compatible server, configured by the usual AWS_* environment
    /// variables: AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, AWS_REGION, keys) or
    /// `file:///path` (a shared mount). Unset: datasets, checkpoints and
    /// models stay in the data dir only.
    #[arg(long, env = "VITRINE_ARTIFACTS", hide_env_values = true)]
    pub artifacts: Option<String>,

    /// Most bytes of models fetched from the artefact store kept on local
    /// disk (least recently used evicted).
    #[arg(long, env = "VITRINE_MODEL_DISK_CACHE_BYTES", default_value_t = 20 << 30)]
    pub model_disk_cache_bytes: u64,

    /// Attempts of an artefact store operation through an outage (the
    /// waits double from --artifacts-retry-initial-ms) before the job fails.
    #[arg(long, env = "VITRINE_ARTIFACTS_RETRY_ATTEMPTS", default_value_t = 5)]
    pub artifacts_retry_attempts: u32,

    /// The first wait between attempts of an artefact store operation.
    #[arg(
        long,
        env = "VITRINE_ARTIFACTS_RETRY_INITIAL_MS",
        default_value_t = 2000
    )]
    pub artifacts_retry_initial_ms: u64,

    /// `AWS_*` settings applied over the process environment for the
    /// artefact store (no flag: for embedders and tests, which must not
    /// change their process's environment).
    #[arg(skip)]
    pub artifacts_env: Vec<(String, String)>,
}

/// Everything `vitrine worker` needs: the node settings it shares with
/// `serve` (data directory, database, devices, leases, threads, logs) and
/// the address of its probes. The API's own flags (listen address, token,
/// upload and prediction limits) are accepted, so nodes can share one
/// environment, but hidden from `vitrine worker --help`: a worker serves
/// no API.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("listen", |a| a.hide(true)),
    mut_arg("api_token", |a| a.hide(true)),
    mut_arg("no_workers", |a| a.hide(true)),
    mut_arg("max_upload_bytes", |a| a.hide(true)),
    mut_arg("max_archive_entries", |a| a.hide(true)),
    mut_arg("max_uncompressed_bytes", |a| a.hide(true)),
    mut_arg("max_image_pixels", |a| a.hide(true)),
    mut_arg("max_undecodable_fraction", |a| a.hide(true)),
    mut_arg("ingest_concurrency", |a| a.hide(true)),
    mut_arg("ingest_threads", |a| a.hide(true)),
    mut_arg("max_validation_starts", |a| a.hide(true)),
    mut_arg("max_body_bytes", |a| a.hide(true)),
    mut_arg("max_sweep_candidates", |a| a.hide(true)),
    mut_arg("predict_max_batch", |a| a.hide(true)),
    mut_arg("predict_max_wait_ms", |a| a.hide(true)),
    mut_arg("predict_queue", |a| a.hide(true)),
    mut_arg("explain_queue", |a| a.hide(true)),
    mut_arg("explain_max_steps", |a| a.hide(true)),
    mut_arg("predict_precision", |a| a.hide(true)),
    mut_arg("model_cache", |a| a.hide(true)),
    mut_arg("cors_origin", |a| a.hide(true)),
    mut_arg("allowed_hosts", |a| a.hide(true)),
    mut_arg("max_images_per_request", |a| a.hide(true)),
    mut_arg("max_request_pixels", |a| a.hide(true)),
    mut_arg("export_concurrency", |a| a.hide(true)),
    mut_arg("export_queue", |a| a.hide(true)),
    mut_arg("max_event_streams", |a| a.hide(true)),
    mut_arg("max_event_streams_per_client", |a| a.hide(true))
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub node: ServeConfig,

    /// Address of the worker's only HTTP: `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "VITRINE_HEALTH_LISTEN", default_value = "0.0.0.0:9090")]
    pub health_listen: SocketAddr,
}

/// Checks a `--cors-origin` value: `*` or `scheme://host[:port]`, as
/// browsers send it in `Origin`.
pub fn parse_origin(value: &str) -> Result<String, String> {
    if value == "*" {
        return Ok(value.into());
    }
    let url = url::Url::parse(value).map_err(|e| format!("`{value}` is not an origin: {e}"))?;
    let origin = url.origin().ascii_serialization();
    if origin == "null" || value.trim_end_matches('/') != origin {
        return Err(format!(
            "`{value}` is not an origin (expected scheme://host[:port], e.g. https://app.example.com)"
        ));
    }
    Ok(origin)
}

impl ServeConfig {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("vitrine.db").display()))
    }

    /// The node's decode-once input cache (`--input-cache-bytes`), `None`
    /// when off.
    pub fn input_cache(&self) -> Option<crate::imaging::input_cache::InputCache> {
        (self.input_cache_bytes > 0).then(|| {
            crate::imaging::input_cache::InputCache::new(
                self.data_dir.join("cache").join("inputs"),
                self.input_cache_bytes,
            )
        })
    }

    /// The decoding memory budget in effect (`--decode-budget-bytes`).
    pub fn decode_budget(&self) -> crate::budget::DecodeBudget {
        crate::budget::DecodeBudget::new(match self.decode_budget_bytes {
            0 => crate::budget::default_budget_bytes(),
            n => n,
        })
    }

    /// The limits uploaded datasets are checked against; what they decode
    /// is drawn from `budget` (the server's one decode budget).
    pub fn ingest_limits(&self, budget: &crate::budget::DecodeBudget) -> crate::data::IngestLimits {
        crate::data::IngestLimits {
            max_entries: self.max_archive_entries,
            max_uncompressed_bytes: self.max_uncompressed_bytes,
            max_image_pixels: self.max_image_pixels,
            max_undecodable_fraction: self.max_undecodable_fraction,
            max_image_file_bytes: self.max_image_file_bytes,
            decode_budget: budget.clone(),
        }
    }

    /// The artefact store's settings.
    pub fn artifact_options(&self) -> crate::artifacts::ArtifactOptions {
        crate::artifacts::ArtifactOptions {
            url: self.artifacts.clone(),
            model_cache_bytes: self.model_disk_cache_bytes,
            backoff: crate::artifacts::Backoff {
                attempts: self.artifacts_retry_attempts.max(1),
                initial: std::time::Duration::from_millis(self.artifacts_retry_initial_ms),
            },
            s3_env: self.artifacts_env.clone(),
        }
    }

    /// A configuration for tests and embedding: defaults, rooted at `data_dir`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        /// `ServeConfig` alone, to read its defaults (and environment).
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let mut cfg = Defaults::parse_from(["vitrine"]).serve;
        cfg.data_dir = data_dir.into();
        cfg.database_url = None;
        cfg.artifacts = None;
        cfg
    }
}
