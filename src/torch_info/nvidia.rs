//! The NVIDIA side of `vitrine info`: the kernel driver's version, the CUDA
//! version libtorch was built with and the CUDA runtime library it loaded,
//! and, when the machine has NVIDIA devices that libtorch cannot use, why.
//! A CUDA 13 libtorch (the `torch==2.11.0` cu130 wheel) needs driver 580 or
//! newer; with an older one it sees no device and the service would run on
//! the CPU without a word.
//!
//! Everything is read from files (no CUDA headers, no CUDA calls), through
//! pure functions over their text that tests feed with samples:
//! - the driver: `/proc/driver/nvidia/version`, else `/sys/module/nvidia/version`;
//! - the build's CUDA: `torch/version.py` (wheel) or `build-version`
//!   (standalone libtorch) next to the `libtorch_cpu.so` this process
//!   mapped, else the `+cuXYZ` suffix of the version `build.rs` recorded;
//! - the runtime library: the `libcudart.so.*` mapped into this process
//!   (`/proc/self/maps`).

use serde::Serialize;

/// What the machine and this process show of NVIDIA GPUs and CUDA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GpuHost {
    /// NVIDIA device files present (`/dev/nvidia0`, `/dev/nvidiactl`, ...).
    pub device_files: Vec<String>,
    /// The NVIDIA kernel driver's version (`580.65.06`), if one is loaded.
    pub driver_version: Option<String>,
    /// The CUDA version libtorch was built with (`13.0`); none for a CPU build.
    pub cuda_build_version: Option<String>,
    /// The CUDA runtime library loaded into this process, if any.
    pub cuda_runtime_library: Option<String>,
    /// Whether `libtorch_cuda.so` is loaded (without it no GPU is seen).
    pub libtorch_cuda_loaded: bool,
    /// `CUDA_VISIBLE_DEVICES`, when set.
    pub cuda_visible_devices: Option<String>,
}

impl GpuHost {
    /// Reads the files named in the module's doc.
    pub fn probe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let maps = read("/proc/self/maps").unwrap_or_default();
        let mut device_files: Vec<String> = std::fs::read_dir("/dev")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("nvidia"))
                    .map(|n| format!("/dev/{n}"))
                    .collect()
            })
            .unwrap_or_default();
        device_files.sort();
        let driver_version = read("/proc/driver/nvidia/version")
            .as_deref()
            .and_then(parse_driver_version)
            .or_else(|| {
                read("/sys/module/nvidia/version")
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            });
        let torch_root = loaded_library(&maps, "libtorch_cpu.so").and_then(|lib| {
            std::path::Path::new(&lib)
                .parent()?
                .parent()
                .map(|p| p.to_path_buf())
        });
        let cuda_build_version = match torch_root {
            Some(root) => match read(&root.join("version.py").to_string_lossy()) {
                Some(text) => cuda_from_version_py(&text),
                None => read(&root.join("build-version").to_string_lossy())
                    .and_then(|v| cuda_from_libtorch_version(v.trim())),
            },
            None => cuda_from_libtorch_version(super::LIBTORCH_VERSION),
        };
        Self {
            device_files,
            driver_version,
            cuda_build_version,
            cuda_runtime_library: loaded_library(&maps, "libcudart.so"),
            libtorch_cuda_loaded: loaded_library(&maps, "libtorch_cuda.so").is_some(),
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        }
    }

    /// Why no CUDA device is usable although NVIDIA device files exist;
    /// `None` when a device is usable or the machine has no NVIDIA device.
    pub fn warning(&self, cuda_devices: i64) -> Option<String> {
        if cuda_devices > 0 || self.device_files.is_empty() {
            return None;
        }
        let files = self.device_files.join(", ");
        let driver = self.driver_version.as_deref();
        let reason = if let Some(v) = self.cuda_visible_devices.as_deref().filter(|v| {
            let v = v.trim();
            v.is_empty() || v.starts_with("-1")
        }) {
            format!("CUDA_VISIBLE_DEVICES={v:?} hides every GPU")
        } else if driver.is_none() {
            "the NVIDIA kernel driver is not loaded (no /proc/driver/nvidia/version)".to_string()
        } else if self.cuda_build_version.is_none() {
            "this libtorch was built without CUDA; install the CUDA build of torch==2.11.0"
                .to_string()
        } else if !self.libtorch_cuda_loaded {
            "libtorch_cuda.so is not loaded into this process (see build.rs)".to_string()
        } else {
            let (d, cuda) = (
                driver.unwrap_or_default(),
                self.cuda_build_version.as_deref().unwrap_or_default(),
            );
            match (driver_major(d), min_driver_major(cuda)) {
                (Some(have), Some(need)) if have < need => format!(
                    "NVIDIA driver {d} is older than CUDA {cuda} (libtorch's build) needs: >= {need}; \
                     upgrade the driver, or use a torch build for an older CUDA"
                ),
                _ => format!(
                    "driver {d} should run CUDA {cuda}: check that this container was given the GPU \
                     (docker --gpus, the device plugin) and that `nvidia-smi` lists it"
                ),
            }
        };
        Some(format!(
            "NVIDIA devices are present ({files}) but libtorch sees no usable CUDA device, \
             so everything runs on the CPU: {reason}"
        ))
    }
}

/// The version in `/proc/driver/nvidia/version`'s first line, e.g.
/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ...`.
pub fn parse_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|t| {
            t.contains('.')
                && t.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// The path of the first library mapped in `maps` (`/proc/self/maps`)
/// whose file name starts with `stem` (`libcudart.so` matches `libcudart.so.13`).
pub fn loaded_library(maps: &str, stem: &str) -> Option<String> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            path.starts_with('/') && path.rsplit('/').next().is_some_and(|f| f.starts_with(stem))
        })
        .map(str::to_string)
}

/// `cuda` in torch's `version.py` (`cuda: Optional[str] = '13.0'`); `None`
/// for a CPU build (`= None`).
pub fn cuda_from_version_py(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cuda:") || l.starts_with("cuda ="))?;
    let value = line.rsplit('=').next()?.trim();
    let value = value.trim_matches(|c| c == '\'' || c == '"');
    (value != "None" && !value.is_empty()).then(|| value.to_string())
}

/// The CUDA version in a libtorch version's local part: `2.11.0+cu130` is
/// 13.0, `2.4.1+cu118` 11.8; `None` for `+cpu` or no suffix.
pub fn cuda_from_libtorch_version(version: &str) -> Option<String> {
    let digits = version.split_once("+cu")?.1;
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(format!("{major}.{minor}"))
}

/// The oldest Linux driver (major version) a CUDA release runs on
/// (NVIDIA's CUDA toolkit release notes, "minor version compatibility").
pub fn min_driver_major(cuda: &str) -> Option<u32> {
    match cuda.split('.').next()?.parse::<u32>().ok()? {
        13 => Some(580),
        12 => Some(525),
        11 => Some(450),
        _ => None,
    }
}

fn driver_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_OLD: &str = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
    const PROC_OPEN: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 07:09:58 UTC 2025\nGCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n";

    const MAPS: &str = "\
7f0a1c000000-7f0a1c200000 r-xp 00000000 08:01 1234  /venv/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so
7f0a2c000000-7f0a2c100000 r--p 00000000 08:01 1235  /venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcudart.so.13
7f0a3c000000-7f0a3c100000 r--p 00000000 08:01 1236  /venv/lib/python3.12/site-packages/torch/lib/libtorch_cuda.so
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0     [stack]
";

    #[test]
    fn the_driver_version_is_read_from_proc() {
        assert_eq!(
            parse_driver_version(PROC_OLD).as_deref(),
            Some("535.104.05")
        );
        assert_eq!(
            parse_driver_version(PROC_OPEN).as_deref(),
            Some("580.65.06")
        );
        assert_eq!(parse_driver_version("garbage\n"), None);
    }

    #[test]
    fn loaded_libraries_and_the_build_cuda_are_found() {
        assert_eq!(
            loaded_library(MAPS, "libcudart.so").as_deref(),
            Some("/venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcudart.so.13")
        );
        assert!(loaded_library(MAPS, "libtorch_cuda.so").is_some());
        assert_eq!(loaded_library(MAPS, "libcudnn"), None);
        let py = "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\nhip: Optional[str] = None\n";
        assert_eq!(cuda_from_version_py(py).as_deref(), Some("13.0"));
        assert_eq!(cuda_from_version_py("cuda: Optional[str] = None\n"), None);
        assert_eq!(
            cuda_from_libtorch_version("2.11.0+cu130").as_deref(),
            Some("13.0")
        );
        assert_eq!(
            cuda_from_libtorch_version("2.4.1+cu118").as_deref(),
            Some("11.8")
        );
        assert_eq!(cuda_from_libtorch_version("2.11.0+cpu"), None);
        assert_eq!(cuda_from_libtorch_version("2.11.0"), None);
    }

    fn host(driver: Option<&str>) -> GpuHost {
        GpuHost {
            device_files: vec!["/dev/nvidia0".into(), "/dev/nvidiactl".into()],
            driver_version: driver.map(String::from),
            cuda_build_version: Some("13.0".into()),
            cuda_runtime_library: Some("/x/libcudart.so.13".into()),
            libtorch_cuda_loaded: true,
            cuda_visible_devices: None,
        }
    }

    #[test]
    fn an_old_driver_is_named_as_the_reason() {
        let w = host(Some("535.104.05")).warning(0).unwrap();
        assert!(w.contains("/dev/nvidia0"), "{w}");
        assert!(
            w.contains("driver 535.104.05 is older than CUDA 13.0"),
            "{w}"
        );
        assert!(w.contains(">= 580"), "{w}");
    }

    #[test]
    fn other_reasons_and_no_warning_when_fine() {
        assert_eq!(
            host(Some("580.65.06")).warning(1),
            None,
            "a device is usable"
        );
        assert_eq!(GpuHost::default().warning(0), None, "no NVIDIA device here");
        let w = host(Some("580.65.06")).warning(0).unwrap();
        assert!(w.contains("given the GPU"), "{w}");
        assert!(host(None)
            .warning(0)
            .unwrap()
            .contains("driver is not loaded"));
        let hidden = GpuHost {
            cuda_visible_devices: Some("".into()),
            ..host(Some("580.65.06"))
        };
        assert!(hidden.warning(0).unwrap().contains("CUDA_VISIBLE_DEVICES"));
        let cpu_build = GpuHost {
            cuda_build_version: None,
            ..host(Some("580.65.06"))
        };
        assert!(cpu_build.warning(0).unwrap().contains("without CUDA"));
        let unlinked = GpuHost {
            libtorch_cuda_loaded: false,
            ..host(Some("580.65.06"))
        };
        assert!(unlinked.warning(0).unwrap().contains("libtorch_cuda.so"));
    }
}
