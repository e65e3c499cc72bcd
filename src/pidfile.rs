//! The `--pid-file` of `kubelet-plugin run`: a lock against a second
//! instance and the readiness mark that init scripts wait on.
//!
//! Owned by main's `run`. The file is locked (flock) for the life of the
//! process, so a second instance is refused even while no kubelet is there
//! (and so no socket shows that the first one runs). The pid is written
//! only once the plugins are prepared, which makes "the file holds the pid"
//! mean "started and past its checks". A clean exit removes the file; a
//! killed process leaves it unlocked, and the next start takes it over.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A locked pid file; removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

impl PidFile {
    /// Opens and locks `path`, still empty; fails when another process
    /// holds the lock, naming its pid.
    pub fn lock(path: &Path) -> Result<Self> {
        let context = |e: std::io::Error| Error::io("open pid file", path, e);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(context)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(Error::Invalid(format!(
                    "pid file {} is locked by a running kubelet-plugin (pid {}): refusing to start a second one",
                    path.display(),
                    pid.trim()
                )));
            }
        };
        // A stale pid from a killed run would read as "ready" too early.
        // Readable by all, as pid files are; whatever mode a stale file had.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .map_err(|e| Error::io("truncate pid file", path, e))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes this process's pid: the plugins are ready to serve.
    pub fn ready(&mut self) -> Result<()> {
        writeln!(self.file, "{}", std::process::id())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("write pid file", &self.path, e))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Still locked by us, so no other instance owns the path yet.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove pid file {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lock_ready_refuse_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kp.pid");
        std::fs::write(&path, "999999\n").unwrap(); // left by a killed run
        let mut first = PidFile::lock(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        first.ready().unwrap();
        let pid = format!("{}\n", std::process::id());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pid);

        let err = PidFile::lock(&path).unwrap_err().to_string();
        assert!(err.contains("locked by a running kubelet-plugin"), "{err}");
        assert!(err.contains(pid.trim()), "{err}");
        // The refused attempt left the first one's pid alone.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pid);

        drop(first);
        assert!(!path.exists());
    }
}
