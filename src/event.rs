//! The messages between threads: everything the `supervisor` thread
//! receives on its one crossbeam channel. This is the whole vocabulary
//! between the threads; a front end's own messages have their own variant.

use crate::error::Result;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGTERM, SIGINT: stop everything and exit.
    Shutdown,
    /// SIGHUP: reload the `--config` file's resources, drop devices that
    /// are gone, and register every resource again.
    Reload,
}

/// A ListAndWatch stream opened or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamChange {
    /// A client opened a stream.
    Opened,
    /// A stream ended: the client went away or the server closed it.
    Closed,
}

/// A message for the device plugin front end. Each carries the index of
/// the plugin and the server generation it belongs to: answers for an
/// older generation are stale and ignored.
#[derive(Debug)]
pub enum PluginEvent {
    /// From the check of a new server generation: our own socket answered,
    /// or the error.
    Served {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation.
        generation: u64,
        /// Ok, or why the socket did not answer.
        result: std::result::Result<(), String>,
    },
    /// The kubelet's word on a registration: the answer to our Register
    /// call, or its NotifyRegistrationStatus in `plugins-registry` mode.
    Registered {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation the registration was for.
        generation: u64,
        /// Ok, or the kubelet's error text.
        result: std::result::Result<(), String>,
    },
    /// From a plugin's server: a ListAndWatch stream opened or closed.
    Stream {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation of the stream.
        generation: u64,
        /// What happened.
        change: StreamChange,
    },
}

/// A message for the DRA front end.
#[derive(Debug)]
pub enum DraEvent {
    /// The kubelet's NotifyRegistrationStatus for a server generation.
    Registered {
        /// The server generation the registration was for.
        generation: u64,
        /// Ok, or the kubelet's error text.
        result: std::result::Result<(), String>,
    },
}

/// A message to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// From the main thread, which waits for signals.
    Signal(SignalAction),
    /// From the `health` thread: the entries of a dir a front end asked
    /// it to watch changed (e.g. the device plugin dir: `kubelet.sock`
    /// made anew, our socket deleted).
    DirChanged,
    /// From the `health` thread: a resource's snapshot was published
    /// anew (its name).
    Published(String),
    /// For the device plugin front end.
    DevicePlugin(PluginEvent),
    /// For the DRA front end.
    Dra(DraEvent),
    /// From the thread helper: a thread ended, with its result.
    ThreadExited {
        /// The thread's name.
        name: String,
        /// Ok, or why it failed.
        result: Result<()>,
    },
}
