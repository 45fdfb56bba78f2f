//! What libtorch this binary runs on, which devices it sees (and, when it
//! sees no GPU on a machine that has one, why), the configured device list,
//! and the CPU thread budget shared by libtorch, rayon and tokio.

mod device_list;
pub mod nvidia;
pub mod threads;

use serde::Serialize;

pub use device_list::{device_name, parse_device, resolve_device_list};
pub use nvidia::GpuHost;
pub use threads::ThreadBudget;

/// The libtorch version the binary was built against (from `build.rs`).
pub const LIBTORCH_VERSION: &str = env!("VITRINE_LIBTORCH_VERSION");

/// `vitrine --version` output: crate and libtorch versions.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (libtorch ",
    env!("VITRINE_LIBTORCH_VERSION"),
    "; run `vitrine info` for devices)"
);

/// A snapshot of the runtime's view of libtorch and its devices.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TorchInfo {
    pub vitrine_version: String,
    pub libtorch_version: String,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_device_count: i64,
    /// Devices a worker could use: `cpu` and `cuda:N` for each GPU.
    pub devices: Vec<String>,
    /// NVIDIA driver, CUDA build and runtime library, device files.
    pub nvidia: GpuHost,
    /// Set when NVIDIA devices exist but none is usable: why.
    pub warning: Option<String>,
    /// libtorch's intra-op threads on the calling thread.
    pub cpu_threads: i32,
    /// How `serve` shares the CPU out by default (`--cpu-threads 0`).
    pub thread_budget: ThreadBudget,
    /// c10d backends this build can train one job on several ranks with
    /// (`gloo`; empty when built without the Gloo headers), and the most
    /// CPU ranks one job may have here (`docs/distributed.md`).
    pub distributed: DistributedInfo,
}

/// What data-parallel training this build and machine support.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DistributedInfo {
    pub backends: Vec<String>,
    pub max_cpu_ranks: usize,
}

impl DistributedInfo {
    fn probe() -> Self {
        Self {
            backends: if cfg!(vitrine_c10d) {
                vec!["gloo".into()]
            } else {
                vec![]
            },
            max_cpu_ranks: threads::available_cpus(),
        }
    }
}

impl TorchInfo {
    pub fn probe() -> Self {
        let count = tch::Cuda::device_count();
        let mut devices = vec!["cpu".to_string()];
        devices.extend((0..count).map(|i| format!("cuda:{i}")));
        let nvidia = GpuHost::probe();
        Self {
            vitrine_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: LIBTORCH_VERSION.into(),
            cuda_available: tch::Cuda::is_available(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cuda_device_count: count,
            devices,
            warning: nvidia.warning(count),
            nvidia,
            cpu_threads: tch::get_num_threads(),
            thread_budget: ThreadBudget::new(0, 0),
            distributed: DistributedInfo::probe(),
        }
    }
}

/// Why no GPU is usable on a machine with NVIDIA devices, if that is so
/// (`serve` logs it at start, `info` prints it).
pub fn gpu_warning() -> Option<String> {
    GpuHost::probe().warning(tch::Cuda::device_count())
}

/// Expands and checks the configured device list against the CUDA devices
/// libtorch sees ([`resolve_device_list`]); when a GPU is asked for and
/// none is usable, the error says why ([`gpu_warning`]).
pub fn resolve_devices(configured: &[String]) -> Result<Vec<tch::Device>, String> {
    let count = tch::Cuda::device_count().max(0) as usize;
    resolve_device_list(configured, count).map_err(|e| match (count, gpu_warning()) {
        (0, Some(why)) if e.contains("no CUDA device") => format!("{e}. {why}"),
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sees_the_cpu_and_the_pinned_libtorch() {
        let info = TorchInfo::probe();
        assert_eq!(info.devices[0], "cpu");
        assert!(
            info.libtorch_version.starts_with("2.11.0"),
            "{}",
            info.libtorch_version
        );
        assert_eq!(info.devices.len() as i64, 1 + info.cuda_device_count);
        // The cu130 wheel: its version.py, found through the mapped libtorch.
        if LIBTORCH_VERSION.contains("+cu") {
            assert_eq!(
                info.nvidia.cuda_build_version,
                nvidia::cuda_from_libtorch_version(LIBTORCH_VERSION)
            );
            assert!(
                info.nvidia.libtorch_cuda_loaded,
                "build.rs keeps libtorch_cuda linked"
            );
        }
    }
}
