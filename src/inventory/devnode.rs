//! Device nodes on the host: reading a node's kind and major:minor,
//! checking that a node is what a device needs (with a [`Reason`] when it is
//! not), and making missing nodes.

use std::path::Path;

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
}
