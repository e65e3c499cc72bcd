//! Wake pipes: how a thread that sleeps in `poll` (the health thread on
//! inotify, the `metrics` thread on its listener) is woken from another
//! thread with no polling. The read end is polled beside the thread's
//! other fds; the write end is a [`Kicker`] (wake me) or a [`Stopper`]
//! (dropping it closes the pipe, which the reader sees as the end).

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use crate::error::{Error, Result};

/// The read end of a wake pipe, for `poll`.
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    /// Empties the pipe: the wakes so far count as one.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while nix::unistd::read(self.0.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
    }
}

impl AsFd for WakeFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Wakes whoever polls the pipe's read end; clones share the pipe.
#[derive(Clone, Debug)]
pub struct Kicker(Arc<OwnedFd>);

impl Kicker {
    /// Wakes the reader; a full pipe already says "wake up".
    pub fn kick(&self) {
        let _ = nix::unistd::write(self.0.as_fd(), &[1]);
    }
}

/// Dropping it wakes and stops whoever polls the pipe's read end (it sees
/// POLLHUP, and nothing ever to read).
#[derive(Debug)]
pub struct Stopper(#[allow(dead_code)] OwnedFd);

fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| Error::io("create the wake pipe of", what.to_string(), e))
}

/// A pipe to wake the poller of `what` on purpose.
pub fn kick_pipe(what: &str) -> Result<(WakeFd, Kicker)> {
    let (read, write) = pipe(what)?;
    Ok((WakeFd(read), Kicker(Arc::new(write))))
}

/// A pipe to stop the poller of `what`.
pub fn stop_pipe(what: &str) -> Result<(WakeFd, Stopper)> {
    let (read, write) = pipe(what)?;
    Ok((WakeFd(read), Stopper(write)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    fn ready(fd: &WakeFd) -> bool {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    }

    #[test]
    fn test_kicks_wake_once_and_a_dropped_stopper_stays_ready() {
        let (fd, kicker) = kick_pipe("test").unwrap();
        assert!(!ready(&fd));
        kicker.kick();
        kicker.clone().kick();
        assert!(ready(&fd));
        fd.drain();
        assert!(!ready(&fd), "two kicks, one wake");
        let (fd, stopper) = stop_pipe("test").unwrap();
        assert!(!ready(&fd));
        drop(stopper);
        assert!(ready(&fd));
        fd.drain();
        assert!(ready(&fd), "the end stays seen");
    }
}
