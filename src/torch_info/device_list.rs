//! Device names (`cpu`, `cuda`, `cuda:N`) and the configured device list,
//! checked once at start: a list that names a device twice, a GPU that is
//! not there or `auto` beside explicit devices is refused with the reason,
//! rather than giving a service that silently runs elsewhere.

use tch::Device;

/// Parses `cpu`, `cuda` (the first GPU) or `cuda:N`, exactly (no spaces).
pub fn parse_device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
    }
}

/// The name a device is shown under (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Expands and checks the configured device list against the number of
/// CUDA devices libtorch sees. `auto` (alone) means every GPU, else the
/// CPU. Refused, with the reason: an empty list or entry, an unknown name,
/// `cuda:N` beyond the devices present, a device named twice anywhere in
/// the list (`cuda` is `cuda:0`), and `auto` beside other entries.
pub fn resolve_device_list(
    configured: &[String],
    cuda_devices: usize,
) -> Result<Vec<Device>, String> {
    let names: Vec<&str> = configured.iter().map(|n| n.trim()).collect();
    if names.is_empty() {
        return Err("no device is listed (use `auto`, `cpu`, `cuda:0`, ...)".into());
    }
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!("`{}` has an empty entry", names.join(",")));
    }
    if names.contains(&"auto") {
        if names.len() > 1 {
            return Err(format!(
                "`auto` cannot be combined with other devices (`{}`): list the devices instead",
                names.join(",")
            ));
        }
        return Ok(if cuda_devices > 0 {
            (0..cuda_devices).map(Device::Cuda).collect()
        } else {
            vec![Device::Cpu]
        });
    }
    let mut out: Vec<Device> = Vec::with_capacity(names.len());
    for name in &names {
        let device = parse_device(name).map_err(|e| format!("{e}; or `auto` alone"))?;
        if let Device::Cuda(n) = device {
            if n >= cuda_devices {
                return Err(match cuda_devices {
                    0 => format!("`{name}` is listed, but no CUDA device is usable"),
                    1 => format!("`{name}` is listed, but there is one CUDA device (cuda:0)"),
                    k => format!(
                        "`{name}` is listed, but there are {k} CUDA devices (cuda:0 to cuda:{})",
                        k - 1
                    ),
                });
            }
        }
        if let Some(j) = out.iter().position(|d| *d == device) {
            let first = names[j];
            return Err(if first == *name {
                format!("`{name}` is listed twice")
            } else {
                format!(
                    "`{first}` and `{name}` are the same device ({}); list it once",
                    device_name(device)
                )
            });
        }
        out.push(device);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn parses_device_names_exactly() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse_device("cuda:1"), Ok(Device::Cuda(1)));
        for bad in [
            "tpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", " cpu", "CPU", "",
        ] {
            let err = parse_device(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        assert_eq!(device_name(Device::Cuda(2)), "cuda:2");
        assert_eq!(device_name(Device::Cpu), "cpu");
    }

    #[test]
    fn valid_lists_expand_in_order() {
        assert_eq!(resolve_device_list(&list("auto"), 0), Ok(vec![Device::Cpu]));
        assert_eq!(
            resolve_device_list(&list("auto"), 2),
            Ok(vec![Device::Cuda(0), Device::Cuda(1)])
        );
        assert_eq!(
            resolve_device_list(&list("cpu, cuda:1,cuda:0"), 2),
            Ok(vec![Device::Cpu, Device::Cuda(1), Device::Cuda(0)])
        );
        assert_eq!(
            resolve_device_list(&list("cuda"), 1),
            Ok(vec![Device::Cuda(0)])
        );
    }

    #[test]
    fn invalid_lists_are_refused_naming_the_problem() {
        let err = |s: &str, gpus| resolve_device_list(&list(s), gpus).unwrap_err();
        assert!(err("cpu,tpu", 0).contains("unknown device `tpu`"));
        assert!(err("cpu,,cuda:0", 1).contains("empty entry"));
        assert_eq!(
            err("cuda:0", 0),
            "`cuda:0` is listed, but no CUDA device is usable"
        );
        assert_eq!(
            err("cuda:1", 1),
            "`cuda:1` is listed, but there is one CUDA device (cuda:0)"
        );
        assert!(err("cuda:0,cuda:4", 4).contains("there are 4 CUDA devices (cuda:0 to cuda:3)"));
        // Duplicates anywhere, not only adjacent ones.
        assert_eq!(err("cpu,cuda:0,cpu", 1), "`cpu` is listed twice");
        assert_eq!(
            err("cuda,cpu,cuda:0", 1),
            "`cuda` and `cuda:0` are the same device (cuda:0); list it once"
        );
        assert!(err("auto,cpu", 1).contains("`auto` cannot be combined"));
        assert!(err("cuda:0,auto", 1).contains("`auto` cannot be combined"));
        assert!(resolve_device_list(&[], 0)
            .unwrap_err()
            .contains("no device"));
    }
}
