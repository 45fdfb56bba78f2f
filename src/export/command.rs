//! `vitrine export`: a model directory or Hub id to an ONNX file and its
//! sidecar metadata (`OUT.json`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{ExportOptions, Precision, DEFAULT_OPSET, FORMATS};

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A model directory in the Hugging Face layout, or a Hub id.
    #[arg(long)]
    pub model: String,
    /// The file format (only `onnx`).
    #[arg(long, default_value = "onnx")]
    pub format: String,
    /// The ONNX opset to write (17 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    pub opset: i64,
    /// A symbolic batch axis; without it the file takes batches of 1.
    #[arg(long)]
    pub dynamic_batch: bool,
    /// fp16 weights and computation (inputs and outputs stay float32).
    #[arg(long)]
    pub fp16: bool,
    /// The `.onnx` file to write; the metadata goes beside it with `.json`.
    pub out: PathBuf,
}

impl ExportArgs {
    pub fn options(&self) -> ExportOptions {
        ExportOptions {
            opset: self.opset,
            dynamic_batch: self.dynamic_batch,
            precision: if self.fp16 {
                Precision::Fp16
            } else {
                Precision::Fp32
            },
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if !FORMATS.contains(&args.format.as_str()) {
        anyhow::bail!(
            "unsupported export format `{}` (supported: {})",
            args.format,
            FORMATS.join(", ")
        );
    }
    let opts = args.options();
    opts.check()?;
    let dir =
        crate::model::resolve_model_source(&args.model, &crate::model::HubOptions::from_env())?;
    let exported = super::export_dir(&dir, &opts)?;
    std::fs::write(&args.out, &exported.onnx)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let sidecar = args.out.with_extension("json");
    std::fs::write(&sidecar, serde_json::to_vec_pretty(&exported.metadata)?)
        .with_context(|| format!("writing {}", sidecar.display()))?;
    eprintln!(
        "wrote {} ({} bytes) and {}",
        args.out.display(),
        exported.onnx.len(),
        sidecar.display()
    );
    Ok(())
}
