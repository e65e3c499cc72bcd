//! Watching a directory with inotify, interruptibly: a thread waits on the
//! inotify fd and on a stop pipe at once, so it reacts to a change at once,
//! stops at once, and spends no CPU in between.

use std::{
    ffi::OsString,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use crate::error::{Error, Result};

/// Dropping the stopper wakes and stops the watcher it was made with.
#[derive(Debug)]
pub struct Stopper(#[allow(dead_code)] OwnedFd);

/// What [`DirWatch::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Entries changed; their names. Empty when the kernel could not say
    /// which (the event queue overflowed, or the dir itself changed):
    /// then anything may have changed.
    Changed(Vec<OsString>),
    /// The timeout passed with no change.
    Timeout,
    /// The stopper was dropped.
    Stopped,
}

/// An inotify watch on one directory plus the read end of a stop pipe.
#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
    stop: OwnedFd,
}

impl DirWatch {
    /// Watches `dir` for entries created, deleted, moved or changed in
    /// their attributes. Returns the watch and the stopper that ends it.
    pub fn new(dir: &Path) -> Result<(DirWatch, Stopper)> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::io("start inotify for", dir, e))?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB;
        // Not IN_CLOSE_WRITE: the kvm probe opens its node read-write, and
        // closing it would wake the health thread again, forever.
        inotify
            .add_watch(dir, mask)
            .map_err(|e| Error::io("watch directory", dir, e))?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create stop pipe for", dir, e))?;
        Ok((
            DirWatch {
                inotify,
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
        let mut names = Vec::new();
        let mut unnamed = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    for e in events {
                        match e.name {
                            Some(name) => names.push(name),
                            None => unnamed = true,
                        }
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => return Err(Error::io("read inotify events", "", e)),
            }
        }
        if unnamed {
            names.clear();
        }
        Ok(Wake::Changed(names))
    }
}
