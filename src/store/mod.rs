//! Typed access to the SQLite tables, one module per table: the only code
//! that writes them.

pub mod datasets;
pub mod jobs;
pub mod models;
