//! ConvNeXt and ResNet of vitrine against `transformers`: tiny random
//! checkpoints made by tests/python/make_cnn_fixtures.py (one Python run for
//! the whole binary) give the reference eval logits and pooled features
//! within 1e-4; one training step (train-mode forward, cross-entropy, SGD
//! lr 0.1, second forward) gives the reference logits within 1e-4 and batch
//! norm statistics within 1e-5; frozen stages keep their statistics; saved
//! models load in `transformers` with no missing or unexpected keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::support::{self, assert_close, assert_close_tol, labels, max_diff};
use tch::{Device, Kind, Tensor};
use vitrine::model::load::load_pretrained_reporting;
use vitrine::model::preflight::check_base_model;
use vitrine::model::{
    load_pretrained, save_pretrained, CheckpointFormat, Model, ModelConfig, ParamGroup,
    ProblemType, Trainable,
};

const STATS_TOL: f64 = 1e-5;
const LR: f64 = 0.1;

const CONVNEXT: [&str; 4] = [
    "cnx_s4_ls",
    "cnx_s3_nols",
    "cnx_s2_p2_droppath",
    "cnx_s1_p8_relu",
];
const RESNET: [&str; 4] = [
    "rn_basic",
    "rn_basic_dfs",
    "rn_bottleneck",
    "rn_bottleneck_dib",
];

fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_cnn_fixtures.py")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    support::io_of(fixtures(), name)
}

fn model_dir(name: &str) -> PathBuf {
    support::model_dir_of(fixtures(), name)
}

fn eval_logits(m: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.net.forward_t(x, false))
}

/// Batch-norm buffers (running statistics and counters), copied.
fn buffers(m: &Model) -> HashMap<String, Tensor> {
    let vars = m.vs.variables();
    m.buffer_names()
        .into_iter()
        .map(|n| {
            let t = vars[&n].copy();
            (n, t)
        })
        .collect()
}

fn check_eval(name: &str) {
    let io = io(name);
    let (m, report) = load_pretrained_reporting(&model_dir(name), Device::Cpu, None).unwrap();
    assert_eq!(report.format, CheckpointFormat::Transformers, "{name}");
    assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
    let x = &io["pixel_values"];
    assert_close(
        &format!("{name} pooled"),
        &tch::no_grad(|| m.net.features(x, false)),
        &io["pooled"],
    );
    assert_close(
        &format!("{name} logits"),
        &eval_logits(&m, x),
        &io["logits"],
    );
    assert_eq!(m.net.num_layers(), m.config.num_hidden_layers(), "{name}");
}

#[test]
fn convnext_eval_logits_and_pooled_features_match_transformers() {
    for name in CONVNEXT {
        check_eval(name);
    }
    let m = load_pretrained(&model_dir("cnx_s3_nols"), Device::Cpu, None).unwrap();
    let vars = m.vs.variables();
    assert!(!vars.keys().any(|k| k.ends_with("layer_scale_parameter")));
    assert!(m.buffer_names().is_empty());
    let m = load_pretrained(&model_dir("cnx_s4_ls"), Device::Cpu, None).unwrap();
    assert!(m
        .vs
        .variables()
        .contains_key("convnext.encoder.stages.2.layers.1.layer_scale_parameter"));
    assert_eq!(m.net.num_layers(), 4);
}

#[test]
fn resnet_eval_logits_and_pooled_features_match_transformers() {
    for name in RESNET {
        check_eval(name);
    }
    let m = load_pretrained(&model_dir("rn_basic"), Device::Cpu, None).unwrap();
    let counter = &m.vs.variables()["resnet.embedder.embedder.normalization.num_batches_tracked"];
    assert_eq!(counter.kind(), Kind::Int64);
    assert!(
        counter.int64_value(&[]) > 0,
        "the perturbed count is loaded"
    );
}

#[test]
fn bare_backbones_load_with_a_new_head() {
    for name in ["cnx_bare", "rn_bare"] {
        let io = io(name);
        let dir = model_dir(name);
        let err = load_pretrained(&dir, Device::Cpu, None).unwrap_err();
        assert!(err.to_string().contains("no classification head"), "{err}");
        let (m, report) =
            load_pretrained_reporting(&dir, Device::Cpu, Some(&labels(&["p", "q", "r"]))).unwrap();
        assert_eq!(report.format, CheckpointFormat::TransformersBare, "{name}");
        assert!(report.new_head && report.skipped.is_empty(), "{report:?}");
        let x = &io["pixel_values"];
        assert_close(
            &format!("{name} pooled"),
            &tch::no_grad(|| m.net.features(x, false)),
            &io["pooled"],
        );
        assert_eq!(eval_logits(&m, x).size(), [4, 3]);
    }
}

/// One step as the fixture script takes it: train-mode forward,
/// cross-entropy, SGD on every parameter, then a second train-mode forward.
/// Returns the two train-mode logits.
fn sgd_step(m: &Model, x: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let logits = m.net.forward_t(x, true);
    logits.cross_entropy_for_logits(labels).backward();
    tch::no_grad(|| {
        for (_, _, mut p) in m.grouped_variables() {
            let grad = p.grad();
            if grad.defined() {
                let _ = p.f_sub_(&(grad * LR)).unwrap();
            }
        }
    });
    let logits2 = tch::no_grad(|| m.net.forward_t(x, true));
    (logits.detach(), logits2)
}

#[test]
fn one_training_step_matches_transformers_with_batch_norm_statistics() {
    let trainable = ["cnx_s4_ls", "cnx_s3_nols"].iter().chain(RESNET.iter());
    for name in trainable {
        let io = io(name);
        let m = load_pretrained(&model_dir(name), Device::Cpu, None).unwrap();
        let (x, y) = (&io["pixel_values"], &io["labels"]);
        let (logits, logits2) = sgd_step(&m, x, y);
        assert_close(
            &format!("{name} train logits"),
            &logits,
            &io["train_logits"],
        );
        assert_close(
            &format!("{name} train logits after a step"),
            &logits2,
            &io["train_logits2"],
        );
        assert_close(
            &format!("{name} eval logits after a step"),
            &eval_logits(&m, x),
            &io["eval_logits_after"],
        );
        let after = buffers(&m);
        let want: Vec<_> = io.keys().filter(|k| k.starts_with("after.")).collect();
        assert_eq!(want.len(), after.len(), "{name}: buffer count");
        let mut worst: f64 = 0.0;
        for key in want {
            let bname = key.strip_prefix("after.").unwrap();
            let got = &after[bname];
            if bname.ends_with("num_batches_tracked") {
                assert_eq!(got.kind(), Kind::Int64);
                assert_eq!(
                    got.int64_value(&[]),
                    io[key].int64_value(&[]),
                    "{name}: {bname}"
                );
            } else {
                let d = max_diff(got, &io[key]);
                assert!(d <= STATS_TOL, "{name}: {bname} max abs diff {d}");
                worst = worst.max(d);
            }
        }
        println!("{name} batch norm statistics: max abs diff {worst:.3e}");
    }
}

#[test]
fn frozen_stages_keep_their_batch_norm_statistics() {
    for name in RESNET {
        let io = io(name);
        let m = load_pretrained(&model_dir(name), Device::Cpu, None).unwrap();
        let x = &io["pixel_values"];
        let before = buffers(&m);
        // Stem, stages 0 and 1 frozen.
        m.net
            .set_trainable_parts(Trainable::LastLayers(m.net.num_layers() - 2));
        let logits = tch::no_grad(|| m.net.forward_t(x, true));
        assert_close(
            &format!("{name} frozen-stage logits"),
            &logits,
            &io["frozen_logits"],
        );
        for (bname, after) in buffers(&m) {
            let changed = max_diff(&after, &before[&bname]) > 0.0;
            let group = m.param_group(&bname).unwrap();
            let trains = matches!(group, ParamGroup::Layer(s) if s >= 2);
            assert_eq!(changed, trains, "{name}: {bname} ({group:?})");
        }

        // Every stage frozen: a training forward is an eval forward.
        let m = load_pretrained(&model_dir(name), Device::Cpu, None).unwrap();
        m.net.set_trainable_parts(Trainable::HeadOnly);
        let before = buffers(&m);
        let logits = tch::no_grad(|| m.net.forward_t(x, true));
        assert_close(&format!("{name} all frozen"), &logits, &io["logits"]);
        for (bname, after) in buffers(&m) {
            assert_eq!(max_diff(&after, &before[&bname]), 0.0, "{bname}");
        }
    }
}

/// Saves `m` to a temporary directory, has `transformers` load it (no
/// missing, unexpected or mismatched keys) and compares its logits.
fn check_saved(m: &Model, name: &str, class: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    save_pretrained(m, &out, ProblemType::SingleLabel).unwrap();
    let io_path = fixtures().join(name).join("io.safetensors");
    let reply = crate::common::python_json("tests/python/check_saved_vit.py", &[&out, &io_path]);
    assert_eq!(reply["class"], class);
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let x = &io(name)["pixel_values"];
    assert_close(
        &format!("{name} saved logits in transformers"),
        &Tensor::from_slice2(&hf),
        &eval_logits(m, x),
    );
    tmp
}

#[test]
fn saved_models_load_in_transformers_with_the_same_logits() {
    // ConvNeXt with a new head.
    let m = load_pretrained(
        &model_dir("cnx_s4_ls"),
        Device::Cpu,
        Some(&labels(&["left", "right"])),
    )
    .unwrap();
    let tmp = check_saved(&m, "cnx_s4_ls", "ConvNextForImageClassification");
    let (back, report) =
        load_pretrained_reporting(&tmp.path().join("saved"), Device::Cpu, None).unwrap();
    assert!(report.skipped.is_empty() && !report.new_head);
    assert_eq!(back.labels(), labels(&["left", "right"]));

    // ResNet after a training step: the updated running statistics and
    // counters are saved (as int64) and used by transformers in eval.
    let name = "rn_bottleneck";
    let io = io(name);
    let m = load_pretrained(&model_dir(name), Device::Cpu, None).unwrap();
    let _ = sgd_step(&m, &io["pixel_values"], &io["labels"]);
    let tmp = check_saved(&m, name, "ResNetForImageClassification");
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(tmp.path().join("saved/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let counter = "resnet.encoder.stages.1.layers.0.layer.1.normalization.num_batches_tracked";
    assert_eq!(saved[counter].kind(), Kind::Int64);
    assert_eq!(
        saved[counter].int64_value(&[]),
        io[&format!("after.{counter}")].int64_value(&[])
    );
    let mean = "resnet.encoder.stages.1.layers.0.layer.1.normalization.running_mean";
    assert_close_tol(
        "saved running mean",
        &saved[mean],
        &io[&format!("after.{mean}")],
        STATS_TOL,
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("saved/config.json")).unwrap())
            .unwrap();
    assert!(config.get("image_size").is_none(), "{config}");
    let pre: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("saved/preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pre["image_processor_type"], "ConvNextImageProcessor");
    assert_eq!(pre["crop_pct"], 0.875);
    let back = load_pretrained(&tmp.path().join("saved"), Device::Cpu, None).unwrap();
    assert_close(
        "reloaded resnet logits",
        &eval_logits(&back, &io["pixel_values"]),
        &eval_logits(&m, &io["pixel_values"]),
    );
}

#[test]
fn parameters_group_by_stage_and_buffers_never_train() {
    let m = load_pretrained(&model_dir("rn_basic"), Device::Cpu, None).unwrap();
    let layers = m.net.num_layers();
    assert_eq!(layers, 3);
    // Every variable, buffers included, has a group; buffers are no parameters.
    for name in m.vs.variables().keys() {
        assert!(m.param_group(name).is_some(), "{name}");
    }
    let buffers = m.buffer_names();
    assert!(buffers.iter().all(|n| n.ends_with("running_mean")
        || n.ends_with("running_var")
        || n.ends_with("num_batches_tracked")));
    assert_eq!(
        buffers.len() + m.grouped_variables().len(),
        m.vs.variables().len()
    );
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
    drop(vars);
    assert_eq!(m.head_variables().len(), 2);

    // partial: the last stage and the head train; buffers never take gradients.
    m.set_trainable(Trainable::LastLayers(1));
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    m.net.forward_t(&x, true).sum(Kind::Float).backward();
    for (name, group, t) in m.grouped_variables() {
        let trains = matches!(group, ParamGroup::Layer(2) | ParamGroup::Head);
        assert_eq!(t.grad().defined(), trains, "{name}");
    }
    for name in &buffers {
        assert!(!named[name].requires_grad(), "{name}");
    }

    let m = load_pretrained(&model_dir("cnx_s4_ls"), Device::Cpu, None).unwrap();
    let groups: Vec<_> = m
        .grouped_variables()
        .into_iter()
        .map(|(_, g, _)| g)
        .collect();
    assert!(groups.contains(&ParamGroup::FinalNorm));
    assert!(groups.contains(&ParamGroup::Layer(3)));
    assert!(groups.contains(&ParamGroup::Embeddings));
}

#[test]
fn input_sizes_follow_what_the_convolutions_take() {
    let f = (Kind::Float, Device::Cpu);
    // ConvNeXt, patch 4, four stages: at least 4 * 2^3 = 32 pixels a side.
    let mut m = load_pretrained(&model_dir("cnx_s4_ls"), Device::Cpu, None).unwrap();
    assert!(m.check_input(&Tensor::zeros([1, 3, 32, 40], f)).is_ok());
    let err = m
        .check_input(&Tensor::zeros([1, 3, 16, 64], f))
        .unwrap_err()
        .to_string();
    assert!(err.contains("minimum input of 32x32"), "{err}");
    assert_eq!(
        m.logits(&Tensor::zeros([2, 3, 36, 44], f)).unwrap().size(),
        [2, 5]
    );
    let err = m.set_image_size(16).unwrap_err().to_string();
    assert!(err.contains("minimum input side 32"), "{err}");
    assert!(
        m.set_image_size(30).is_err(),
        "not on the stem's patch grid"
    );
    let before = m.vs.variables().len();
    m.set_image_size(96).unwrap();
    assert_eq!((m.image_size(), m.vs.variables().len()), (96, before));

    // ResNet: any size; a new one is written to config.json.
    let mut m = load_pretrained(&model_dir("rn_basic"), Device::Cpu, None).unwrap();
    assert_eq!(m.image_size(), 224);
    assert!(m.check_input(&Tensor::zeros([1, 3, 7, 9], f)).is_ok());
    assert_eq!(
        m.logits(&Tensor::zeros([2, 3, 7, 9], f)).unwrap().size(),
        [2, 5]
    );
    m.set_image_size(100).unwrap();
    assert_eq!(m.image_size(), 100);
    let ModelConfig::ResNet(c) = &m.config else {
        panic!("a resnet")
    };
    assert_eq!(c.image_size, Some(100));
    assert_eq!(m.config.to_json()["image_size"], 100);
}

#[test]
fn preflight_accepts_both_and_only_batch_counters_as_integers() {
    let info = check_base_model(&model_dir("rn_bottleneck"), Some(100)).unwrap();
    assert_eq!((info.model_type.as_str(), info.patch_size), ("resnet", 1));
    let info = check_base_model(&model_dir("cnx_s4_ls"), Some(64)).unwrap();
    assert_eq!((info.model_type.as_str(), info.patch_size), ("convnext", 4));
    let err = check_base_model(&model_dir("cnx_s4_ls"), Some(16))
        .unwrap_err()
        .to_string();
    assert!(err.contains("minimum input side 32"), "{err}");

    // Another int64 tensor is refused, by preflight and by loading.
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir("rn_basic");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    tensors.push((
        "resnet.embedder.embedder.normalization.step".into(),
        Tensor::zeros([], (Kind::Int64, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    for err in [
        check_base_model(tmp.path(), None).unwrap_err().to_string(),
        load_pretrained(tmp.path(), Device::Cpu, None)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            err.contains("normalization.step") && err.contains("I64"),
            "{err}"
        );
    }
}

#[test]
fn a_random_model_from_config_runs() {
    use vitrine::model::{ConvNextConfig, ResNetConfig, ResNetLayerType};
    let convnext = ConvNextConfig {
        num_stages: 2,
        hidden_sizes: vec![8, 16],
        depths: vec![1, 1],
        image_size: 32,
        ..ConvNextConfig::default()
    };
    let resnet = ResNetConfig {
        embedding_size: 8,
        hidden_sizes: vec![8, 16],
        depths: vec![1, 1],
        layer_type: ResNetLayerType::Basic,
        ..ResNetConfig::default()
    };
    for config in [ModelConfig::ConvNext(convnext), ModelConfig::ResNet(resnet)] {
        let m = Model::from_config(config, labels(&["a", "b", "c"]), Device::Cpu).unwrap();
        let logits = m
            .logits(&Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)))
            .unwrap();
        assert_eq!(logits.size(), [2, 3]);
        // The Hub's ConvNeXt processor, at the model's own size.
        assert_eq!(m.preprocessor_json["size"]["shortest_edge"], m.image_size());
        assert_eq!(m.preprocessor_json["crop_pct"], 0.875);
    }
}
