//! The messages the threads send to the supervisor over one crossbeam
//! channel. This is the whole vocabulary between the threads.

use crate::{device::Device, server::StreamChange};

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGTERM, SIGINT: stop everything and exit.
    Shutdown,
    /// SIGHUP: register every plugin again.
    Reregister,
}

/// A message to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// From the `signals` thread.
    Signal(SignalAction),
    /// From the `health` thread: the full, changed device list of a plugin.
    Health {
        /// Index of the plugin.
        plugin: usize,
        /// Every device of the plugin.
        devices: Vec<Device>,
    },
    /// From the `health` thread: entries of the device plugin dir changed.
    PluginDir,
    /// From a Register call: the kubelet's answer.
    Registered {
        /// Index of the plugin.
        plugin: usize,
        /// The server generation the call was made for.
        generation: u64,
        /// Ok, or the error text.
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
