//! TEMPORARY stub until the data branch merges.
#![allow(dead_code, unused_variables)]
use std::path::PathBuf;
use tch::Tensor;
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PreprocessorConfig {}
#[derive(Clone)]
pub struct Pipeline;
impl Pipeline {
    pub fn from_preprocessor(cfg: &PreprocessorConfig, size: Option<u32>) -> Self {
        Pipeline
    }
    pub fn tensor_from_bytes(&self, bytes: &[u8]) -> Result<Tensor, String> {
        todo!()
    }
    pub fn load_batch(&self, paths: &[PathBuf], augment: Option<u64>) -> Result<Tensor, String> {
        todo!()
    }
}
