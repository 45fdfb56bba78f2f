//! Datasets as a service, above the pure format code of `data`: storing
//! an upload, validating it in the background, taking over validations
//! another node left, and the one record of a dataset.
//!
//! Storing an uploaded dataset: stream it to a temp file while hashing;
//! return the existing record when the same archive was stored before;
//! else record it `validating`, keep the upload under `uploads/<sha256>`
//! and validate it in the background ([`pool`]): extract and check it into
//! `tmp/<sha256>.d`, then move that into `datasets/<sha256>` in one
//! rename, so nothing is ever half-ready. A refusal leaves nothing on disk
//! but the record, `failed` with the refusal's code and detail. The upload
//! is kept until the validation ends, so that a restart validates again
//! what was validating ([`DatasetStore::resume`]).
//!
//! | file | holds |
//! |---|---|
//! | `upload.rs` | streaming and hashing an upload, recording it, waiting for its outcome |
//! | `files.rs` | where a dataset's files live: the kept upload (here and in the artefact store), work directories |
//! | `validate.rs` | one validation: its lock, its slot, the check on the ingestion pool, its progress |
//! | `quarantine.rs` | counting starts, and failing a validation that never ends |
//! | `outcome.rs` | recording a validation's end: `ready` (moved into place, shared) or `failed` |
//! | `takeover.rs` | validating again what a stopped process or a dead node left `validating` |
//! | `pool.rs` | the bounded background pool and the live record of each validation |
//! | `record.rs` | [`record::DatasetRecord`], the one shape of a stored dataset |

use std::path::PathBuf;

use crate::artifacts::Artifacts;
use crate::data::IngestLimits;
use crate::db::Db;

mod files;
mod outcome;
pub mod pool;
mod quarantine;
pub mod record;
pub mod takeover;
mod upload;
mod validate;

pub use upload::Stored;

/// Where datasets go and what they are checked against. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    pub db: Db,
    /// The data directory: archives are extracted under `datasets/`,
    /// uploads wait for their validation under `uploads/`, and work in
    /// progress lives under `tmp/`.
    pub data_dir: PathBuf,
    pub limits: IngestLimits,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// The background validation pool.
    pub validations: pool::Validations,
    /// Where uploads wait and validated datasets go for other nodes.
    pub artifacts: Artifacts,
    /// Starts of one dataset's validation after which it fails
    /// (`validation_crashed`) instead of running again: each start that
    /// did not end took its process down.
    pub max_validation_starts: u32,
}
