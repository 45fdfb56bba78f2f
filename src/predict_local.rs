//! `vitrine predict`: run a model on local image files with no server and
//! print JSON, the way `/predict` would answer. It reads the files and
//! hands them to the same prediction service as `/predict`
//! ([`crate::serve::predict`]), on an inference engine of its own.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::budget::DecodeBudget;
use crate::error::AppResult;
use crate::serve::output::{ImageResult, OutputOptions, ScoreCalibration};
use crate::serve::predict::{
    ModelSource, PredictContext, PredictRequest, Predicted, RequestCaps, Upload,
};
use crate::serve::Inference;

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
    /// Raw scores even when the model is calibrated (a model vitrine
    /// trained serves temperature-scaled scores by default).
    #[arg(long)]
    pub uncalibrated: bool,
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
    /// `temperature`, `off` (`--uncalibrated`) or `none` (no calibration).
    calibration: ScoreCalibration,
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
    let images = args
        .images
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Upload {
                name: path.display().to_string(),
                bytes,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let predicted = runtime.block_on(predict(&args, device, images))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer(&args, predicted))?
    );
    Ok(())
}

/// The one service call, on an engine of this process's own: fp32 (as
/// `transformers` runs by default), the whole request as one batch, and
/// no caps or decoding budget beyond the pipeline's limits.
async fn predict(
    args: &PredictArgs,
    device: tch::Device,
    images: Vec<Upload>,
) -> AppResult<Predicted> {
    let inference = Inference::local(device, images.len());
    let cx = PredictContext {
        budget: &DecodeBudget::new(u64::MAX),
        caps: RequestCaps::UNBOUNDED,
    };
    let request = PredictRequest {
        model: ModelSource::Local(&args.model),
        images,
        options: OutputOptions {
            top_k: Some(args.top_k),
            threshold: args.threshold,
            all_scores: false,
            raw: args.uncalibrated,
        },
    };
    inference.predict(cx, request).await
}

fn answer(args: &PredictArgs, predicted: Predicted) -> Answer {
    let Predicted {
        results,
        logits,
        calibration,
        ..
    } = predicted;
    Answer {
        model: args.model.clone(),
        calibration,
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
    }
}
