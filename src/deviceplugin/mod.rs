//! The device plugin front end: serves each resource of the inventory to
//! the kubelet through the device plugin API `v1beta1`, each on its own
//! socket, and keeps it registered: it checks that a new socket answers,
//! gets it registered, and does it all again when the kubelet restarts,
//! when the kubelet drops our ListAndWatch stream and does not come back,
//! and on SIGHUP.
//!
//! Registration comes in two modes ([`RegistrationMode`]): `kubelet-sock`,
//! where we call Register on `<device-plugin-dir>/kubelet.sock`, and
//! `plugins-registry`, where our socket sits in the kubelet's plugin
//! watcher dir and the kubelet finds us, asks GetInfo and reports back with
//! NotifyRegistrationStatus.
//!
//! Each resource has an explicit [`State`]. Everything arrives as an event
//! on the supervisor's inbox (our socket answered, the kubelet's answer, a
//! stream opened or closed, the socket dir changed) or as a state's
//! deadline: nothing here waits on a socket. The one bounded wait is for
//! the streams of a generation we end to say goodbye
//! ([`slot::DRAIN_TIMEOUT`]).

pub mod allocate;
pub mod registration;
pub mod server;
pub mod slot;
pub mod status;

use std::{
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;
use grpcio::{EnvBuilder, Environment};

use crate::{
    api::{api_grpc, pluginregistration_grpc, status_grpc},
    error::{Error, Result, chain},
    event::{Event, PluginEvent, StreamChange},
    frontend::FrontEnd,
    inventory::{Resource, kinds::Plugin},
    metrics::Metrics,
    pluginwatcher::RegistrationService,
    rpc,
    socket::{self, KUBELET_SOCKET, SocketId},
    watch::Watch,
};
use allocate::Injection;
use server::Service;
pub use slot::State;
use slot::{Live, Slot};
use status::StatusService;

/// Register is retried after this, doubling up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two Register attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long our own new socket may take to answer.
const SERVE_CHECK: Duration = Duration::from_secs(2);

/// How the kubelet learns of our plugins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationMode {
    /// We call Register on `kubelet.sock` in the device plugin dir; our
    /// sockets are `<device-plugin-dir>/<name>.sock`.
    KubeletSock,
    /// Our sockets are in the kubelet's plugin watcher dir (this one), where
    /// the kubelet finds them; each serves the Registration service beside
    /// the DevicePlugin service.
    PluginsRegistry(PathBuf),
}

impl RegistrationMode {
    /// The flag value: `kubelet-sock` or `plugins-registry`.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationMode::KubeletSock => "kubelet-sock",
            RegistrationMode::PluginsRegistry(_) => "plugins-registry",
        }
    }

    /// How long the kubelet may take to reopen ListAndWatch after closing
    /// it before we register again. In `plugins-registry` mode a restarted
    /// kubelet finds our socket by itself; a new socket meanwhile would
    /// only make it register us twice, so we wait longer.
    fn stream_grace(&self) -> Duration {
        match self {
            RegistrationMode::KubeletSock => Duration::from_secs(2),
            RegistrationMode::PluginsRegistry(_) => Duration::from_secs(10),
        }
    }
}

/// What the device plugin front end is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where `kubelet.sock` is and, in `kubelet-sock` mode, our sockets go.
    pub plugin_dir: PathBuf,
    /// How the kubelet learns of our plugins.
    pub registration: RegistrationMode,
    /// What Allocate returns.
    pub injection: Injection,
    /// Deadline of one Register call.
    pub register_timeout: Duration,
}

impl Config {
    /// The socket of `resource`: `<device-plugin-dir>/<name>.sock`, or
    /// `<plugins-registry-dir>/<domain>-<name>.sock`.
    pub fn socket_path(&self, resource: &str) -> PathBuf {
        match &self.registration {
            RegistrationMode::KubeletSock => {
                self.plugin_dir.join(socket::device_plugin_socket(resource))
            }
            RegistrationMode::PluginsRegistry(dir) => dir.join(socket::registry_socket(resource)),
        }
    }

    /// The dir our sockets are in.
    fn socket_dir(&self) -> &PathBuf {
        match &self.registration {
            RegistrationMode::KubeletSock => &self.plugin_dir,
            RegistrationMode::PluginsRegistry(dir) => dir,
        }
    }

    fn kubelet_sock(&self) -> Option<PathBuf> {
        (self.registration == RegistrationMode::KubeletSock)
            .then(|| self.plugin_dir.join(KUBELET_SOCKET))
    }
}

/// The device plugin front end: one [`Slot`] per resource.
pub struct DevicePlugins {
    cfg: Config,
    env: Arc<Environment>,
    slots: Vec<Slot>,
    events: Sender<Event>,
    metrics: Arc<Metrics>,
    /// `kubelet-sock` mode: the `kubelet.sock` last seen, to count restarts.
    kubelet: Option<SocketId>,
    started: bool,
}

impl DevicePlugins {
    /// The front end; its answers and streams report to `events`.
    pub fn new(cfg: Config, events: Sender<Event>, metrics: Arc<Metrics>) -> Self {
        DevicePlugins {
            cfg,
            // One completion queue: one poll thread serves every plugin.
            env: Arc::new(EnvBuilder::new().cq_count(1).name_prefix("grpc").build()),
            slots: Vec::new(),
            events,
            metrics,
            kubelet: None,
            started: false,
        }
    }

    fn reconcile_all(&mut self, force: bool) {
        if let Some(sock) = self.cfg.kubelet_sock() {
            let now = socket::socket_id(&sock);
            if self.kubelet.is_some() && now.is_some() && now != self.kubelet {
                self.metrics.kubelet_restarted();
            }
            if now.is_some() {
                self.kubelet = now;
            }
        }
        for i in 0..self.slots.len() {
            self.reconcile(i, force);
        }
    }

    /// Brings resource `i` in line with the socket dir: waits while there
    /// is no `kubelet.sock` (`kubelet-sock` mode), and serves and registers
    /// anew when our socket is gone, the kubelet changed, or `force` is set.
    fn reconcile(&mut self, i: usize, force: bool) {
        let kubelet_sock = self.cfg.kubelet_sock();
        let kubelet = kubelet_sock.as_deref().and_then(socket::socket_id);
        let slot = &mut self.slots[i];
        if slot.state == State::Removed {
            return;
        }
        if let Some(sock) = &kubelet_sock
            && kubelet.is_none()
        {
            wait_for_kubelet(slot, sock);
            return;
        }
        let own_ok = slot.own_socket_ok();
        let waiting = matches!(slot.state, State::Idle | State::WaitingForKubelet);
        if !force && !waiting && own_ok && slot.kubelet == kubelet {
            return;
        }
        if !waiting && slot.kubelet != kubelet {
            log::info!(
                "kubelet restarted; registering again resource={}",
                slot.name()
            );
        } else if !waiting && !own_ok && slot.live.is_some() {
            log::info!(
                "own socket gone (kubelet restart or deletion); serving again resource={}",
                slot.name()
            );
        }
        slot.teardown("serving again on a new socket");
        slot.kubelet = kubelet;
        if let Err(e) = self.serve(i) {
            log::error!(
                "cannot serve resource={}: {}",
                self.slots[i].name(),
                chain(&e)
            );
            self.backoff(i);
        }
    }

    /// The gRPC services of a new generation of resource `i`.
    fn services(
        &self,
        i: usize,
        generation: u64,
        gate: &Arc<rpc::Gate>,
    ) -> (Service, Vec<grpcio::Service>) {
        let slot = &self.slots[i];
        let events = self.events.clone();
        let service = Service::new(
            slot.resource.clone(),
            gate.clone(),
            self.cfg.injection,
            Arc::new(move |change| {
                let _ = events.send(Event::DevicePlugin(PluginEvent::Stream {
                    plugin: i,
                    generation,
                    change,
                }));
            }),
            self.metrics.clone(),
        );
        let shown = slot.shown.clone();
        let status = StatusService::new(
            slot.name(),
            slot.resource.devices.clone(),
            self.cfg.registration.name(),
            Arc::new(move || shown.lock().expect("state lock poisoned").to_string()),
        );
        let mut services = vec![
            api_grpc::create_device_plugin(service.clone()),
            status_grpc::create_status(status),
        ];
        if let RegistrationMode::PluginsRegistry(_) = self.cfg.registration {
            let events = self.events.clone();
            let info = registration::plugin_info(slot.name(), &slot.socket);
            services.push(pluginregistration_grpc::create_registration(
                RegistrationService::new(
                    info,
                    Arc::new(move |result| {
                        let _ = events.send(Event::DevicePlugin(PluginEvent::Registered {
                            plugin: i,
                            generation,
                            result,
                        }));
                    }),
                ),
            ));
        }
        (service, services)
    }

    /// Starts a new server generation for resource `i` and the check that
    /// its socket answers, whose outcome comes back as
    /// [`PluginEvent::Served`].
    fn serve(&mut self, i: usize) -> Result<()> {
        self.slots[i].generation += 1;
        let generation = self.slots[i].generation;
        let gate = Watch::new(None);
        let (service, services) = self.services(i, generation, &gate);
        let slot = &mut self.slots[i];
        let server = rpc::serve(self.env.clone(), services, &[&slot.socket])?;
        let socket = socket::socket_id(&slot.socket).ok_or_else(|| {
            Error::Invalid(format!(
                "socket {} vanished after bind",
                slot.socket.display()
            ))
        })?;
        slot.live = Some(Live {
            server,
            socket,
            gate,
            streams: service.streams(),
        });
        slot.set(State::Starting);
        slot.started = Instant::now();
        let events = self.events.clone();
        server::check_serving(self.env.clone(), &slot.socket, SERVE_CHECK, move |result| {
            let _ = events.send(Event::DevicePlugin(PluginEvent::Served {
                plugin: i,
                generation,
                result,
            }));
        })
    }

    fn served(&mut self, i: usize, generation: u64, result: std::result::Result<(), String>) {
        let slot = &mut self.slots[i];
        if generation != slot.generation || slot.live.is_none() {
            return;
        }
        // In plugins-registry mode the kubelet's plugin watcher may find the
        // new socket and register us before our own check comes back.
        let ahead = slot.state != State::Starting;
        if let Err(e) = result
            && !ahead
        {
            log::error!(
                "own socket does not answer resource={} socket={}: {e}",
                slot.name(),
                slot.socket.display()
            );
            slot.teardown("serving again on a new socket");
            self.backoff(i);
            return;
        }
        log::info!(
            "serving resource={} socket={} registration={}",
            slot.name(),
            slot.socket.display(),
            self.cfg.registration.name()
        );
        if ahead {
            return;
        }
        slot.set(State::Registering);
        match self.cfg.registration {
            RegistrationMode::KubeletSock => self.register(i),
            RegistrationMode::PluginsRegistry(_) => log::info!(
                "waiting for the kubelet's plugin watcher resource={}",
                slot.name()
            ),
        }
    }

    fn register(&mut self, i: usize) {
        let kubelet_sock = self.cfg.plugin_dir.join(KUBELET_SOCKET);
        let slot = &mut self.slots[i];
        let req =
            registration::register_request(slot.name(), &socket::device_plugin_socket(slot.name()));
        let (generation, events) = (slot.generation, self.events.clone());
        let sent = registration::register_async(
            self.env.clone(),
            &kubelet_sock,
            &req,
            self.cfg.register_timeout,
            move |result| {
                let _ = events.send(Event::DevicePlugin(PluginEvent::Registered {
                    plugin: i,
                    generation,
                    result,
                }));
            },
        );
        match sent {
            Ok(handle) => slot.call = Some(handle),
            Err(e) => {
                self.metrics.register_failed(slot.name());
                log::warn!("register failed resource={}: {}", slot.name(), chain(&e));
                self.backoff(i);
            }
        }
    }

    fn registered(&mut self, i: usize, generation: u64, result: std::result::Result<(), String>) {
        let by_kubelet_sock = self.cfg.registration == RegistrationMode::KubeletSock;
        let slot = &mut self.slots[i];
        if generation != slot.generation {
            return;
        }
        slot.call = None;
        match result {
            Ok(()) => {
                // From serving to registered; a registration the kubelet's
                // plugin watcher renews (after its restart) took no time of ours.
                let took = matches!(slot.state, State::Starting | State::Registering)
                    .then(|| {
                        format!(
                            " took_ms={:.1}",
                            slot.started.elapsed().as_secs_f64() * 1000.0
                        )
                    })
                    .unwrap_or_default();
                slot.set(State::Registered);
                slot.backoff = BACKOFF_MIN;
                self.metrics.registered(slot.name());
                log::info!(
                    "registered resource={} socket={}{took}",
                    slot.name(),
                    slot.socket.display(),
                );
            }
            // The plugin watcher retries on its own while our socket is
            // there; a new socket would only restart its backoff.
            Err(e) if !by_kubelet_sock => {
                self.metrics.register_failed(slot.name());
                log::warn!(
                    "the kubelet's plugin watcher refused us resource={}: {e}",
                    slot.name()
                );
            }
            Err(e) => {
                self.metrics.register_failed(slot.name());
                log::warn!(
                    "register failed resource={} retry_ms={}: {e}",
                    slot.name(),
                    slot.backoff.as_millis()
                );
                self.backoff(i);
            }
        }
    }

    /// Schedules another attempt for resource `i`, doubling the wait up to
    /// [`BACKOFF_MAX`].
    fn backoff(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.set(State::BackingOff(Instant::now() + slot.backoff));
        slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
    }

    fn stream(&mut self, i: usize, generation: u64, change: StreamChange) {
        let grace = self.cfg.registration.stream_grace();
        let slot = &mut self.slots[i];
        if generation != slot.generation {
            return;
        }
        match change {
            StreamChange::Opened => {
                slot.streams += 1;
                if matches!(slot.state, State::StreamGrace(_)) {
                    slot.set(State::Registered);
                }
            }
            StreamChange::Closed => {
                slot.streams = slot.streams.saturating_sub(1);
                if slot.streams == 0 && slot.state == State::Registered {
                    slot.set(State::StreamGrace(Instant::now() + grace));
                }
            }
        }
    }
}

/// `kubelet-sock` mode with no `kubelet.sock` at `sock`: nothing to
/// register with, so nothing is served; the dir watch wakes us when it is
/// back.
fn wait_for_kubelet(slot: &mut Slot, sock: &std::path::Path) {
    if slot.state == State::WaitingForKubelet {
        return;
    }
    // Something that is not a socket cannot be dialled: say so, or
    // "waiting for" reads like a hang next to the file.
    if std::fs::symlink_metadata(sock).is_ok() {
        log::warn!(
            "{} is not a socket; waiting for the kubelet to replace it resource={}",
            sock.display(),
            slot.name()
        );
    } else {
        log::info!("waiting for {} resource={}", sock.display(), slot.name());
    }
    slot.teardown("the kubelet is gone");
    slot.kubelet = None;
    slot.set(State::WaitingForKubelet);
}

impl FrontEnd for DevicePlugins {
    fn api(&self) -> &'static str {
        "device-plugin"
    }

    fn check(&self, plugin: &dyn Plugin) -> Result<()> {
        // Binding would silently take the socket from a live server.
        let socket = self.cfg.socket_path(plugin.resource());
        if socket::socket_answers(&socket) {
            return Err(Error::Busy(format!(
                "another process is serving on {}: refusing to take its socket",
                socket.display()
            )));
        }
        Ok(())
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        vec![self.cfg.socket_dir().clone()]
    }

    fn add(&mut self, resource: Resource) {
        let socket = self.cfg.socket_path(resource.name());
        self.slots.push(Slot::new(resource, socket, BACKOFF_MIN));
        if self.started {
            self.reconcile(self.slots.len() - 1, true);
        }
    }

    fn remove(&mut self, name: &str) {
        for slot in &mut self.slots {
            if slot.name() == name && slot.state != State::Removed {
                slot.teardown("resource no longer configured");
                // Answers for the old server are stale from now on.
                slot.generation += 1;
                slot.set(State::Removed);
            }
        }
    }

    fn start(&mut self) -> Result<Vec<JoinHandle<()>>> {
        self.started = true;
        self.reconcile_all(false);
        Ok(Vec::new())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::DirChanged => self.reconcile_all(false),
            Event::DevicePlugin(PluginEvent::Served {
                plugin,
                generation,
                result,
            }) => self.served(plugin, generation, result),
            Event::DevicePlugin(PluginEvent::Registered {
                plugin,
                generation,
                result,
            }) => self.registered(plugin, generation, result),
            Event::DevicePlugin(PluginEvent::Stream {
                plugin,
                generation,
                change,
            }) => self.stream(plugin, generation, change),
            _ => {}
        }
    }

    fn reregister(&mut self) {
        self.reconcile_all(true);
    }

    fn deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.state.deadline()).min()
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                State::BackingOff(at) if at <= now => self.reconcile(i, true),
                State::StreamGrace(at) if at <= now => {
                    log::info!(
                        "ListAndWatch not reopened by the kubelet; registering again resource={}",
                        self.slots[i].name()
                    );
                    self.reconcile(i, true);
                }
                _ => {}
            }
        }
    }

    fn states(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.state != State::Removed)
            .map(|s| format!("{} {}", s.resource.plugin.name(), s.state))
            .collect()
    }

    fn ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| !matches!(s.state, State::Idle | State::Starting))
    }

    fn shutdown(&mut self) {
        for slot in &mut self.slots {
            slot.teardown("shutting down");
        }
    }
}
