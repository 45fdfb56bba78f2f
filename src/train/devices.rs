//! `devices` and `nodes`: how many ranks one job trains on. World size =
//! devices × nodes; the job's `batch_size` is the global batch, split
//! evenly over the ranks, so results do not depend on the world size.
//!
//! What runs today (`train/distributed.rs`): several CPU ranks of one node
//! on threads, in one Gloo process group. Several CUDA devices need NCCL
//! and several nodes a gang claim; both are refused by name, not queued.

use serde::{Deserialize, Serialize};

/// `devices`: a count, a list of device names, or `"all"` of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    Count(u32),
    List(Vec<String>),
    /// Every device of the claiming worker's kind (one on a CPU worker).
    All,
}

impl Serialize for Devices {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Devices::Count(n) => s.serialize_u32(*n),
            Devices::List(v) => v.serialize(s),
            Devices::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Name(String),
            List(Vec<String>),
        }
        let wrong = || {
            serde::de::Error::custom(
                "`devices` must be a positive count, a list of devices \
                 (`[\"cpu\",\"cpu\"]`, `[\"cuda:0\",\"cuda:1\"]`) or \"all\"",
            )
        };
        match Raw::deserialize(d).map_err(|_| wrong())? {
            Raw::Count(n) if n > 0 => Ok(Devices::Count(n)),
            Raw::Name(s) if s == "all" => Ok(Devices::All),
            Raw::List(v) if !v.is_empty() => Ok(Devices::List(v)),
            _ => Err(wrong()),
        }
    }
}

/// The most ranks one job may have.
pub const MAX_WORLD: usize = 64;

impl Devices {
    /// Ranks per node, when the config alone decides it (`all` depends on
    /// the worker).
    pub fn count(&self) -> Option<usize> {
        match self {
            Devices::Count(n) => Some(*n as usize),
            Devices::List(v) => Some(v.len()),
            Devices::All => None,
        }
    }

    /// Whether these ranks run on GPUs: a list naming `cuda…`, or a
    /// count with `device: cuda…`.
    pub fn wants_cuda(&self, device: Option<&str>) -> bool {
        match self {
            Devices::List(v) => v.iter().any(|d| d.starts_with("cuda")),
            _ => device.is_some_and(|d| d.starts_with("cuda")),
        }
    }
}

/// A refusal of a job's devices: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRefusal {
    pub code: &'static str,
    pub detail: String,
}

impl DeviceRefusal {
    fn new(code: &'static str, detail: String) -> Self {
        Self { code, detail }
    }
}

/// What a worker node has, as the submit check sees it.
pub struct NodeDevices<'a> {
    /// The workers' device names (`cpu`, `cuda:0`, ...); empty: no workers
    /// here (another node may serve the job).
    pub names: &'a [String],
    /// CPU cores: the most CPU ranks one node runs.
    pub cpus: usize,
}

/// Whether a node like `node` can run `devices` × `nodes` ranks; the
/// refusal names what the node has.
pub fn check_ranks(
    devices: Option<&Devices>,
    device: Option<&str>,
    nodes: u32,
    node: &NodeDevices,
) -> Result<(), DeviceRefusal> {
    if nodes > 1 {
        return Err(DeviceRefusal::new(
            "multi_node_not_yet",
            format!(
                "`nodes: {nodes}` is not supported yet: a job spans the devices of one worker node"
            ),
        ));
    }
    let Some(devices) = devices else {
        return Ok(());
    };
    if devices.count() == Some(1) && !devices.wants_cuda(device) {
        return Ok(());
    }
    let have = if node.names.is_empty() {
        None
    } else {
        Some(node.names.join(", "))
    };
    if devices.wants_cuda(device) {
        if let Some(have) = have.filter(|_| !node.names.iter().any(|d| d.starts_with("cuda"))) {
            return Err(DeviceRefusal::new(
                "no_such_device",
                format!("the job asks for CUDA devices (NCCL), but this machine has only {have}"),
            ));
        }
        if let Devices::List(v) = devices {
            if let Some(missing) = v
                .iter()
                .find(|d| !node.names.is_empty() && !node.names.contains(d))
            {
                return Err(DeviceRefusal::new(
                    "no_such_device",
                    format!(
                        "the job asks for {missing}, but this machine has {}",
                        node.names.join(", ")
                    ),
                ));
            }
        }
        if devices.count().unwrap_or(2) > 1 {
            return Err(DeviceRefusal::new(
                "nccl_not_yet",
                "several CUDA devices per job need NCCL, which this build does not use yet; \
                 ask for one GPU, or for CPU ranks (`devices: [\"cpu\",\"cpu\"]`)"
                    .into(),
            ));
        }
        return Ok(());
    }
    let ranks = devices.count().unwrap_or(1);
    if ranks > node.cpus {
        return Err(DeviceRefusal::new(
            "too_many_devices",
            format!(
                "the job asks for {ranks} CPU ranks, but this worker has cpu with {} cores: \
                 at most {} ranks{}",
                node.cpus,
                node.cpus,
                have.map(|h| format!(" (devices here: {h})"))
                    .unwrap_or_default()
            ),
        ));
    }
    if ranks > 1 && !crate::torchx::dist::available() {
        return Err(DeviceRefusal::new(
            "distributed_unavailable",
            crate::torchx::dist::UNAVAILABLE.into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Devices, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn devices_parse_as_count_list_or_all() {
        assert_eq!(parse("2").unwrap(), Devices::Count(2));
        assert_eq!(
            parse(r#"["cpu","cpu"]"#).unwrap(),
            Devices::List(vec!["cpu".into(), "cpu".into()])
        );
        assert_eq!(parse(r#""all""#).unwrap(), Devices::All);
        for bad in ["0", r#""some""#, "[]", "-1"] {
            assert!(parse(bad).unwrap_err().contains("`devices`"), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Devices::All).unwrap(), r#""all""#);
    }

    #[test]
    fn refusals_name_what_the_node_has() {
        let cpu_only = ["cpu".to_string()];
        let node = NodeDevices {
            names: &cpu_only,
            cpus: 2,
        };
        let cuda = Devices::List(vec!["cuda:0".into(), "cuda:1".into()]);
        let r = check_ranks(Some(&cuda), None, 1, &node).unwrap_err();
        assert_eq!(r.code, "no_such_device");
        assert!(
            r.detail.contains("NCCL") && r.detail.contains("only cpu"),
            "{r:?}"
        );
        let r = check_ranks(Some(&Devices::Count(3)), Some("cpu"), 1, &node).unwrap_err();
        assert_eq!(r.code, "too_many_devices");
        assert!(r.detail.contains("2 cores"), "{r:?}");
        let r = check_ranks(Some(&Devices::Count(1)), None, 2, &node).unwrap_err();
        assert_eq!(r.code, "multi_node_not_yet");
        if crate::torchx::dist::available() {
            assert!(check_ranks(Some(&Devices::Count(2)), Some("cpu"), 1, &node).is_ok());
        }
        let gpus = ["cpu".to_string(), "cuda:0".into(), "cuda:1".into()];
        let node = NodeDevices {
            names: &gpus,
            cpus: 16,
        };
        assert_eq!(
            check_ranks(Some(&cuda), None, 1, &node).unwrap_err().code,
            "nccl_not_yet"
        );
        let far = Devices::List(vec!["cuda:0".into(), "cuda:7".into()]);
        let r = check_ranks(Some(&far), None, 1, &node).unwrap_err();
        assert!(
            r.detail.contains("cuda:7") && r.detail.contains("cuda:1"),
            "{r:?}"
        );
    }
}
