//! Device health. A fatal CUDA error (device-side assert, illegal memory
//! access, ECC error, ...) leaves the process's CUDA context on that device
//! unusable: every later kernel on it fails too, and only a new process
//! recovers it. So the first such error takes the device out of service for
//! everyone in the process: its training worker stops claiming jobs, its
//! inference engine stops taking requests, `/readyz` answers 503 naming it,
//! and `/metrics` counts it.
//!
//! Devices are named as everywhere else (`cpu`, `cuda:0`); this module sits
//! low (layer 1) so that training, the workers, the engines and `http/` can
//! all reach it. [`is_fatal_device_error`] is the one classifier of fatal
//! errors (out-of-memory has its own, in `train/oom.rs`: it is retried).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

/// Phrases of the CUDA runtime's, cuBLAS's and cuDNN's error strings (as
/// libtorch forwards them, lower-cased) that mean the context is dead.
/// cuBLAS's and cuDNN's allocation failures are out-of-memory, not here.
const FATAL_PHRASES: &[&str] = &[
    // cudaErrorAssert: "CUDA error: device-side assert triggered"
    "device-side assert triggered",
    // cudaErrorIllegalAddress: "an illegal memory access was encountered"
    "illegal memory access",
    // cudaErrorLaunchFailure
    "unspecified launch failure",
    // cudaErrorECCUncorrectable: "uncorrectable ECC error encountered"
    "uncorrectable ecc error",
    // cudaErrorNvlinkUncorrectable
    "uncorrectable nvlink error",
    // cudaErrorMisalignedAddress
    "misaligned address",
    // cudaErrorIllegalInstruction: "an illegal instruction was encountered"
    "illegal instruction",
    // cudaErrorHardwareStackError: "hardware stack error"
    "hardware stack error",
    // cudaErrorInvalidPc: "invalid program counter"
    "invalid program counter",
    // cudaErrorLaunchTimeout: "the launch timed out and was terminated"
    "launch timed out and was terminated",
    // cudaErrorInvalidAddressSpace
    "operation not supported on global/shared address space",
    // cudaErrorNvlinkUncorrectable's other wording
    "invalid access of peer gpu memory over nvlink",
    // cudaErrorDevicesUnavailable: exclusive-process mode, or a lost device
    "busy or unavailable",
    // cudaErrorNoKernelImageForDevice: this build cannot run on the device
    // at all (its architecture is missing); every kernel would fail.
    "no kernel image is available for execution on the device",
    // cudaErrorUnknown: what a GPU that fell off the bus (Xid 79) reports.
    "cuda error: unknown error",
    "cuda driver error: unknown error",
    // The same errors seen through the libraries and the driver API.
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cudnn_status_mapping_error",
    "cudaerrorassert",
    "cudaerrorillegaladdress",
    "cudaerrorlaunchfailure",
    "cudaerroreccuncorrectable",
    "cudaerrormisalignedaddress",
    "cuda_error_assert",
    "cuda_error_illegal_address",
    "cuda_error_launch_failed",
    "cuda_error_ecc_uncorrectable",
    "cuda_error_misaligned_address",
];

/// Whether an error message (a libtorch exception's text, as tch panics or
/// returns it) reports a fatal device error: one after which the CUDA
/// context of the process is unusable (or the device cannot run this build
/// at all), so retrying on that device cannot succeed. Out-of-memory and
/// invalid arguments are not. Meant as the one classifier of fatal device
/// errors, for training (`train::oom`) and serving alike.
pub fn is_fatal_device_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let from_the_gpu_stack = m.contains("cuda") || m.contains("cublas") || m.contains("cudnn");
    from_the_gpu_stack && FATAL_PHRASES.iter().any(|p| m.contains(p))
}

/// The shared record of which devices are out of service, and why. Cheap
/// to clone; every clone sees the same state.
#[derive(Clone)]
pub struct DeviceHealth {
    inner: Arc<Inner>,
}

struct Inner {
    /// Device name -> the first fatal error seen on it.
    down: Mutex<BTreeMap<String, String>>,
    fatal_errors: IntCounterVec,
    up: IntGaugeVec,
    /// Test hook: device name -> a message the next operation on it fails with.
    faults: Mutex<BTreeMap<String, String>>,
    any_fault: AtomicBool,
}

impl Default for DeviceHealth {
    fn default() -> Self {
        let fatal_errors = IntCounterVec::new(
            Opts::new(
                "vitrine_device_fatal_errors_total",
                "Fatal device errors (the device is out of service until restart)",
            ),
            &["device"],
        )
        .expect("valid metric");
        let up = IntGaugeVec::new(
            Opts::new(
                "vitrine_device_up",
                "1 while a configured device is in service, 0 after a fatal error",
            ),
            &["device"],
        )
        .expect("valid metric");
        Self {
            inner: Arc::new(Inner {
                down: Mutex::default(),
                fatal_errors,
                up,
                faults: Mutex::default(),
                any_fault: AtomicBool::new(false),
            }),
        }
    }
}

impl DeviceHealth {
    /// A registry for `devices` (the names the workers and engines run
    /// on), all in service, with its metrics registered in `registry`.
    pub fn new(devices: &[String], registry: &prometheus::Registry) -> Self {
        let health = Self::default();
        let _ = registry.register(Box::new(health.inner.fatal_errors.clone()));
        let _ = registry.register(Box::new(health.inner.up.clone()));
        for d in devices {
            health.inner.up.with_label_values(&[d.as_str()]).set(1);
            health.inner.fatal_errors.with_label_values(&[d.as_str()]);
        }
        health
    }

    /// Whether `device` is still in service.
    pub fn is_up(&self, device: &str) -> bool {
        !self.lock_down().contains_key(device)
    }

    /// Takes `device` out of service after a fatal error (the first error
    /// is kept as the reason; every one is counted). Returns whether this
    /// call took it out (false: it already was).
    pub fn report_fatal(&self, device: &str, message: &str) -> bool {
        self.inner.fatal_errors.with_label_values(&[device]).inc();
        self.inner.up.with_label_values(&[device]).set(0);
        let mut down = self.lock_down();
        if down.contains_key(device) {
            return false;
        }
        let reason = first_line(message);
        tracing::error!(device, error = %reason, "fatal device error: the device is out of service until the process restarts");
        down.insert(device.to_string(), reason);
        true
    }

    /// The devices out of service and the error that took each out.
    pub fn down(&self) -> Vec<(String, String)> {
        self.lock_down()
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect()
    }

    /// Test hook: the next operation on `device` (an inference batch, a
    /// training run) fails as if libtorch had raised `message`. This is how
    /// tests without a GPU exercise the fatal-error path end to end.
    #[doc(hidden)]
    pub fn inject_fault(&self, device: &str, message: &str) {
        let mut faults = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.insert(device.to_string(), message.to_string());
        self.inner.any_fault.store(true, Ordering::SeqCst);
    }

    /// Takes the fault injected for `device`, if any (see
    /// [`DeviceHealth::inject_fault`]); a relaxed load when there is none.
    pub fn take_injected_fault(&self, device: &str) -> Option<String> {
        if !self.inner.any_fault.load(Ordering::Relaxed) {
            return None;
        }
        let mut faults = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        let fault = faults.remove(device);
        self.inner
            .any_fault
            .store(!faults.is_empty(), Ordering::SeqCst);
        fault
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // The map stays consistent even if a holder panicked.
        self.inner.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// libtorch appends a C++ backtrace and advice to its messages; the first
/// line says what happened.
fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("fatal device error")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as libtorch 2.x raises them (c10::Error / AcceleratorError
    /// text, including the advice lines libtorch appends).
    const FATAL: &[&str] = &[
        "CUDA error: device-side assert triggered\nSearch for `cudaErrorAssert' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n",
        "CUDA error: an illegal memory access was encountered\nSearch for `cudaErrorIllegalAddress' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.",
        // tch's panic text: the error's Debug form inside unwrap's message.
        "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA error: an illegal memory access was encountered\\nSearch for `cudaErrorIllegalAddress'\")",
        "CUDA error: unspecified launch failure",
        "CUDA error: uncorrectable ECC error encountered",
        "CUDA error: misaligned address",
        "CUDA error: an illegal instruction was encountered",
        "CUDA error: the launch timed out and was terminated",
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`",
        "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
        "cuDNN error: CUDNN_STATUS_MAPPING_ERROR",
        "CUDA driver error: an illegal memory access was encountered",
        "training step failed: CUDA error: device-side assert triggered",
        "CUDA error: operation not supported on global/shared address space",
        "CUDA error: CUDA-capable device(s) is/are busy or unavailable",
        "CUDA error: no kernel image is available for execution on the device",
        "CUDA error: unknown error",
        "CUDA error: uncorrectable NVLink error detected during the execution",
    ];

    const NOT_FATAL: &[&str] = &[
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)",
        "CUDA error: out of memory",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
        "CUDA error: invalid device ordinal",
        "CUDA error: invalid argument",
        "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasGemmEx(...)`",
        "mat1 and mat2 shapes cannot be multiplied (4x192 and 768x10)",
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes",
        // The phrase without a GPU library in sight is not a device error.
        "undecodable image: misaligned address.jpg",
    ];

    #[test]
    fn fatal_errors_are_recognised_from_the_real_messages() {
        for m in FATAL {
            assert!(is_fatal_device_error(m), "should be fatal: {m}");
        }
        for m in NOT_FATAL {
            assert!(!is_fatal_device_error(m), "should not be fatal: {m}");
        }
    }

    #[test]
    fn a_fatal_error_takes_only_its_device_out_and_is_counted() {
        let registry = prometheus::Registry::new();
        let health = DeviceHealth::new(&["cpu".into(), "cuda:0".into()], &registry);
        assert!(health.is_up("cuda:0") && health.is_up("cpu"));
        let text = || {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(text().contains("vitrine_device_up{device=\"cuda:0\"} 1"));
        assert!(text().contains("vitrine_device_fatal_errors_total{device=\"cuda:0\"} 0"));

        assert!(health.report_fatal("cuda:0", FATAL[0]));
        assert!(!health.report_fatal("cuda:0", FATAL[1]), "already out");
        assert!(!health.is_up("cuda:0"));
        assert!(health.is_up("cpu"), "other devices continue");
        assert_eq!(
            health.down(),
            vec![(
                "cuda:0".to_string(),
                "CUDA error: device-side assert triggered".to_string()
            )],
            "the first error, first line only, is the reason"
        );
        let t = text();
        assert!(t.contains("vitrine_device_up{device=\"cuda:0\"} 0"), "{t}");
        assert!(t.contains("vitrine_device_up{device=\"cpu\"} 1"), "{t}");
        assert!(
            t.contains("vitrine_device_fatal_errors_total{device=\"cuda:0\"} 2"),
            "{t}"
        );
        let clone = health.clone();
        assert!(!clone.is_up("cuda:0"), "clones share the state");
    }

    #[test]
    fn injected_faults_fire_once_on_their_device() {
        let health = DeviceHealth::default();
        assert_eq!(health.take_injected_fault("cpu"), None);
        health.inject_fault("cpu", "CUDA error: misaligned address");
        assert_eq!(health.take_injected_fault("cuda:0"), None);
        assert_eq!(
            health.take_injected_fault("cpu").as_deref(),
            Some("CUDA error: misaligned address")
        );
        assert_eq!(health.take_injected_fault("cpu"), None);
    }
}
