//! Data-parallel training (`train/distributed.rs`) learns what one rank
//! learns at the same global batch: 2 Gloo ranks on 2 threads against 1
//! rank, augmentation and dropout off, fixed seeds, one optimiser step per
//! epoch so each epoch's reported loss is one step's loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::tests::{tiny_job, train_tiny_with};
use crate::train::{TrainEvent, TrainOutcome};

/// 10 images per label: 16 train (one batch of 16), 4 validation.
const PER_LABEL: usize = 10;

/// The tiny dataset and a base model (`model_type`'s tiny config) whose
/// head already has the labels (no new head drawn from the generator).
fn job(dir: &Path, model: serde_json::Value) -> (PathBuf, PathBuf) {
    let (dataset, _) = tiny_job(dir, PER_LABEL);
    let config = crate::model::ModelConfig::from_json(model, Path::new("config.json")).unwrap();
    let labels = vec!["cat".to_string(), "dog".to_string()];
    let model = crate::model::Model::from_config(config, labels, tch::Device::Cpu).unwrap();
    let base = dir.join("base");
    crate::model::save_pretrained(&model, &base, crate::model::ProblemType::SingleLabel).unwrap();
    (dataset, base)
}

fn vit() -> serde_json::Value {
    serde_json::json!({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16, "patch_size": 8,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
}

fn resnet() -> serde_json::Value {
    serde_json::json!({"model_type": "resnet", "depths": [1, 1], "hidden_sizes": [8, 16],
        "embedding_size": 8, "layer_type": "basic", "hidden_act": "relu", "image_size": 16,
        "downsample_in_first_stage": false})
}

/// The recipe of every run here: full fine-tune, one step per epoch.
fn recipe(extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"epochs": 3, "batch_size": 16, "augmentation": false,
        "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": 7});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
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

/// The saved best model's tensors by name (parameters and buffers).
fn tensors(outcome: &TrainOutcome) -> Vec<(String, tch::Tensor)> {
    let file = outcome
        .best_model_dir
        .as_ref()
        .expect("a model")
        .join("model.safetensors");
    let mut w = tch::Tensor::read_safetensors(file).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn is_buffer(name: &str) -> bool {
    name.contains("running_") || name.contains("num_batches_tracked")
}

/// The largest difference between same-named tensors that `keep` selects.
fn max_difference(
    a: &[(String, tch::Tensor)],
    b: &[(String, tch::Tensor)],
    keep: impl Fn(&str) -> bool,
) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|((n, _), _)| keep(n))
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            (x.to_kind(tch::Kind::Double) - y.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{what}: {a:?} vs {b:?}");
    }
}

/// Trains one job in `dir/name`: its outcome and events.
fn train(
    dir: &Path,
    name: &str,
    (dataset, base): &(PathBuf, PathBuf),
    extra: serde_json::Value,
) -> (TrainOutcome, Vec<TrainEvent>) {
    let here = dir.join(name);
    std::fs::create_dir_all(&here).unwrap();
    train_tiny_with(&here, base.clone(), dataset.clone(), recipe(extra), |_| {})
}

/// ViT (no batch norm): 2 ranks at a global batch of 16 equal 1 rank at
/// 16, step by step.
#[test]
fn two_ranks_train_a_vit_as_one_rank_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = job(dir.path(), vit());
    let (one, one_events) = train(dir.path(), "one", &data, serde_json::json!({}));
    let (two, two_events) = train(
        dir.path(),
        "two",
        &data,
        serde_json::json!({"devices": ["cpu", "cpu"]}),
    );
    let (l1, l2) = (losses(&one_events), losses(&two_events));
    assert_eq!(l1.len(), 3, "one step per epoch: {l1:?}");
    assert!(l1[0] != l1[2], "the model learns: {l1:?}");
    assert_close(&l1, &l2, 1e-5, "per-step losses");
    let d = max_difference(&tensors(&one), &tensors(&two), |_| true);
    assert!(d <= 1e-4, "final weights differ by {d}");
    // The card keeps the job's recipe: the global batch and the devices.
    let card = two.card.unwrap();
    assert_eq!(card.config.batch_size, 16);
    assert_eq!(card.config.ranks_per_node(), 2);
}

/// A linear probe on 2 ranks (each computing the frozen backbone's
/// features in its own scratch) equals one rank.
#[test]
fn two_ranks_train_a_linear_probe_as_one_rank_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = job(dir.path(), vit());
    let probe = |m: serde_json::Value| {
        let mut v = serde_json::json!({"mode": "linear_probe"});
        v.as_object_mut()
            .unwrap()
            .extend(m.as_object().unwrap().clone());
        v
    };
    let (one, one_events) = train(dir.path(), "one", &data, probe(serde_json::json!({})));
    let (two, two_events) = train(
        dir.path(),
        "two",
        &data,
        probe(serde_json::json!({"devices": 2})),
    );
    assert_close(
        &losses(&one_events),
        &losses(&two_events),
        1e-5,
        "per-step losses",
    );
    let d = max_difference(&tensors(&one), &tensors(&two), |_| true);
    assert!(d <= 1e-4, "final weights differ by {d}");
}

/// ResNet (batch norm in training mode): each rank normalises its own
/// half of the batch, as DDP without SyncBatchNorm does, which is what one
/// rank does with `micro_batch` = half the batch; the losses and weights
/// are equal. The running statistics follow rank 0's (broadcast_buffers):
/// they take rank 0's half of each step only, so they are not one rank's,
/// and evaluation (hence the best epoch) may differ: the weights are
/// compared after one epoch of two steps, where the best epoch is the last.
#[test]
fn two_ranks_train_a_resnet_as_one_rank_with_half_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let data = job(dir.path(), resnet());
    let one = serde_json::json!({"micro_batch": 8});
    let two = serde_json::json!({"devices": 2});
    let (_, one_events) = train(dir.path(), "one", &data, one);
    let (_, two_events) = train(dir.path(), "two", &data, two);
    assert_close(
        &losses(&one_events),
        &losses(&two_events),
        1e-5,
        "per-step losses",
    );
    let short = |m: serde_json::Value| {
        let mut v = serde_json::json!({"epochs": 1, "batch_size": 8});
        v.as_object_mut()
            .unwrap()
            .extend(m.as_object().unwrap().clone());
        v
    };
    let (one, _) = train(
        dir.path(),
        "one-short",
        &data,
        short(serde_json::json!({"micro_batch": 4})),
    );
    let (two, _) = train(
        dir.path(),
        "two-short",
        &data,
        short(serde_json::json!({"devices": 2})),
    );
    let (a, b) = (tensors(&one), tensors(&two));
    let d = max_difference(&a, &b, |n| !is_buffer(n));
    assert!(d <= 1e-4, "final weights differ by {d}");
    assert!(a.iter().any(|(n, _)| is_buffer(n)), "the model has buffers");
    for (n, t) in b.iter().filter(|(n, _)| is_buffer(n)) {
        let finite = t.to_kind(tch::Kind::Double).isfinite().all();
        assert!(bool::try_from(finite).unwrap(), "{n}");
    }
}

/// A 2-rank job stopped part-way resumes from its checkpoint on 2 ranks
/// and on 1, ending where the uninterrupted 2-rank job ends.
#[test]
fn a_two_rank_checkpoint_resumes_on_two_ranks_and_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = job(dir.path(), vit());
    let long = serde_json::json!({"epochs": 8});
    let two = serde_json::json!({"devices": 2, "epochs": 8});
    let (whole, whole_events) = train(dir.path(), "whole", &data, two.clone());
    let want = losses(&whole_events);
    for (name, resume_with) in [("to-two", two.clone()), ("to-one", long.clone())] {
        let here = dir.path().join(name);
        std::fs::create_dir_all(&here).unwrap();
        // Stopped once the first epoch's checkpoint exists.
        let work = here.join("work");
        let (dataset, base) = data.clone();
        let stop: crate::train::StopFlag = Default::default();
        let watcher = {
            let (stop, state) = (stop.clone(), work.join("checkpoint").join("state.json"));
            std::thread::spawn(move || {
                while !state.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                stop.store(true, Ordering::Relaxed);
            })
        };
        let first = super::tests::train_tiny_stoppable(
            &here,
            base.clone(),
            dataset.clone(),
            recipe(two.clone()),
            stop,
        );
        watcher.join().unwrap();
        assert!(first.0.interrupted, "{name}: the first run was stopped");
        let done = first
            .1
            .iter()
            .filter(|e| matches!(e, TrainEvent::Epoch(_)))
            .count();
        assert!(done < 8, "{name}: stopped after {done} epochs");
        let (resumed, events) = train_tiny_with(
            &here,
            base.clone(),
            dataset.clone(),
            recipe(resume_with),
            |_| {},
        );
        let got = losses(&events);
        // The resumed run reports the epochs it trained: the last ones.
        assert_close(&want[want.len() - got.len()..], &got, 1e-5, name);
        let d = max_difference(&tensors(&whole), &tensors(&resumed), |_| true);
        assert!(d <= 1e-4, "{name}: final weights differ by {d}");
    }
}
