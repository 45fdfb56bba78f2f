//! Training with the speed options (activation checkpointing, a probed
//! micro-batch, the decode-once input cache) learns what training without
//! them learns.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::tests::{tiny_job, train_tiny_with};
use crate::imaging::input_cache::InputCache;
use crate::train::{TrainEvent, TrainOutcome};

/// The tiny dataset and a base model whose head already has its labels
/// (`cat`, `dog`): no new head is drawn, so a run uses no random numbers
/// that another test running at the same time could take from the
/// process's generator, and two runs can be compared exactly.
fn job(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let (dataset, _) = tiny_job(dir, n);
    let config = crate::model::ModelConfig::from_json(
        serde_json::json!({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16, "patch_size": 8}),
        Path::new("config.json"),
    )
    .unwrap();
    let labels = vec!["cat".to_string(), "dog".to_string()];
    let model = crate::model::Model::from_config(config, labels, tch::Device::Cpu).unwrap();
    let base = dir.join("base-cat-dog");
    crate::model::save_pretrained(&model, &base, crate::model::ProblemType::SingleLabel).unwrap();
    (dataset, base)
}

fn losses(events: &[TrainEvent]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|ev| match ev {
            TrainEvent::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect()
}

fn weights(outcome: &TrainOutcome) -> Vec<(String, tch::Tensor)> {
    let file = outcome
        .best_model_dir
        .as_ref()
        .unwrap()
        .join("model.safetensors");
    let mut w = tch::Tensor::read_safetensors(file).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn max_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Runs the tiny job in its own work directory.
fn run(
    dir: &Path,
    name: &str,
    job: &(PathBuf, PathBuf),
    extra: serde_json::Value,
    tweak: impl FnOnce(&mut crate::train::TrainSpec),
) -> (TrainOutcome, Vec<TrainEvent>) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    train_tiny_with(&root, job.1.clone(), job.0.clone(), extra, tweak)
}

#[test]
fn checkpointing_reaches_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 12);
    let extra = serde_json::json!({"epochs": 1});
    let (plain, plain_events) = run(dir.path(), "plain", &job, extra.clone(), |_| {});
    let with = serde_json::json!({"epochs": 1, "gradient_checkpointing": true});
    let (ckpt, ckpt_events) = run(dir.path(), "ckpt", &job, with, |_| {});
    let steps = plain_events.iter().find_map(|ev| match ev {
        TrainEvent::Started {
            steps_per_epoch, ..
        } => Some(*steps_per_epoch),
        _ => None,
    });
    assert!(steps >= Some(5), "at least five steps: {steps:?}");
    assert!(close(&losses(&plain_events), &losses(&ckpt_events), 1e-5));
    let d = max_difference(&weights(&plain), &weights(&ckpt));
    assert!(d <= 1e-5, "weights differ by {d}");
}

#[test]
fn an_auto_micro_batch_under_a_memory_limit_keeps_the_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 12);
    let (_, plain) = run(dir.path(), "plain", &job, serde_json::json!({}), |_| {});
    let auto = serde_json::json!({"micro_batch": "auto"});
    let (_, probed) = run(dir.path(), "auto", &job, auto, |spec| {
        spec.oom_above_micro_batch = Some(3);
    });
    let micro = probed.iter().find_map(|ev| match ev {
        TrainEvent::Started { micro_batch, .. } => Some(*micro_batch),
        _ => None,
    });
    assert_eq!(micro, Some(3), "the largest size under the limit");
    assert!(
        !probed
            .iter()
            .any(|ev| matches!(ev, TrainEvent::OutOfMemory { .. })),
        "no step ran out of memory"
    );
    assert!(close(&losses(&plain), &losses(&probed), 1e-5));
}

#[test]
fn the_input_cache_is_built_once_and_changes_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 8);
    let cache = InputCache::new(dir.path().join("cache"), 1 << 30);
    let (plain, plain_events) = run(dir.path(), "plain", &job, serde_json::json!({}), |_| {});
    let with = |spec: &mut crate::train::TrainSpec| spec.input_cache = Some(cache.clone());
    let (first, first_events) = run(dir.path(), "first", &job, serde_json::json!({}), with);
    // Training copies and evaluation outputs, in one pass.
    assert_eq!(cache.stats().builds.load(Ordering::Relaxed), 2);
    let (second, _) = run(dir.path(), "second", &job, serde_json::json!({}), with);
    assert_eq!(
        cache.stats().builds.load(Ordering::Relaxed),
        2,
        "the second job reads"
    );
    assert!(cache.stats().hits.load(Ordering::Relaxed) > 0);
    // These images are smaller than a training copy's bound, so the copies
    // are the images themselves: the same run, bit for bit.
    assert_eq!(losses(&plain_events), losses(&first_events));
    assert_eq!(max_difference(&weights(&plain), &weights(&first)), 0.0);
    assert_eq!(max_difference(&weights(&first), &weights(&second)), 0.0);
    // Off: nothing read from it.
    let hits = cache.stats().hits.load(Ordering::Relaxed);
    run(
        dir.path(),
        "off",
        &job,
        serde_json::json!({"input_cache": "off"}),
        with,
    );
    assert_eq!(cache.stats().hits.load(Ordering::Relaxed), hits);
}

#[test]
fn epochs_and_the_card_say_where_the_time_went() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 6);
    let (outcome, events) = run(dir.path(), "t", &job, serde_json::json!({}), |_| {});
    let epochs: Vec<_> = events
        .iter()
        .filter_map(|ev| match ev {
            TrainEvent::Epoch(m) => Some(m.time_shares),
            _ => None,
        })
        .collect();
    assert_eq!(epochs.len(), 2);
    for s in &epochs {
        assert!(
            s.compute > 0.0 && s.eval > 0.0 && s.input_wait > 0.0,
            "{s:?}"
        );
        assert!(s.accounted() <= s.wall * 1.0001, "{s:?}");
    }
    let card = outcome.card.unwrap().time_shares.unwrap();
    assert!((card.compute - epochs.iter().map(|s| s.compute).sum::<f64>()).abs() < 1e-9);
}
