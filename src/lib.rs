//! vitrine: fine-tune Vision Transformers and serve their predictions over HTTP.
//!
//! `main.rs` only parses the command line; everything lives here so that the
//! integration tests and extra binaries build the very same application.

pub mod app;
pub mod artifacts;
pub mod audit;
pub mod budget;
pub mod cli;
pub mod config;
pub mod data;
pub mod datasets;
pub mod db;
pub mod devices;
pub mod error;
pub mod explain;
pub mod explain_local;
pub mod export;
pub mod http;
pub mod imaging;
pub mod jobs;
pub mod layering;
pub mod metrics;
pub mod model;
pub mod models;
pub mod predict_local;
pub mod serve;
pub mod server;
pub mod store;
pub mod sweeps;
pub mod task;
pub mod telemetry;
pub mod torch_info;
pub mod torchx;
pub mod train;

pub use error::AppError;
