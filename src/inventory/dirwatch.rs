//! Watching directories with inotify, interruptibly: a thread waits on one
//! inotify fd (a watch per directory), a stop pipe and a kick pipe at once,
//! so it reacts to a change at once, stops at once, can be woken on
//! purpose, and spends no CPU in between.
//!
//! Each root given to [`DirWatch::new`] is a group; subdirectories of a
//! root can be watched too ([`DirWatch::watch_sub`]), also ones that appear
//! later, and their changes are reported as paths relative to the root.

use std::{
    collections::HashMap,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

use crate::{
    error::{Error, Result},
    wake::{self, Kicker, Stopper, WakeFd},
};

/// What [`DirWatch::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something changed: for each root, in the order given to
    /// [`DirWatch::new`], what.
    Changed(Vec<Changes>),
    /// The timeout passed with no change.
    Timeout,
    /// The stopper was dropped.
    Stopped,
    /// A [`Kicker`] asked for it.
    Kicked,
}

/// What changed under one root.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Changes {
    /// Nothing.
    #[default]
    None,
    /// These entries, relative to the root.
    Named(Vec<PathBuf>),
    /// Something the kernel could not name (its event queue overflowed, or
    /// a watched dir itself changed): anything may have.
    Any,
}

impl Changes {
    fn add(&mut self, name: Option<PathBuf>) {
        match (name, &mut *self) {
            (_, Changes::Any) => {}
            (None, _) => *self = Changes::Any,
            (Some(n), Changes::Named(names)) => names.push(n),
            (Some(n), Changes::None) => *self = Changes::Named(vec![n]),
        }
    }
}

/// inotify watches on some directories plus the read ends of the stop and
/// kick pipes.
#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
    roots: Vec<PathBuf>,
    /// Every watch: its root and its dir relative to the root.
    watches: HashMap<WatchDescriptor, Vec<(usize, PathBuf)>>,
    stop: WakeFd,
    kick: WakeFd,
    kicker: Kicker,
}

/// Entries created, deleted, moved or changed in their attributes. Not
/// IN_CLOSE_WRITE: the kvm probe opens its node read-write, and closing it
/// would wake the health thread again, forever.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
}

impl DirWatch {
    /// Watches `roots` for entries created, deleted, moved or changed in
    /// their attributes. Returns the watch and the stopper that ends it.
    pub fn new(roots: &[&Path]) -> Result<(DirWatch, Stopper)> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::io("start inotify for", roots[0], e))?;
        let what = roots[0].display().to_string();
        let (stop, stopper) = wake::stop_pipe(&what)?;
        let (kick, kicker) = wake::kick_pipe(&what)?;
        let mut watch = DirWatch {
            inotify,
            roots: roots.iter().map(|r| r.to_path_buf()).collect(),
            watches: HashMap::new(),
            stop,
            kick,
            kicker,
        };
        for (group, root) in roots.iter().enumerate() {
            let wd = watch
                .inotify
                .add_watch(*root, mask())
                .map_err(|e| Error::io("watch directory", *root, e))?;
            watch
                .watches
                .entry(wd)
                .or_default()
                .push((group, PathBuf::new()));
        }
        Ok((watch, stopper))
    }

    /// A handle that wakes this watch.
    pub fn kicker(&self) -> Kicker {
        self.kicker.clone()
    }

    /// Watches `<root of group>/<rel>` too when it is a directory; returns
    /// whether it is watched. Call it again after a change under the root:
    /// a dir that appears later is watched from then on.
    pub fn watch_sub(&mut self, group: usize, rel: &Path) -> bool {
        let watched = self
            .watches
            .values()
            .flatten()
            .any(|(g, r)| *g == group && r == rel);
        if watched {
            return true;
        }
        let dir = self.roots[group].join(rel);
        if !dir.is_dir() {
            return false;
        }
        match self
            .inotify
            .add_watch(&dir, mask() | AddWatchFlags::IN_ONLYDIR)
        {
            Ok(wd) => {
                self.watches
                    .entry(wd)
                    .or_default()
                    .push((group, rel.to_path_buf()));
                true
            }
            Err(e) => {
                log::debug!("cannot watch {}: {e}", dir.display());
                false
            }
        }
    }

    /// Waits for a change, the stopper, a kick or `timeout` (`None`: no
    /// timeout). Events that arrive together are returned together.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake> {
        let timeout = match timeout {
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.kick.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Wake::Timeout),
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Wake::Timeout),
            Err(e) => return Err(Error::io("wait for inotify", "", e)),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        // The write end is closed: POLLHUP, and nothing ever to read.
        if ready(&fds[1]) {
            return Ok(Wake::Stopped);
        }
        if ready(&fds[2]) {
            self.kick.drain();
            return Ok(Wake::Kicked);
        }
        let mut changes: Vec<Changes> = self.roots.iter().map(|_| Changes::None).collect();
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    for e in events {
                        if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                            // A watched subdir went away (its parent's
                            // event says so); a root's watch never does.
                            if let Some(owners) = self.watches.remove(&e.wd) {
                                for (group, _) in owners {
                                    changes[group].add(None);
                                }
                            }
                            continue;
                        }
                        match self.watches.get(&e.wd) {
                            // The same dir given twice has one watch: it is both.
                            Some(owners) => {
                                for (group, rel) in owners {
                                    changes[*group].add(e.name.as_ref().map(|n| rel.join(n)));
                                }
                            }
                            // IN_Q_OVERFLOW names no watch: events of any dir were lost.
                            None => changes.iter_mut().for_each(|c| *c = Changes::Any),
                        }
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => return Err(Error::io("read inotify events", "", e)),
            }
        }
        Ok(Wake::Changed(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_changes_are_told_apart_by_dir_and_stop_wakes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut watch, stop) = DirWatch::new(&[a.path(), b.path()]).unwrap();
        let wait = Some(Duration::from_secs(5));
        std::fs::write(b.path().join("x"), "").unwrap();
        assert_eq!(
            watch.wait(wait).unwrap(),
            Wake::Changed(vec![Changes::None, Changes::Named(vec!["x".into()])])
        );
        std::fs::remove_file(b.path().join("x")).unwrap();
        std::fs::write(a.path().join("y"), "").unwrap();
        let Wake::Changed(changes) = watch.wait(wait).unwrap() else {
            panic!("no change seen");
        };
        // Both may come in one read or two; a's is there at the latest now.
        let changes = if changes[0] == Changes::None {
            let Wake::Changed(more) = watch.wait(wait).unwrap() else {
                panic!("a's change not seen");
            };
            more
        } else {
            changes
        };
        assert_eq!(changes[0], Changes::Named(vec!["y".into()]));
        assert_eq!(
            watch.wait(Some(Duration::from_millis(1))).unwrap(),
            Wake::Timeout
        );
        watch.kicker().kick();
        watch.kicker().kick();
        assert_eq!(watch.wait(wait).unwrap(), Wake::Kicked);
        assert_eq!(
            watch.wait(Some(Duration::from_millis(1))).unwrap(),
            Wake::Timeout,
            "two kicks, one wake"
        );
        drop(stop);
        assert_eq!(watch.wait(None).unwrap(), Wake::Stopped);
    }

    #[test]
    fn test_subdirs_that_appear_later_are_watched_by_relative_path() {
        let root = tempfile::tempdir().unwrap();
        let (mut watch, _stop) = DirWatch::new(&[root.path()]).unwrap();
        let wait = Some(Duration::from_secs(5));
        let sub = Path::new("serial/by-id");
        assert!(!watch.watch_sub(0, sub), "not there yet");
        std::fs::create_dir_all(root.path().join(sub)).unwrap();
        assert_eq!(
            watch.wait(wait).unwrap(),
            Wake::Changed(vec![Changes::Named(vec!["serial".into()])])
        );
        assert!(watch.watch_sub(0, Path::new("serial")));
        assert!(watch.watch_sub(0, sub));
        std::fs::write(root.path().join(sub).join("usb-x"), "").unwrap();
        assert_eq!(
            watch.wait(wait).unwrap(),
            Wake::Changed(vec![Changes::Named(vec!["serial/by-id/usb-x".into()])])
        );
        // Gone: its watch is dropped, and it can be watched again later.
        std::fs::remove_dir_all(root.path().join("serial")).unwrap();
        let mut seen_gone = false;
        while let Ok(Wake::Changed(_)) = watch.wait(Some(Duration::from_millis(200))) {
            seen_gone = true;
        }
        assert!(seen_gone);
        assert!(!watch.watch_sub(0, sub));
    }
}
