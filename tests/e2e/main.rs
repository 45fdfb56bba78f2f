//! End to end: a real server (in-process on port 0, or the `vitrine` binary
//! as a child process) over a real SQLite file, trained and queried over
//! HTTP (and through the web page, in headless chromium: `web_page.rs`).
//! Fixtures are made by the Python scripts beside this file
//! (`synthetic.py`, `hf_predict.py`, `random_dinov2.py`, `random_backbone.py`).
//!
//! The tests here share one process: they never set environment variables
//! or libtorch's thread count in it (the child processes get theirs), and
//! the fixtures they share are made once under a lock.

#[path = "../common/mod.rs"]
mod common;

mod artifacts;
mod backbones;
mod calibration;
mod cluster;
mod crash;
mod deploy_manifests;
mod embed;
mod explain;
mod hostile_browser;
mod hostile_decode;
mod hostile_http;
mod hostile_ingest;
mod hostile_parquet;
mod hub_download;
mod ingest;
mod input_cache;
mod jobs;
mod onnx_download;
mod open_size;
mod recipes;
mod serving;
mod shutdown;
mod sweeps;
mod transfer_fashion_mnist;
mod web_page;
