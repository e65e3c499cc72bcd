//! kubelet-plugin: Kubernetes device plugins for the kubelet's device plugin
//! API `v1beta1` (gRPC over unix sockets), handing devices to containers
//! through CDI and DeviceSpecs; plus `kubelet-sim`, a kubelet stand-in.
//!
//! # Threads
//!
//! ```text
//! main        parses flags, makes missing dirs, starts logging, runs the supervisor
//!             thread, exits with its result
//! signals     SIGTERM/SIGINT -> Event::Signal(Shutdown), SIGHUP -> Event::Signal(Reregister)
//! health      inotify on the dev dir (and the subdirs dev patterns reach) + a slow
//!             timer; probes the devices that changed (all on the timer); writes a
//!             plugin's CDI spec when its device set changed, then publishes its full
//!             device list into its snapshot; on the same inotify, the dir of our
//!             sockets -> Event::SocketDir; a kick (SIGHUP) drops gone devices
//! supervisor  owns every plugin's life as an explicit State: serve -> own socket
//!             answers (Event::Served) -> Register (Event::Registered) or the
//!             kubelet's plugin watcher; serves anew on kubelet restarts, lost
//!             streams, SIGHUP; ends every stream of a server before dropping it
//! grpc*       grpcio's threads: the DevicePlugin and Registration handlers, the
//!             ListAndWatch streams (futures that follow the snapshot; each reports
//!             Event::Stream), the answers of our own calls
//! ```
//!
//! Every thread but grpcio's starts through [`thread::spawn_named`] and talks
//! to the supervisor only through [`event::Event`] on one crossbeam channel.
//! The one shared state is each plugin's device snapshot ([`watch::Watch`]):
//! one per plugin for the whole run, written by the health thread only, read
//! by every ListAndWatch stream and by Allocate.
//!
//! Which part knows which: device logic ([`plugin`]: the kinds crand, kvm
//! and dev, and their registry) knows nothing of gRPC; [`health`] knows
//! device logic, CDI and channels; [`server`] knows the API and the
//! snapshot; [`supervisor`] knows sockets, registration and servers, and
//! only [`kubelet`] calls `kubelet.sock`. [`sim`] uses only the API.
#![deny(missing_docs)]

pub mod api;
pub mod atomic;
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
pub mod metrics;
pub mod notify;
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
