//! The messages the threads send to the supervisor over one crossbeam
//! channel. This is the whole vocabulary between the threads.

use crate::server::StreamChange;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGTERM, SIGINT: stop everything and exit.
    Shutdown,
    /// SIGHUP: register every plugin again.
    Reregister,
}

/// A message to the supervisor. Those about one plugin carry its index and
/// the server generation they belong to: answers for an older generation
/// are stale and ignored.
#[derive(Debug)]
pub enum Event {
    /// From the `signals` thread.
    Signal(SignalAction),
    /// From the `health` thread: entries of the dir our sockets are in (and
    /// `kubelet.sock`, in `kubelet-sock` mode) changed.
    SocketDir,
    /// From the check of a new server generation: our own socket answered,
    /// or the error.
    Served {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation.
        generation: u64,
        /// Ok, or why the socket did not answer.
        result: Result<(), String>,
    },
    /// The kubelet's word on a registration: the answer to our Register
    /// call, or its NotifyRegistrationStatus in `plugins-registry` mode.
    Registered {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation the registration was for.
        generation: u64,
        /// Ok, or the kubelet's error text.
        result: Result<(), String>,
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
    /// From the thread helper: a thread ended.
    ThreadExited {
        /// The thread's name.
        name: String,
        /// Ok, or why it failed.
        result: Result<(), String>,
    },
}
