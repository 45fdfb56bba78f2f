//! TEMPORARY stub until the model branch merges.
#![allow(dead_code, unused_variables)]
use std::path::{Path, PathBuf};
use tch::Tensor;
pub trait ImageClassifier: Send {
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor;
    fn head(&self, features: &Tensor) -> Tensor;
    fn forward_t(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(pixel_values, train))
    }
    fn num_layers(&self) -> usize;
}
pub struct Model {
    pub vs: tch::nn::VarStore,
    pub net: Box<dyn ImageClassifier>,
    pub preprocessor_json: serde_json::Value,
}
impl Model {
    pub fn preprocessor(&self) -> anyhow::Result<crate::imaging::PreprocessorConfig> {
        todo!()
    }
}
pub fn load_pretrained(
    dir: &Path,
    device: tch::Device,
    labels: Option<&[String]>,
) -> anyhow::Result<Model> {
    todo!()
}
pub fn save_pretrained(model: &Model, dir: &Path, task: crate::data::Task) -> anyhow::Result<()> {
    todo!()
}
pub mod hub {
    use super::*;
    pub fn resolve(source: &str) -> anyhow::Result<PathBuf> {
        todo!()
    }
    pub fn check(source: &str) -> anyhow::Result<()> {
        todo!()
    }
}
