//! Where a training job's wall time goes: waiting for input, the forward
//! and backward passes, the optimiser, evaluation and checkpointing. The
//! shares go into each epoch's metrics, the model card, `/metrics` and the
//! web page, so "input-bound" or "compute-bound" reads off a job without a
//! profiler.
//!
//! The host waits for input, evaluation and checkpoints, so host timers
//! measure them. On a GPU the forward, backward and optimiser only queue
//! kernels: a host timer would measure the queuing, so those two phases are
//! bracketed by CUDA events on the training stream and count the time the
//! GPU spent. On the CPU every phase is host time, and the phases add up to
//! the wall time.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;
use utoipa::ToSchema;

use crate::torchx::DeviceEvent;

/// Seconds per phase, and the wall time they are part of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimeShares {
    /// Waiting for the loader's next batch.
    pub input_wait: f64,
    /// Forward and backward passes (GPU time on a GPU).
    pub compute: f64,
    /// Unscaling, clipping and the optimiser step (GPU time on a GPU).
    pub optimizer: f64,
    /// Evaluating the validation (and test) split.
    pub eval: f64,
    /// Saving the epoch's checkpoint and the best model.
    pub checkpoint: f64,
    /// The wall time these are shares of.
    pub wall: f64,
}

/// A phase of [`TimeShares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InputWait,
    Compute,
    Optimizer,
    Eval,
    Checkpoint,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::InputWait,
        Phase::Compute,
        Phase::Optimizer,
        Phase::Eval,
        Phase::Checkpoint,
    ];

    /// The name in JSON and in `/metrics`' `phase` label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::InputWait => "input_wait",
            Phase::Compute => "compute",
            Phase::Optimizer => "optimizer",
            Phase::Eval => "eval",
            Phase::Checkpoint => "checkpoint",
        }
    }
}

impl TimeShares {
    pub fn get(&self, phase: Phase) -> f64 {
        match phase {
            Phase::InputWait => self.input_wait,
            Phase::Compute => self.compute,
            Phase::Optimizer => self.optimizer,
            Phase::Eval => self.eval,
            Phase::Checkpoint => self.checkpoint,
        }
    }

    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::InputWait => &mut self.input_wait,
            Phase::Compute => &mut self.compute,
            Phase::Optimizer => &mut self.optimizer,
            Phase::Eval => &mut self.eval,
            Phase::Checkpoint => &mut self.checkpoint,
        }
    }

    /// The phases' seconds together.
    pub fn accounted(&self) -> f64 {
        Phase::ALL.iter().map(|&p| self.get(p)).sum()
    }

    /// Adds another period's shares (a job's total over its epochs).
    pub fn add(&mut self, other: &TimeShares) {
        for p in Phase::ALL {
            *self.slot(p) += other.get(p);
        }
        self.wall += other.wall;
    }

    /// What bounds the run: `input` when it waits for input longer than it
    /// computes, else `compute`.
    pub fn bound(&self) -> &'static str {
        if self.input_wait > self.compute + self.optimizer {
            "input"
        } else {
            "compute"
        }
    }
}

/// `vitrine_train_phase_seconds_total{phase}`: where the node's training
/// time went, added from each epoch's shares. Cheap to clone.
#[derive(Clone)]
pub struct PhaseSeconds(prometheus::CounterVec);

impl Default for PhaseSeconds {
    fn default() -> Self {
        let counters = prometheus::CounterVec::new(
            prometheus::Opts::new(
                "vitrine_train_phase_seconds_total",
                "Training time by phase (input_wait, compute, optimizer, eval, checkpoint; \
                 GPU time for compute and optimizer on a GPU)",
            ),
            &["phase"],
        )
        .expect("valid metric");
        for p in Phase::ALL {
            counters.with_label_values(&[p.name()]);
        }
        Self(counters)
    }
}

impl PhaseSeconds {
    /// Counters registered in `registry` (once per registry).
    pub fn registered(registry: &prometheus::Registry) -> Self {
        let me = Self::default();
        let _ = registry.register(Box::new(me.0.clone()));
        me
    }

    pub fn add(&self, shares: &TimeShares) {
        for p in Phase::ALL {
            self.0
                .with_label_values(&[p.name()])
                .inc_by(shares.get(p).max(0.0));
        }
    }

    pub fn get(&self, phase: Phase) -> f64 {
        self.0.with_label_values(&[phase.name()]).get()
    }
}

/// Measures the phases of one period (an epoch) of a training run.
pub struct StepClock {
    device: Device,
    started: Instant,
    shares: TimeShares,
    /// GPU phases not yet read: their events complete asynchronously.
    pending: Vec<(Phase, DeviceEvent, DeviceEvent)>,
}

impl StepClock {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            started: Instant::now(),
            shares: TimeShares::default(),
            pending: Vec::new(),
        }
    }

    /// Runs `f` as host time of `phase` (input wait, evaluation,
    /// checkpointing: the host waits for them).
    pub fn host<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.shares.slot(phase) += t.elapsed().as_secs_f64();
        out
    }

    /// Runs `f`, work queued on the device, as `phase`: bracketed by events
    /// on a GPU, host time on the CPU (or if events fail).
    pub fn device<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        if !self.device.is_cuda() {
            return self.host(phase, f);
        }
        let Ok(start) = DeviceEvent::record(self.device) else {
            return self.host(phase, f);
        };
        let out = f();
        match DeviceEvent::record(self.device) {
            Ok(end) => self.pending.push((phase, start, end)),
            Err(e) => tracing::debug!(error = %e, "timing event"),
        }
        out
    }

    /// The shares since the last lap (or the start), reading the GPU's
    /// events (this waits for the queued work), and starts a new period.
    pub fn lap(&mut self) -> TimeShares {
        for (phase, start, end) in self.pending.drain(..) {
            if let Ok(s) = start.seconds_to(&end) {
                *self.shares.slot(phase) += s;
            }
        }
        let mut shares = std::mem::take(&mut self.shares);
        shares.wall = self.started.elapsed().as_secs_f64();
        self.started = Instant::now();
        shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn phases_add_up_to_the_wall_time_on_the_cpu() {
        let mut clock = StepClock::new(Device::Cpu);
        for _ in 0..3 {
            clock.host(Phase::InputWait, || {
                std::thread::sleep(Duration::from_millis(20))
            });
            clock.device(Phase::Compute, || {
                std::thread::sleep(Duration::from_millis(40))
            });
            clock.device(Phase::Optimizer, || {
                std::thread::sleep(Duration::from_millis(5))
            });
        }
        clock.host(Phase::Eval, || {
            std::thread::sleep(Duration::from_millis(30))
        });
        clock.host(Phase::Checkpoint, || {
            std::thread::sleep(Duration::from_millis(10))
        });
        let s = clock.lap();
        assert!(s.compute >= 0.12 && s.input_wait >= 0.06, "{s:?}");
        // Only a descheduled thread between phases goes unaccounted.
        assert!(
            s.accounted() <= s.wall && s.accounted() >= 0.9 * s.wall,
            "{s:?}"
        );
        assert_eq!(s.bound(), "compute");
        // A new period starts empty.
        let next = clock.lap();
        assert_eq!(next.accounted(), 0.0);
        let mut total = s;
        total.add(&next);
        assert_eq!(total.compute, s.compute);
    }
}
