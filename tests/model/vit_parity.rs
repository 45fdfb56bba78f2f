//! The ViT of vitrine against `transformers` and timm: tiny random
//! checkpoints made by tests/python/make_vit_fixtures.py (one Python run for
//! the whole binary) load through `load_pretrained` and give the reference
//! logits and CLS features within 1e-4 (fp32). Also: saving back to a
//! directory `transformers` loads unchanged, strict-loading errors, groups
//! and freezing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::support::{self, assert_close, labels};
use tch::{Device, Kind, Tensor};
use vitrine::model::load::load_pretrained_reporting;
use vitrine::model::{
    load_pretrained, save_pretrained, CheckpointFormat, ModelError, ParamGroup, ProblemType,
    Trainable,
};

/// The fixture root, generated once per test binary.
fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_vit_fixtures.py")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    support::io_of(fixtures(), name)
}

fn model_dir(name: &str) -> PathBuf {
    support::model_dir_of(fixtures(), name)
}

#[test]
fn classifier_patch8_matches_transformers_including_interpolation() {
    let io = io("cls_p8_s32_d2");
    let (m, report) =
        load_pretrained_reporting(&model_dir("cls_p8_s32_d2"), Device::Cpu, None).unwrap();
    assert_eq!(report.format, CheckpointFormat::Transformers);
    assert!(report.skipped.is_empty() && !report.new_head, "{report:?}");
    assert_eq!(m.labels(), labels(&["cat", "dog", "fox", "owl", "yak"]));
    let x = &io["pixel_values"];
    let feats = tch::no_grad(|| m.net.features(x, false));
    assert_close("cls_p8 features", &feats, &io["cls"]);
    assert_close(
        "cls_p8 logits",
        &tch::no_grad(|| m.net.forward_t(x, false)),
        &io["logits"],
    );
    // 48x40 input: position embeddings interpolated bicubically, as HF's
    // `interpolate_pos_encoding=True`.
    let xi = &io["pixel_values_interp"];
    assert_close(
        "cls_p8 interp logits",
        &tch::no_grad(|| m.net.forward_t(xi, false)),
        &io["logits_interp"],
    );
    assert_eq!(m.net.num_layers(), 2);
}

#[test]
fn classifier_patch4_without_qkv_bias_matches_transformers() {
    let io = io("cls_p4_s16_d3_nobias");
    let m = load_pretrained(&model_dir("cls_p4_s16_d3_nobias"), Device::Cpu, None).unwrap();
    assert!(!m
        .vs
        .variables()
        .contains_key("vit.encoder.layer.0.attention.attention.query.bias"));
    let x = &io["pixel_values"];
    assert_close(
        "p4 features",
        &tch::no_grad(|| m.net.features(x, false)),
        &io["cls"],
    );
    assert_close(
        "p4 logits",
        &tch::no_grad(|| m.net.forward_t(x, false)),
        &io["logits"],
    );
    assert_eq!(m.net.num_layers(), 3);
}

#[test]
fn bare_vit_model_with_pooler_loads_with_a_new_head() {
    let io = io("bare_pooler_p16_s64");
    let dir = model_dir("bare_pooler_p16_s64");
    let err = load_pretrained(&dir, Device::Cpu, None).unwrap_err();
    assert!(err.to_string().contains("no classification head"), "{err}");

    let (m, report) =
        load_pretrained_reporting(&dir, Device::Cpu, Some(&labels(&["p", "q", "r"]))).unwrap();
    assert_eq!(report.format, CheckpointFormat::TransformersBare);
    assert!(report.new_head);
    assert_eq!(
        report.skipped,
        ["vit.pooler.dense.bias", "vit.pooler.dense.weight"]
    );
    let x = &io["pixel_values"];
    assert_close(
        "bare features",
        &tch::no_grad(|| m.net.features(x, false)),
        &io["cls"],
    );
    let xi = &io["pixel_values_interp"];
    assert_close(
        "bare interp features",
        &tch::no_grad(|| m.net.features(xi, false)),
        &io["cls_interp"],
    );
    assert_eq!(tch::no_grad(|| m.net.forward_t(x, false)).size(), [2, 3]);
    // A new head is initialised like transformers: zero bias.
    let bias = &m.vs.variables()["classifier.bias"];
    assert_eq!(bias.abs().sum(Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn bf16_sharded_checkpoint_loads_as_fp32() {
    let io = io("cls_bf16_sharded");
    let dir = model_dir("cls_bf16_sharded");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let (m, report) = load_pretrained_reporting(&dir, Device::Cpu, None).unwrap();
    assert_eq!(report.converted_from, ["BF16"]);
    assert!(m.vs.variables().values().all(|t| t.kind() == Kind::Float));
    let x = &io["pixel_values"];
    assert_close(
        "bf16 sharded logits",
        &tch::no_grad(|| m.net.forward_t(x, false)),
        &io["logits"],
    );
}

#[test]
fn timm_checkpoint_matches_timm() {
    let io = io("timm_vit_tiny");
    let (m, report) =
        load_pretrained_reporting(&model_dir("timm_vit_tiny"), Device::Cpu, None).unwrap();
    assert_eq!(report.format, CheckpointFormat::Timm);
    assert_eq!(m.labels(), labels(&["n01", "n02", "n03", "n04"]));
    assert_eq!(m.preprocessor_json["size"]["height"], 32);
    let x = &io["pixel_values"];
    assert_close(
        "timm features",
        &tch::no_grad(|| m.net.features(x, false)),
        &io["cls"],
    );
    assert_close(
        "timm logits",
        &tch::no_grad(|| m.net.forward_t(x, false)),
        &io["logits"],
    );
}

#[test]
fn saved_model_loads_in_transformers_with_the_same_logits() {
    let io = io("cls_p8_s32_d2");
    let x = &io["pixel_values"];
    let new_labels = labels(&["left", "right"]);
    let m = load_pretrained(&model_dir("cls_p8_s32_d2"), Device::Cpu, Some(&new_labels)).unwrap();
    let logits = tch::no_grad(|| m.net.forward_t(x, false));
    // The backbone is the checkpoint's: features still match transformers.
    assert_close(
        "features after new head",
        &tch::no_grad(|| m.net.features(x, false)),
        &io["cls"],
    );

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("best");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    save_pretrained(&m, &out, ProblemType::MultiLabel).unwrap();
    assert!(
        !out.join("stale.txt").exists(),
        "the directory is replaced as a whole"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["best"], "no temporary directories remain");

    // transformers loads it, and its logits are ours.
    let reply = crate::common::python_json(
        "tests/python/check_saved_vit.py",
        &[&out, &fixtures().join("cls_p8_s32_d2/io.safetensors")],
    );
    assert_eq!(reply["class"], "ViTForImageClassification");
    assert_eq!(reply["problem_type"], "multi_label_classification");
    assert_eq!(
        reply["id2label"],
        serde_json::json!({"0": "left", "1": "right"})
    );
    let hf: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let hf = Tensor::from_slice2(&hf);
    assert_close("saved logits in transformers", &hf, &logits);

    // And back into vitrine: same labels, same logits, nothing skipped.
    let (back, report) = load_pretrained_reporting(&out, Device::Cpu, None).unwrap();
    assert!(report.skipped.is_empty() && !report.new_head);
    assert_eq!(back.labels(), new_labels);
    assert_close(
        "reloaded logits",
        &tch::no_grad(|| back.net.forward_t(x, false)),
        &logits,
    );
}

#[test]
fn same_labels_reuse_the_checkpoint_head() {
    let io = io("cls_p8_s32_d2");
    let same = labels(&["cat", "dog", "fox", "owl", "yak"]);
    let (m, report) =
        load_pretrained_reporting(&model_dir("cls_p8_s32_d2"), Device::Cpu, Some(&same)).unwrap();
    assert!(!report.new_head);
    assert_close(
        "reused head",
        &tch::no_grad(|| m.net.forward_t(&io["pixel_values"], false)),
        &io["logits"],
    );
    let err = load_pretrained(
        &model_dir("cls_p8_s32_d2"),
        Device::Cpu,
        Some(&labels(&["a", "a"])),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`a` appears twice"), "{err}");
}

/// A copy of a fixture's model directory whose tensors are edited by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir(name);
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

#[test]
fn strict_loading_names_every_missing_and_unexpected_tensor() {
    let dir = edited_copy("cls_p8_s32_d2", |t| {
        t.retain(|(n, _)| {
            n != "vit.layernorm.weight" && n != "vit.encoder.layer.1.output.dense.bias"
        })
    });
    match load_pretrained(dir.path(), Device::Cpu, None).unwrap_err() {
        ModelError::MissingTensors(names) => assert_eq!(
            names,
            [
                "vit.encoder.layer.1.output.dense.bias",
                "vit.layernorm.weight"
            ]
        ),
        other => panic!("expected missing tensors, got {other}"),
    }

    let dir = edited_copy("cls_p8_s32_d2", |t| {
        t.push((
            "vit.encoder.layer.0.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
        t.push((
            "decoder.0.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
    });
    let err = load_pretrained(dir.path(), Device::Cpu, None).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ModelError::UnexpectedTensors(ref n) if n.len() == 2),
        "{text}"
    );
    assert!(
        text.contains("decoder.0.weight") && text.contains("vit.encoder.layer.0.extra.weight"),
        "{text}"
    );

    let dir = edited_copy("cls_p8_s32_d2", |t| {
        for (n, v) in t.iter_mut() {
            if n == "vit.embeddings.position_embeddings" {
                *v = Tensor::zeros([1, 5, 48], (Kind::Float, Device::Cpu));
            }
        }
    });
    let text = load_pretrained(dir.path(), Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("vit.embeddings.position_embeddings")
            && text.contains("[1, 5, 48]")
            && text.contains("[1, 17, 48]"),
        "{text}"
    );
}

#[test]
fn unknown_model_type_and_pickle_only_checkpoints_are_refused() {
    let dir = edited_copy("cls_p8_s32_d2", |_| {});
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"model_type\": \"vit\"", "\"model_type\": \"swinv2\""),
    )
    .unwrap();
    let err = load_pretrained(dir.path(), Device::Cpu, None).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnknownModelType(t) if t == "swinv2"),
        "{err}"
    );
    assert!(err.to_string().contains("`swinv2`"));

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really").unwrap();
    let text = load_pretrained(dir.path(), Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("pytorch_model.bin") && text.contains("safetensors"),
        "{text}"
    );
}

#[test]
fn optimiser_groups_and_freezing_follow_the_layers() {
    let m = load_pretrained(&model_dir("cls_p4_s16_d3_nobias"), Device::Cpu, None).unwrap();
    let layers = m.net.num_layers();
    let named = m.vs.variables();
    let vars = m.vs.variables_.lock().unwrap();
    for var in &vars.trainable_variables {
        let name = named
            .iter()
            .find(|(_, t)| t.data_ptr() == var.tensor.data_ptr())
            .map(|(n, _)| n.clone())
            .unwrap();
        let group = ParamGroup::of_vit_name(&name).unwrap();
        assert_eq!(var.group, group.optimizer_group(layers), "{name}");
    }
    drop(vars);
    // q, k, v weights (no bias); weight + bias of out, fc1, fc2 and the 2 norms.
    assert_eq!(m.layer_variables(2).len(), 3 + 2 * 5);
    assert_eq!(m.head_variables().len(), 2);

    // partial: last layer + final norm + head receive gradients, nothing else.
    m.set_trainable(Trainable::LastLayers(1));
    let x = Tensor::randn([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    m.net.forward_t(&x, true).sum(Kind::Float).backward();
    for (name, group, t) in m.grouped_variables() {
        let trains = matches!(
            group,
            ParamGroup::Layer(2) | ParamGroup::FinalNorm | ParamGroup::Head
        );
        assert_eq!(t.requires_grad(), trains, "{name}");
        assert_eq!(t.grad().defined(), trains, "{name}");
    }
    let head_only = m.set_trainable(Trainable::HeadOnly);
    assert_eq!(head_only, 32 * 3 + 3);
}

#[test]
fn a_hub_id_resolves_from_a_prepopulated_cache_and_loads() {
    use vitrine::model::{resolve_model_source, HubOptions};
    let cache = tempfile::tempdir().unwrap();
    let sha = "a".repeat(40);
    let repo = cache.path().join("models--tiny-org--vit-p8");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &sha).unwrap();
    let snap = repo.join("snapshots").join(&sha);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir("cls_p8_s32_d2").join(f), snap.join(f)).unwrap();
    }
    // Offline: only the cache may answer; it does, with no network.
    let options = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        offline: true,
        endpoint: None,
        token: None,
    };
    let dir = resolve_model_source("tiny-org/vit-p8", &options).unwrap();
    assert_eq!(dir, snap);
    let m = load_pretrained(&dir, Device::Cpu, None).unwrap();
    let io = io("cls_p8_s32_d2");
    assert_close(
        "hub cache logits",
        &tch::no_grad(|| m.net.forward_t(&io["pixel_values"], false)),
        &io["logits"],
    );
    // No preprocessor_config.json: ViTImageProcessor's defaults at the model size.
    assert_eq!(
        m.preprocessor_json["size"],
        serde_json::json!({"height": 32, "width": 32})
    );
    assert_eq!(
        m.preprocessor_json["image_mean"],
        serde_json::json!([0.5, 0.5, 0.5])
    );

    let err = resolve_model_source("tiny-org/vit-p8@v2", &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("`v2`"),
        "{err}"
    );
}

#[test]
fn timm_state_dict_heads_come_from_config_or_architecture_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir("timm_vit_tiny").join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    // A bare state dict 48 wide: the head count cannot be read off the shapes.
    let err = load_pretrained(tmp.path(), Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_heads"), "{err}");
    // The architecture name tells it (tiny: 3 heads).
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architecture": "vit_tiny_patch8_32"}"#,
    )
    .unwrap();
    let m = load_pretrained(tmp.path(), Device::Cpu, None).unwrap();
    assert_eq!(
        m.labels(),
        labels(&["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"])
    );
    let io = io("timm_vit_tiny");
    assert_close(
        "timm by name logits",
        &tch::no_grad(|| m.net.forward_t(&io["pixel_values"], false)),
        &io["logits"],
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let m = load_pretrained(&model_dir("cls_p4_s16_d3_nobias"), Device::Cpu, None).unwrap();
    let f = (Kind::Float, Device::Cpu);
    assert!(m.check_input(&Tensor::zeros([2, 1, 16, 16], f)).is_ok());
    assert!(m.check_input(&Tensor::zeros([2, 1, 20, 28], f)).is_ok());
    for (shape, want) in [
        (vec![1, 16, 16], "[batch, channels, height, width]"),
        (vec![2, 3, 16, 16], "takes 1 channel(s), got 3"),
        (vec![2, 1, 3, 16], "smaller than one 4x4 patch"),
        (vec![0, 1, 16, 16], "empty batch"),
    ] {
        let err = m
            .check_input(&Tensor::zeros(shape.as_slice(), f))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn a_random_model_from_config_runs_and_checks_input() {
    use vitrine::model::{ModelConfig, ViTConfig};
    let config = ViTConfig {
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        image_size: 8,
        patch_size: 4,
        ..ViTConfig::default()
    };
    // Checkpoint-style labels may repeat (ImageNet has two `crane`s).
    let m = ModelConfig::Vit(config);
    let m = vitrine::model::Model::from_config(m, labels(&["crane", "crane", "owl"]), Device::Cpu)
        .unwrap();
    let logits = m
        .logits(&Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(logits.size(), [4, 3]);
    assert!(!logits.requires_grad());
    assert!(m
        .logits(&Tensor::randn([4, 2, 8, 8], (Kind::Float, Device::Cpu)))
        .is_err());
}

#[test]
fn every_parameter_free_activation_matches_transformers() {
    use vitrine::model::Activation;
    for act in Activation::NAMES {
        let name = format!("act_{act}");
        let m = load_pretrained(&model_dir(&name), Device::Cpu, None)
            .unwrap_or_else(|e| panic!("{act}: {e}"));
        let io = io(&name);
        assert_close(
            &format!("{act} logits"),
            &tch::no_grad(|| m.net.forward_t(&io["pixel_values"], false)),
            &io["logits"],
        );
    }
}

#[test]
fn masked_image_modeling_checkpoint_loads_without_its_decoder() {
    let dir = model_dir("mim_p8_s32");
    let (m, report) =
        load_pretrained_reporting(&dir, Device::Cpu, Some(&labels(&["a", "b"]))).unwrap();
    assert!(report.new_head);
    assert_eq!(
        report.skipped,
        [
            "decoder.0.bias",
            "decoder.0.weight",
            "vit.embeddings.mask_token"
        ]
    );
    let io = io("mim_p8_s32");
    assert_close(
        "mim backbone features",
        &tch::no_grad(|| m.net.features(&io["pixel_values"], false)),
        &io["cls"],
    );
}

#[test]
fn a_new_image_size_resamples_positions_as_transformers_interpolates() {
    // 64 px checkpoint (4x4 grid) set to 96 px (6x6): the CLS features at 96
    // px equal transformers' with `interpolate_pos_encoding=True`.
    let io = io("bare_pooler_p16_s64");
    let mut m = load_pretrained(
        &model_dir("bare_pooler_p16_s64"),
        Device::Cpu,
        Some(&labels(&["p", "q"])),
    )
    .unwrap();
    m.set_image_size(96).unwrap();
    assert_eq!(m.image_size(), 96);
    assert_eq!(
        m.vs.variables()["vit.embeddings.position_embeddings"].size(),
        [1, 37, 64]
    );
    assert_close(
        "resized features",
        &tch::no_grad(|| m.net.features(&io["pixel_values_interp"], false)),
        &io["cls_interp"],
    );
    let err = m.set_image_size(100).unwrap_err().to_string();
    assert!(err.contains("patch size 16"), "{err}");
}
