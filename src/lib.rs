//! kubelet-plugin: node devices for Kubernetes, handed to containers
//! through CDI (and DeviceSpecs), over the kubelet's device plugin API
//! `v1beta1` (gRPC over unix sockets); plus `kubelet-sim`, a kubelet
//! stand-in.
//!
//! # Layers
//!
//! ```text
//! inventory/      the devices: plugin kinds (crand, kvm, dev), their device sets,
//!                 resource locks, CDI specs, the health thread, the snapshots
//! frontend.rs     the seam: a kubelet-facing API over the inventory's resources
//! deviceplugin/   the device plugin front end: servers, registration, Allocate
//! supervisor.rs   the process: inventory + the chosen front end + threads + events
//! kube/           a blocking Kubernetes API server client (config, TLS, requests)
//!                 for the front ends that need the API; no thread of its own
//! ```
//!
//! The inventory knows nothing of gRPC or the kubelet; a front end knows the
//! inventory only through [`inventory::Resource`] (a plugin and its snapshot).
//!
//! # Threads
//!
//! ```text
//! main        parses flags, makes missing dirs, starts logging, runs the supervisor
//!             thread; while it runs, turns SIGTERM/SIGINT into Event::Signal(Shutdown)
//!             and SIGHUP into Event::Signal(Reload) for it; exits with its result
//! supervisor  fills the inventory, hands its resources to the front end, dispatches
//!             every Event of its inbox; at SIGHUP reloads --config; joins all at the end
//! health      inotify on the dev dir (and the subdirs dev patterns reach) + a slow
//!             timer; probes the devices that changed; writes a resource's CDI spec
//!             when its nodes changed, then publishes its device list into its
//!             snapshot (Event::Published); on the same inotify, the front end's dirs
//!             (Event::DirChanged)
//! metrics     with --metrics-file/--metrics-listen: writes and serves the figures
//! grpc*       grpcio's threads: the handlers, the ListAndWatch streams (futures that
//!             follow the snapshot; each reports Event::DevicePlugin(Stream)), the
//!             answers of our own calls (Event::DevicePlugin(Served, Registered))
//! ```
//!
//! grpc's C core sizes its pools by a CPU count of ours ([`rpc::GRPC_CPUS`]),
//! not the machine's, so the count of threads is the same on every box.
//!
//! Every thread but grpcio's starts through [`thread::spawn_named`], from
//! the file of its name, and talks to the supervisor only through
//! [`event::Event`] on one crossbeam channel. The one shared state is each
//! resource's device snapshot ([`watch::Watch`]): written by the health
//! thread only, read by every stream, by Allocate, status and metrics.
//!
//! [`sim`] uses the generated API and the product's name rules, never the
//! reverse.
#![deny(missing_docs)]

pub mod api;
pub mod atomic;
pub mod cli;
pub mod deviceplugin;
#[cfg(feature = "dra")]
pub mod dra;
pub mod error;
pub mod event;
pub mod frontend;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod inventory;
pub mod json;
pub mod k8s_names;
#[cfg(feature = "dra")]
pub mod kube;
pub mod lockfile;
pub mod metrics;
pub mod notify;
pub mod pages;
pub mod pluginwatcher;
pub mod reload;
pub mod rpc;
pub mod signals;
pub mod sim;
pub mod socket;
pub mod status;
pub mod supervisor;
pub mod thread;
pub mod wake;
pub mod watch;

/// The version `--version` prints: `make` passes Cargo.toml's version plus
/// `git describe` (e.g. `0.1.0-3-gabc1234`); a bare `cargo build` has only
/// Cargo.toml's.
pub const VERSION: &str = match option_env!("KUBELET_PLUGIN_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
