//! RAII guards over libtorch's mutable state, shared by training and
//! serving: [`AutocastGuard`] (thread-local autocast, safe to unwind
//! through) and [`Tf32Lease`] (the process-wide TF32 switches).
//!
//! Autocast is thread-local in ATen (enabled flag, dtype, nesting depth and
//! the cache of low-precision weight copies), and each job trains (and the
//! engine infers) on a thread of its own: the guard sets all of it on the
//! thread that enters it.

use std::marker::PhantomData;
use std::sync::Mutex;

use crate::torchx::{self, AutocastDevice, AutocastState, FloatKind, TorchError};

/// Autocast to one dtype on the current thread while it lives. Dropping it,
/// also while a panic unwinds (an out-of-memory retry catches those),
/// leaves one nesting level, clears the cast cache when that was the
/// outermost level (as `torch.autocast.__exit__` does), and restores the
/// enabled flag and dtype found on entry. Not `Send`: the state it restores
/// belongs to the thread that entered it.
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device: AutocastDevice,
    previous: AutocastState,
    _thread_bound: PhantomData<*const ()>,
}

impl AutocastGuard {
    pub fn enter(device: AutocastDevice, dtype: FloatKind) -> Result<Self, TorchError> {
        let previous = torchx::autocast_state(device)?;
        torchx::set_autocast_state(
            device,
            AutocastState {
                enabled: true,
                dtype,
            },
        )?;
        if let Err(e) = torchx::autocast_increment_nesting() {
            let _ = torchx::set_autocast_state(device, previous);
            return Err(e);
        }
        Ok(Self {
            device,
            previous,
            _thread_bound: PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // The shim calls cannot panic (C++ exceptions come back as errors);
        // these only touch thread-local state, so an error is a bug to log.
        let result = torchx::autocast_decrement_nesting()
            .and_then(|depth| {
                if depth == 0 {
                    torchx::autocast_clear_cache()
                } else {
                    Ok(())
                }
            })
            .and_then(|()| torchx::set_autocast_state(self.device, self.previous));
        if let Err(e) = result {
            tracing::error!(error = %e, "restoring the autocast state failed");
        }
    }
}

/// Jobs that currently forbid TF32 (`strict_fp32`).
static STRICT_FP32_JOBS: Mutex<usize> = Mutex::new(0);

/// A CUDA job's hold on libtorch's TF32 switches, which are process-wide:
/// TF32 is on (for matmuls and cuDNN) while no `strict_fp32` job runs, and
/// off while any does. A strict job thus never gets TF32; others lose it
/// (run slower, never less precise) only while a strict job runs.
pub struct Tf32Lease {
    strict: bool,
}

impl Tf32Lease {
    pub fn acquire(allow_tf32: bool) -> Result<Self, TorchError> {
        let mut strict = STRICT_FP32_JOBS.lock().unwrap_or_else(|e| e.into_inner());
        if !allow_tf32 {
            *strict += 1;
        }
        let on = *strict == 0;
        torchx::set_tf32(torchx::Tf32 {
            matmul: on,
            cudnn: on,
        })?;
        Ok(Self {
            strict: !allow_tf32,
        })
    }
}

impl Drop for Tf32Lease {
    fn drop(&mut self) {
        let mut strict = STRICT_FP32_JOBS.lock().unwrap_or_else(|e| e.into_inner());
        if self.strict {
            *strict -= 1;
            if *strict == 0 {
                if let Err(e) = torchx::set_tf32(torchx::Tf32 {
                    matmul: true,
                    cudnn: true,
                }) {
                    tracing::error!(error = %e, "turning TF32 back on failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn state(device: AutocastDevice) -> AutocastState {
        torchx::autocast_state(device).unwrap()
    }

    /// The guard drives real autocast: on the CPU device type, a matmul
    /// inside it runs in bf16, and in fp32 again after it.
    #[test]
    fn the_guard_really_autocasts_and_stops() {
        std::thread::spawn(|| {
            let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
            {
                let _g = AutocastGuard::enter(AutocastDevice::Cpu, FloatKind::BF16).unwrap();
                assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            }
            assert_eq!(a.matmul(&a).kind(), Kind::Float);
        })
        .join()
        .unwrap();
    }

    /// A panic inside the guard (an out-of-memory in the forward pass) still
    /// restores enabled, dtype and nesting, and nested guards unwind in order.
    #[test]
    fn the_guard_restores_everything_after_a_caught_panic() {
        std::thread::spawn(|| {
            let before = state(AutocastDevice::Cuda);
            let caught = std::panic::catch_unwind(|| {
                let _outer = AutocastGuard::enter(AutocastDevice::Cuda, FloatKind::F16).unwrap();
                let _inner = AutocastGuard::enter(AutocastDevice::Cuda, FloatKind::BF16).unwrap();
                assert_eq!(
                    state(AutocastDevice::Cuda),
                    AutocastState {
                        enabled: true,
                        dtype: FloatKind::BF16
                    }
                );
                panic!("CUDA out of memory. Tried to allocate 2.00 GiB");
            });
            assert!(caught.is_err());
            assert_eq!(state(AutocastDevice::Cuda), before);
            // Nesting is back at zero: one more level reads 1.
            assert_eq!(torchx::autocast_increment_nesting().unwrap(), 1);
            assert_eq!(torchx::autocast_decrement_nesting().unwrap(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_strict_job_turns_tf32_off_until_it_ends() {
        let _serial = torchx::tests::TF32_SWITCHES
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let relaxed = Tf32Lease::acquire(true).unwrap();
        assert!(torchx::tf32().unwrap().matmul);
        {
            let _strict = Tf32Lease::acquire(false).unwrap();
            let t = torchx::tf32().unwrap();
            assert!(!t.matmul && !t.cudnn);
            // A relaxed job starting meanwhile does not turn it back on.
            let _another = Tf32Lease::acquire(true).unwrap();
            assert!(!torchx::tf32().unwrap().matmul);
        }
        assert!(torchx::tf32().unwrap().matmul);
        drop(relaxed);
    }
}
