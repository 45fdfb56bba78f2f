//! Temperature scaling and the calibration measures against the libraries
//! people trust for them, on the same logits: the temperature against a
//! `scipy.optimize` fit (within 1e-3), ECE against `torchmetrics`'
//! `calibration_error` (`norm="l1"`, 15 bins), Brier against scikit-learn
//! and NLL against torch (within 1e-6).

use serde_json::{json, Value};
use tch::{Kind, Tensor};
use vitrine::task::Task;
use vitrine::train::calibration::{fit, measure, scale, Measures, Split};

use crate::common::python_json;

/// Seeded over-confident logits `[n, k]` and their targets: labels drawn
/// from the scores of `z` (a class per row from its softmax, or each label
/// with its sigmoid), and the model reports `3 z`.
fn logits_and_targets(task: Task, n: i64, k: i64, seed: i64) -> (Vec<Vec<f64>>, Vec<Vec<usize>>) {
    tch::manual_seed(seed);
    let z = Tensor::randn([n, k], (Kind::Double, tch::Device::Cpu));
    let drawn = match task {
        Task::MultiClass => z.softmax(-1, Kind::Double).multinomial(1, true),
        Task::MultiLabel => z.sigmoid().bernoulli(),
    };
    let rows = |t: &Tensor| -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| Vec::try_from(t.get(i).to_kind(Kind::Double)).unwrap())
            .collect()
    };
    let targets = rows(&drawn)
        .iter()
        .map(|r| match task {
            Task::MultiClass => vec![r[0] as usize],
            Task::MultiLabel => (0..r.len()).filter(|&c| r[c] > 0.5).collect(),
        })
        .collect();
    (rows(&(z * 3.0)), targets)
}

fn check(what: &str, task: Task, logits: &[Vec<f64>], targets: &[Vec<usize>], reference: &Value) {
    let split = Split { logits, targets };
    let theirs: Vec<f64> = serde_json::from_value(reference["temperatures"].clone()).unwrap();
    let ours = fit(task, &split);
    println!("{what}: T ours {ours:?}, scipy {theirs:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-3, "{what}: T {a} vs scipy {b}");
    }
    assert_eq!(ours.len(), theirs.len());
    // The measures on the very same scores: the raw ones, and those scaled
    // by the reference's temperatures.
    let scaled = scale(logits, &theirs);
    let after = Split {
        logits: &scaled,
        targets,
    };
    for (when, ours, theirs) in [
        ("before", measure(task, &split), &reference["before"]),
        ("after", measure(task, &after), &reference["after"]),
    ] {
        compare(&format!("{what} {when}"), &ours, theirs);
    }
}

fn compare(what: &str, ours: &Measures, theirs: &Value) {
    for (name, got) in [("ece", ours.ece), ("brier", ours.brier), ("nll", ours.nll)] {
        let want = theirs[name].as_f64().unwrap();
        println!("{what} {name}: {got:.8} vs {want:.8}");
        assert!((got - want).abs() < 1e-6, "{what} {name}: {got} vs {want}");
    }
}

#[test]
fn temperature_ece_brier_and_nll_equal_scipy_torchmetrics_and_sklearn() {
    let (mc, mc_t) = logits_and_targets(Task::MultiClass, 600, 5, 1);
    let (ml, ml_t) = logits_and_targets(Task::MultiLabel, 400, 3, 2);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("logits.json");
    let doc = json!({
        "multi_class": {"logits": mc, "targets": mc_t},
        "multi_label": {"logits": ml, "targets": ml_t},
    });
    std::fs::write(&input, serde_json::to_vec(&doc).unwrap()).unwrap();
    let reference = python_json("tests/python/calibration_reference.py", &[&input]);
    check(
        "multi-class",
        Task::MultiClass,
        &mc,
        &mc_t,
        &reference["multi_class"],
    );
    check(
        "multi-label",
        Task::MultiLabel,
        &ml,
        &ml_t,
        &reference["multi_label"],
    );
    // The data are over-confident: scaling must have had something to do.
    for task in ["multi_class", "multi_label"] {
        let before = reference[task]["before"]["ece"].as_f64().unwrap();
        let after = reference[task]["after"]["ece"].as_f64().unwrap();
        assert!(after < before, "{task}: ECE {before} -> {after}");
    }
}
