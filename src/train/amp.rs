//! Mixed precision: which precision a job runs in ([`PrecisionPlan`]) and
//! fp16's dynamic loss scaling ([`LossScaler`]). The autocast guard and the
//! TF32 lease it uses are torch concerns shared with serving: they live in
//! [`crate::torchx`] ([`AutocastGuard`], [`crate::torchx::Tf32Lease`]).

use tch::{Device, Kind, Tensor};

use crate::torchx::{self, AutocastDevice, AutocastGuard, FloatKind, TorchError};
use crate::train::config::Precision;

/// How a job's forward and backward passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecisionPlan {
    /// Autocast device type and dtype for forward passes; `None`: fp32.
    pub autocast: Option<(AutocastDevice, FloatKind)>,
    /// fp16 only: scale the loss and skip steps whose gradients overflow.
    pub loss_scaling: bool,
    /// Whether fp32 matmuls and convolutions may use TF32 (CUDA only).
    pub tf32: bool,
}

impl PrecisionPlan {
    /// fp32 throughout (always on the CPU).
    pub const FP32: Self = Self {
        autocast: None,
        loss_scaling: false,
        tf32: false,
    };

    /// The plan for `precision` on `device`. `capability` is the GPU's
    /// compute capability when known: `auto` picks bf16 from 8.0 (Ampere)
    /// up, else fp16 with loss scaling (also when the capability is
    /// unknown: fp16 runs everywhere, bf16 does not).
    pub fn resolve(
        precision: Precision,
        strict_fp32: bool,
        device: Device,
        capability: Option<(i32, i32)>,
    ) -> Self {
        if !device.is_cuda() {
            return Self::FP32;
        }
        let bf16 = Self {
            autocast: Some((AutocastDevice::Cuda, FloatKind::BF16)),
            loss_scaling: false,
            tf32: !strict_fp32,
        };
        let fp16 = Self {
            autocast: Some((AutocastDevice::Cuda, FloatKind::F16)),
            loss_scaling: true,
            tf32: !strict_fp32,
        };
        match precision {
            Precision::Auto if capability.is_some_and(|c| c >= (8, 0)) => bf16,
            Precision::Auto => fp16,
            Precision::Bf16 => bf16,
            Precision::Fp16 => fp16,
            Precision::Fp32 => Self {
                tf32: !strict_fp32,
                ..Self::FP32
            },
        }
    }

    /// The plan for a job on `device`, asking the GPU for its capability.
    pub fn for_job(precision: Precision, strict_fp32: bool, device: Device) -> Self {
        let capability = match device {
            Device::Cuda(i) => torchx::cuda_capability(i).ok().flatten(),
            _ => None,
        };
        Self::resolve(precision, strict_fp32, device, capability)
    }

    /// Enters autocast on this thread as planned (`None` for fp32).
    pub fn autocast(&self) -> Result<Option<AutocastGuard>, TorchError> {
        self.autocast
            .map(|(device, dtype)| AutocastGuard::enter(device, dtype))
            .transpose()
    }
}

/// The loss scaler's state that a checkpoint keeps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalerState {
    pub scale: f64,
    pub growth_tracker: i64,
}

/// Dynamic loss scaling for fp16, as `torch.amp.GradScaler` does it, with
/// every decision on the device (no host synchronisation per step): the loss
/// is multiplied by `scale` before backward; the gradients are unscaled and
/// checked for inf/NaN in one pass; a step with any is skipped and the scale
/// halves; after `growth_interval` clean steps in a row it doubles.
pub struct LossScaler {
    /// f32 scalar on the device.
    scale: Tensor,
    /// i32 scalar: clean steps in a row.
    growth_tracker: Tensor,
    /// f32 scalar: 1 when the last unscale saw inf/NaN.
    found_inf: Tensor,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
}

impl LossScaler {
    /// `GradScaler`'s defaults: scale 2^16, growth interval 2000.
    pub fn new(device: Device) -> Self {
        Self::with(device, 65536.0, 2000)
    }

    pub fn with(device: Device, init_scale: f64, growth_interval: i64) -> Self {
        Self {
            scale: Tensor::full(Vec::<i64>::new(), init_scale, (Kind::Float, device)),
            growth_tracker: Tensor::zeros(Vec::<i64>::new(), (Kind::Int, device)),
            found_inf: Tensor::zeros(Vec::<i64>::new(), (Kind::Float, device)),
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval,
        }
    }

    /// The loss to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Divides `grads` by the scale in place and returns the found-inf flag
    /// (an f32 scalar on the device, 1 when any value is inf or NaN).
    pub fn unscale(&mut self, grads: &[Tensor]) -> Result<&Tensor, TorchError> {
        let _ = self.found_inf.zero_();
        let inv_scale = self
            .scale
            .to_kind(Kind::Double)
            .reciprocal()
            .to_kind(Kind::Float);
        torchx::amp_unscale(grads, &self.found_inf, &inv_scale)?;
        Ok(&self.found_inf)
    }

    /// Halves the scale after an overflow, or counts a clean step and
    /// doubles the scale every `growth_interval` of them.
    pub fn update(&mut self) -> Result<(), TorchError> {
        let growth_tracker = &self.growth_tracker;
        self.scale
            .f_internal_amp_update_scale_(
                growth_tracker,
                &self.found_inf,
                self.growth_factor,
                self.backoff_factor,
                self.growth_interval,
            )
            .map(|_| ())
            .map_err(|e| TorchError(e.to_string()))
    }

    /// Reads the state back (a host synchronisation: checkpoints only).
    pub fn state(&self) -> ScalerState {
        ScalerState {
            scale: self.scale.double_value(&[]),
            growth_tracker: self.growth_tracker.int64_value(&[]),
        }
    }

    pub fn restore(&mut self, s: ScalerState) {
        let _ = self.scale.fill_(s.scale);
        let _ = self.growth_tracker.fill_(s.growth_tracker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torchx::AutocastState;
    use crate::train::config::JobConfig;

    fn state(device: AutocastDevice) -> AutocastState {
        torchx::autocast_state(device).unwrap()
    }

    #[test]
    fn plans_follow_the_config_device_and_capability() {
        let cuda = Device::Cuda(0);
        let ampere = Some((8, 0));
        let volta = Some((7, 0));
        let auto = PrecisionPlan::resolve(Precision::Auto, false, cuda, ampere);
        assert_eq!(auto.autocast, Some((AutocastDevice::Cuda, FloatKind::BF16)));
        assert!(!auto.loss_scaling && auto.tf32);
        let old = PrecisionPlan::resolve(Precision::Auto, false, cuda, volta);
        assert_eq!(old.autocast, Some((AutocastDevice::Cuda, FloatKind::F16)));
        assert!(old.loss_scaling);
        assert_eq!(
            PrecisionPlan::resolve(Precision::Auto, false, cuda, None).autocast,
            Some((AutocastDevice::Cuda, FloatKind::F16))
        );
        assert!(PrecisionPlan::resolve(Precision::Fp16, false, cuda, ampere).loss_scaling);
        let fp32 = PrecisionPlan::resolve(Precision::Fp32, false, cuda, ampere);
        assert_eq!((fp32.autocast, fp32.tf32), (None, true));
        let strict = PrecisionPlan::resolve(Precision::Fp32, true, cuda, ampere);
        assert_eq!((strict.autocast, strict.tf32), (None, false));
        for p in [
            Precision::Auto,
            Precision::Bf16,
            Precision::Fp16,
            Precision::Fp32,
        ] {
            assert_eq!(
                PrecisionPlan::resolve(p, false, Device::Cpu, ampere),
                PrecisionPlan::FP32
            );
        }
    }

    /// The plan a bf16 job gets on a GPU, entered on a fresh thread (each
    /// job trains on its own), sets CUDA autocast to bf16 there -- not
    /// ATen's CUDA default, fp16 -- and on that thread only.
    #[test]
    fn a_bf16_job_autocasts_to_bf16_on_its_own_thread() {
        let cfg = JobConfig::from_json(r#"{"base_model":"x","mixed_precision":"bf16"}"#).unwrap();
        let plan = PrecisionPlan::resolve(
            cfg.mixed_precision,
            cfg.strict_fp32,
            Device::Cuda(0),
            Some((9, 0)),
        );
        let (seen, outside) = std::thread::spawn(move || {
            let _guard = plan.autocast().unwrap().expect("autocast on a GPU");
            let seen = state(AutocastDevice::Cuda);
            let outside = std::thread::spawn(|| state(AutocastDevice::Cuda))
                .join()
                .unwrap();
            (seen, outside)
        })
        .join()
        .unwrap();
        assert_eq!(
            seen,
            AutocastState {
                enabled: true,
                dtype: FloatKind::BF16
            }
        );
        assert_eq!(
            outside,
            AutocastState {
                enabled: false,
                dtype: FloatKind::F16
            }
        );
    }

    fn grads_of(w: &Tensor, x: &Tensor, scaler: &LossScaler) -> Vec<Tensor> {
        let _ = w.grad().f_zero_();
        scaler.scale_loss(&(w * x).sum(Kind::Float)).backward();
        vec![w.grad()]
    }

    /// An inf gradient skips the step and halves the scale; clean steps
    /// unscale exactly and grow the scale after the interval.
    #[test]
    fn loss_scaling_skips_overflowing_steps_and_adapts_the_scale() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut scaler = LossScaler::with(Device::Cpu, 1024.0, 3);

        let clean = Tensor::from_slice(&[0.5f32, -0.25]);
        let grads = grads_of(&w, &clean, &scaler);
        let found = scaler.unscale(&grads).unwrap().double_value(&[]);
        assert_eq!(found, 0.0);
        assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), vec![0.5, -0.25]);
        scaler.update().unwrap();
        assert_eq!(scaler.state().scale, 1024.0);
        assert_eq!(scaler.state().growth_tracker, 1);

        let poisoned = Tensor::from_slice(&[f32::INFINITY, 1.0]);
        let grads = grads_of(&w, &poisoned, &scaler);
        let found_inf = scaler.unscale(&grads).unwrap().shallow_clone();
        assert_eq!(found_inf.double_value(&[]), 1.0);
        // The optimiser skips the step on this flag.
        let mut opt =
            crate::train::optim::AdamW::new(vec![("w".into(), w.shallow_clone(), 1.0)], 0.01);
        let before = w.detach().copy();
        opt.step(0.1, Some(&found_inf)).unwrap();
        assert!(w.detach().equal(&before));
        assert_eq!(opt.steps_taken(), 0);
        scaler.update().unwrap();
        assert_eq!(scaler.state().scale, 512.0);
        assert_eq!(scaler.state().growth_tracker, 0);

        for _ in 0..3 {
            let grads = grads_of(&w, &clean, &scaler);
            assert_eq!(scaler.unscale(&grads).unwrap().double_value(&[]), 0.0);
            opt.step(0.1, Some(&scaler.found_inf)).unwrap();
            scaler.update().unwrap();
        }
        assert_eq!(scaler.state().scale, 1024.0);
        assert_eq!(opt.steps_taken(), 3);

        let mut restored = LossScaler::with(Device::Cpu, 1.0, 3);
        restored.restore(scaler.state());
        assert_eq!(restored.state(), scaler.state());
    }
}
