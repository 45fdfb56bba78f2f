//! Calibration at the end of a run: temperature scaling fitted on the
//! validation logits of the best weights (`calibration::fit`), measured
//! before and after on validation and test, and the multi-label thresholds
//! tuned again on the calibrated scores, the ones `/predict` serves.
//!
//! The card keeps the thresholds as raw-score thresholds that make the
//! very same decisions (`calibration::raw_threshold`; scaling is monotone
//! per label), so the ONNX export's metadata and `calibrated=false` stay
//! right; the calibrated ones sit in the card's `calibration`.

use tch::{Kind, Tensor};

use super::calibration::{self, Calibration, Split};
use super::eval::evaluate;
use super::record::TestMetrics;
use crate::task::Task;

/// What calibration gives the card.
pub struct Calibrated {
    pub calibration: Calibration,
    /// Multi-label thresholds on raw scores (equivalent to the calibrated
    /// ones); `None` for multi-class.
    pub thresholds: Option<Vec<f64>>,
    /// The test split's loss and metrics, with those thresholds.
    pub test: Option<TestMetrics>,
}

/// Fits and measures; `validation` and `test` are logits `[n, labels]`
/// with their targets.
pub fn calibrate(
    task: Task,
    labels: &[String],
    validation: (&Tensor, &[Vec<usize>]),
    test: Option<(&Tensor, &[Vec<usize>])>,
) -> Calibrated {
    let rows = rows_of(validation.0);
    let split = Split {
        logits: &rows,
        targets: validation.1,
    };
    let temperatures = calibration::fit(task, &split);
    let served = match task {
        Task::MultiClass => None,
        Task::MultiLabel => {
            let scaled = scaled(validation.0, &temperatures);
            evaluate(&scaled, validation.1, task, labels, None)
                .1
                .thresholds()
        }
    };
    let thresholds = served.as_ref().map(|t| {
        t.iter()
            .zip(&temperatures)
            .map(|(&t, &temp)| calibration::raw_threshold(t, temp))
            .collect::<Vec<f64>>()
    });
    let mut test_metrics = None;
    let mut test_comparison = None;
    if let Some((logits, targets)) = test {
        let (loss, metrics) = evaluate(logits, targets, task, labels, thresholds.as_deref());
        test_metrics = Some(TestMetrics { loss, metrics });
        let rows = rows_of(logits);
        let split = Split {
            logits: &rows,
            targets,
        };
        test_comparison = Some(calibration::compare(task, &split, &temperatures));
    }
    Calibrated {
        calibration: Calibration {
            method: calibration::Method::Temperature,
            validation: calibration::compare(task, &split, &temperatures),
            temperatures,
            thresholds: served,
            test: test_comparison,
        },
        thresholds,
        test: test_metrics,
    }
}

/// Logits divided by their temperature(s), as a tensor.
pub fn scaled(logits: &Tensor, temperatures: &[f64]) -> Tensor {
    let t = Tensor::from_slice(temperatures).to_kind(Kind::Float);
    logits.to_kind(Kind::Float).to_device(tch::Device::Cpu) / t
}

fn rows_of(logits: &Tensor) -> Vec<Vec<f64>> {
    let logits = logits.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let n = logits.size()[0];
    (0..n)
        .map(|i| Vec::try_from(logits.get(i)).expect("f64 logits"))
        .collect()
}
