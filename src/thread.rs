//! The one way threads are started: named, panics caught, and the end of
//! every thread reported to its owner as [`Event::ThreadExited`], carrying
//! the thread's own error, so the process exits with the code of the
//! cause.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    thread::{Builder, JoinHandle},
};

use crossbeam_channel::Sender;

use crate::{
    error::{Error, Result},
    event::Event,
};

/// Starts `body` on a thread called `name` (at most 15 bytes: the kernel
/// cuts longer names). Its result, or its panic, reaches `exits`.
pub fn spawn_named<F>(name: &str, exits: Sender<Event>, body: F) -> Result<JoinHandle<()>>
where
    F: FnOnce() -> Result<()> + Send + 'static,
{
    let thread_name = name.to_string();
    Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(body))
                .unwrap_or_else(|_| Err(Error::Thread(format!("thread {thread_name} panicked"))));
            let _ = exits.send(Event::ThreadExited {
                name: thread_name,
                result,
            });
        })
        .map_err(|e| Error::Thread(format!("cannot start thread {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_thread_error_keeps_its_exit_code() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let join = spawn_named("failing", tx.clone(), || {
            Err(Error::io(
                "read inotify events",
                "/dev",
                std::io::Error::other("boom"),
            ))
        })
        .unwrap();
        let Event::ThreadExited { name, result } = rx.recv().unwrap() else {
            panic!("not an exit");
        };
        join.join().unwrap();
        assert_eq!(name, "failing");
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 2, "an I/O error is not a thread failure");
        let join = spawn_named("panicking", tx, || panic!("on purpose")).unwrap();
        let Event::ThreadExited { result, .. } = rx.recv().unwrap() else {
            panic!("not an exit");
        };
        join.join().unwrap();
        assert_eq!(result.unwrap_err().exit_code(), 4);
    }
}
