//! Device nodes on the host: reading a node's kind and major:minor,
//! checking that a node is what a device needs (with a [`Reason`] when it is
//! not), making missing nodes, and the NUMA node of the hardware behind a
//! node (from sysfs).

use std::path::{Path, PathBuf};

use nix::{
    errno::Errno,
    sys::stat::{self, Mode, SFlag},
};

use super::device::{FileKind, Reason};
pub use super::device::{NodeId, NodeKind};
use crate::error::{Error, Result};

fn node_id(st: &stat::FileStat) -> NodeId {
    NodeId {
        major: stat::major(st.st_rdev),
        minor: stat::minor(st.st_rdev),
    }
}

fn file_type(st: &stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// The kind and number of a stat result, or why it is no device node.
fn as_node(st: &stat::FileStat) -> std::result::Result<(NodeKind, NodeId), Reason> {
    let kind = match file_type(st) {
        SFlag::S_IFCHR => NodeKind::Char,
        SFlag::S_IFBLK => NodeKind::Block,
        SFlag::S_IFLNK => return Err(Reason::Symlink),
        SFlag::S_IFREG => return Err(Reason::NotADevice(FileKind::Regular)),
        SFlag::S_IFDIR => return Err(Reason::NotADevice(FileKind::Directory)),
        SFlag::S_IFIFO => return Err(Reason::NotADevice(FileKind::Fifo)),
        SFlag::S_IFSOCK => return Err(Reason::NotADevice(FileKind::Socket)),
        _ => return Err(Reason::NotADevice(FileKind::Other)),
    };
    Ok((kind, node_id(st)))
}

fn stat_error(e: Errno) -> Reason {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => Reason::Missing,
        e => Reason::StatFailed(e),
    }
}

/// The number of the character device at `path` (symlinks followed, as a
/// host path like `/dev/random` may be one).
pub fn host_node(path: &Path) -> Result<NodeId> {
    let st = stat::stat(path).map_err(|e| Error::io("stat host device", path, e))?;
    match as_node(&st) {
        Ok((NodeKind::Char, id)) => Ok(id),
        _ => Err(Error::Invalid(format!(
            "{} is not a character device",
            path.display()
        ))),
    }
}

/// The permission bits of the node at `path` (symlinks followed).
pub fn host_mode(path: &Path) -> Result<u32> {
    let st = stat::stat(path).map_err(|e| Error::io("stat host device", path, e))?;
    Ok(st.st_mode & 0o777)
}

/// Checks that `path` itself (never a symlink's target) is a character
/// device numbered `want`.
pub fn check_char(path: &Path, want: NodeId) -> std::result::Result<(), Reason> {
    let st = stat::lstat(path).map_err(stat_error)?;
    let (kind, got) = as_node(&st)?;
    if kind != NodeKind::Char {
        return Err(Reason::WrongType {
            got: kind,
            want: NodeKind::Char,
        });
    }
    if got != want {
        return Err(Reason::WrongNumber { got, want });
    }
    Ok(())
}

/// The kind and number of the device node at `path`, following symlinks
/// (a udev link such as `serial/by-id/usb-...` stands for its target).
pub fn inspect(path: &Path) -> std::result::Result<(NodeKind, NodeId), Reason> {
    as_node(&stat::stat(path).map_err(stat_error)?)
}

/// Makes `path` a character device `id` with permission bits `mode` when
/// nothing is there. Whatever is there already is left alone (the health
/// check reports it if it is wrong). Returns whether a node was made.
pub fn ensure_char(path: &Path, id: NodeId, mode: u32) -> Result<bool> {
    match stat::lstat(path) {
        Ok(_) => return Ok(false),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::io("stat device node", path, e)),
    }
    stat::mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        stat::makedev(id.major, id.minor),
    )
    .map_err(|e| Error::io("create device node", path, e))?;
    // mknod applies the umask; give the node the mode it is meant to have.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| Error::io("set mode of device node", path, e))?;
    Ok(true)
}

/// Where sysfs is: `$KUBELET_PLUGIN_SYSFS` (a fake tree, for tests) or
/// `/sys`.
pub fn sysfs_root() -> PathBuf {
    std::env::var_os("KUBELET_PLUGIN_SYSFS").map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// How far up from a node's device sysfs is searched for a NUMA node: a
/// render node's PCI function is one step up, an NVMe disk's two.
const NUMA_SEARCH_DEPTH: usize = 6;

/// The NUMA node of the hardware behind node `id` of `kind`, as sysfs under
/// `sys` tells it: the `numa_node` of the first device up from the node's
/// own (`<sys>/dev/<char|block>/<major>:<minor>/device`) that has one,
/// which is the PCI function a GPU, NVMe disk or VFIO device sits on.
/// None where there is no such device (virtual nodes such as tun, fuse or
/// kvm), where the kernel says -1 (no NUMA), and below a USB device: a USB
/// serial adapter reaches the CPUs through its host controller, whichever
/// NUMA node that sits on, so it has no locality worth aligning to.
pub fn numa_node(sys: &Path, kind: NodeKind, id: NodeId) -> Option<u32> {
    let class = match kind {
        NodeKind::Char => "char",
        NodeKind::Block => "block",
    };
    let devices = std::fs::canonicalize(sys.join("devices")).ok()?;
    let mut dir = std::fs::canonicalize(sys.join(format!("dev/{class}/{id}/device"))).ok()?;
    for _ in 0..NUMA_SEARCH_DEPTH {
        if let Ok(text) = std::fs::read_to_string(dir.join("numa_node")) {
            return text.trim().parse::<u32>().ok();
        }
        let subsystem = std::fs::read_link(dir.join("subsystem")).ok();
        if subsystem.as_deref().and_then(Path::file_name) == Some("usb".as_ref()) {
            return None;
        }
        if !dir.pop() || !dir.starts_with(&devices) || dir == devices {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_char_explains_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let random = host_node(Path::new("/dev/random")).unwrap();
        let node = dir.path().join("n");
        assert_eq!(check_char(&node, random).unwrap_err(), Reason::Missing);
        assert!(ensure_char(&node, random, 0o640).unwrap());
        assert!(!ensure_char(&node, random, 0o640).unwrap());
        check_char(&node, random).unwrap();
        // The mode asked for, whatever the umask.
        let mode = std::fs::metadata(&node).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
        let other = NodeId { major: 1, minor: 3 };
        assert_eq!(
            check_char(&node, other).unwrap_err(),
            Reason::WrongNumber {
                got: random,
                want: other
            }
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/dev/random", &link).unwrap();
        assert_eq!(check_char(&link, random).unwrap_err(), Reason::Symlink);
        // Followed by inspect, as a udev link is.
        assert_eq!(inspect(&link).unwrap(), (NodeKind::Char, random));
        std::fs::remove_file(&node).unwrap();
        std::os::unix::fs::symlink("gone", &node).unwrap();
        assert_eq!(inspect(&node).unwrap_err(), Reason::Missing);
    }

    /// The real sysfs of this machine: every node it lists is looked up
    /// without error, a virtual node (kvm, fuse, tun, loop) has no NUMA
    /// node, and any NUMA node found is one the machine has.
    #[test]
    fn test_numa_node_on_this_machine_s_sysfs() {
        let sys = Path::new("/sys");
        let online = std::fs::read_dir(sys.join("devices/system/node"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
                    .count()
            })
            .unwrap_or(1);
        let mut seen = 0;
        for (class, kind) in [("char", NodeKind::Char), ("block", NodeKind::Block)] {
            for entry in std::fs::read_dir(sys.join("dev").join(class))
                .unwrap()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().to_string();
                let (major, minor) = name.split_once(':').unwrap();
                let id = NodeId {
                    major: major.parse().unwrap(),
                    minor: minor.parse().unwrap(),
                };
                let real = std::fs::canonicalize(entry.path()).unwrap();
                let numa = numa_node(sys, kind, id);
                if real.starts_with("/sys/devices/virtual") {
                    assert_eq!(numa, None, "{name} is virtual ({})", real.display());
                }
                if let Some(n) = numa {
                    assert!((n as usize) < online, "{name}: NUMA node {n} of {online}");
                }
                seen += 1;
            }
        }
        assert!(seen > 0, "no device numbers in /sys/dev");
    }

    /// A fake sysfs: a render node on a PCI function of NUMA node 1, one on
    /// a function that says -1, a USB serial adapter below a controller of
    /// node 0, and a number sysfs does not know.
    #[test]
    fn test_numa_node_follows_the_bus_and_stops_at_usb() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let make = |rel: &str, numa: Option<&str>| {
            let d = sys.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(n) = numa {
                std::fs::write(d.join("numa_node"), format!("{n}\n")).unwrap();
            }
        };
        let link = |target: &str, at: &str| {
            let at = sys.join(at);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, at).unwrap();
        };
        make("devices/pci0000:00/0000:00:02.0", Some("1"));
        make("devices/pci0000:00/0000:00:02.0/drm/renderD128", None);
        link(
            "../..",
            "devices/pci0000:00/0000:00:02.0/drm/renderD128/device",
        );
        link(
            "../../devices/pci0000:00/0000:00:02.0/drm/renderD128",
            "dev/char/226:128",
        );
        make("devices/pci0000:00/0000:00:03.0", Some("-1"));
        make("devices/pci0000:00/0000:00:03.0/drm/renderD129", None);
        link(
            "../..",
            "devices/pci0000:00/0000:00:03.0/drm/renderD129/device",
        );
        link(
            "../../devices/pci0000:00/0000:00:03.0/drm/renderD129",
            "dev/char/226:129",
        );
        let port = "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/ttyUSB0";
        make("devices/pci0000:00/0000:00:14.0", Some("0"));
        make(&format!("{port}/tty/ttyUSB0"), None);
        make("bus/usb", None);
        link(
            "../../../../../../bus/usb",
            "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/subsystem",
        );
        link("../..", &format!("{port}/tty/ttyUSB0/device"));
        link(&format!("../../{port}/tty/ttyUSB0"), "dev/char/188:0");
        let char = |major, minor| numa_node(sys, NodeKind::Char, NodeId { major, minor });
        assert_eq!(char(226, 128), Some(1));
        assert_eq!(char(226, 129), None, "-1: no NUMA");
        assert_eq!(char(188, 0), None, "USB: none");
        assert_eq!(char(226, 130), None, "not in sysfs");
        assert_eq!(
            numa_node(
                sys,
                NodeKind::Block,
                NodeId {
                    major: 226,
                    minor: 128
                }
            ),
            None
        );
    }
}
