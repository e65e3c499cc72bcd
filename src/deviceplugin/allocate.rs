//! The rules of Allocate: which IDs one container may get and what it
//! gets for them (CDI names, DeviceSpecs or both), from the device
//! snapshot alone. Pure: no gRPC here.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

use crate::inventory::device::{Device, DeviceNode};

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
    pub nodes: Vec<Arc<DeviceNode>>,
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
            AllocError::Unknown(id) => write!(f, "unknown device ID {}", Shown(id)),
            AllocError::Duplicate(id) => write!(f, "device ID {} requested twice", Shown(id)),
            AllocError::Unhealthy(id, why) => write!(f, "device {} is unhealthy: {why}", Shown(id)),
        }
    }
}

/// The longest ID an error shows in full; the kubelet's IDs have at most 63
/// characters.
const SHOWN_ID: usize = 64;

/// An ID as an error shows it: quoted, and cut after [`SHOWN_ID`]
/// characters. The error goes back as the gRPC status message, a header
/// that gRPC clients limit (grpc's C core to 16 KiB): echoing a 1 MiB ID in
/// full turned a clear INVALID_ARGUMENT into "received metadata size exceeds
/// hard limit", and logged a 1 MiB line.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_ID) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Builds the allocation of `ids` for one container of `resource` from
/// `devices`, the snapshot the kubelet was sent: an ID is known, healthy
/// and handed out by its node exactly as that list says, and by nothing
/// else. Devices that share a node (kvm slots) yield that node once.
pub fn allocate(
    resource: &str,
    devices: &[Device],
    ids: &[String],
    injection: Injection,
) -> std::result::Result<Allocation, AllocError> {
    if ids.is_empty() {
        return Err(AllocError::Empty);
    }
    // Runs on grpc's one poll thread, which every client and stream waits
    // on, so it must stay linear: a request naming all 16384 devices (or
    // 100,000 IDs) held it 4 s (debug build) when each ID scanned the device
    // list and the nodes so far. A few IDs scan; more use an index made once.
    let index: HashMap<&str, &Device> = if ids.len() > 8 {
        devices.iter().map(|d| (d.id.as_str(), d)).collect()
    } else {
        HashMap::new()
    };
    let device = |id: &str| {
        if index.is_empty() {
            devices.iter().find(|d| d.id == id)
        } else {
            index.get(id).copied()
        }
    };
    let mut seen = HashSet::with_capacity(ids.len());
    let mut nodes_seen = HashSet::new();
    let mut alloc = Allocation::default();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(AllocError::Duplicate(id.clone()));
        }
        let d = device(id).ok_or_else(|| AllocError::Unknown(id.clone()))?;
        if let Some(why) = d.health.reason() {
            return Err(AllocError::Unhealthy(id.clone(), why.to_string()));
        }
        // A CDI name is unique in the resource's kind: one per node.
        if !nodes_seen.insert(d.node.cdi_name.as_str()) {
            continue;
        }
        if injection.cdi() {
            alloc
                .cdi_devices
                .push(format!("{resource}={}", d.node.cdi_name));
        }
        alloc.nodes.push(d.node.clone());
    }
    if !injection.specs() {
        alloc.nodes.clear();
    }
    Ok(alloc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::device::{Reason, tests::device};

    #[test]
    fn test_only_the_ids_of_the_snapshot_are_handed_out() {
        let devices = vec![device("a", Ok(())), device("b", Err(Reason::Missing))];
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let alloc = allocate("example.com/x", &devices, &ids(&["a"]), Injection::Both).unwrap();
        assert_eq!(alloc.cdi_devices, ["example.com/x=a"]);
        assert_eq!(alloc.nodes[0].host_path, std::path::Path::new("/dev/a"));
        assert_eq!(
            allocate("example.com/x", &devices, &ids(&["c"]), Injection::Both),
            Err(AllocError::Unknown("c".into()))
        );
        assert_eq!(
            allocate("example.com/x", &devices, &ids(&["b"]), Injection::Both),
            Err(AllocError::Unhealthy("b".into(), "node missing".into()))
        );
        assert_eq!(
            allocate("example.com/x", &devices, &ids(&["a", "a"]), Injection::Cdi),
            Err(AllocError::Duplicate("a".into()))
        );
        let specs = allocate(
            "example.com/x",
            &devices,
            &ids(&["a"]),
            Injection::DeviceSpec,
        );
        assert!(specs.unwrap().cdi_devices.is_empty());
    }

    #[test]
    fn test_alloc_errors_cut_long_ids() {
        let id = "é".repeat(100);
        let msg = AllocError::Unknown(id.clone()).to_string();
        assert_eq!(
            msg,
            format!("unknown device ID {:?}... (200 bytes)", "é".repeat(64))
        );
        let short = "x".repeat(64);
        assert_eq!(
            AllocError::Duplicate(short.clone()).to_string(),
            format!("device ID {short:?} requested twice")
        );
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
