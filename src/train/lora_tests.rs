//! A `lora` job through [`super::run`]: it trains only the adapter and the
//! head, saves the best epoch in PEFT's format (no full checkpoint), the
//! model directory loads back (merged) and as a `TrainedModel`, and a run
//! resumes from its epoch checkpoint with the adapter's tensors.

use super::tests::{tiny_job, train_tiny_with};
use super::*;

#[test]
fn a_lora_job_saves_a_peft_adapter_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset_dir, base_model_dir) = tiny_job(dir.path(), 6);
    let lora = serde_json::json!({"mode": "lora", "epochs": 1, "learning_rate": 1e-2,
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "value"]}});
    let (outcome, events) = train_tiny_with(
        dir.path(),
        base_model_dir.clone(),
        dataset_dir.clone(),
        lora.clone(),
        |_| {},
    );
    let trainable = events.iter().find_map(|e| match e {
        TrainEvent::Started {
            trainable_parameters,
            ..
        } => Some(*trainable_parameters),
        _ => None,
    });
    // 3 blocks x (query + value) x r (16 in + 16 out), and a 16 x 2 head.
    assert_eq!(trainable, Some(3 * 2 * 2 * 32 + 16 * 2 + 2));
    let best = outcome.best_model_dir.unwrap();
    assert!(best.join("adapter_model.safetensors").is_file());
    assert!(!best.join("model.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(config["r"], 2);
    let trained = super::super::TrainedModel::load(&best).unwrap();
    assert_eq!(trained.labels, vec!["cat", "dog"]);
    let merged = crate::model::load_pretrained(&best, Device::Cpu, None).unwrap();
    let base = crate::model::load_pretrained(&base_model_dir, Device::Cpu, None).unwrap();
    let (q, k) = (
        "vit.encoder.layer.0.attention.attention.query.weight",
        "vit.encoder.layer.0.attention.attention.key.weight",
    );
    let (mv, bv) = (merged.vs.variables(), base.vs.variables());
    assert!(
        (&mv[q] - &bv[q]).abs().max().double_value(&[]) > 0.0,
        "query adapted"
    );
    assert_eq!(
        (&mv[k] - &bv[k]).abs().max().double_value(&[]),
        0.0,
        "key frozen"
    );

    // A second run of the job with one more epoch resumes from the first's
    // checkpoint (which holds the adapter under PEFT's names).
    let mut more = lora;
    more["epochs"] = 2.into();
    let (outcome, events) = train_tiny_with(dir.path(), base_model_dir, dataset_dir, more, |_| {});
    let start = events.iter().find_map(|e| match e {
        TrainEvent::Started { start_epoch, .. } => Some(*start_epoch),
        _ => None,
    });
    assert_eq!(start, Some(1));
    assert_eq!(outcome.card.unwrap().history.len(), 2);
}
