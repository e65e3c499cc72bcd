//! kubelet-plugin: Kubernetes device plugins for the kubelet's device plugin
//! API `v1beta1` (gRPC over unix sockets), handing devices to containers
//! through CDI and DeviceSpecs; plus `kubelet-sim`, a kubelet stand-in.
//!
//! # Threads
//!
//! ```text
//! main        parses flags, starts logging, runs the supervisor thread, exits with its result
//! signals     SIGTERM/SIGINT -> Event::Signal(Shutdown), SIGHUP -> Event::Signal(Reregister)
//! health      inotify on the dev dir + a slow timer; probes the device nodes that
//!             changed (all on the timer); on a change -> Event::Health { plugin,
//!             full device list }; on the same inotify, the device plugin dir
//!             -> Event::PluginDir
//! supervisor  owns every plugin's life: serve -> check own socket answers -> Register;
//!             re-serves and re-registers on kubelet restarts, lost streams, SIGHUP;
//!             publishes health updates into each plugin's snapshot (a Watch)
//! grpc*       grpcio's threads: the DevicePlugin handlers, the ListAndWatch streams
//!             (futures fed by the snapshot), the Register answers (-> Event::Registered)
//! ```
//!
//! Every thread but grpcio's starts through [`thread::spawn_named`] and talks
//! to the supervisor only through [`event::Event`] on one crossbeam channel.
//! The one shared state is each plugin's device snapshot ([`watch::Watch`]).
//!
//! Which part knows which: device logic ([`plugin`]) knows nothing of gRPC;
//! [`health`] knows device logic and channels; [`server`] knows the API and
//! the snapshot; [`supervisor`] knows sockets, registration and servers, and
//! only [`kubelet`] talks to `kubelet.sock`. [`sim`] uses only the API.
#![deny(missing_docs)]

pub mod api;
pub mod cdi;
pub mod cli;
pub mod device;
pub mod devnode;
pub mod dirwatch;
pub mod error;
pub mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod health;
pub mod json;
pub mod kubelet;
pub mod lockfile;
pub mod plugin;
pub mod server;
pub mod signals;
pub mod sim;
pub mod status;
pub mod supervisor;
pub mod thread;
pub mod watch;

/// The version `--version` prints: `make` passes Cargo.toml's version plus
/// `git describe` (e.g. `0.1.0-3-gabc1234`); a bare `cargo build` has only
/// Cargo.toml's.
pub const VERSION: &str = match option_env!("KUBELET_PLUGIN_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
