//! Typed access to the database tables, one module per table.

pub mod datasets;
