//! `vitrine predict`: run a model on local image files with no server and
//! print JSON, the way `/predict` would answer.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::serve::output::{self, ImageResult, OutputOptions};
use crate::train::TrainedModel;

#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// A model directory in the Hugging Face layout, or a Hub id.
    #[arg(long)]
    pub model: String,
    /// Labels per image (multi-class).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// One threshold for every label (multi-label; default: the thresholds
    /// chosen in training, else 0.5).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Also print the raw logits.
    #[arg(long)]
    pub logits: bool,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Answer {
    model: String,
    results: Vec<FileResult>,
}

#[derive(Serialize)]
struct FileResult {
    image: PathBuf,
    #[serde(flatten)]
    result: ImageResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let device = crate::torch_info::parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let dir =
        crate::model::resolve_model_source(&args.model, &crate::model::HubOptions::from_env())?;
    let trained = TrainedModel::load(&dir)?;
    let model = crate::model::load_pretrained(&dir, device, None)?;
    let pipeline = &trained.pipeline;
    let mut tensors = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let t = pipeline
            .tensor_from_bytes(&bytes)
            .with_context(|| format!("decoding {}", path.display()))?;
        tensors.push(t);
    }
    let logits = model
        .logits(&tch::Tensor::stack(&tensors, 0))?
        .to_device(tch::Device::Cpu);
    let opts = OutputOptions {
        top_k: Some(args.top_k),
        threshold: args.threshold,
        all_scores: false,
    };
    let results = output::format(
        &logits,
        trained.task,
        &trained.labels,
        trained.thresholds.as_deref(),
        &opts,
    );
    let answer = Answer {
        model: args.model.clone(),
        results: results
            .into_iter()
            .zip(&args.images)
            .enumerate()
            .map(|(i, (result, image))| FileResult {
                image: image.clone(),
                result,
                logits: args
                    .logits
                    .then(|| Vec::try_from(logits.get(i as i64)).unwrap_or_default()),
            })
            .collect(),
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
