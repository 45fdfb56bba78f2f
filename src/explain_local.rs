//! `vitrine explain`: heat maps for a local image with no server, through
//! the same explanation service as `/explain` ([`crate::serve::explain`]).
//! Writes one PNG overlay per explained label and the maps as `.npy`, and
//! prints a JSON summary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::budget::DecodeBudget;
use crate::serve::explain::{ExplainConfig, ExplainRequest, Explainer};
use crate::serve::predict::{ModelSource, PredictContext, RequestCaps, Upload};
use crate::serve::Inference;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// A model directory in the Hugging Face layout, or a Hub id.
    #[arg(long)]
    pub model: String,
    /// `gradcam`, `attention_rollout` or `integrated_gradients` (default:
    /// the family's first: rollout for ViT and DINOv2, else Grad-CAM).
    #[arg(long)]
    pub method: Option<String>,
    /// Comma-separated labels to explain (default: the `--top-k` best).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Integrated gradients' path points.
    #[arg(long, default_value_t = crate::serve::explain::DEFAULT_STEPS)]
    pub steps: usize,
    /// Integrated gradients' baseline: `mean`, `black` or `white`.
    #[arg(long, default_value = "mean")]
    pub baseline: String,
    /// Where the overlays (`IMAGE.LABEL.png`) and maps (`IMAGE.npy`) go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The image file.
    pub image: PathBuf,
}

#[derive(Serialize)]
struct Summary {
    model: String,
    method: crate::explain::Method,
    maps: PathBuf,
    labels: Vec<LabelFile>,
}

#[derive(Serialize)]
struct LabelFile {
    label: String,
    score: f64,
    overlay: PathBuf,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let device = crate::torch_info::parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let image = Upload {
        name: args.image.display().to_string(),
        bytes,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let inference = Inference::local(device, 1);
    let explainer = Explainer::start(ExplainConfig {
        queue: 1,
        max_steps: args.steps.max(2),
        device,
    });
    let request = ExplainRequest {
        model: ModelSource::Local(&args.model),
        images: vec![image],
        method: args.method.clone(),
        labels: args.labels.clone(),
        top_k: Some(args.top_k),
        steps: Some(args.steps),
        baseline: Some(args.baseline.clone()),
    };
    let cx = PredictContext {
        budget: &DecodeBudget::new(u64::MAX),
        caps: RequestCaps::UNBOUNDED,
    };
    let explained = runtime.block_on(explainer.explain(&inference, cx, request))?;
    let summary = write_files(&args, &explained)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Writes the maps (`IMAGE.npy`) and one overlay per label under `--out`.
fn write_files(
    args: &ExplainArgs,
    explained: &crate::serve::explain::Explained,
) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = args
        .image
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    let maps = args.out.join(format!("{stem}.npy"));
    std::fs::write(&maps, explained.npy())
        .with_context(|| format!("writing {}", maps.display()))?;
    let mut labels = Vec::new();
    for (i, l) in explained.labels.iter().enumerate() {
        let safe: String = l
            .label
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let overlay = args.out.join(format!("{stem}.{safe}.png"));
        std::fs::write(&overlay, explained.overlay_png(i))
            .with_context(|| format!("writing {}", overlay.display()))?;
        labels.push(LabelFile {
            label: l.label.clone(),
            score: l.score,
            overlay,
        });
    }
    Ok(Summary {
        model: args.model.clone(),
        method: explained.method,
        maps,
        labels,
    })
}
