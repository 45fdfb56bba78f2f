//! ONNX export against onnxruntime: the random-weight checkpoints of the
//! parity fixtures (tests/python/make_*_fixtures.py) are exported by
//! `vitrine::export`, checked by `onnx.checker.check_model` and run by
//! onnxruntime (tests/python/onnx_run.py), whose logits must equal
//! vitrine's own forward pass within 1e-4 (fp32) at batch 1 and, with a
//! dynamic batch, at 5; `probabilities` must be the softmax (sigmoid for
//! multi-label) of the logits.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};
use vitrine::export::{self, ExportError, ExportOptions, Precision};
use vitrine::model::{load_pretrained, save_pretrained, ProblemType};
use vitrine::train::TrainedModel;

use crate::support::TOL;

fn fixture(script: &'static str, name: &str) -> PathBuf {
    crate::common::python_fixtures(script)
        .join(name)
        .join("model")
}

fn vit(name: &str) -> PathBuf {
    fixture("tests/python/make_vit_fixtures.py", name)
}

fn dinov2(name: &str) -> PathBuf {
    fixture("tests/python/make_dinov2_fixtures.py", name)
}

/// How a fixture is prepared before export.
#[derive(Default, Clone, Copy)]
struct Prep {
    /// Writes a `preprocessor_config.json` resizing to `(height, width)`
    /// (without one, the default `ViTImageProcessor` gives 224 x 224).
    size: Option<(u32, u32)>,
    multi_label: bool,
}

/// A copy of `dir` with `prep` applied.
fn prepared(dir: &Path, prep: Prep) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    if let Some((height, width)) = prep.size {
        let cfg = serde_json::json!({
            "do_resize": true, "size": {"height": height, "width": width}, "resample": 2,
            "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "image_processor_type": "ViTImageProcessor",
        });
        std::fs::write(
            tmp.path().join("preprocessor_config.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
    }
    if prep.multi_label {
        let path = tmp.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cfg["problem_type"] = "multi_label_classification".into();
        std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    }
    tmp
}

/// What onnxruntime answered for one export.
struct Ran {
    reply: serde_json::Value,
}

impl Ran {
    fn f(&self, key: &str) -> f64 {
        self.reply[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no `{key}` in {}", self.reply))
    }
}

/// Exports `dir` with `opts`, runs 5 random images through vitrine and
/// onnxruntime, and checks the logits within `tol` (and probabilities).
fn check(dir: &Path, prep: Prep, opts: ExportOptions, tol: f64) -> Ran {
    let dir = prepared(dir, prep);
    let trained = TrainedModel::load(dir.path()).unwrap();
    let model = load_pretrained(dir.path(), Device::Cpu, None).unwrap();
    let exported = export::export(&model, &trained, &opts).unwrap();
    let onnx_path = dir.path().join("model.onnx");
    std::fs::write(&onnx_path, &exported.onnx).unwrap();

    let shape = &exported.metadata.input.shape;
    let (c, h, w) = (shape[1].unwrap(), shape[2].unwrap(), shape[3].unwrap());
    tch::manual_seed(7);
    let x = Tensor::randn([5, c, h, w], (tch::Kind::Float, Device::Cpu));
    let want = model.logits(&x).unwrap();
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("pixel_values", &x), ("logits", &want)], &io).unwrap();
    let reply = crate::common::python_json("tests/python/onnx_run.py", &[&onnx_path, &io]);
    let ran = Ran { reply };
    let name = dir.path().display().to_string();
    println!("{name} {:?}: {}", opts, ran.reply["batch1"]);
    assert!(ran.f("batch1") <= tol, "batch 1: {}", ran.reply);
    assert!(ran.f("probs1") <= 1e-5, "probabilities: {}", ran.reply);
    assert_eq!(ran.reply["dtype"], "float32");
    if opts.dynamic_batch {
        assert_eq!(ran.reply["input_shape"][0], serde_json::Value::Null);
        assert_eq!(ran.reply["n"], 5);
        assert!(ran.f("batchN") <= tol, "batch 5: {}", ran.reply);
        assert!(ran.f("probsN") <= 1e-5, "probabilities: {}", ran.reply);
    } else {
        assert_eq!(ran.reply["input_shape"][0], 1);
        assert_eq!(ran.reply["static_batch_refused"], true);
    }
    // The metadata in the file is the sidecar document.
    let meta = serde_json::to_value(&exported.metadata).unwrap();
    assert_eq!(ran.reply["metadata"], meta);
    assert_eq!(meta["labels"], serde_json::json!(model.labels()));
    ran
}

/// [`check`] of a LoRA model directory (exported on its merged weights).
pub fn check_lora_dir(dir: &Path) {
    check(dir, Prep::default(), dynamic(), 1e-4);
}

fn dynamic() -> ExportOptions {
    ExportOptions {
        dynamic_batch: true,
        ..Default::default()
    }
}

fn own(side: u32) -> Prep {
    sized(side, side)
}

fn sized(height: u32, width: u32) -> Prep {
    Prep {
        size: Some((height, width)),
        ..Default::default()
    }
}

fn cnn(name: &str) -> PathBuf {
    fixture("tests/python/make_cnn_fixtures.py", name)
}

#[test]
fn vit_matches_at_its_own_size_and_with_interpolated_positions() {
    check(&vit("cls_p8_s32_d2"), own(32), dynamic(), TOL);
    // No preprocessor: 224 px as `/predict` runs it, positions resampled.
    check(&vit("cls_p8_s32_d2"), Prep::default(), dynamic(), TOL);
    // One channel, no qkv bias, tanh GELU, eps 1e-6, batch fixed at 1.
    check(
        &vit("cls_p4_s16_d3_nobias"),
        own(16),
        ExportOptions::default(),
        TOL,
    );
    // Stored in bfloat16 and sharded.
    check(&vit("cls_bf16_sharded"), own(32), dynamic(), TOL);
}

#[test]
fn every_activation_matches() {
    for act in [
        "gelu",
        "gelu_python",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "gelu_accurate",
        "gelu_python_tanh",
        "gelu_10",
        "quick_gelu",
        "relu",
        "relu2",
        "relu6",
        "leaky_relu",
        "silu",
        "swish",
        "mish",
        "hardswish",
        "tanh",
        "sigmoid",
        "sqrtsoftplus",
        "laplace",
        "linear",
    ] {
        println!("activation {act}");
        check(&vit(&format!("act_{act}")), own(32), dynamic(), TOL);
    }
}

#[test]
fn dinov2_matches_with_swiglu_registers_and_resampled_positions() {
    check(&dinov2("cls_p7_s28"), own(28), dynamic(), TOL);
    check(&dinov2("cls_swiglu_p4_s16"), own(16), dynamic(), TOL);
    // Trained at 518, used at 224 (bicubic resampling of the 37x37 grid).
    check(&dinov2("cls_p14_s518"), own(224), dynamic(), TOL);
    check(&dinov2("registers_p4_s32"), own(32), dynamic(), TOL);
    // Registers at another size: antialiased resampling.
    check(
        &dinov2("registers_p4_s32"),
        own(20),
        ExportOptions::default(),
        TOL,
    );
}

#[test]
fn convnext_matches_with_and_without_layer_scale() {
    check(&cnn("cnx_s4_ls"), own(64), dynamic(), TOL);
    check(&cnn("cnx_s3_nols"), own(32), dynamic(), TOL);
    // Patch 2, stochastic depth configured, a non-square input.
    check(&cnn("cnx_s2_p2_droppath"), sized(40, 48), dynamic(), TOL);
    // One stage (no downsampling), relu, default 224 px, batch of 1.
    check(
        &cnn("cnx_s1_p8_relu"),
        Prep::default(),
        ExportOptions::default(),
        TOL,
    );
}

#[test]
fn resnet_matches_basic_and_bottleneck() {
    check(&cnn("rn_basic"), own(64), dynamic(), TOL);
    // Strided shortcut in the first stage, a non-square odd input.
    check(&cnn("rn_basic_dfs"), sized(45, 53), dynamic(), TOL);
    check(&cnn("rn_bottleneck"), own(64), dynamic(), TOL);
    // Stride in the first 1x1, GELU, multi-label.
    let prep = Prep {
        size: Some((64, 64)),
        multi_label: true,
    };
    check(
        &cnn("rn_bottleneck_dib"),
        prep,
        ExportOptions::default(),
        TOL,
    );
}

fn swin(name: &str) -> PathBuf {
    fixture("tests/python/make_swin_fixtures.py", name)
}

#[test]
fn swin_matches_with_padding_shifts_and_odd_sizes() {
    // 36 px, patch 4, window 4: 9x9 padded to 12x12, merging an odd side.
    check(&swin("pad_s36_w4"), own(36), dynamic(), TOL);
    // Pixels padded to whole patches first (34x38).
    check(&swin("pad_s36_w4"), sized(34, 38), dynamic(), TOL);
    // Non-square, window covering the shorter side (no shift), 3 stages.
    check(&swin("rect_w2_3stages"), sized(32, 48), dynamic(), TOL);
    // Absolute position embeddings, at their size and resampled.
    check(&swin("abs_pos"), own(32), dynamic(), TOL);
    check(
        &swin("abs_pos"),
        sized(48, 40),
        ExportOptions::default(),
        TOL,
    );
    // Shifted everywhere, no qkv bias, eps 1e-3, multi-label.
    let prep = Prep {
        size: Some((32, 32)),
        multi_label: true,
    };
    check(&swin("deep_2_2_6"), prep, dynamic(), TOL);
    // Window 7, one channel, tanh GELU, at another size.
    check(&swin("w7_s56_gelu_new"), sized(70, 84), dynamic(), TOL);
}

/// The fp16 bar on logits (fp16 weights and arithmetic, float32 I/O), as
/// docs/export.md states it.
const FP16_TOL: f64 = 1e-2;

#[test]
fn fp16_exports_stay_within_their_tolerance() {
    let fp16 = ExportOptions {
        precision: Precision::Fp16,
        ..dynamic()
    };
    for (dir, side) in [
        (vit("cls_p8_s32_d2"), 32),
        (dinov2("registers_p4_s32"), 32),
        (dinov2("cls_swiglu_p4_s16"), 16),
        (cnn("cnx_s4_ls"), 64),
        (cnn("rn_bottleneck"), 64),
        (swin("pad_s36_w4"), 36),
    ] {
        let ran = check(&dir, own(side), fp16, FP16_TOL);
        assert_eq!(ran.reply["metadata"]["precision"], "fp16");
    }
}

#[test]
fn multi_label_models_output_sigmoid_probabilities() {
    let prep = Prep {
        size: Some((32, 32)),
        multi_label: true,
    };
    let ran = check(&vit("cls_p8_s32_d2"), prep, dynamic(), TOL);
    assert_eq!(ran.reply["metadata"]["task"], "multi_label");
    assert_eq!(ran.reply["metadata"]["probabilities"], "sigmoid");
    let ran = check(&dinov2("cls_p7_s28"), own(28), dynamic(), TOL);
    assert_eq!(ran.reply["metadata"]["probabilities"], "softmax");
}

#[test]
fn later_opsets_match() {
    for opset in [18, 21] {
        let opts = ExportOptions { opset, ..dynamic() };
        let ran = check(&dinov2("cls_swiglu_p4_s16"), own(16), opts, TOL);
        assert_eq!(ran.reply["metadata"]["opset"], opset);
    }
}

#[test]
fn the_metadata_describes_the_preprocessing() {
    let ran = check(&vit("cls_p8_s32_d2"), own(32), dynamic(), TOL);
    let pre = &ran.reply["metadata"]["preprocessing"];
    assert_eq!(pre["resize"], serde_json::json!([32, 32]));
    assert_eq!(pre["resample"], "bilinear");
    assert_eq!(pre["center_crop"], serde_json::Value::Null);
    let mean: Vec<f64> = serde_json::from_value(pre["image_mean"].clone()).unwrap();
    assert!((mean[0] - 0.485).abs() < 1e-6);
    assert!((pre["rescale_factor"].as_f64().unwrap() - 1.0 / 255.0).abs() < 1e-9);
    assert_eq!(ran.reply["metadata"]["format"], "vitrine-onnx/1");
}

#[test]
fn unsupported_opsets_are_refused_by_name() {
    for opset in [11, 16, 22] {
        let opts = ExportOptions {
            opset,
            ..Default::default()
        };
        let err = export::export_dir(&vit("cls_p8_s32_d2"), &opts)
            .err()
            .expect("refused");
        assert!(matches!(err, ExportError::UnsupportedOpset(o) if o == opset));
        assert_eq!(err.code(), Some("unsupported_opset"));
        assert!(err.to_string().contains(&format!("opset {opset}")), "{err}");
    }
}

/// The README snippet's shortest-edge resize and centre crop (a ConvNeXt
/// processor: shortest edge 73 = 64 / 0.875, bicubic, crop 64) reproduce
/// vitrine's pipeline on a non-square image.
#[test]
fn the_readme_snippet_reproduces_a_shortest_edge_and_crop_pipeline() {
    let dir = prepared(&cnn("cnx_s4_ls"), Prep::default());
    let cfg = serde_json::json!({
        "image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 64},
        "crop_pct": 0.875, "resample": 3, "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    });
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let trained = TrainedModel::load(dir.path()).unwrap();
    let model = load_pretrained(dir.path(), Device::Cpu, None).unwrap();
    let exported = export::export(&model, &trained, &ExportOptions::default()).unwrap();
    let pre = &exported.metadata.preprocessing;
    assert_eq!(
        (pre.shortest_edge, pre.center_crop),
        (Some(73), Some([64, 64]))
    );
    std::fs::write(dir.path().join("model.onnx"), &exported.onnx).unwrap();

    let img = image::RgbImage::from_fn(91, 67, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 11 % 256) as u8,
            ((x * y) % 256) as u8,
        ])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(dir.path().join("cat.jpg"), &png).unwrap();
    let x = trained
        .pipeline
        .tensor_from_bytes(&png)
        .unwrap()
        .unsqueeze(0);
    let probs = model.logits(&x).unwrap().softmax(-1, tch::Kind::Float);
    let top = probs.argmax(-1, false).int64_value(&[0]);
    let want = probs.double_value(&[0, top]);
    let (label, got) = crate::common::run_readme_onnx_snippet(dir.path());
    println!(
        "snippet {label} {got}, vitrine {} {want}",
        model.labels()[top as usize]
    );
    assert_eq!(label, model.labels()[top as usize]);
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
}

/// The real DINOv2-small (22M parameters, 12 layers; see dinov2_real.rs)
/// at 224 px, fp32 and fp16. Skipped, printed, only when it cannot be downloaded.
#[test]
fn real_dinov2_small_matches_onnxruntime() {
    let backbone = match crate::common::fetch_dinov2_small() {
        Ok(dir) => dir,
        Err(e) => return println!("SKIPPED: dinov2-small could not be downloaded:\n{e}"),
    };
    // With a random 5-label head, saved as a trained model would be.
    let labels: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let model = load_pretrained(&backbone, Device::Cpu, Some(&labels)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_pretrained(&model, &dir, ProblemType::SingleLabel).unwrap();
    let pre = "preprocessor_config.json";
    std::fs::copy(backbone.join(pre), dir.join(pre)).unwrap();
    let started = std::time::Instant::now();
    let exported = export::export_dir(&dir, &dynamic()).unwrap();
    println!(
        "dinov2-small: {} bytes of ONNX in {:.2?}",
        exported.onnx.len(),
        started.elapsed()
    );
    check(&dir, Prep::default(), dynamic(), TOL);
    let fp16 = ExportOptions {
        precision: Precision::Fp16,
        ..dynamic()
    };
    check(&dir, Prep::default(), fp16, FP16_TOL);
}

#[test]
fn the_command_writes_the_file_and_its_sidecar() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("swin.onnx");
    let args = |format: &str| export::command::ExportArgs {
        model: swin("rect_w2_3stages").display().to_string(),
        format: format.into(),
        opset: 18,
        dynamic_batch: true,
        fp16: false,
        out: file.clone(),
    };
    export::command::run(args("onnx")).unwrap();
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("swin.json")).unwrap()).unwrap();
    assert_eq!(sidecar["model_type"], "swin");
    assert_eq!(sidecar["opset"], 18);
    assert_eq!(sidecar["input"]["shape"][0], serde_json::Value::Null);
    let props = crate::common::python_json("tests/python/onnx_metadata.py", &[&file]);
    assert_eq!(props, sidecar);
    let err = export::command::run(args("tflite"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported export format `tflite`"), "{err}");
}
