//! `model::preflight::check_base_model`: what a job submission refuses up
//! front (422 naming the problem) instead of a job failing later. Models
//! are made in Rust (`Model::from_config` + `save_pretrained`), then edited.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitrine::model::preflight::check_base_model;
use vitrine::model::{save_pretrained, Model, ModelConfig, ModelError, ProblemType, ViTConfig};

fn tiny_vit(dir: &Path, channels: i64) {
    let config = ViTConfig {
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        image_size: 32,
        patch_size: 8,
        num_channels: channels,
        ..ViTConfig::default()
    };
    let m = Model::from_config(
        ModelConfig::Vit(config),
        vec!["a".into(), "b".into()],
        Device::Cpu,
    )
    .unwrap();
    save_pretrained(&m, dir, ProblemType::SingleLabel).unwrap();
}

#[test]
fn a_saved_vit_passes_and_reports_its_geometry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    tiny_vit(&dir, 3);
    let info = check_base_model(&dir, None).unwrap();
    assert_eq!(
        (info.model_type.as_str(), info.patch_size, info.num_channels),
        ("vit", 8, 3)
    );
    check_base_model(&dir, Some(48)).unwrap();
}

#[test]
fn an_image_size_off_the_patch_grid_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    tiny_vit(&dir, 3);
    let err = check_base_model(&dir, Some(44)).unwrap_err().to_string();
    assert!(
        err.contains("`image_size` 44") && err.contains("patch size 8") && err.contains("40 or 48"),
        "{err}"
    );
}

#[test]
fn a_grayscale_model_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    tiny_vit(&dir, 1);
    let err = check_base_model(&dir, None).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedCheckpoint(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("1 input channel") && text.contains("RGB"),
        "{text}"
    );
}

#[test]
fn pickle_only_and_weightless_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    tiny_vit(&dir, 3);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = check_base_model(&dir, None).unwrap_err().to_string();
    assert!(err.contains("no `model.safetensors`"), "{err}");
    std::fs::write(dir.join("pytorch_model.bin"), b"pickle").unwrap();
    let err = check_base_model(&dir, None).unwrap_err().to_string();
    assert!(
        err.contains("pytorch_model.bin") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn integer_weights_and_broken_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    tiny_vit(&dir, 3);
    let ints = Tensor::zeros([4], (Kind::Int8, Device::Cpu));
    Tensor::write_safetensors(
        &[("vit.layernorm.weight", ints)],
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = check_base_model(&dir, None).unwrap_err().to_string();
    assert!(
        err.contains("vit.layernorm.weight") && err.contains("I8"),
        "{err}"
    );
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk",
    )
    .unwrap();
    let err = check_base_model(&dir, None).unwrap_err().to_string();
    assert!(err.contains("does not fit the file"), "{err}");
}

#[test]
fn a_timm_checkpoint_passes_though_its_config_has_no_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    let w = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[
            ("patch_embed.proj.weight", w(&[48, 3, 16, 16])),
            ("cls_token", w(&[1, 1, 48])),
        ],
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architecture": "vit_tiny_patch16_224", "num_classes": 4}"#,
    )
    .unwrap();
    let info = check_base_model(tmp.path(), Some(224)).unwrap();
    assert_eq!((info.model_type.as_str(), info.patch_size), ("timm", 16));
    // A bare state dict with no config at all is recognised by its names.
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    assert!(check_base_model(tmp.path(), None).is_ok());
    let err = check_base_model(tmp.path(), Some(200))
        .unwrap_err()
        .to_string();
    assert!(err.contains("patch size 16"), "{err}");
}
