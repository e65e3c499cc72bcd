//! Device logic: what each plugin's devices are, which host node backs each,
//! how healthy they are, and what an allocation hands to a container.
//!
//! This layer knows nothing of gRPC, threads or the kubelet. A plugin is one
//! file implementing [`Plugin`]; [`allocate`] is shared by all of them.

pub mod crand;
pub mod kvm;

use std::{collections::HashSet, fmt, path::PathBuf};

use crate::{
    device::{Device, Health},
    devnode::NodeId,
    error::Result,
};

/// The most devices one plugin may announce. Each device costs about 25
/// bytes in a ListAndWatch message and the kubelet refuses messages over
/// 4 MiB; this limit keeps a message far below that.
pub const MAX_DEVICES: usize = 16_384;

/// A host device node as a container gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// The CDI device name inside the plugin's kind: `crand1`, `kvm`.
    pub cdi_name: String,
    /// The node's path in the container: `/dev/crand1`.
    pub container_path: String,
    /// The node's path on the host: `<dev-dir>/crand1`.
    pub host_path: PathBuf,
    /// The expected device number of the node.
    pub id: NodeId,
}

/// One device plugin: a resource and its devices.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// Short name, used for the socket, the CDI class and log lines: `crand`.
    fn name(&self) -> &'static str;
    /// The extended resource name: `<domain>/<name>`.
    fn resource(&self) -> &str;
    /// Makes what the devices need on the host (crand makes its nodes).
    fn prepare(&self) -> Result<()>;
    /// Checks every device now, in a stable order.
    fn probe(&self) -> Vec<Device>;
    /// The node behind a device ID, or `None` for an ID the plugin lacks.
    fn node(&self, id: &str) -> Option<DeviceNode>;
    /// Every distinct node the plugin's devices use (for the CDI spec).
    fn nodes(&self) -> Vec<DeviceNode>;

    /// The socket file name in the device plugin dir.
    fn socket_name(&self) -> String {
        format!("{}.sock", self.name())
    }
}

/// What `Allocate` puts in a container response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Fully qualified CDI device names only.
    Cdi,
    /// DeviceSpecs only, for runtimes without CDI.
    DeviceSpec,
    /// Both: the runtime uses whichever it understands.
    Both,
}

impl Injection {
    /// Whether CDI names are returned.
    pub fn cdi(self) -> bool {
        self != Injection::DeviceSpec
    }
    /// Whether DeviceSpecs are returned.
    pub fn specs(self) -> bool {
        self != Injection::Cdi
    }
}

impl std::str::FromStr for Injection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cdi" => Ok(Injection::Cdi),
            "device-spec" => Ok(Injection::DeviceSpec),
            "both" => Ok(Injection::Both),
            _ => Err(format!(
                "unknown device injection {s:?}: use cdi, device-spec or both"
            )),
        }
    }
}

/// What one container gets for its devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Fully qualified CDI names: `<resource>=<cdi name>`.
    pub cdi_devices: Vec<String>,
    /// Nodes to hand over as DeviceSpecs, with permissions `rw`.
    pub nodes: Vec<DeviceNode>,
}

/// Why an allocation was refused. Each names the offending device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The request named no device.
    Empty,
    /// An ID the plugin does not have.
    Unknown(String),
    /// An ID named twice in one request.
    Duplicate(String),
    /// A device that is unhealthy now, and why.
    Unhealthy(String, String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Empty => f.write_str("no device IDs in the container request"),
            AllocError::Unknown(id) => write!(f, "unknown device ID {id:?}"),
            AllocError::Duplicate(id) => write!(f, "device ID {id:?} requested twice"),
            AllocError::Unhealthy(id, why) => write!(f, "device {id:?} is unhealthy: {why}"),
        }
    }
}

/// Builds the allocation of `ids` for one container, checking each ID
/// against the plugin and its latest health in `devices`. Devices that share
/// a node (kvm slots) yield that node once.
pub fn allocate(
    plugin: &dyn Plugin,
    devices: &[Device],
    ids: &[String],
    injection: Injection,
) -> std::result::Result<Allocation, AllocError> {
    if ids.is_empty() {
        return Err(AllocError::Empty);
    }
    let mut seen = HashSet::with_capacity(ids.len());
    let mut alloc = Allocation::default();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(AllocError::Duplicate(id.clone()));
        }
        let node = plugin
            .node(id)
            .ok_or_else(|| AllocError::Unknown(id.clone()))?;
        if let Some(d) = devices.iter().find(|d| &d.id == id)
            && d.health != Health::Healthy
        {
            return Err(AllocError::Unhealthy(id.clone(), d.reason.clone()));
        }
        if alloc.nodes.contains(&node) {
            continue;
        }
        if injection.cdi() {
            alloc
                .cdi_devices
                .push(format!("{}={}", plugin.resource(), node.cdi_name));
        }
        alloc.nodes.push(node);
    }
    if !injection.specs() {
        alloc.nodes.clear();
    }
    Ok(alloc)
}

/// Parses `<prefix><n>` with `n < count`, without leading zeros: the IDs
/// `crand0`.. and `kvm0`.. that plugins hand out.
pub fn parse_index(id: &str, prefix: &str, count: usize) -> Option<usize> {
    let digits = id.strip_prefix(prefix)?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n < count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_index_accepts_only_canonical_ids() {
        assert_eq!(parse_index("crand0", "crand", 3), Some(0));
        assert_eq!(parse_index("crand2", "crand", 3), Some(2));
        for bad in [
            "crand3", "crand", "crand01", "crand-1", "crand+1", "kvm0", "crand1x",
        ] {
            assert_eq!(parse_index(bad, "crand", 3), None, "{bad}");
        }
    }

    #[test]
    fn test_injection_parses_the_three_modes() {
        assert_eq!("cdi".parse::<Injection>().unwrap(), Injection::Cdi);
        assert_eq!(
            "device-spec".parse::<Injection>().unwrap(),
            Injection::DeviceSpec
        );
        assert_eq!("both".parse::<Injection>().unwrap(), Injection::Both);
        assert!(
            "all"
                .parse::<Injection>()
                .unwrap_err()
                .contains("cdi, device-spec or both")
        );
    }
}
