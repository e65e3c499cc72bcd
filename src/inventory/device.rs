//! Pure device types: a device's ID, health and node, why an unhealthy
//! device is unhealthy, what a device node is, and the difference between
//! two device lists. No I/O and no gRPC here.

use std::{fmt, path::PathBuf, sync::Arc};

use nix::errno::Errno;

/// A device's health as the kubelet reads it, and why when it is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Usable: counted in the node's allocatable.
    Healthy,
    /// Present but not usable: counted in capacity only.
    Unhealthy(Reason),
}

impl Health {
    /// The exact string of the wire: the kubelet treats anything but
    /// "Healthy" as unhealthy, so case matters.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Unhealthy(_) => "Unhealthy",
        }
    }

    /// Whether it is [`Health::Healthy`].
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }

    /// The reason of an unhealthy device.
    pub fn reason(self) -> Option<Reason> {
        match self {
            Health::Healthy => None,
            Health::Unhealthy(r) => Some(r),
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Character or block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// A character device (`c`).
    Char,
    /// A block device (`b`).
    Block,
}

impl NodeKind {
    /// The OCI and CDI letter: `c` or `b`.
    pub fn letter(self) -> &'static str {
        match self {
            NodeKind::Char => "c",
            NodeKind::Block => "b",
        }
    }

    fn name(self) -> &'static str {
        match self {
            NodeKind::Char => "a character device",
            NodeKind::Block => "a block device",
        }
    }
}

/// A device number, `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// The driver's major number.
    pub major: u64,
    /// The minor number.
    pub minor: u64,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// What a path is when it is not the device node a device needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// Anything else.
    Other,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::Other => "not a device",
        }
    }
}

/// Why a device is unhealthy: a fixed list, each with a short code (for
/// metrics labels and scripts) and a sentence (for logs and `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `missing`: no node at the path (or a symlink to nothing).
    Missing,
    /// `symlink`: a symlink where a node of ours belongs; never followed.
    Symlink,
    /// `not_a_device`: a file of another kind at the path.
    NotADevice(FileKind),
    /// `wrong_type`: a block device where a character device belongs, or
    /// the other way round.
    WrongType {
        /// What is there.
        got: NodeKind,
        /// What belongs there.
        want: NodeKind,
    },
    /// `wrong_number`: a node with another major:minor.
    WrongNumber {
        /// What is there.
        got: NodeId,
        /// What belongs there.
        want: NodeId,
    },
    /// `stat_failed`: the node could not be looked at.
    StatFailed(Errno),
    /// `open_failed`: the node does not open read-write (kvm).
    OpenFailed(Errno),
}

impl Reason {
    /// Every code, in the order of the documented list.
    pub const CODES: &'static [&'static str] = &[
        "missing",
        "symlink",
        "not_a_device",
        "wrong_type",
        "wrong_number",
        "stat_failed",
        "open_failed",
    ];

    /// The short code: one of [`Reason::CODES`].
    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Symlink => "symlink",
            Reason::NotADevice(_) => "not_a_device",
            Reason::WrongType { .. } => "wrong_type",
            Reason::WrongNumber { .. } => "wrong_number",
            Reason::StatFailed(_) => "stat_failed",
            Reason::OpenFailed(_) => "open_failed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => f.write_str("node missing"),
            Reason::Symlink => f.write_str("node is a symlink, not a device"),
            Reason::NotADevice(k) => write!(f, "node is {}, not a device", k.name()),
            Reason::WrongType { got, want } => {
                write!(f, "node is {}, not {}", got.name(), want.name())
            }
            Reason::WrongNumber { got, want } => write!(f, "node is {got}, want {want}"),
            Reason::StatFailed(e) => write!(f, "cannot stat node: {}", e.desc()),
            Reason::OpenFailed(e) => write!(f, "cannot open read-write: {}", e.desc()),
        }
    }
}

/// A host device node as a container gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// The CDI device name inside the plugin's kind: `crand1`, `kvm`.
    pub cdi_name: String,
    /// The node's path in the container: `/dev/crand1`.
    pub container_path: String,
    /// The node's path on the host: `<dev-dir>/crand1`.
    pub host_path: PathBuf,
    /// Character or block device.
    pub kind: NodeKind,
    /// The device number of the node.
    pub id: NodeId,
    /// A stable link to the node udev made (`/dev/serial/by-id/usb-...`),
    /// where there is one: it names the same hardware after a replug.
    pub by_id: Option<String>,
    /// The NUMA node of the hardware behind the node, where it sits on a
    /// bus that has one (a PCI GPU, NVMe disk, accelerator); none for
    /// virtual and USB devices. The kubelet's topology manager aligns
    /// devices and CPUs by it.
    pub numa: Option<u32>,
}

/// One device of a plugin: its ID, its health and the node it hands out.
/// A snapshot of these is everything a front end needs: the IDs it
/// announces, the health it reports and the node (with its CDI name) it
/// hands out, from one list, so they never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The stable device ID sent to the kubelet, e.g. `crand1`.
    pub id: String,
    /// The current health.
    pub health: Health,
    /// The node behind it; devices that share a node (kvm slots) share it.
    pub node: Arc<DeviceNode>,
}

impl Device {
    /// Device `id` on `node`, whose check gave `check`.
    pub fn new(id: impl Into<String>, node: Arc<DeviceNode>, check: Result<(), Reason>) -> Self {
        Device {
            id: id.into(),
            health: match check {
                Ok(()) => Health::Healthy,
                Err(r) => Health::Unhealthy(r),
            },
            node,
        }
    }
}

/// The devices of `new` whose health differs from `old`, in the order of
/// `new`. Devices are matched by ID; a device absent from `old` counts as
/// changed.
pub fn changed<'a>(old: &[Device], new: &'a [Device]) -> Vec<&'a Device> {
    new.iter()
        .enumerate()
        .filter(|(i, d)| {
            // Lists keep their order, so try the same index first.
            let before = old
                .get(*i)
                .filter(|o| o.id == d.id)
                .or_else(|| old.iter().find(|o| o.id == d.id));
            before.map(|b| b.health) != Some(d.health)
        })
        .map(|(_, d)| d)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn test_health_strings_are_exact() {
        assert_eq!(Health::Healthy.as_str(), "Healthy");
        assert_eq!(Health::Unhealthy(Reason::Missing).as_str(), "Unhealthy");
    }

    /// A device on a node of its own, for tests.
    pub fn device(id: &str, check: Result<(), Reason>) -> Device {
        let node = DeviceNode {
            cdi_name: id.into(),
            container_path: format!("/dev/{id}"),
            host_path: format!("/dev/{id}").into(),
            kind: NodeKind::Char,
            id: NodeId { major: 1, minor: 8 },
            by_id: None,
            numa: None,
        };
        Device::new(id, Arc::new(node), check)
    }

    #[test]
    fn test_changed_reports_only_differences() {
        let old = vec![device("a", Ok(())), device("b", Ok(()))];
        let new = vec![device("a", Ok(())), device("b", Err(Reason::Missing))];
        let diff = changed(&old, &new);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].id, "b");
        assert!(changed(&new, &new).is_empty());
        assert_eq!(changed(&[], &new).len(), 2);
    }

    #[test]
    fn test_every_reason_has_a_listed_code_and_a_sentence() {
        let id = NodeId { major: 1, minor: 8 };
        let all = [
            Reason::Missing,
            Reason::Symlink,
            Reason::NotADevice(FileKind::Fifo),
            Reason::WrongType {
                got: NodeKind::Block,
                want: NodeKind::Char,
            },
            Reason::WrongNumber { got: id, want: id },
            Reason::StatFailed(Errno::EIO),
            Reason::OpenFailed(Errno::EACCES),
        ];
        let codes: Vec<_> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes, Reason::CODES);
        assert_eq!(
            all[3].to_string(),
            "node is a block device, not a character device"
        );
        assert_eq!(
            all[6].to_string(),
            "cannot open read-write: Permission denied"
        );
    }
}
