//! Watching directories with inotify, interruptibly: a thread waits on one
//! inotify fd (a watch per directory) and on a stop pipe at once, so it
//! reacts to a change at once, stops at once, and spends no CPU in between.

use std::{
    ffi::OsString,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

use crate::error::{Error, Result};

/// Dropping the stopper wakes and stops the watcher it was made with.
#[derive(Debug)]
pub struct Stopper(#[allow(dead_code)] OwnedFd);

/// What [`DirWatch::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something changed: for each watched dir, in the order given to
    /// [`DirWatch::new`], what.
    Changed(Vec<Changes>),
    /// The timeout passed with no change.
    Timeout,
    /// The stopper was dropped.
    Stopped,
}

/// What changed in one watched dir.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Changes {
    /// Nothing.
    #[default]
    None,
    /// These entries.
    Named(Vec<OsString>),
    /// Something the kernel could not name (its event queue overflowed, or
    /// the dir itself changed): anything may have.
    Any,
}

impl Changes {
    fn add(&mut self, name: Option<OsString>) {
        match (name, &mut *self) {
            (_, Changes::Any) => {}
            (None, _) => *self = Changes::Any,
            (Some(n), Changes::Named(names)) => names.push(n),
            (Some(n), Changes::None) => *self = Changes::Named(vec![n]),
        }
    }
}

/// inotify watches on some directories plus the read end of a stop pipe.
#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
    watches: Vec<WatchDescriptor>,
    stop: OwnedFd,
}

impl DirWatch {
    /// Watches `dirs` for entries created, deleted, moved or changed in
    /// their attributes. Returns the watch and the stopper that ends it.
    pub fn new(dirs: &[&Path]) -> Result<(DirWatch, Stopper)> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::io("start inotify for", dirs[0], e))?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB;
        // Not IN_CLOSE_WRITE: the kvm probe opens its node read-write, and
        // closing it would wake the health thread again, forever.
        let watches = dirs
            .iter()
            .map(|dir| {
                inotify
                    .add_watch(*dir, mask)
                    .map_err(|e| Error::io("watch directory", *dir, e))
            })
            .collect::<Result<_>>()?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create stop pipe for", dirs[0], e))?;
        Ok((
            DirWatch {
                inotify,
                watches,
                stop: read,
            },
            Stopper(write),
        ))
    }

    /// Waits for a change, the stopper, or `timeout` (`None`: no timeout).
    /// Events that arrive together are returned together.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake> {
        let timeout = match timeout {
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Wake::Timeout),
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Wake::Timeout),
            Err(e) => return Err(Error::io("wait for inotify", "", e)),
        }
        // The write end is closed: POLLHUP, and nothing ever to read.
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(Wake::Stopped);
        }
        let mut changes: Vec<Changes> = self.watches.iter().map(|_| Changes::None).collect();
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    for e in events {
                        // The same dir given twice has one watch: it is both.
                        let mut ours = false;
                        for (i, wd) in self.watches.iter().enumerate() {
                            if *wd == e.wd {
                                changes[i].add(e.name.clone());
                                ours = true;
                            }
                        }
                        // IN_Q_OVERFLOW names no watch: events of any dir were lost.
                        if !ours {
                            changes.iter_mut().for_each(|c| *c = Changes::Any);
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
        drop(stop);
        assert_eq!(watch.wait(None).unwrap(), Wake::Stopped);
    }
}
