//! The one way threads are started: named, panics caught, and the end of
//! every thread reported to the supervisor as [`Event::ThreadExited`].

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
    F: FnOnce() -> std::result::Result<(), String> + Send + 'static,
{
    let thread_name = name.to_string();
    Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(body))
                .unwrap_or_else(|_| Err("thread panicked".to_string()));
            let _ = exits.send(Event::ThreadExited {
                name: thread_name,
                result,
            });
        })
        .map_err(|e| Error::Invalid(format!("cannot start thread {name}: {e}")))
}
