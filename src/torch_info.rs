//! What libtorch this binary runs on and which devices it sees.

use serde::Serialize;

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
    pub cpu_threads: i32,
}

impl TorchInfo {
    pub fn probe() -> Self {
        let count = tch::Cuda::device_count();
        let mut devices = vec!["cpu".to_string()];
        devices.extend((0..count).map(|i| format!("cuda:{i}")));
        Self {
            vitrine_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: LIBTORCH_VERSION.into(),
            cuda_available: tch::Cuda::is_available(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cuda_device_count: count,
            devices,
            cpu_threads: tch::get_num_threads(),
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` into a tch device.
pub fn parse_device(name: &str) -> Result<tch::Device, String> {
    match name.trim() {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
    }
}

/// Expands the configured device list (`auto` means every GPU, else the CPU).
pub fn resolve_devices(configured: &[String]) -> Result<Vec<tch::Device>, String> {
    let mut out = Vec::new();
    for name in configured {
        if name.trim() == "auto" {
            let n = tch::Cuda::device_count();
            if n > 0 {
                out.extend((0..n as usize).map(tch::Device::Cuda));
            } else {
                out.push(tch::Device::Cpu);
            }
        } else {
            out.push(parse_device(name)?);
        }
    }
    out.dedup();
    Ok(out)
}

/// The name a device is shown under (`cpu`, `cuda:0`).
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(parse_device("cpu"), Ok(tch::Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(tch::Device::Cuda(1)));
        assert!(parse_device("tpu").unwrap_err().contains("tpu"));
        assert_eq!(device_name(tch::Device::Cuda(2)), "cuda:2");
    }

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
    }
}
