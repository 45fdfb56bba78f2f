//! The Swin Transformer of vitrine against `transformers`: tiny random
//! checkpoints made by tests/python/make_swin_fixtures.py (one Python run
//! for the whole binary) load through `load_pretrained` and give the
//! reference logits and pooled features within 1e-4 (fp32), with window
//! padding, patch padding, non-square inputs, absolute position embeddings
//! (interpolated at another size) and three stages. Also: saving back to a
//! directory `transformers` loads unchanged, groups and freezing by stage,
//! stochastic depth in training only, and input sizes refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::support::{self, assert_close, labels, max_diff};
use tch::{Device, Kind, Tensor};
use vitrine::model::load::load_pretrained_reporting;
use vitrine::model::{
    load_pretrained, save_pretrained, CheckpointFormat, Model, ModelConfig, ParamGroup,
    ProblemType, SwinConfig, Trainable,
};

/// Every fixture of make_swin_fixtures.py with a classification head.
const CLASSIFIERS: [&str; 5] = [
    "pad_s36_w4",
    "rect_w2_3stages",
    "abs_pos",
    "deep_2_2_6",
    "w7_s56_gelu_new",
];

fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_swin_fixtures.py")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    support::io_of(fixtures(), name)
}

fn model_dir(name: &str) -> PathBuf {
    support::model_dir_of(fixtures(), name)
}

/// Logits and pooled features of `m` for the fixture input `suffix` ("" or "_2").
fn check_against_reference(name: &str, m: &Model, io: &HashMap<String, Tensor>, suffix: &str) {
    let x = &io[&format!("pixel_values{suffix}")];
    m.check_input(x).unwrap();
    assert_close(
        &format!("{name} pooled{suffix}"),
        &tch::no_grad(|| m.net.features(x, false)),
        &io[&format!("pooled{suffix}")],
    );
    assert_close(
        &format!("{name} logits{suffix}"),
        &tch::no_grad(|| m.net.forward_t(x, false)),
        &io[&format!("logits{suffix}")],
    );
}

#[test]
fn every_classifier_fixture_matches_transformers() {
    for name in CLASSIFIERS {
        let (m, report) = load_pretrained_reporting(&model_dir(name), Device::Cpu, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.format, CheckpointFormat::Transformers, "{name}");
        assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
        assert_eq!(m.config.model_type(), "swin");
        let io = io(name);
        check_against_reference(name, &m, &io, "");
        if io.contains_key("pixel_values_2") {
            check_against_reference(name, &m, &io, "_2");
        }
    }
}

#[test]
fn padded_feature_maps_and_patches_match_transformers() {
    // 36 px / patch 4 = 9x9, window 4; then 34x38 px, padded to whole patches.
    let m = load_pretrained(&model_dir("pad_s36_w4"), Device::Cpu, None).unwrap();
    assert_eq!(m.labels(), labels(&["cat", "dog", "fox"]));
    let io = io("pad_s36_w4");
    assert_eq!(io["pixel_values_2"].size(), [2, 3, 34, 38]);
    check_against_reference("pad_s36_w4", &m, &io, "");
    check_against_reference("pad_s36_w4", &m, &io, "_2");
    assert_eq!(m.net.num_layers(), 2);
}

#[test]
fn three_stages_count_as_three_layers() {
    let m = load_pretrained(&model_dir("deep_2_2_6"), Device::Cpu, None).unwrap();
    assert_eq!(m.net.num_layers(), 3);
    assert_eq!(m.config.num_hidden_layers(), 3);
    assert!(!m
        .vs
        .variables()
        .contains_key("swin.encoder.layers.0.blocks.0.attention.self.query.bias"));
    check_against_reference("deep_2_2_6", &m, &io("deep_2_2_6"), "");
}

#[test]
fn bare_swin_model_loads_with_a_new_head() {
    let dir = model_dir("bare_model");
    let err = load_pretrained(&dir, Device::Cpu, None).unwrap_err();
    assert!(err.to_string().contains("no classification head"), "{err}");
    let (m, report) =
        load_pretrained_reporting(&dir, Device::Cpu, Some(&labels(&["p", "q"]))).unwrap();
    assert_eq!(report.format, CheckpointFormat::TransformersBare);
    assert!(report.new_head && report.skipped.is_empty(), "{report:?}");
    let io = io("bare_model");
    assert_close(
        "bare pooled",
        &tch::no_grad(|| m.net.features(&io["pixel_values"], false)),
        &io["pooled"],
    );
    let bias = &m.vs.variables()["classifier.bias"];
    assert_eq!(bias.abs().sum(Kind::Float).double_value(&[]), 0.0);
}

/// Saves `m`, has `transformers` load the directory and run `pixel_values`
/// of `io_file`, and returns its logits; checks class and labels.
fn transformers_logits(m: &Model, out: &Path, io_file: &Path, want_labels: &[String]) -> Tensor {
    save_pretrained(m, out, ProblemType::SingleLabel).unwrap();
    let reply = crate::common::python_json("tests/python/check_saved_vit.py", &[out, io_file]);
    assert_eq!(reply["class"], "SwinForImageClassification");
    assert_eq!(reply["problem_type"], "single_label_classification");
    let id2label: serde_json::Map<String, serde_json::Value> = want_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    assert_eq!(reply["id2label"], serde_json::Value::Object(id2label));
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    Tensor::from_slice2(&hf)
}

#[test]
fn saved_models_load_in_transformers_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["pad_s36_w4", "abs_pos", "rect_w2_3stages"] {
        let io_file = fixtures().join(name).join("io.safetensors");
        let x = &io(name)["pixel_values"];
        let new_labels = labels(&["left", "right"]);
        let m = load_pretrained(&model_dir(name), Device::Cpu, Some(&new_labels)).unwrap();
        let logits = tch::no_grad(|| m.net.forward_t(x, false));
        let out = tmp.path().join(name);
        let hf = transformers_logits(&m, &out, &io_file, &new_labels);
        assert_close(
            &format!("{name} saved logits in transformers"),
            &hf,
            &logits,
        );

        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(saved["architectures"][0], "SwinForImageClassification");
        let pre: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("preprocessor_config.json")).unwrap())
                .unwrap();
        assert_eq!(pre["resample"], 3, "{pre}");

        let (back, report) = load_pretrained_reporting(&out, Device::Cpu, None).unwrap();
        assert!(report.skipped.is_empty() && !report.new_head);
        let mut want = m.config.clone();
        if let ModelConfig::Swin(c) = &mut want {
            c.hf.problem_type = Some("single_label_classification".into());
        }
        assert_eq!(back.config, want, "the config round-trips");
        assert_close(
            &format!("{name} reloaded logits"),
            &tch::no_grad(|| back.net.forward_t(x, false)),
            &logits,
        );
    }
}

fn tiny_config() -> SwinConfig {
    SwinConfig {
        image_size: 32,
        patch_size: 4,
        embed_dim: 8,
        depths: vec![2, 2],
        num_heads: vec![2, 2],
        window_size: 4,
        ..SwinConfig::default()
    }
}

#[test]
fn a_random_model_from_config_is_initialised_like_transformers_and_saves() {
    let config = SwinConfig {
        use_absolute_embeddings: true,
        ..tiny_config()
    };
    let m = Model::from_config(
        ModelConfig::Swin(config),
        labels(&["a", "b", "c"]),
        Device::Cpu,
    )
    .unwrap();
    let vars = m.vs.variables();
    let sum = |n: &str| vars[n].abs().sum(Kind::Float).double_value(&[]);
    // Zero tables and positions, unit norms, as `_init_weights`.
    assert_eq!(
        sum("swin.encoder.layers.1.blocks.1.attention.self.relative_position_bias_table"),
        0.0
    );
    assert_eq!(
        vars["swin.encoder.layers.1.blocks.1.attention.self.relative_position_bias_table"].size(),
        [49, 2]
    );
    assert_eq!(sum("swin.embeddings.position_embeddings"), 0.0);
    assert_eq!(sum("swin.layernorm.weight"), 16.0);
    assert!(!vars.contains_key("swin.encoder.layers.1.downsample.reduction.weight"));
    assert_eq!(
        vars["swin.encoder.layers.0.downsample.reduction.weight"].size(),
        [16, 32]
    );
    let std = vars["swin.encoder.layers.0.blocks.0.intermediate.dense.weight"]
        .std(true)
        .double_value(&[]);
    assert!((std - 0.02).abs() < 0.004, "{std}");

    // transformers reads the saved directory as it is.
    let tmp = tempfile::tempdir().unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let io_file = tmp.path().join("io.safetensors");
    Tensor::write_safetensors(&[("pixel_values", &x)], &io_file).unwrap();
    let hf = transformers_logits(
        &m,
        &tmp.path().join("model"),
        &io_file,
        &labels(&["a", "b", "c"]),
    );
    assert_close(
        "from_config logits in transformers",
        &hf,
        &m.logits(&x).unwrap(),
    );
}

#[test]
fn groups_cover_every_variable_and_freezing_follows_stages() {
    for name in CLASSIFIERS {
        let m = load_pretrained(&model_dir(name), Device::Cpu, None).unwrap();
        let layers = m.net.num_layers();
        // Panics on a variable without a group.
        let grouped = m.grouped_variables();
        assert_eq!(grouped.len(), m.vs.variables().len());
        let named = m.vs.variables();
        let vars = m.vs.variables_.lock().unwrap();
        for var in &vars.trainable_variables {
            let name = named
                .iter()
                .find(|(_, t)| t.data_ptr() == var.tensor.data_ptr())
                .map(|(n, _)| n.clone())
                .unwrap();
            let group = m.param_group(&name).unwrap();
            assert_eq!(var.group, group.optimizer_group(layers), "{name}");
        }
    }

    let m = load_pretrained(&model_dir("deep_2_2_6"), Device::Cpu, None).unwrap();
    // A block without qkv biases has 14 tensors; patch merging 3.
    assert_eq!(m.layer_variables(0).len(), 2 * 14 + 3);
    assert_eq!(m.layer_variables(2).len(), 6 * 14);
    m.set_trainable(Trainable::LastLayers(1));
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    m.net.forward_t(&x, true).sum(Kind::Float).backward();
    for (name, group, t) in m.grouped_variables() {
        let trains = matches!(
            group,
            ParamGroup::Layer(2) | ParamGroup::FinalNorm | ParamGroup::Head
        );
        assert_eq!(t.requires_grad(), trains, "{name}");
        assert_eq!(t.grad().defined(), trains, "{name}");
    }
}

#[test]
fn stochastic_depth_acts_in_training_only() {
    let m = |drop_path_rate| {
        Model::from_config(
            ModelConfig::Swin(SwinConfig {
                drop_path_rate,
                ..tiny_config()
            }),
            labels(&["a", "b"]),
            Device::Cpu,
        )
        .unwrap()
    };
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let dropping = m(0.5);
    let eval = tch::no_grad(|| dropping.net.features(&x, false));
    assert!(eval.equal(&tch::no_grad(|| dropping.net.features(&x, false))));
    let train = tch::no_grad(|| dropping.net.features(&x, true));
    assert!(max_diff(&train, &eval) > 1e-3, "drop path did nothing");
    // No stochastic depth, no dropout: training computes the same function.
    let plain = m(0.0);
    let d = max_diff(
        &tch::no_grad(|| plain.net.features(&x, true)),
        &tch::no_grad(|| plain.net.features(&x, false)),
    );
    assert!(d < 1e-6, "{d}");
}

#[test]
fn inputs_smaller_than_a_window_and_sizes_are_refused_by_name() {
    let mut m = load_pretrained(&model_dir("pad_s36_w4"), Device::Cpu, None).unwrap();
    let f = (Kind::Float, Device::Cpu);
    // 16 px: 4x4 then 2x2, smaller than the 4x4 window.
    let err = m
        .check_input(&Tensor::zeros([1, 3, 16, 16], f))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stage 1") && err.contains("`window_size` 4") && err.contains("28 px"),
        "{err}"
    );
    assert!(m.check_input(&Tensor::zeros([1, 3, 28, 40], f)).is_ok());
    // No absolute embeddings: a new size only changes the config.
    m.set_image_size(64).unwrap();
    assert_eq!(m.image_size(), 64);
    let err = m.set_image_size(16).unwrap_err().to_string();
    assert!(err.contains("window"), "{err}");
}

#[test]
fn a_new_image_size_resamples_absolute_positions_as_transformers_interpolates() {
    // 32 px (8x8) set to 48 px (12x12): at 48 px the resampled table gives
    // what the original model gives by interpolating on the fly (checked
    // against transformers at 48x40 in `every_classifier_fixture_matches_transformers`).
    let mut m = load_pretrained(&model_dir("abs_pos"), Device::Cpu, None).unwrap();
    m.set_image_size(48).unwrap();
    assert_eq!(
        m.vs.variables()["swin.embeddings.position_embeddings"].size(),
        [1, 144, 16]
    );
    let x = Tensor::randn([1, 3, 48, 48], (Kind::Float, Device::Cpu));
    let fresh = load_pretrained(&model_dir("abs_pos"), Device::Cpu, None).unwrap();
    assert_close(
        "resampled positions",
        &tch::no_grad(|| m.net.forward_t(&x, false)),
        &tch::no_grad(|| fresh.net.forward_t(&x, false)),
    );
}

#[test]
fn preflight_accepts_swin_and_names_what_it_refuses() {
    use vitrine::model::preflight::{check_base_model, check_config};
    let info = check_base_model(&model_dir("pad_s36_w4"), Some(64)).unwrap();
    assert_eq!((info.model_type.as_str(), info.patch_size), ("swin", 4));
    // 16 px leaves stage 1 a 2x2 map under a 4x4 window.
    let err = check_base_model(&model_dir("pad_s36_w4"), Some(16))
        .unwrap_err()
        .to_string();
    assert!(err.contains("window"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(&config, r#"{"model_type": "swinv2", "depths": [2, 2]}"#).unwrap();
    let err = check_config(&config, None).unwrap_err().to_string();
    for name in ["`swinv2`", "vit", "dinov2", "swin,", "convnext", "resnet"] {
        assert!(err.contains(name), "{name}: {err}");
    }
    std::fs::write(
        &config,
        r#"{"model_type": "swin", "num_heads": [3, 6, 12]}"#,
    )
    .unwrap();
    let err = check_config(&config, None).unwrap_err().to_string();
    assert!(err.contains("`num_heads` has 3 entries"), "{err}");
}

#[test]
fn index_buffers_of_older_checkpoints_are_skipped_by_name() {
    // `transformers` 4 saved each block's `relative_position_index` (int64).
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir("pad_s36_w4");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let index = |s: usize, b: usize| {
        format!("swin.encoder.layers.{s}.blocks.{b}.attention.self.relative_position_index")
    };
    for (s, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let t = Tensor::arange(256, (Kind::Int64, Device::Cpu)).view([16, 16]);
        tensors.push((index(s, b), t));
    }
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    vitrine::model::preflight::check_base_model(tmp.path(), None).unwrap();
    let (m, report) = load_pretrained_reporting(tmp.path(), Device::Cpu, None).unwrap();
    assert_eq!(report.skipped.len(), 4, "{report:?}");
    assert!(report.skipped.contains(&index(1, 1)), "{report:?}");
    assert!(report.converted_from.is_empty());
    let io = io("pad_s36_w4");
    assert_close(
        "with index buffers",
        &tch::no_grad(|| m.net.forward_t(&io["pixel_values"], false)),
        &io["logits"],
    );
}
