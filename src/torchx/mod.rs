//! Safe wrappers over a small C++ shim (`shim.cpp`, compiled by `build.rs`
//! against the venv's libtorch headers) for the ATen calls tch lacks:
//! thread-local autocast state with a dtype, TF32 switches, the fused AdamW
//! and `_foreach_*` kernels, AMP's unscale, pinned memory without the
//! deprecated `device` argument, per-device seeding and the CUDA compute
//! capability; and the RAII guards over that state ([`AutocastGuard`],
//! [`Tf32Lease`]) that training and serving share.
//!
//! The lowest layer of the crate: it imports nothing from it. Every shim call
//! catches C++ exceptions and returns their message as a [`TorchError`].

pub mod dist;
mod guards;

use std::ffi::{c_char, CStr};

use tch::Tensor;

/// A libtorch error, with the message libtorch gave (no C++ backtrace).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TorchError(pub String);

pub use guards::{AutocastGuard, Tf32Lease};

pub type Result<T> = std::result::Result<T, TorchError>;

/// An `at::Tensor*` as the shim sees it (tch's `*mut C_tensor`).
type CTensor = *mut std::ffi::c_void;

mod ffi {
    use super::CTensor;
    use std::ffi::{c_char, c_void};

    extern "C" {
        pub fn vx_free(p: *mut c_char);
        pub fn vx_autocast_get(device: i32, enabled: *mut bool, dtype: *mut i32) -> *mut c_char;
        pub fn vx_autocast_set(device: i32, enabled: bool, dtype: i32) -> *mut c_char;
        pub fn vx_autocast_increment_nesting(depth: *mut i64) -> *mut c_char;
        pub fn vx_autocast_decrement_nesting(depth: *mut i64) -> *mut c_char;
        pub fn vx_autocast_clear_cache() -> *mut c_char;
        pub fn vx_tf32_set(matmul: bool, cudnn: bool) -> *mut c_char;
        pub fn vx_tf32_get(matmul: *mut bool, cudnn: *mut bool) -> *mut c_char;
        #[allow(clippy::too_many_arguments)]
        pub fn vx_fused_adamw(
            params: *const CTensor,
            grads: *const CTensor,
            exp_avgs: *const CTensor,
            exp_avg_sqs: *const CTensor,
            state_steps: *const CTensor,
            n: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            grad_scale: CTensor,
            found_inf: CTensor,
        ) -> *mut c_char;
        pub fn vx_amp_unscale(
            grads: *const CTensor,
            n: usize,
            found_inf: CTensor,
            inv_scale: CTensor,
        ) -> *mut c_char;
        pub fn vx_foreach_norm(ts: *const CTensor, n: usize, out: *mut CTensor) -> *mut c_char;
        pub fn vx_foreach_mul_tensor(ts: *const CTensor, n: usize, factor: CTensor) -> *mut c_char;
        pub fn vx_foreach_zero(ts: *const CTensor, n: usize) -> *mut c_char;
        pub fn vx_set_grads_none(ts: *const CTensor, n: usize) -> *mut c_char;
        pub fn vx_pin_memory(t: CTensor, out: *mut CTensor) -> *mut c_char;
        pub fn vx_manual_seed(device: i32, index: i32, seed: u64) -> *mut c_char;
        pub fn vx_current_seed(device: i32, index: i32, seed: *mut u64) -> *mut c_char;
        pub fn vx_event_record(device: i32, index: i32, event: *mut *mut c_void) -> *mut c_char;
        pub fn vx_event_elapsed_ms(
            start: *mut c_void,
            end: *mut c_void,
            ms: *mut f64,
        ) -> *mut c_char;
        pub fn vx_event_free(event: *mut c_void);
        pub fn vx_rng_get_state(device: i32, index: i32, out: *mut CTensor) -> *mut c_char;
        pub fn vx_rng_set_state(device: i32, index: i32, state: CTensor) -> *mut c_char;
        pub fn vx_cuda_capability(index: i32, major: *mut i32, minor: *mut i32) -> *mut c_char;
        pub fn vx_cuda_use_pool_stream(index: i32, stream_id: *mut i64) -> *mut c_char;
    }
}

/// Turns the shim's error convention (NULL or a malloc'd message) into a
/// `Result`, freeing the message.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from malloc
    // that we own; `vx_free` releases it with the matching allocator.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::vx_free(err) };
    Err(TorchError(msg))
}

/// The handle the shim reads. The shim never frees or keeps it; callers keep
/// the `Tensor` alive across the call.
fn handle(t: &Tensor) -> CTensor {
    t.as_ptr() as CTensor
}

fn handles<T: std::borrow::Borrow<Tensor>>(ts: &[T]) -> Vec<CTensor> {
    ts.iter().map(|t| handle(t.borrow())).collect()
}

/// Device types autocast distinguishes (each has its own thread-local
/// enabled flag and dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutocastDevice {
    Cpu,
    Cuda,
}

impl AutocastDevice {
    fn code(self) -> i32 {
        match self {
            Self::Cpu => 0,
            Self::Cuda => 1,
        }
    }

    /// The autocast device type that governs ops on `device`.
    pub fn of(device: tch::Device) -> Self {
        if device.is_cuda() {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }
}

/// The floating-point kinds autocast can be set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    fn code(self) -> i32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::BF16 => 2,
        }
    }

    fn from_code(code: i32) -> Result<Self> {
        match code {
            0 => Ok(Self::F32),
            1 => Ok(Self::F16),
            2 => Ok(Self::BF16),
            c => Err(TorchError(format!("unexpected autocast dtype code {c}"))),
        }
    }

    pub fn kind(self) -> tch::Kind {
        match self {
            Self::F32 => tch::Kind::Float,
            Self::F16 => tch::Kind::Half,
            Self::BF16 => tch::Kind::BFloat16,
        }
    }
}

/// This thread's autocast state for one device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutocastState {
    pub enabled: bool,
    pub dtype: FloatKind,
}

/// Reads this thread's autocast state for `device`.
pub fn autocast_state(device: AutocastDevice) -> Result<AutocastState> {
    let (mut enabled, mut dtype) = (false, -1);
    check(unsafe { ffi::vx_autocast_get(device.code(), &mut enabled, &mut dtype) })?;
    Ok(AutocastState {
        enabled,
        dtype: FloatKind::from_code(dtype)?,
    })
}

/// Sets this thread's autocast state for `device` (dtype first, then the
/// enabled flag).
pub fn set_autocast_state(device: AutocastDevice, state: AutocastState) -> Result<()> {
    check(unsafe { ffi::vx_autocast_set(device.code(), state.enabled, state.dtype.code()) })
}

/// Enters one autocast nesting level on this thread; returns the new depth.
pub fn autocast_increment_nesting() -> Result<i64> {
    let mut depth = 0;
    check(unsafe { ffi::vx_autocast_increment_nesting(&mut depth) })?;
    Ok(depth)
}

/// Leaves one autocast nesting level on this thread; returns the new depth.
pub fn autocast_decrement_nesting() -> Result<i64> {
    let mut depth = 0;
    check(unsafe { ffi::vx_autocast_decrement_nesting(&mut depth) })?;
    Ok(depth)
}

/// Drops this thread's cache of low-precision weight copies.
pub fn autocast_clear_cache() -> Result<()> {
    check(unsafe { ffi::vx_autocast_clear_cache() })
}

/// Whether float32 matmuls (cuBLAS) and cuDNN convolutions may use TF32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tf32 {
    pub matmul: bool,
    pub cudnn: bool,
}

/// Sets the process-wide TF32 switches (they only matter on CUDA).
pub fn set_tf32(t: Tf32) -> Result<()> {
    check(unsafe { ffi::vx_tf32_set(t.matmul, t.cudnn) })
}

/// Reads the process-wide TF32 switches.
pub fn tf32() -> Result<Tf32> {
    let (mut matmul, mut cudnn) = (false, false);
    check(unsafe { ffi::vx_tf32_get(&mut matmul, &mut cudnn) })?;
    Ok(Tf32 { matmul, cudnn })
}

/// Hyper-parameters of one `_fused_adamw_` call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// The tensors of one fused AdamW group, all on one device, same length.
pub struct AdamWGroup<'a> {
    pub params: &'a [Tensor],
    pub grads: &'a [Tensor],
    pub exp_avgs: &'a [Tensor],
    pub exp_avg_sqs: &'a [Tensor],
    /// Float32 scalars holding the step count the bias correction uses
    /// (already incremented for this step); may repeat one tensor.
    pub steps: &'a [Tensor],
}

/// libtorch's fused AdamW (`_fused_adamw_`: one kernel per group on CUDA,
/// a vectorised loop on the CPU), without amsgrad, minimising. The update
/// is skipped entirely when `found_inf` (a float32 scalar) is 1; grads are
/// divided by `grad_scale` first when given.
pub fn fused_adamw(
    group: &AdamWGroup<'_>,
    h: AdamWHyper,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let n = group.params.len();
    for (what, len) in [
        ("grads", group.grads.len()),
        ("exp_avgs", group.exp_avgs.len()),
        ("exp_avg_sqs", group.exp_avg_sqs.len()),
        ("steps", group.steps.len()),
    ] {
        if len != n {
            return Err(TorchError(format!(
                "fused AdamW: {n} params but {len} {what}"
            )));
        }
    }
    if n == 0 {
        return Ok(());
    }
    let (p, g, m, v, s) = (
        handles(group.params),
        handles(group.grads),
        handles(group.exp_avgs),
        handles(group.exp_avg_sqs),
        handles(group.steps),
    );
    let opt = |t: Option<&Tensor>| t.map(handle).unwrap_or(std::ptr::null_mut());
    check(unsafe {
        ffi::vx_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            opt(grad_scale),
            opt(found_inf),
        )
    })
}

/// AMP's unscale: multiplies every grad by `inv_scale` in place and sets
/// `found_inf` (a float32 scalar) to 1 if any value is inf or NaN. No host
/// synchronisation.
pub fn amp_unscale(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
    if grads.is_empty() {
        return Ok(());
    }
    let g = handles(grads);
    check(unsafe { ffi::vx_amp_unscale(g.as_ptr(), g.len(), handle(found_inf), handle(inv_scale)) })
}

/// The L2 norm of each tensor (`_foreach_norm`): a few kernels for the
/// whole list, results stay on the device.
pub fn foreach_norm(ts: &[Tensor]) -> Result<Vec<Tensor>> {
    if ts.is_empty() {
        return Ok(vec![]);
    }
    let h = handles(ts);
    let mut out: Vec<CTensor> = vec![std::ptr::null_mut(); ts.len()];
    check(unsafe { ffi::vx_foreach_norm(h.as_ptr(), h.len(), out.as_mut_ptr()) })?;
    // SAFETY: on success each slot holds a tensor `new`-ed by the shim,
    // which tch's `Tensor` owns and frees from now on.
    Ok(out
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p.cast()) })
        .collect())
}

/// Multiplies every tensor in place by the scalar tensor `factor` (which
/// may live on the device: no host synchronisation).
pub fn foreach_mul_(ts: &[Tensor], factor: &Tensor) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let h = handles(ts);
    check(unsafe { ffi::vx_foreach_mul_tensor(h.as_ptr(), h.len(), handle(factor)) })
}

/// Zeroes every tensor in place.
pub fn foreach_zero_(ts: &[Tensor]) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let h = handles(ts);
    check(unsafe { ffi::vx_foreach_zero(h.as_ptr(), h.len()) })
}

/// Drops the gradients of `ts` (`grad = None` in PyTorch): the next
/// backward allocates fresh ones instead of accumulating, and nothing runs
/// on the device now.
pub fn set_grads_none(ts: &[Tensor]) -> Result<()> {
    let h = handles(ts);
    check(unsafe { ffi::vx_set_grads_none(h.as_ptr(), h.len()) })
}

/// A page-locked copy of a CPU tensor, so a later `non_blocking` copy to a
/// GPU is truly asynchronous. Needs a CUDA runtime.
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out: CTensor = std::ptr::null_mut();
    check(unsafe { ffi::vx_pin_memory(handle(t), &mut out) })?;
    // SAFETY: a tensor `new`-ed by the shim; ownership passes to `Tensor`.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Seeds the default generator of `device` only (the CPU's, or one GPU's),
/// unlike `tch::manual_seed`, which reseeds every GPU in the process.
pub fn manual_seed(device: tch::Device, seed: u64) -> Result<()> {
    let (kind, index) = generator_of(device);
    check(unsafe { ffi::vx_manual_seed(kind.code(), index, seed) })
}

/// The seed `device`'s default generator was last seeded with.
pub fn current_seed(device: tch::Device) -> Result<u64> {
    let (kind, index) = generator_of(device);
    let mut seed = 0;
    check(unsafe { ffi::vx_current_seed(kind.code(), index, &mut seed) })?;
    Ok(seed)
}

/// A timing event recorded on the current stream of a GPU: the time between
/// two is the device's, whatever the host did meanwhile.
pub struct DeviceEvent(*mut std::ffi::c_void);

// SAFETY: a `c10::Event` may be recorded, waited for and dropped from any
// thread; this handle is only ever used by one owner at a time.
unsafe impl Send for DeviceEvent {}

impl DeviceEvent {
    /// Records an event on `device`'s current stream (CUDA only: the CPU
    /// has no events, and its host time is its busy time).
    pub fn record(device: tch::Device) -> Result<Self> {
        let tch::Device::Cuda(index) = device else {
            return Err(TorchError(format!("no timing events on {device:?}")));
        };
        let mut event = std::ptr::null_mut();
        check(unsafe {
            ffi::vx_event_record(AutocastDevice::Cuda.code(), index as i32, &mut event)
        })?;
        Ok(Self(event))
    }

    /// Seconds from `self` to `end`, waiting for `end` to complete.
    pub fn seconds_to(&self, end: &DeviceEvent) -> Result<f64> {
        let mut ms = 0.0;
        check(unsafe { ffi::vx_event_elapsed_ms(self.0, end.0, &mut ms) })?;
        Ok(ms / 1000.0)
    }
}

impl Drop for DeviceEvent {
    fn drop(&mut self) {
        unsafe { ffi::vx_event_free(self.0) }
    }
}

/// The state of `device`'s default generator (seed and position), to give
/// back to [`set_rng_state`]: a recomputation then draws the same numbers.
pub fn rng_state(device: tch::Device) -> Result<Tensor> {
    let (kind, index) = generator_of(device);
    let mut out: CTensor = std::ptr::null_mut();
    check(unsafe { ffi::vx_rng_get_state(kind.code(), index, &mut out) })?;
    // SAFETY: the shim returned a new heap `at::Tensor*`, which tch owns.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Restores a state [`rng_state`] returned.
pub fn set_rng_state(device: tch::Device, state: &Tensor) -> Result<()> {
    let (kind, index) = generator_of(device);
    check(unsafe { ffi::vx_rng_set_state(kind.code(), index, handle(state)) })
}

fn generator_of(device: tch::Device) -> (AutocastDevice, i32) {
    match device {
        tch::Device::Cuda(i) => (AutocastDevice::Cuda, i as i32),
        _ => (AutocastDevice::Cpu, 0),
    }
}

/// The compute capability `(major, minor)` of CUDA device `index`, or
/// `None` when there is no such device or the CUDA runtime cannot tell.
pub fn cuda_capability(index: usize) -> Result<Option<(i32, i32)>> {
    let (mut major, mut minor) = (-1, -1);
    check(unsafe { ffi::vx_cuda_capability(index as i32, &mut major, &mut minor) })?;
    Ok((major >= 0).then_some((major, minor)))
}

/// Gives the calling thread a CUDA stream of its own on `device` (from
/// libtorch's pool), so its kernels never queue behind another thread's
/// on the default stream: the inference engine of a GPU and a job training
/// on it overlap. A no-op on the CPU. Returns the stream's id (CUDA only).
pub fn use_own_stream(device: tch::Device) -> Result<Option<i64>> {
    match device {
        tch::Device::Cuda(i) => {
            let mut id = 0;
            check(unsafe { ffi::vx_cuda_use_pool_stream(i as i32, &mut id) })?;
            Ok(Some(id))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn own_streams_are_a_cpu_no_op_and_a_clear_error_without_cuda() {
        assert_eq!(use_own_stream(Device::Cpu).unwrap(), None);
        if !tch::Cuda::is_available() {
            // Asking for a CUDA stream where there is none is an error
            // message, not an abort.
            let err = unsafe {
                let mut id = 0;
                check(ffi::vx_cuda_use_pool_stream(0, &mut id))
            };
            assert!(err.is_err());
        }
    }

    #[test]
    fn errors_come_back_as_messages_not_crashes() {
        // A C++ exception (the factor must be a one-element tensor) is a
        // `TorchError` carrying libtorch's message, not an abort.
        let a = [Tensor::ones([2], (Kind::Float, Device::Cpu))];
        let err = foreach_mul_(&a, &Tensor::ones([3], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(
            !err.0.is_empty() && !err.0.contains("Exception raised from"),
            "{err}"
        );
        // Mismatched list lengths are refused before reaching C++.
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let one = std::slice::from_ref(&t);
        let group = AdamWGroup {
            params: one,
            grads: &[],
            exp_avgs: one,
            exp_avg_sqs: one,
            steps: one,
        };
        let h = AdamWHyper {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
        };
        assert!(fused_adamw(&group, h, None, None).is_err());
    }

    #[test]
    fn autocast_state_is_per_thread_and_per_device_type() {
        std::thread::spawn(|| {
            let before = autocast_state(AutocastDevice::Cuda).unwrap();
            // ATen's defaults: off, fp16 on CUDA; off, bf16 on the CPU.
            assert_eq!(
                before,
                AutocastState {
                    enabled: false,
                    dtype: FloatKind::F16
                }
            );
            assert_eq!(
                autocast_state(AutocastDevice::Cpu).unwrap().dtype,
                FloatKind::BF16
            );
            let on = AutocastState {
                enabled: true,
                dtype: FloatKind::BF16,
            };
            set_autocast_state(AutocastDevice::Cuda, on).unwrap();
            assert_eq!(autocast_state(AutocastDevice::Cuda).unwrap(), on);
            // Another thread still sees the defaults.
            std::thread::spawn(|| {
                assert_eq!(
                    autocast_state(AutocastDevice::Cuda).unwrap(),
                    AutocastState {
                        enabled: false,
                        dtype: FloatKind::F16
                    }
                );
            })
            .join()
            .unwrap();
            set_autocast_state(AutocastDevice::Cuda, before).unwrap();
            assert_eq!(autocast_increment_nesting().unwrap(), 1);
            assert_eq!(autocast_decrement_nesting().unwrap(), 0);
            autocast_clear_cache().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tf32_switches_round_trip() {
        let _serial = TF32_SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        let before = tf32().unwrap();
        for t in [
            Tf32 {
                matmul: true,
                cudnn: false,
            },
            Tf32 {
                matmul: false,
                cudnn: true,
            },
        ] {
            set_tf32(t).unwrap();
            assert_eq!(tf32().unwrap(), t);
        }
        set_tf32(before).unwrap();
    }

    /// Serialises the tests that flip the process-wide TF32 switches.
    pub(crate) static TF32_SWITCHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Only this test seeds the CPU generator in the lib's test binary
    /// (the training run that also does runs in a child process).
    #[test]
    fn a_saved_generator_state_replays_the_same_draws() {
        // The generator is the process's: another test drawing from it in
        // between spoils one try, never five.
        let replays = || {
            let state = rng_state(Device::Cpu).unwrap();
            let a = Tensor::rand([16], (tch::Kind::Float, Device::Cpu));
            let after = rng_state(Device::Cpu).unwrap();
            set_rng_state(Device::Cpu, &state).unwrap();
            let b = Tensor::rand([16], (tch::Kind::Float, Device::Cpu));
            a.equal(&b) && rng_state(Device::Cpu).unwrap().equal(&after)
        };
        assert!((0..5).any(|_| replays()));
        let junk = Tensor::zeros([3], (tch::Kind::Uint8, Device::Cpu));
        assert!(set_rng_state(Device::Cpu, &junk).is_err());
    }

    #[test]
    fn seeding_sets_one_generator() {
        manual_seed(Device::Cpu, 7).unwrap();
        assert_eq!(current_seed(Device::Cpu).unwrap(), 7);
        manual_seed(Device::Cpu, 8).unwrap();
        assert_eq!(current_seed(Device::Cpu).unwrap(), 8);
        // No GPU here: seeding one is an error message, not a crash.
        if !tch::Cuda::is_available() {
            assert!(manual_seed(Device::Cuda(0), 7).is_err());
            assert_eq!(cuda_capability(0).unwrap(), None);
        }
    }

    #[test]
    fn foreach_kernels_match_their_per_tensor_meaning() {
        let ts = [
            Tensor::from_slice(&[3.0f32, 4.0]),
            Tensor::from_slice(&[1.0f32, -2.0, 2.0]),
        ];
        let norms: Vec<f64> = foreach_norm(&ts)
            .unwrap()
            .iter()
            .map(|t| t.double_value(&[]))
            .collect();
        assert_eq!(norms, vec![5.0, 3.0]);
        foreach_mul_(&ts, &Tensor::from(0.5f32)).unwrap();
        assert_eq!(Vec::<f32>::try_from(&ts[0]).unwrap(), vec![1.5, 2.0]);
        foreach_zero_(&ts).unwrap();
        assert_eq!(ts[1].abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn grads_can_be_dropped() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        set_grads_none(std::slice::from_ref(&w)).unwrap();
        assert!(!w.grad().defined());
    }
}
