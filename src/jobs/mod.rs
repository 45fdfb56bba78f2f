//! Fine-tuning jobs: configuration, submission, the per-device workers that
//! run them, and the live events clients follow.

pub mod events;
pub mod service;
pub mod view;
pub mod worker;
