//! Typed access to the tables (SQLite or PostgreSQL, see `db`), one module per table (`sweeps` also
//! writes the sweep columns of `jobs`): the only code
//! that writes them.

pub mod audits;
pub mod datasets;
pub mod jobs;
pub mod models;
pub mod sweeps;
