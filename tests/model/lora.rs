//! LoRA (`model/lora`) against `peft` 0.21: the trainable-parameter count of
//! PEFT's guide, one training step equal to PEFT's, adapters written that
//! `peft` loads and adapters `peft` made served here (either naming), the
//! merged checkpoint in `transformers` and ONNX, and the refusals. Fixtures
//! by tests/python/make_lora_fixtures.py (one Python run for the binary).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use vitrine::model::lora::{self, Adapter, LoraSpec};
use vitrine::model::{load_pretrained, Model, ModelConfig, ProblemType};
use vitrine::train::optim::AdamW;

use crate::support::{assert_close, assert_close_tol, max_diff};

fn fixtures() -> &'static Path {
    crate::common::python_fixtures("tests/python/make_lora_fixtures.py")
}

fn io(family: &str) -> HashMap<String, Tensor> {
    crate::support::io_of(fixtures(), family)
}

fn dir(family: &str, what: &str) -> PathBuf {
    fixtures().join(family).join(what)
}

/// A model with `adapter` attached and the adapter's head made the model's
/// own variables, everything of the adapter requiring grad.
fn trainable(model: &Model, mut adapter: Adapter) -> Adapter {
    adapter.attach(model).unwrap();
    adapter.head = model.head_variables();
    for (_, t) in adapter.named_tensors() {
        let _ = t.set_requires_grad(true);
    }
    adapter
}

fn step(model: &Model, opt: &mut AdamW, x: &Tensor, y: &Tensor) {
    opt.zero_grad().unwrap();
    let loss = model.net.forward_t(x, true).cross_entropy_for_logits(y);
    loss.backward();
    opt.step(1e-3, None).unwrap();
}

fn optimiser(adapter: &Adapter) -> AdamW {
    let params = adapter
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t, 1.0))
        .collect();
    AdamW::new(params, 0.01)
}

#[test]
fn peft_guide_vit_b16_with_101_labels_trains_667493_parameters() {
    // google/vit-base-patch16-224-in21k's architecture (the config's
    // defaults), randomly initialised: r=16, alpha=16, query and value.
    let config = ModelConfig::from_json(
        serde_json::json!({"model_type": "vit"}),
        Path::new("config.json"),
    )
    .unwrap();
    let labels = (0..101).map(|i| format!("food{i}")).collect();
    let model = Model::from_config(config, labels, Device::Cpu).unwrap();
    let spec = LoraSpec {
        r: 16,
        alpha: Some(16.0),
        ..LoraSpec::default()
    };
    let adapter = Adapter::init(&model, &spec).unwrap();
    assert_eq!(adapter.num_parameters(), 667_493);
    let all: i64 = model
        .vs
        .variables()
        .values()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(all, 86_466_149 - 667_493 + 77_669, "base + head");
    // Names as PEFT writes them with the pinned transformers.
    let names: Vec<String> = adapter
        .named_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"base_model.model.vit.layers.11.attention.v_proj.lora_B.weight".into()));
    assert!(names.contains(&"base_model.model.classifier.bias".into()));
}

#[test]
fn one_training_step_equals_peft() {
    let io = io("vit");
    let model = load_pretrained(&dir("vit", "base"), Device::Cpu, None).unwrap();
    let file = lora::read_adapter(&dir("vit", "adapter")).unwrap();
    let adapter = trainable(&model, Adapter::from_file(&file, &model).unwrap());
    let mut opt = optimiser(&adapter);
    let (x, y) = (&io["pixel_values"], &io["targets"]);
    let before = tch::no_grad(|| model.net.forward_t(x, false));
    assert_close_tol("logits before the step", &before, &io["logits"], 1e-5);
    step(&model, &mut opt, x, y);
    for (name, t) in adapter.named_tensors() {
        let want = &io[&format!("step1.{name}")];
        assert_close_tol(&name, &t.detach(), want, 1e-5);
    }
    let after = tch::no_grad(|| model.net.forward_t(x, false));
    assert_close_tol("logits after one step", &after, &io["logits_step1"], 1e-5);
    assert!(max_diff(&after, &before) > 1e-3, "the step changed nothing");
}

#[test]
fn adapters_made_by_peft_serve_within_1e_4_in_either_naming() {
    for (family, adapter) in [
        ("vit", "adapter"),
        ("vit", "adapter_v4"),
        ("dinov2", "adapter"),
        ("swin", "adapter"),
    ] {
        let io = io(family);
        let x = &io["pixel_values"];
        // Merged into the base weights, as `load_pretrained` serves it.
        let merged = load_pretrained(&dir(family, adapter), Device::Cpu, None).unwrap();
        let got = merged.logits(x).unwrap();
        assert_close(&format!("{family} {adapter} merged"), &got, &io["logits"]);
        // On the taps, as a shared base serves it.
        let resolve = |b: &str| Ok(PathBuf::from(b));
        let (attached, a) =
            lora::load_lora_dir(&dir(family, adapter), Device::Cpu, false, resolve).unwrap();
        assert_eq!(a.modules.len(), 2 * attached.net.num_layers().max(2));
        let got = attached.logits(x).unwrap();
        assert_close(&format!("{family} {adapter} attached"), &got, &io["logits"]);
        // What serving and `vitrine predict` read of it: the base's labels
        // (peft writes no config.json) and preprocessing.
        let trained = vitrine::train::TrainedModel::load(&dir(family, adapter)).unwrap();
        assert_eq!(trained.labels, ["cat", "dog", "fox"]);
    }
}

#[test]
fn three_steps_saved_load_in_peft_transformers_and_onnx() {
    let io = io("vit");
    let base = dir("vit", "base");
    let model = load_pretrained(&base, Device::Cpu, None).unwrap();
    tch::manual_seed(5);
    let spec = LoraSpec {
        r: 4,
        alpha: Some(8.0),
        dropout: 0.0,
        ..LoraSpec::default()
    };
    let adapter = Adapter::init(&model, &spec).unwrap();
    adapter.attach(&model).unwrap();
    let mut opt = optimiser(&adapter);
    let (x, y) = (&io["pixel_values"], &io["targets"]);
    for _ in 0..3 {
        step(&model, &mut opt, x, y);
    }
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("lora");
    lora::save_adapter(
        &model,
        &adapter,
        &saved,
        base.to_str().unwrap(),
        ProblemType::SingleLabel,
    )
    .unwrap();
    let logits = tch::no_grad(|| model.net.forward_t(x, false));
    let merged = load_pretrained(&saved, Device::Cpu, None).unwrap();
    assert_close("merged load", &merged.logits(x).unwrap(), &logits);
    // The merged download's directory.
    let merged_dir = out.path().join("merged");
    lora::save_merged(&saved, &merged_dir).unwrap();
    assert!(merged_dir.join("model.safetensors").is_file());
    let io_path = out.path().join("io.safetensors");
    Tensor::write_safetensors(&[("pixel_values", x), ("logits", &logits)], &io_path).unwrap();
    let reply = crate::common::python_json(
        "tests/python/lora_check.py",
        &[&base, &saved, &merged_dir, &io_path],
    );
    println!("{reply}");
    assert!(reply["peft"].as_f64().unwrap() <= 1e-4, "{reply}");
    assert!(reply["merged"].as_f64().unwrap() <= 1e-4, "{reply}");
    assert_eq!(reply["lora_params"], 8, "{reply}");
    assert_eq!(
        reply["lora_nonzero_b"], 4,
        "B trained in every module: {reply}"
    );
    crate::onnx_export::check_lora_dir(&saved);
}

fn code_of(e: vitrine::model::ModelError) -> String {
    let text = e.to_string();
    format!("{} {text}", e.code())
}

#[test]
fn refusals_name_the_problem() {
    let bad_target = LoraSpec {
        target_modules: Some(vec!["query".into(), "fc1".into()]),
        ..LoraSpec::default()
    };
    let e = code_of(bad_target.validate().unwrap_err());
    assert!(
        e.starts_with("lora_unknown_target") && e.contains("`fc1`"),
        "{e}"
    );
    let zero = LoraSpec {
        r: 0,
        ..LoraSpec::default()
    };
    let e = code_of(zero.validate().unwrap_err());
    assert!(
        e.starts_with("lora_invalid_rank") && e.contains("`lora.r`"),
        "{e}"
    );
    let e = code_of(lora::check_family("convnext").unwrap_err());
    assert!(
        e.starts_with("lora_unsupported_family") && e.contains("convnext"),
        "{e}"
    );

    // Another PEFT method.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(dir("vit", "adapter").join(f), tmp.path().join(f)).unwrap();
    }
    let path = tmp.path().join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["peft_type"] = "IA3".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = code_of(lora::read_adapter(tmp.path()).unwrap_err());
    assert!(
        e.starts_with("unsupported_peft_type") && e.contains("IA3"),
        "{e}"
    );

    // An adapter of another base: DINOv2's on the ViT.
    let vit = load_pretrained(&dir("vit", "base"), Device::Cpu, None).unwrap();
    let file = lora::read_adapter(&dir("dinov2", "adapter")).unwrap();
    let e = code_of(Adapter::from_file(&file, &vit).unwrap_err());
    assert!(
        e.starts_with("adapter_base_mismatch") && e.contains("dinov2.encoder"),
        "{e}"
    );
}

/// rsLoRA's scale is alpha / sqrt(r); the plain one alpha / r.
#[test]
fn scales_follow_rslora() {
    let spec = LoraSpec {
        r: 16,
        alpha: Some(8.0),
        ..LoraSpec::default()
    };
    assert_eq!(spec.scale(), 0.5);
    let rs = LoraSpec {
        use_rslora: true,
        ..spec
    };
    assert_eq!(rs.scale(), 2.0);
    let _ = Kind::Float;
}

/// Five adapters of different ranks, targets and label counts on one base,
/// B drawn at random so every term counts.
fn five_adapters(base: &Model) -> Vec<Adapter> {
    let (targets, ranks) = (
        [
            vec!["query", "value"],
            vec!["query"],
            vec!["key", "value"],
            vec!["q_proj", "k_proj", "v_proj"],
            vec!["value"],
        ],
        [4, 2, 8, 1, 3],
    );
    let features = tch::no_grad(|| {
        base.net.features(
            &Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        )
    })
    .size()[1];
    targets
        .iter()
        .zip(ranks)
        .enumerate()
        .map(|(i, (t, r))| {
            let spec = LoraSpec {
                r,
                alpha: Some(2.0 * r as f64),
                target_modules: Some(t.iter().map(|s| s.to_string()).collect()),
                use_rslora: i % 2 == 1,
                ..LoraSpec::default()
            };
            let mut a = Adapter::init(base, &spec).unwrap();
            for m in &a.modules {
                let _ = m.b.detach().uniform_(-0.3, 0.3);
            }
            let labels = 2 + i as i64;
            a.head = vec![
                (
                    "classifier.weight".into(),
                    Tensor::randn([labels, features], (Kind::Float, Device::Cpu)),
                ),
                (
                    "classifier.bias".into(),
                    Tensor::randn([labels], (Kind::Float, Device::Cpu)),
                ),
            ];
            a
        })
        .collect()
}

#[test]
fn a_batch_mixing_five_adapters_equals_each_request_alone() {
    use vitrine::model::lora::mixed::{forward_mixed, Group};
    for family in ["vit", "dinov2", "swin"] {
        let base = load_pretrained(&dir(family, "base"), Device::Cpu, None).unwrap();
        tch::manual_seed(11);
        let adapters = five_adapters(&base);
        let sizes = [1i64, 2, 1, 3, 1];
        let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let groups: Vec<Group> = adapters
            .iter()
            .zip(sizes)
            .map(|(adapter, images)| Group { adapter, images })
            .collect();
        let mixed = forward_mixed(&base, &groups, &x).unwrap();
        let plain = base.logits(&x).unwrap();
        let mut start = 0;
        for (i, (adapter, n)) in adapters.iter().zip(sizes).enumerate() {
            let xs = x.narrow(0, start, n);
            let alone = forward_mixed(&base, &[Group { adapter, images: n }], &xs).unwrap();
            assert_close_tol(
                &format!("{family} adapter {i} mixed vs alone"),
                &mixed[i],
                &alone[0],
                1e-5,
            );
            // The same maths as the adapter merged into a copy of the base.
            let labels = (0..adapter.head[1].1.size()[0])
                .map(|l| format!("l{l}"))
                .collect();
            let merged = Model::from_config(base.config.clone(), labels, Device::Cpu).unwrap();
            let src = base.vs.variables();
            for (name, mut t) in merged.vs.variables() {
                if !name.starts_with("classifier") {
                    tch::no_grad(|| t.copy_(&src[&name]));
                }
            }
            adapter.merge_into(&merged).unwrap();
            let want = merged.logits(&xs).unwrap();
            assert_close(&format!("{family} adapter {i} merged"), &mixed[i], &want);
            assert!(
                max_diff(
                    &mixed[i].narrow(1, 0, 2),
                    &plain.narrow(0, start, n).narrow(1, 0, 2)
                ) > 1e-3
            );
            start += n;
        }
    }
}
