//! Our sockets and the kubelet's, by name and identity: where each
//! resource's socket goes in either registration mode, telling a socket
//! file made anew from the old one (a kubelet restart), whether anyone
//! answers on a socket, and removing only a socket that is still ours.
//! Every front end, `status` and the CDI file names go by these.

use std::{
    os::unix::{
        fs::{FileTypeExt, MetadataExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
};

use crate::k8s_names;

/// The kubelet's socket file name in the device plugin dir.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// Identifies one socket file. A recreated file may get the inode number
/// of the one it replaces (seen here: the kubelet's and the simulator's
/// restarts), so its change time, to the nanosecond, is part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// The id of the socket at `path`; `None` if there is none (missing, or not
/// a socket).
pub fn socket_id(path: &Path) -> Option<SocketId> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| SocketId {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// The socket file name of resource `<domain>/<name>` in the device plugin
/// dir (`kubelet-sock` mode): `<name>.sock`, the name Register announces.
pub fn device_plugin_socket(resource: &str) -> String {
    let name = resource.rsplit_once('/').map_or(resource, |(_, n)| n);
    format!("{name}.sock")
}

/// The socket file name of `resource` in the kubelet's plugin watcher dir
/// (`plugins-registry` mode): `<domain>-<name>.sock`, since the watcher
/// sees every plugin's socket in one dir.
pub fn registry_socket(resource: &str) -> String {
    format!("{}.sock", k8s_names::file_stem(resource))
}

/// The paths `resource`'s socket has in either mode: in `plugin_dir`
/// (`kubelet-sock`), then in `registry_dir` (`plugins-registry`).
pub fn socket_paths(resource: &str, plugin_dir: &Path, registry_dir: &Path) -> [PathBuf; 2] {
    [
        plugin_dir.join(device_plugin_socket(resource)),
        registry_dir.join(registry_socket(resource)),
    ]
}

/// Whether a server answers on the unix socket at `path`.
pub fn socket_answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Removes the socket at `path` if it is still `ours` (a grpcio server
/// dropped leaves its socket); someone else's file there is left alone.
pub fn remove_socket(path: &Path, ours: SocketId) {
    if socket_id(path) == Some(ours)
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove socket {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_socket_names_in_either_mode() {
        let [dp, reg] = socket_paths(
            "github.com.ihcsim/crand",
            Path::new("/dp"),
            Path::new("/reg"),
        );
        assert_eq!(dp, Path::new("/dp/crand.sock"));
        assert_eq!(reg, Path::new("/reg/github.com.ihcsim-crand.sock"));
    }

    #[test]
    fn test_a_socket_made_anew_is_another_and_only_ours_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let old = socket_id(&path).unwrap();
        assert!(socket_answers(&path));
        std::fs::remove_file(&path).unwrap();
        drop(first);
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_ne!(socket_id(&path), Some(old));
        remove_socket(&path, old);
        assert!(path.exists(), "not ours any more: left alone");
        remove_socket(&path, socket_id(&path).unwrap());
        assert!(!path.exists());
        assert!(!socket_answers(&path));
    }
}
