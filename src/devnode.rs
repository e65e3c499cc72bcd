//! Character device nodes on the host: reading a node's major:minor, checking
//! that a node is what a device needs, and making missing nodes.

use std::{fmt, path::Path};

use nix::{
    errno::Errno,
    sys::stat::{self, Mode, SFlag},
};

use crate::error::{Error, Result};

/// A character device number, `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

fn node_id(st: &stat::FileStat) -> NodeId {
    NodeId {
        major: stat::major(st.st_rdev),
        minor: stat::minor(st.st_rdev),
    }
}

fn file_type(st: &stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// The number of the character device at `path` (symlinks followed, as a
/// host path like `/dev/random` may be one).
pub fn host_node(path: &Path) -> Result<NodeId> {
    let st = stat::stat(path).map_err(|e| Error::io("stat host device", path, e))?;
    if file_type(&st) != SFlag::S_IFCHR {
        return Err(Error::Invalid(format!(
            "{} is not a character device",
            path.display()
        )));
    }
    Ok(node_id(&st))
}

/// The permission bits of the node at `path` (symlinks followed).
pub fn host_mode(path: &Path) -> Result<u32> {
    let st = stat::stat(path).map_err(|e| Error::io("stat host device", path, e))?;
    Ok(st.st_mode & 0o777)
}

/// Checks that `path` itself (never a symlink's target) is a character
/// device numbered `want`. The error says why it is not, in a few words.
pub fn check_char(path: &Path, want: NodeId) -> std::result::Result<(), String> {
    let st = match stat::lstat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Err("node missing".into()),
        Err(e) => return Err(format!("cannot stat node: {e}")),
    };
    let kind = file_type(&st);
    if kind != SFlag::S_IFCHR {
        let what = match kind {
            SFlag::S_IFLNK => "a symlink",
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFIFO => "a FIFO",
            SFlag::S_IFSOCK => "a socket",
            SFlag::S_IFBLK => "a block device",
            _ => "not a device",
        };
        return Err(format!("node is {what}, not a character device"));
    }
    let got = node_id(&st);
    if got != want {
        return Err(format!("node is {got}, want {want}"));
    }
    Ok(())
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
        assert_eq!(check_char(&node, random).unwrap_err(), "node missing");
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
            format!("node is {random}, want 1:3")
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/dev/random", &link).unwrap();
        assert!(check_char(&link, random).unwrap_err().contains("symlink"));
    }
}
