//! TEMPORARY stand-in until the datasets branch merges.
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    MultiClass,
    MultiLabel,
}
#[allow(dead_code, unused_variables)]
mod stub {
    use std::path::{Path, PathBuf};
    #[derive(Debug, Clone)]
    pub struct Sample {
        pub path: PathBuf,
        pub labels: Vec<usize>,
    }
    pub struct Manifest {
        pub labels: Vec<String>,
        pub task: super::Task,
        pub train: Vec<Sample>,
        pub validation: Option<Vec<Sample>>,
        pub test: Option<Vec<Sample>>,
    }
    impl Manifest {
        pub fn load(dir: &Path) -> anyhow::Result<Self> {
            todo!()
        }
        pub fn all_samples(&self) -> impl Iterator<Item = &Sample> {
            self.train.iter()
        }
    }
    pub fn stratified_split(s: &[Sample], f: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
        todo!()
    }
    pub mod service {
        pub async fn ingest_field(
            state: &crate::http::AppState,
            field: axum::extract::multipart::Field<'_>,
        ) -> crate::error::AppResult<crate::store::datasets::DatasetRecord> {
            todo!()
        }
    }
}
pub use stub::*;
