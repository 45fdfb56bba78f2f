//! Failures of libtorch calls, classified by the messages libtorch and CUDA
//! actually give, and out-of-memory recovery: work that runs out of memory
//! is retried with half the micro-batch (gradient accumulation keeps the
//! effective batch), down to one image, before the job fails.
//!
//! tch reports a libtorch error as a panic carrying the message; the shim
//! (`crate::torchx`) as an error value. Both end up here as text.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a failure means for the job and the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// An allocation failed (device or host memory, or a cuBLAS/cuDNN
    /// allocation): smaller work may fit.
    OutOfMemory,
    /// The CUDA context is dead (device-side assert, illegal address, ECC,
    /// ...): nothing on this device works until the process restarts, so
    /// never retry in it.
    DeviceFatal,
    /// Anything else.
    Other,
}

/// A failed attempt: its kind and libtorch's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(message: String) -> Self {
        Self {
            kind: classify(&message),
            message,
        }
    }
}

/// Allocation failures, as libtorch words them: the CUDA caching allocator,
/// a raw CUDA allocation, the CPU allocator, cuBLAS, cuBLASLt's workspace,
/// cuDNN 8 (`CUDNN_STATUS_ALLOC_FAILED`) and 9 (`..._ALLOCATION_FAILED`),
/// and libtorch's own cuDNN workspace check.
const OUT_OF_MEMORY: &[&str] = &[
    "CUDA out of memory",
    "CUDA error: out of memory",
    "can't allocate memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "OOM trying to allocate workspace",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED",
    "Not enough memory for workspace",
];

/// Classifies a libtorch/CUDA error message. A dead context wins over
/// everything (a fault may be reported by a later allocation); which errors
/// kill a context is decided in one place for training and serving,
/// [`crate::devices::is_fatal_device_error`].
pub fn classify(message: &str) -> FailureKind {
    if crate::devices::is_fatal_device_error(message) {
        FailureKind::DeviceFatal
    } else if OUT_OF_MEMORY.iter().any(|s| message.contains(s))
        || message.to_ascii_lowercase().contains("out of memory")
    {
        FailureKind::OutOfMemory
    } else {
        FailureKind::Other
    }
}

/// Runs `attempt(micro)` with `*micro` clamped to `1..=n`. When it runs out
/// of memory (by returning an error or by panicking, as tch does), halves
/// `*micro`, calls `on_smaller(new_micro)` and tries again, as long as
/// `may_retry()` still allows it (e.g. not once the optimiser has started
/// changing weights). Any other failure, or running out of memory at one
/// image, is returned classified. `attempt` must leave no state behind that
/// a retry would double-count (the caller drops gradients first).
pub fn retry_smaller<T>(
    micro: &mut u32,
    n: i64,
    mut attempt: impl FnMut(i64) -> Result<T, String>,
    mut on_smaller: impl FnMut(u32),
    may_retry: impl Fn() -> bool,
) -> Result<T, Failure> {
    loop {
        let m = i64::from(*micro).clamp(1, n.max(1));
        let failure = match catch_unwind(AssertUnwindSafe(|| attempt(m))) {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(message)) => Failure::new(message),
            Err(panic) => Failure::new(panic_message(&panic)),
        };
        if failure.kind != FailureKind::OutOfMemory || m <= 1 || !may_retry() {
            return Err(failure);
        }
        *micro = (m / 2) as u32;
        on_smaller(*micro);
    }
}

/// Runs `forward` over the rows of `x` in chunks of `*micro` (inference:
/// nothing to undo), halving the chunk when memory runs out; returns the
/// outputs concatenated.
pub fn infer_in_chunks(
    micro: &mut u32,
    x: &tch::Tensor,
    mut forward: impl FnMut(&tch::Tensor) -> Result<tch::Tensor, String>,
    on_smaller: impl FnMut(u32),
) -> Result<tch::Tensor, Failure> {
    let n = x.size()[0];
    retry_smaller(
        micro,
        n,
        |m| {
            let mut parts = Vec::new();
            let mut start = 0;
            while start < n {
                let len = m.min(n - start);
                parts.push(forward(&x.narrow(0, start, len))?);
                start += len;
            }
            Ok(if parts.len() == 1 {
                parts.pop().unwrap()
            } else {
                tch::Tensor::cat(&parts, 0)
            })
        },
        on_smaller,
        || true,
    )
}

/// Runs `f`, turning a panic (a libtorch error inside tch) into its message.
pub fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_message(&p)))
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    crate::error::panic_message(p.as_ref()).unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// Messages as libtorch 2.11 / CUDA 13 / cuDNN 9 print them (the text
    /// of `torch.OutOfMemoryError`, `TORCH_CUDABLAS_CHECK`, `CUDNN_CHECK`,
    /// `C10_CUDA_CHECK` with `cudaGetErrorString`), and as tch wraps them
    /// into a panic.
    const CUDA_OOM: &str = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.18 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.11 GiB memory in use. Of the allocated memory 76.52 GiB is allocated by PyTorch, and 1.02 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)";
    const CPU_OOM: &str = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes. Error code 12 (Cannot allocate memory)";
    const CUBLAS_OOM: &str =
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`";
    const CUBLASLT_OOM: &str = "OOM trying to allocate workspace for cublaslt";
    const CUDNN8_OOM: &str = "cuDNN error: CUDNN_STATUS_ALLOC_FAILED";
    const CUDNN9_OOM: &str = "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED";
    const CUDNN_WORKSPACE: &str = "Not enough memory for workspace!";
    const CUDA_RAW_OOM: &str = "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n";
    const ASSERT: &str = "CUDA error: device-side assert triggered\nSearch for `cudaErrorAssert' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n";
    const ILLEGAL: &str = "CUDA error: an illegal memory access was encountered\nSearch for `cudaErrorIllegalAddress' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.";
    const LAUNCH: &str = "CUDA error: unspecified launch failure\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.";
    const ECC: &str = "CUDA error: uncorrectable ECC error encountered";
    const NO_IMAGE: &str = "CUDA error: no kernel image is available for execution on the device";

    /// tch's panic text: the error's Debug form inside `unwrap`'s message.
    fn as_tch_panic(msg: &str) -> String {
        format!("called `Result::unwrap()` on an `Err` value: Torch({msg:?})")
    }

    #[test]
    fn real_messages_are_classified() {
        for m in [
            CUDA_OOM,
            CPU_OOM,
            CUBLAS_OOM,
            CUBLASLT_OOM,
            CUDNN8_OOM,
            CUDNN9_OOM,
            CUDNN_WORKSPACE,
            CUDA_RAW_OOM,
        ] {
            assert_eq!(classify(m), FailureKind::OutOfMemory, "{m}");
            assert_eq!(classify(&as_tch_panic(m)), FailureKind::OutOfMemory, "{m}");
        }
        for m in [ASSERT, ILLEGAL, LAUNCH, ECC, NO_IMAGE] {
            assert_eq!(classify(m), FailureKind::DeviceFatal, "{m}");
            assert_eq!(classify(&as_tch_panic(m)), FailureKind::DeviceFatal, "{m}");
        }
        // A fault surfacing in an allocation is still a dead context.
        assert_eq!(
            classify(&format!("{CUDA_OOM} after {ILLEGAL}")),
            FailureKind::DeviceFatal
        );
        for m in [
            "shape mismatch: value tensor of shape [2] cannot be broadcast to indexing result of shape [3]",
            "CUDA error: invalid argument",
            "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
            "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
        ] {
            assert_eq!(classify(m), FailureKind::Other, "{m}");
        }
    }

    /// A real libtorch allocation failure (4 TiB per image above a
    /// micro-batch of 4) makes the micro-batch halve until it fits.
    #[test]
    fn a_real_allocation_failure_halves_the_micro_batch_until_it_fits() {
        let mut micro = 32;
        let mut reported = vec![];
        let got = retry_smaller(
            &mut micro,
            32,
            |m| {
                let per_image: i64 = if m > 4 { 1 << 40 } else { 16 };
                Ok(
                    Tensor::empty([m * per_image], (Kind::Float, tch::Device::Cpu)).numel() as i64
                        / m,
                )
            },
            |m| reported.push(m),
            || true,
        );
        assert_eq!(got, Ok(16));
        assert_eq!(micro, 4);
        assert_eq!(reported, vec![16, 8, 4]);
    }

    #[test]
    fn inference_halves_its_chunks_and_keeps_every_row() {
        let x = Tensor::arange(10, (Kind::Float, tch::Device::Cpu)).view([10, 1]);
        let mut micro = 8;
        let mut seen = vec![];
        let out = infer_in_chunks(
            &mut micro,
            &x,
            |xs| {
                seen.push(xs.size()[0]);
                if xs.size()[0] > 3 {
                    Err(CUDNN9_OOM.to_string())
                } else {
                    Ok(xs * 2.0)
                }
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(micro, 2);
        assert!(out.equal(&(x * 2.0)));
        assert_eq!(seen, vec![8, 4, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn errors_returned_as_values_are_retried_too() {
        let mut micro = 8;
        let got = retry_smaller(
            &mut micro,
            8,
            |m| {
                if m > 2 {
                    Err(CUBLAS_OOM.to_string())
                } else {
                    Ok(m)
                }
            },
            |_| {},
            || true,
        );
        assert_eq!((got, micro), (Ok(2), 2));
    }

    #[test]
    fn fatal_device_errors_are_never_retried() {
        let mut micro = 8;
        let mut calls = 0;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> Result<i64, String> {
                calls += 1;
                panic!("{}", as_tch_panic(ILLEGAL))
            },
            |_| {},
            || true,
        )
        .unwrap_err();
        assert_eq!(err.kind, FailureKind::DeviceFatal);
        assert_eq!((micro, calls), (8, 1));
    }

    #[test]
    fn other_failures_oom_at_one_image_and_forbidden_retries_are_errors() {
        let mut micro = 8;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> Result<i64, String> { panic!("shape mismatch") },
            |_| {},
            || true,
        )
        .unwrap_err();
        assert_eq!(
            err,
            Failure {
                kind: FailureKind::Other,
                message: "shape mismatch".into()
            }
        );
        assert_eq!(micro, 8);

        let mut calls = 0;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> Result<i64, String> {
                calls += 1;
                panic!("CUDA out of memory. Tried to allocate 1 GiB")
            },
            |_| {},
            || true,
        )
        .unwrap_err();
        assert_eq!(err.kind, FailureKind::OutOfMemory);
        assert_eq!((micro, calls), (1, 4)); // 8, 4, 2, 1

        let mut micro = 8;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> Result<i64, String> { Err(CUDA_OOM.into()) },
            |_| {},
            || false,
        )
        .unwrap_err();
        assert_eq!((err.kind, micro), (FailureKind::OutOfMemory, 8));
    }
}
