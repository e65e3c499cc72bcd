//! Lock files: the instance lock that keeps a second `kubelet-plugin` off a
//! resource another one serves, and the `--pid-file` that init scripts wait
//! on. Owned by main's `run` for the life of the process.
//!
//! A lock is an flock on a file, so the kernel drops it when the process
//! dies, `kill -9` included: the next start takes the file over. A clean
//! exit removes the file while still holding the lock; whoever opened the
//! old file meanwhile finds, once it holds the lock, that the path no longer
//! names the file it locked, and opens the path again.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A locked file; removed on drop.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    file: Flock<File>,
}

/// Why [`LockFile::lock`] did not get the lock.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; the pid it wrote, if any.
    Held(String),
    /// The file could not be opened or locked.
    Io(Error),
}

impl LockFile {
    /// Opens `path` (made 0644 when missing), locks it and empties it.
    pub fn lock(path: &Path) -> std::result::Result<Self, LockError> {
        let io = |op, e: std::io::Error| LockError::Io(Error::io(op, path, e));
        loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(|e| io("open lock file", e))?;
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((mut file, _)) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    return Err(LockError::Held(pid.trim().to_string()));
                }
            };
            // The holder we waited out may have removed the path meanwhile:
            // a lock on an unlinked file keeps no one out.
            let ours = file.metadata().map_err(|e| io("stat lock file", e))?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                _ => continue,
            }
            // A stale pid from a killed run would mislead; readable by all,
            // as pid files are, whatever mode a stale file had.
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
                .map_err(|e| io("truncate lock file", e))?;
            return Ok(LockFile {
                path: path.to_path_buf(),
                file,
            });
        }
    }

    /// Writes this process's pid into the file.
    pub fn write_pid(&mut self) -> Result<()> {
        self.write_line(&std::process::id().to_string())
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("write pid into", &self.path, e))
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Still locked by us, so no other instance owns the path yet.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

const RESOURCE_LOCK: (&str, &str) = (".kubelet-plugin-", ".lock");

/// The resources whose locks are in `dir` (instances that run, or were
/// killed): a resource's lock names it with its `/` as `_`, and a domain
/// has no `_`, so the first `_` is the `/`.
pub fn locked_resources(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let inner = name
                .strip_prefix(RESOURCE_LOCK.0)?
                .strip_suffix(RESOURCE_LOCK.1)?;
            Some(inner.replacen('_', "/", 1))
        })
        .collect();
    found.sort();
    found
}

/// The lock of one resource: `<dir>/.kubelet-plugin-<resource>.lock` in
/// the CDI dir, where the resource's spec goes too, so every instance that
/// could serve it meets it there. Not in the device plugin dir: the kubelet
/// (1.32 measured here) deletes every file there when it starts, which would
/// leave the lock on an unlinked file that keeps no one out. Taken before
/// anything is made, so a refused second instance changes nothing, whether
/// or not a kubelet runs, and whichever kubelet API each would serve it
/// through: a node must never offer one resource through two APIs (the
/// scheduler would hand its devices out twice). It holds the pid of its
/// owner and the API it serves (`owner`), for the refusal message. Dot
/// files are no CDI specs to the runtimes.
pub fn lock_resource(dir: &Path, resource: &str, owner: &str) -> Result<LockFile> {
    let path = dir.join(format!(
        ".kubelet-plugin-{}.lock",
        resource.replace('/', "_")
    ));
    match LockFile::lock(&path) {
        Ok(mut lock) => lock
            .write_line(&format!("{} {owner}", std::process::id()))
            .map(|()| lock),
        Err(LockError::Held(held)) => {
            let mut words = held.split_whitespace();
            let (pid, theirs) = (words.next().unwrap_or_default(), words.next());
            let why = match theirs {
                Some(api) if api != owner => format!(
                    " through --api {api}: a node must never offer one resource through two kubelet APIs"
                ),
                _ => String::new(),
            };
            Err(Error::Busy(format!(
                "another kubelet-plugin{} serves {resource}{why} (lock {}): refusing to start a second one",
                shown_pid(pid),
                path.display()
            )))
        }
        Err(LockError::Io(e)) => Err(e),
    }
}

/// The `--pid-file`: locked at start, still empty; [`PidFile::ready`]
/// writes the pid once the plugins are ready, which makes "the file holds
/// the pid" mean "started and past its checks" to an init script.
#[derive(Debug)]
pub struct PidFile(LockFile);

impl PidFile {
    /// Opens and locks `path`; fails when another process holds it.
    pub fn lock(path: &Path) -> Result<Self> {
        match LockFile::lock(path) {
            Ok(lock) => Ok(PidFile(lock)),
            Err(LockError::Held(pid)) => Err(Error::Busy(format!(
                "pid file {} is locked by a running kubelet-plugin{}: refusing to start a second one",
                path.display(),
                shown_pid(&pid)
            ))),
            Err(LockError::Io(e)) => Err(e),
        }
    }

    /// Writes this process's pid: the plugins are ready to serve.
    pub fn ready(&mut self) -> Result<()> {
        self.0.write_pid()
    }
}

fn shown_pid(pid: &str) -> String {
    if pid.is_empty() {
        String::new()
    } else {
        format!(" (pid {pid})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pid_file_lock_ready_refuse_and_remove() {
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

    #[test]
    fn test_resource_lock_names_the_holder_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_resource(dir.path(), "example.com/foo", "dra").unwrap();
        assert!(
            dir.path()
                .join(".kubelet-plugin-example.com_foo.lock")
                .exists()
        );
        let err = lock_resource(dir.path(), "example.com/foo", "dra")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "another kubelet-plugin (pid {}) serves example.com/foo",
                std::process::id()
            )),
            "{err}"
        );
        // Another resource in the same dir is another lock.
        let other = lock_resource(dir.path(), "example.com/bar_baz", "dra").unwrap();
        // The same resource through the other API: refused, saying so.
        let both = lock_resource(dir.path(), "example.com/foo", "device-plugin")
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("serves example.com/foo through --api dra: a node must never offer one resource through two kubelet APIs"),
            "{both}"
        );
        assert_eq!(
            locked_resources(dir.path()),
            ["example.com/bar_baz", "example.com/foo"]
        );
        drop(first);
        assert!(
            !dir.path()
                .join(".kubelet-plugin-example.com_foo.lock")
                .exists()
        );
        let again = lock_resource(dir.path(), "example.com/foo", "dra").unwrap();
        drop((other, again));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
