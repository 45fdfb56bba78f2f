//! DINOv2 of vitrine against `transformers`' own `Dinov2ForImageClassification`
//! and `Dinov2Model`: tiny random checkpoints made by
//! tests/python/make_dinov2_fixtures.py (one Python run for the whole binary)
//! load through `load_pretrained` and give the reference logits and features
//! (concat of CLS and mean patch token) within 1e-4 (fp32), at the training
//! size and at other sizes (bicubic position-embedding interpolation).
//! Also: saving back to a directory `transformers` loads unchanged, strict
//! loading, groups and freezing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use vitrine::model::load::load_pretrained_reporting;
use vitrine::model::{
    load_pretrained, save_pretrained, CheckpointFormat, Dinov2Config, Model, ModelConfig,
    ModelError, ParamGroup, ProblemType, Trainable,
};

const TOL: f64 = 1e-4;

/// The fixture root, generated once per test binary.
fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_dinov2_fixtures.py")
}

fn io_file(name: &str, file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(name).join(file))
        .unwrap()
        .into_iter()
        .collect()
}

fn io(name: &str) -> HashMap<String, Tensor> {
    io_file(name, "io.safetensors")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join(name).join("model")
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let d = (got - want).abs().max().double_value(&[]);
    println!("{what}: max abs diff {d:.3e}");
    assert!(d <= TOL, "{what}: max abs diff {d} > {TOL}");
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn features(m: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.net.features(x, false))
}

fn logits(m: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.net.forward_t(x, false))
}

/// Features and logits at the training size and at the interpolated size.
fn check_fixture(name: &str, m: &Model) {
    let io = io(name);
    for suffix in ["", "_interp"] {
        let x = &io[&format!("pixel_values{suffix}")];
        assert_close(
            &format!("{name} features{suffix}"),
            &features(m, x),
            &io[&format!("features{suffix}")],
        );
        if let Some(want) = io.get(&format!("logits{suffix}")) {
            assert_close(&format!("{name} logits{suffix}"), &logits(m, x), want);
        }
    }
}

#[test]
fn classifier_patch7_matches_transformers_including_interpolation() {
    let (m, report) =
        load_pretrained_reporting(&model_dir("cls_p7_s28"), Device::Cpu, None).unwrap();
    assert_eq!(report.format, CheckpointFormat::Transformers);
    assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
    assert_eq!(m.config.model_type(), "dinov2");
    assert_eq!(m.labels(), labels(&["cat", "dog", "fox", "owl", "yak"]));
    assert_eq!(m.net.num_layers(), 2);
    // The classifier reads [CLS, mean patch]: twice the hidden width.
    assert_eq!(m.vs.variables()["classifier.weight"].size(), [5, 96]);
    check_fixture("cls_p7_s28", &m);
}

#[test]
fn swiglu_without_qkv_bias_matches_transformers_at_three_sizes() {
    let m = load_pretrained(&model_dir("cls_swiglu_p4_s16"), Device::Cpu, None).unwrap();
    let vars = m.vs.variables();
    assert!(!vars.contains_key("dinov2.encoder.layer.0.attention.attention.query.bias"));
    assert_eq!(
        vars["dinov2.encoder.layer.2.mlp.weights_in.weight"].size(),
        [144, 34]
    );
    let ModelConfig::Dinov2(c) = &m.config else {
        panic!("dinov2")
    };
    assert!(c.use_swiglu_ffn && c.layerscale_value == 0.1);
    check_fixture("cls_swiglu_p4_s16", &m);
    // 13x10 px: not a multiple of the patch; a 3x2 grid, as transformers crops.
    let small = io_file("cls_swiglu_p4_s16", "io_small.safetensors");
    let x = &small["pixel_values"];
    assert!(m.check_input(x).is_ok());
    assert_close(
        "swiglu 13x10 features",
        &features(&m, x),
        &small["features"],
    );
    assert_close("swiglu 13x10 logits", &logits(&m, x), &small["logits"]);
}

#[test]
fn bare_dinov2_model_loads_with_a_new_head() {
    let dir = model_dir("bare_p8_s32");
    let err = load_pretrained(&dir, Device::Cpu, None).unwrap_err();
    assert!(err.to_string().contains("no classification head"), "{err}");
    let (m, report) =
        load_pretrained_reporting(&dir, Device::Cpu, Some(&labels(&["p", "q", "r"]))).unwrap();
    assert_eq!(report.format, CheckpointFormat::TransformersBare);
    assert!(report.new_head && report.skipped.is_empty(), "{report:?}");
    // use_mask_token false: no mask token variable.
    assert!(!m
        .vs
        .variables()
        .contains_key("dinov2.embeddings.mask_token"));
    check_fixture("bare_p8_s32", &m);
    let io = io("bare_p8_s32");
    assert_eq!(logits(&m, &io["pixel_values"]).size(), [2, 3]);
    let bias = &m.vs.variables()["classifier.bias"];
    assert_eq!(bias.abs().sum(Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn dinov2_small_geometry_interpolates_518_to_224() {
    let m = load_pretrained(&model_dir("cls_p14_s518"), Device::Cpu, None).unwrap();
    assert_eq!(
        m.vs.variables()["dinov2.embeddings.position_embeddings"].size(),
        [1, 37 * 37 + 1, 48]
    );
    check_fixture("cls_p14_s518", &m);
}

#[test]
fn saved_model_loads_in_transformers_with_the_same_logits() {
    let io = io("cls_p7_s28");
    let x = &io["pixel_values_interp"];
    let new_labels = labels(&["left", "right"]);
    let m = load_pretrained(&model_dir("cls_p7_s28"), Device::Cpu, Some(&new_labels)).unwrap();
    assert_close(
        "features after new head",
        &features(&m, x),
        &io["features_interp"],
    );
    let want = logits(&m, x);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("best");
    save_pretrained(&m, &out, ProblemType::MultiLabel).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "dinov2");
    assert_eq!(
        config["architectures"],
        serde_json::json!(["Dinov2ForImageClassification"])
    );

    // transformers' check reads `pixel_values` from a safetensors file.
    let input = tmp.path().join("input.safetensors");
    Tensor::write_safetensors(&[("pixel_values", x)], &input).unwrap();
    // Fails the test if transformers refuses the saved directory.
    let reply = crate::common::python_json("tests/python/check_saved_vit.py", &[&out, &input]);
    assert_eq!(reply["class"], "Dinov2ForImageClassification");
    assert_eq!(reply["problem_type"], "multi_label_classification");
    assert_eq!(
        reply["id2label"],
        serde_json::json!({"0": "left", "1": "right"})
    );
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    assert_close(
        "saved logits in transformers",
        &Tensor::from_slice2(&hf),
        &want,
    );

    let (back, report) = load_pretrained_reporting(&out, Device::Cpu, None).unwrap();
    assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
    assert_eq!(back.labels(), new_labels);
    assert_close("reloaded logits", &logits(&back, x), &want);
}

#[test]
fn registers_model_matches_transformers_and_round_trips() {
    let (m, report) =
        load_pretrained_reporting(&model_dir("registers_p4_s32"), Device::Cpu, None).unwrap();
    assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
    assert_eq!(m.config.model_type(), "dinov2_with_registers");
    let vars = m.vs.variables();
    assert_eq!(
        vars["dinov2_with_registers.embeddings.register_tokens"].size(),
        [1, 3, 32]
    );
    assert_eq!(
        m.param_group("dinov2_with_registers.encoder.layer.1.norm1.weight"),
        Some(ParamGroup::Layer(1))
    );
    check_fixture("registers_p4_s32", &m);

    let io = io("registers_p4_s32");
    let x = &io["pixel_values_interp"];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    save_pretrained(&m, &out, ProblemType::SingleLabel).unwrap();
    let input = tmp.path().join("input.safetensors");
    Tensor::write_safetensors(&[("pixel_values", x)], &input).unwrap();
    // Fails the test if transformers refuses the saved directory.
    let reply = crate::common::python_json("tests/python/check_saved_vit.py", &[&out, &input]);
    assert_eq!(reply["class"], "Dinov2WithRegistersForImageClassification");
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    assert_close(
        "registers saved logits in transformers",
        &Tensor::from_slice2(&hf),
        &io["logits_interp"],
    );
}

#[test]
fn strict_loading_names_a_missing_layer_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir("cls_p7_s28");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "dinov2.encoder.layer.1.layer_scale2.lambda1");
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    match load_pretrained(tmp.path(), Device::Cpu, None).unwrap_err() {
        ModelError::MissingTensors(names) => {
            assert_eq!(names, ["dinov2.encoder.layer.1.layer_scale2.lambda1"])
        }
        other => panic!("expected missing tensors, got {other}"),
    }
}

#[test]
fn groups_and_freezing_follow_the_layers() {
    let m = load_pretrained(&model_dir("cls_swiglu_p4_s16"), Device::Cpu, None).unwrap();
    let layers = m.net.num_layers();
    assert_eq!(layers, 3);
    use ParamGroup::*;
    for (name, want) in [
        ("dinov2.embeddings.mask_token", Embeddings),
        ("dinov2.encoder.layer.2.layer_scale1.lambda1", Layer(2)),
        ("dinov2.encoder.layer.0.mlp.weights_out.bias", Layer(0)),
        ("dinov2.layernorm.weight", FinalNorm),
        ("classifier.weight", Head),
    ] {
        assert_eq!(m.param_group(name), Some(want), "{name}");
    }
    // Every variable has a group; q, k, v (no bias), out, weights_in/out,
    // 2 norms (weight + bias each) and 2 layer scales per layer.
    assert_eq!(m.layer_variables(1).len(), 3 + 2 + 4 + 4 + 2);
    m.set_trainable(Trainable::LastLayers(1));
    let x = Tensor::randn([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    m.net.forward_t(&x, true).sum(Kind::Float).backward();
    for (name, group, t) in m.grouped_variables() {
        let trains = matches!(group, Layer(2) | FinalNorm | Head);
        assert_eq!(t.requires_grad(), trains, "{name}");
        if name != "dinov2.embeddings.mask_token" {
            assert_eq!(t.grad().defined(), trains, "{name}");
        }
    }
    assert_eq!(m.set_trainable(Trainable::HeadOnly), 3 * 68 + 3);
}

#[test]
fn a_random_model_from_config_runs_with_drop_path_in_training() {
    let config = Dinov2Config {
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        image_size: 8,
        patch_size: 4,
        drop_path_rate: 0.5,
        use_swiglu_ffn: true,
        ..Dinov2Config::default()
    };
    let m = Model::from_config(
        ModelConfig::Dinov2(config),
        labels(&["a", "b", "c"]),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        m.preprocessor_json["image_processor_type"],
        "BitImageProcessor"
    );
    let x = Tensor::randn([4, 3, 12, 8], (Kind::Float, Device::Cpu));
    assert_eq!(m.logits(&x).unwrap().size(), [4, 3]);
    let f = m.net.features(&x, true);
    assert_eq!(f.size(), [4, 32]);
    // Eval is deterministic; drop path makes training passes differ.
    let e1 = m.logits(&x).unwrap();
    assert_eq!(
        (e1 - m.logits(&x).unwrap()).abs().max().double_value(&[]),
        0.0
    );
    let t1 = m.net.forward_t(&x, true);
    let t2 = m.net.forward_t(&x, true);
    assert!((t1 - t2).abs().max().double_value(&[]) > 0.0);
    assert!(m
        .logits(&Tensor::randn([1, 3, 3, 8], (Kind::Float, Device::Cpu)))
        .is_err());
}

/// Logits of `transformers` for the model in `dir` on `x` (DINOv2
/// interpolates position embeddings whenever the grid differs).
fn hf_logits(dir: &Path, x: &Tensor) -> Tensor {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.safetensors");
    Tensor::write_safetensors(&[("pixel_values", x)], &input).unwrap();
    let reply = crate::common::python_json("tests/python/check_saved_vit.py", &[dir, &input]);
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    Tensor::from_slice2(&hf)
}

#[test]
fn a_registers_model_at_a_new_size_starts_from_transformers_antialiased_interpolation() {
    // 32 px (8x8 grid) down to 20 px (5x5): Dinov2WithRegisters interpolates
    // with antialiasing, so the resampled positions must too.
    let dir = model_dir("registers_p4_s32");
    let mut m = load_pretrained(&dir, Device::Cpu, None).unwrap();
    let x = Tensor::randn([2, 3, 20, 20], (tch::Kind::Float, Device::Cpu));
    let want = hf_logits(&dir, &x);
    m.set_image_size(20).unwrap();
    assert_eq!(m.config.image_size(), 20);
    assert_close("registers resized logits", &logits(&m, &x), &want);
    // Plain DINOv2 interpolates without antialiasing.
    let dir = model_dir("cls_p7_s28");
    let mut m = load_pretrained(&dir, Device::Cpu, None).unwrap();
    let x = Tensor::randn([2, 3, 21, 21], (tch::Kind::Float, Device::Cpu));
    let want = hf_logits(&dir, &x);
    m.set_image_size(21).unwrap();
    assert_close("dinov2 resized logits", &logits(&m, &x), &want);
}
