//! The service through its router and its SQLite store: HTTP foundations,
//! dataset uploads, the job queue and the migrations. No model is trained
//! here.
//!
//! One test binary per area (`api`, `model`, `imaging`, `e2e`): each links
//! libtorch once, and every file below is one module of it.

#[path = "../common/mod.rs"]
mod common;

mod artifacts;
mod browser_safety;
mod dataset_audit;
mod dataset_images;
mod datasets_async;
mod datasets_parquet;
mod datasets_upload;
mod datasets_user_archives;
mod distributed;
mod docs;
mod http_foundation;
mod job_queue;
mod job_views;
mod migrations;
mod model_registry;
mod sweeps;
