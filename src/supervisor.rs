//! The `supervisor` thread: owns the life of every plugin. It serves each
//! plugin on its own socket, checks that the socket answers, gets it
//! registered with the kubelet, and does it all again when the kubelet
//! restarts, when the kubelet drops our ListAndWatch stream and does not
//! come back, and on SIGHUP; and it stops everything on shutdown.
//!
//! Registration comes in two modes ([`RegistrationMode`]): `kubelet-sock`,
//! where we call Register on `<device-plugin-dir>/kubelet.sock`, and
//! `plugins-registry`, where our socket sits in the kubelet's plugin
//! watcher dir and the kubelet finds us, asks GetInfo and reports back with
//! NotifyRegistrationStatus.
//!
//! Each plugin has an explicit [`State`]. Inbound: every [`Event`] on one
//! crossbeam channel, and the state timers. The loop never waits on a
//! socket: the check that our socket answers, the Register call and the
//! kubelet's answers all arrive as events. The one bounded wait is for the
//! streams of a server generation we end to say goodbye (see
//! [`DRAIN_TIMEOUT`]). It is the only part that calls the kubelet.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use futures_util::future::AbortHandle;
use grpcio::{EnvBuilder, Environment, Server};

use crate::{
    cdi,
    device::Device,
    dirwatch::{DirWatch, Kicker, Stopper},
    error::{Error, Result, chain},
    event::{Event, SignalAction},
    health,
    kubelet::{self, KUBELET_SOCKET, SocketId},
    lockfile::{self, LockFile},
    metrics::{self, Exporter, Metrics},
    notify::Notifier,
    plugin::{Injection, Plugin, Plugins},
    server::{self, Gate, RegistrationService, Service, StatusService, StreamChange, Streams},
    signals,
    thread::spawn_named,
    watch::Watch,
};

/// Register is retried after this, doubling up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two Register attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long our own new socket may take to answer.
const SERVE_CHECK: Duration = Duration::from_secs(2);
/// How long the streams of a generation we end get to receive their last
/// status before the server is dropped (which cancels whatever is left).
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(300);
/// How long threads get to finish at shutdown: they take milliseconds;
/// the margin is for a loaded machine, not for a thread that is stuck.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How the kubelet learns of our plugins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationMode {
    /// We call Register on `kubelet.sock` in the device plugin dir; our
    /// sockets are `<device-plugin-dir>/<plugin>.sock`.
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

/// The socket of `plugin`: `<device-plugin-dir>/<plugin>.sock`, or
/// `<plugins-registry-dir>/<domain>-<plugin>.sock` (the plugin watcher
/// sees every socket in its dir, so the name carries the whole resource).
pub fn socket_path(mode: &RegistrationMode, plugin_dir: &Path, plugin: &dyn Plugin) -> PathBuf {
    match mode {
        RegistrationMode::KubeletSock => plugin_dir.join(plugin.socket_name()),
        RegistrationMode::PluginsRegistry(dir) => {
            dir.join(format!("{}.sock", plugin.resource().replace('/', "-")))
        }
    }
}

/// What the supervisor runs.
#[derive(Debug)]
pub struct Config {
    /// The plugins, each with its own socket and resource.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where `kubelet.sock` is and, in `kubelet-sock` mode, our sockets go.
    pub plugin_dir: PathBuf,
    /// How the kubelet learns of our plugins.
    pub registration: RegistrationMode,
    /// Where the CDI specs are written.
    pub cdi_dir: PathBuf,
    /// Where the device nodes are watched.
    pub dev_dir: PathBuf,
    /// What Allocate returns.
    pub injection: Injection,
    /// The health thread's safety-net period.
    pub poll_interval: Duration,
    /// Deadline of one Register call.
    pub register_timeout: Duration,
    /// Where the metrics go (none: nowhere, and no `metrics` thread).
    pub metrics: metrics::Outputs,
    /// With `--config`: how SIGHUP reloads the file's `dev` resources.
    pub reload: Option<Reload>,
}

/// How SIGHUP reloads the `dev` resources of the `--config` file.
pub struct Reload {
    /// The identities ([`Plugin::identity`]) of the plugins at start that
    /// come from the file (a reload may remove those only).
    pub from_file: Vec<String>,
    /// Builds the file's plugins as it is now.
    pub load: Box<dyn Fn() -> Result<Plugins> + Send>,
}

impl fmt::Debug for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reload")
            .field("from_file", &self.from_file)
            .finish_non_exhaustive()
    }
}

/// Where a plugin is in its life; each state says what it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not served yet: the state at start.
    Idle,
    /// `kubelet-sock` mode, no `kubelet.sock`: nothing is served; waits for
    /// the socket dir to change.
    WaitingForKubelet,
    /// A server generation is bound; waits for its socket to answer.
    Starting,
    /// Waits for the kubelet: the answer to our Register call, or its
    /// GetInfo and NotifyRegistrationStatus (`plugins-registry`).
    Registering,
    /// Registered; waits for a change of the kubelet, our socket or our
    /// stream.
    Registered,
    /// A step failed: serves and registers again at the instant.
    BackingOff(Instant),
    /// Registered, but the kubelet closed its last ListAndWatch stream:
    /// registers again at the instant unless the kubelet opens a new one.
    StreamGrace(Instant),
    /// No longer configured (a config reload): unregistered, for good.
    Removed,
}

impl State {
    fn deadline(self) -> Option<Instant> {
        match self {
            State::BackingOff(at) | State::StreamGrace(at) => Some(at),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "idle",
            State::WaitingForKubelet => "waiting for the kubelet",
            State::Starting => "starting",
            State::Registering => "registering",
            State::Registered => "registered",
            State::BackingOff(_) => "backing off",
            State::StreamGrace(_) => "stream lost",
            State::Removed => "removed",
        })
    }
}

/// One running server generation of a plugin.
struct Live {
    server: Server,
    socket: SocketId,
    /// Closing it ends the generation's ListAndWatch streams.
    gate: Arc<Gate>,
    streams: Arc<Streams>,
}

/// A plugin and where it is in its life.
struct Slot {
    plugin: Arc<dyn Plugin>,
    /// Its resource lock, held while it runs.
    lock: Option<LockFile>,
    /// A `dev` plugin of the `--config` file: a reload may remove it.
    reloadable: bool,
    socket: PathBuf,
    /// The device list; written by the health thread only.
    snapshot: Arc<Watch<Vec<Device>>>,
    state: State,
    /// `state` as our status service tells it.
    shown: Arc<Mutex<State>>,
    generation: u64,
    live: Option<Live>,
    /// `kubelet-sock` mode: the kubelet we registered, or are registering,
    /// with.
    kubelet: Option<SocketId>,
    /// A Register call in flight.
    call: Option<AbortHandle>,
    started: Instant,
    backoff: Duration,
    /// Open ListAndWatch streams of the live generation.
    streams: usize,
}

impl Slot {
    fn resource(&self) -> &str {
        self.plugin.resource()
    }

    /// Ends the current generation: cancels a pending Register, ends its
    /// ListAndWatch streams with `why`, drops its server and removes its
    /// socket. The kubelet tracks disconnects by resource name, so old
    /// streams must end before a new registration or they would mark the
    /// new one stopped.
    fn teardown(&mut self, why: &'static str) {
        if let Some(h) = self.call.take() {
            h.abort();
        }
        if let Some(live) = self.live.take() {
            live.gate.publish(Some(why));
            let left = live.streams.wait_closed(Instant::now() + DRAIN_TIMEOUT);
            if left > 0 {
                log::warn!(
                    "{left} ListAndWatch streams did not take their last status in time; cancelling them resource={}",
                    self.resource()
                );
            }
            drop(live.server);
            server::remove_socket(&self.socket, live.socket);
        }
        self.streams = 0;
    }

    fn set(&mut self, state: State) {
        if self.state != state {
            log::debug!(
                "state resource={} from=\"{}\" to=\"{state}\"",
                self.resource(),
                self.state
            );
            self.state = state;
            *self.shown.lock().expect("state lock poisoned") = state;
        }
    }
}

/// Takes `plugin`'s resource lock, prepares it (makes its nodes), probes its
/// devices once (the first ListAndWatch message is then ready before any
/// server starts) and writes its CDI spec: a slot ready to serve.
fn make_slot(
    cfg: &Config,
    metrics: &Metrics,
    plugin: Arc<dyn Plugin>,
    reloadable: bool,
) -> Result<Slot> {
    // Before anything is made: a refused second instance changes nothing.
    let lock = lockfile::lock_resource(&cfg.cdi_dir, plugin.resource())?;
    let socket = socket_path(&cfg.registration, &cfg.plugin_dir, plugin.as_ref());
    // Binding would silently take the socket from a live server.
    if server::socket_answers(&socket) {
        return Err(Error::Busy(format!(
            "another process is serving on {}: refusing to take its socket",
            socket.display()
        )));
    }
    plugin.prepare()?;
    // The probe finds a dev plugin's devices, which its spec lists.
    let devices = plugin.probe();
    // Before any Register: the kubelet may hand our CDI names to the
    // runtime at once, and they must resolve.
    let spec = cdi::write(&cfg.cdi_dir, plugin.as_ref())?;
    log::info!(
        "CDI spec written resource={} path={}",
        plugin.resource(),
        spec.display()
    );
    let snapshot = Watch::new(devices);
    metrics.add_resource(plugin.resource(), snapshot.clone());
    Ok(Slot {
        socket,
        snapshot,
        plugin,
        lock: Some(lock),
        reloadable,
        state: State::Idle,
        shown: Arc::new(Mutex::new(State::Idle)),
        generation: 0,
        live: None,
        kubelet: None,
        call: None,
        started: Instant::now(),
        backoff: BACKOFF_MIN,
        streams: 0,
    })
}

/// The supervisor: build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    cfg: Config,
    env: Arc<Environment>,
    slots: Vec<Slot>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    metrics: Arc<Metrics>,
    /// The `metrics` thread's work, made (its port bound) at start.
    exporter: Option<(Exporter, Stopper)>,
    /// `kubelet-sock` mode: the `kubelet.sock` last seen, to count restarts.
    kubelet: Option<SocketId>,
    /// systemd's `$NOTIFY_SOCKET`, and what it was told.
    notifier: Notifier,
    ready: bool,
    told: String,
    /// The health thread's plugin list, sent anew after a config reload.
    replan: Sender<Vec<health::Watched>>,
    plans: Option<Receiver<Vec<health::Watched>>>,
}

impl Supervisor {
    /// Prepares every plugin (makes its nodes), writes its CDI spec and
    /// probes its devices once, so the first ListAndWatch message is ready
    /// before any server starts.
    pub fn new(cfg: Config) -> Result<Self> {
        let metrics = Metrics::new();
        let exporter = if cfg.metrics.file.is_some() || cfg.metrics.listen.is_some() {
            Some(Exporter::new(metrics.clone(), &cfg.metrics)?)
        } else {
            None
        };
        let from_file = |p: &Arc<dyn Plugin>| {
            cfg.reload
                .as_ref()
                .is_some_and(|r| r.from_file.contains(&p.identity()))
        };
        let slots = cfg
            .plugins
            .iter()
            .map(|p| make_slot(&cfg, &metrics, p.clone(), from_file(p)))
            .collect::<Result<Vec<_>>>()?;
        // One completion queue: one poll thread serves every plugin.
        let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("grpc").build());
        let (events, inbox) = unbounded();
        let (replan, plans) = unbounded();
        Ok(Supervisor {
            cfg,
            env,
            slots,
            events,
            inbox,
            metrics,
            exporter,
            kubelet: None,
            notifier: Notifier::from_env(),
            ready: false,
            told: String::new(),
            replan,
            plans: Some(plans),
        })
    }

    /// The dir our sockets are in, which the health thread watches for us.
    fn socket_dir(&self) -> &Path {
        match &self.cfg.registration {
            RegistrationMode::KubeletSock => &self.cfg.plugin_dir,
            RegistrationMode::PluginsRegistry(dir) => dir,
        }
    }

    /// Runs until SIGTERM or SIGINT (Ok) or a fatal error. A thread that
    /// does not stop in time is an error too.
    pub fn run(mut self) -> Result<()> {
        let (signals, signals_join) = signals::spawn(self.events.clone())?;
        // In health's order: health::DEV_DIR, health::SOCKET_DIR.
        let (watch, watch_stop) = DirWatch::new(&[&self.cfg.dev_dir, self.socket_dir()])?;
        let health = watch.kicker();
        let mut joins = vec![signals_join];
        joins.push(self.spawn_health(watch)?);
        let mut metrics_stop = None;
        if let Some((exporter, stop)) = self.exporter.take() {
            joins.push(spawn_named("metrics", self.events.clone(), move || {
                exporter.run()
            })?);
            metrics_stop = Some(stop);
        }
        let threads = joins.len();

        let result = self.event_loop(&health);

        for slot in &mut self.slots {
            slot.teardown("shutting down");
        }
        signals.close();
        drop(watch_stop);
        drop(metrics_stop);
        let joined = self.join(joins, threads);
        result.and(joined)
    }

    /// The plugins the health thread probes: every one not removed.
    fn watched(&self) -> Vec<health::Watched> {
        self.slots
            .iter()
            .filter(|s| s.state != State::Removed)
            .map(|s| (s.plugin.clone(), s.snapshot.clone()))
            .collect()
    }

    fn spawn_health(&mut self, watch: DirWatch) -> Result<JoinHandle<()>> {
        let plugins = self.watched();
        let setup = health::Setup {
            watch,
            interval: self.cfg.poll_interval,
            cdi_dir: self.cfg.cdi_dir.clone(),
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            plans: self.plans.take().expect("the health thread starts once"),
        };
        spawn_named("health", self.events.clone(), move || {
            health::run(plugins, setup)
        })
    }

    /// `health` wakes the health thread, which at SIGHUP drops the devices
    /// whose node is gone and probes everything.
    fn event_loop(&mut self, health: &Kicker) -> Result<()> {
        self.reconcile_all(false);
        loop {
            self.notify();
            let deadline = self.slots.iter().filter_map(|s| s.state.deadline()).min();
            let event = match deadline {
                Some(at) => match self.inbox.recv_deadline(at) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
                },
                None => Some(self.inbox.recv().expect("we hold a sender")),
            };
            match event {
                None => {}
                Some(Event::Signal(SignalAction::Shutdown)) => {
                    log::info!("shutting down");
                    self.notifier.send("STOPPING=1\nSTATUS=shutting down");
                    return Ok(());
                }
                Some(Event::Signal(SignalAction::Reregister)) => {
                    self.reload();
                    health.kick();
                    self.reconcile_all(true);
                }
                Some(Event::SocketDir) => self.reconcile_all(false),
                Some(Event::Served {
                    plugin,
                    generation,
                    result,
                }) => self.served(plugin, generation, result),
                Some(Event::Registered {
                    plugin,
                    generation,
                    result,
                }) => self.registered(plugin, generation, result),
                Some(Event::Stream {
                    plugin,
                    generation,
                    change,
                }) => self.stream(plugin, generation, change),
                Some(Event::ThreadExited { name, result }) => {
                    let why = result.err().unwrap_or_else(|| "stopped".into());
                    return Err(Error::Thread(format!("thread {name} ended: {why}")));
                }
            }
            self.run_timers();
        }
    }

    /// SIGHUP with `--config`: the `dev` resources of the file as it is now
    /// replace those of before: one no longer there (or changed) is
    /// unregistered (streams ended, socket removed, lock released), a new one
    /// is prepared and served like at start. A file that does not parse, or
    /// a resource that clashes with one of the command line, changes nothing.
    fn reload(&mut self) {
        let Some(reload) = &self.cfg.reload else {
            return;
        };
        let wanted = match (reload.load)() {
            Ok(w) => w,
            Err(e) => {
                log::error!("config not reloaded: {}", chain(&e));
                return;
            }
        };
        let fixed: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !s.reloadable && s.state != State::Removed)
            .map(|s| s.resource().to_string())
            .collect();
        if let Some(clash) = wanted
            .iter()
            .find(|p| fixed.iter().any(|f| f == p.resource()))
        {
            log::error!(
                "config not reloaded: {} is also given on the command line",
                clash.resource()
            );
            return;
        }
        let keep: Vec<String> = wanted.iter().map(|p| p.identity()).collect();
        for slot in &mut self.slots {
            if slot.reloadable
                && slot.state != State::Removed
                && !keep.contains(&slot.plugin.identity())
            {
                log::info!(
                    "resource no longer configured; unregistering resource={}",
                    slot.resource()
                );
                slot.teardown("resource no longer configured");
                // Answers for the old server are stale from now on.
                slot.generation += 1;
                slot.lock = None;
                slot.set(State::Removed);
                self.metrics.remove_resource(slot.resource());
            }
        }
        let have: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.state != State::Removed)
            .map(|s| s.plugin.identity())
            .collect();
        for plugin in wanted.into_iter().filter(|p| !have.contains(&p.identity())) {
            match make_slot(&self.cfg, &self.metrics, plugin.clone(), true) {
                Ok(slot) => {
                    log::info!(
                        "resource added by the config resource={}",
                        plugin.resource()
                    );
                    self.slots.push(slot);
                }
                Err(e) => log::error!("cannot add resource={}: {}", plugin.resource(), chain(&e)),
            }
        }
        let _ = self.replan.send(self.watched());
    }

    /// Tells systemd: READY=1 once no plugin is still starting (each
    /// serves, waits for the kubelet or retries; never after registration,
    /// since the unit starts before the kubelet and that would deadlock the
    /// boot), and a STATUS= line whenever a plugin's state changed.
    fn notify(&mut self) {
        let ready = !self.ready
            && self
                .slots
                .iter()
                .all(|s| !matches!(s.state, State::Idle | State::Starting));
        let status: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.state != State::Removed)
            .map(|s| format!("{} {}", s.plugin.name(), s.state))
            .collect();
        let status = status.join(", ");
        if ready || status != self.told {
            let ready_line = if ready { "READY=1\n" } else { "" };
            self.notifier.send(&format!("{ready_line}STATUS={status}"));
            self.ready |= ready;
            self.told = status;
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                State::BackingOff(at) if at <= now => self.reconcile(i, true),
                State::StreamGrace(at) if at <= now => {
                    log::info!(
                        "ListAndWatch not reopened by the kubelet; registering again resource={}",
                        self.slots[i].resource()
                    );
                    self.reconcile(i, true);
                }
                _ => {}
            }
        }
    }

    fn reconcile_all(&mut self, force: bool) {
        if self.cfg.registration == RegistrationMode::KubeletSock {
            let now = kubelet::socket_id(&self.cfg.plugin_dir.join(KUBELET_SOCKET));
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

    /// Brings plugin `i` in line with the socket dir: waits while there is
    /// no `kubelet.sock` (`kubelet-sock` mode), and serves and registers
    /// anew when our socket is gone, the kubelet changed, or `force` is set.
    fn reconcile(&mut self, i: usize, force: bool) {
        let kubelet_sock = self.cfg.plugin_dir.join(KUBELET_SOCKET);
        let by_kubelet_sock = self.cfg.registration == RegistrationMode::KubeletSock;
        let kubelet = by_kubelet_sock
            .then(|| kubelet::socket_id(&kubelet_sock))
            .flatten();
        let slot = &mut self.slots[i];
        if slot.state == State::Removed {
            return;
        }
        if by_kubelet_sock && kubelet.is_none() {
            if slot.state != State::WaitingForKubelet {
                // Something that is not a socket cannot be dialled: say so,
                // or "waiting for" reads like a hang next to the file.
                if std::fs::symlink_metadata(&kubelet_sock).is_ok() {
                    log::warn!(
                        "{} is not a socket; waiting for the kubelet to replace it resource={}",
                        kubelet_sock.display(),
                        slot.resource()
                    );
                } else {
                    log::info!(
                        "waiting for {} resource={}",
                        kubelet_sock.display(),
                        slot.resource()
                    );
                }
                // Nothing to register with; the dir watch wakes us when it is back.
                slot.teardown("the kubelet is gone");
                slot.kubelet = None;
                slot.set(State::WaitingForKubelet);
            }
            return;
        }
        let own_ok = slot
            .live
            .as_ref()
            .is_some_and(|l| kubelet::socket_id(&slot.socket) == Some(l.socket));
        let waiting = matches!(slot.state, State::Idle | State::WaitingForKubelet);
        if !force && !waiting && own_ok && slot.kubelet == kubelet {
            return;
        }
        if !waiting && slot.kubelet != kubelet {
            log::info!(
                "kubelet restarted; registering again resource={}",
                slot.resource()
            );
        } else if !waiting && !own_ok && slot.live.is_some() {
            log::info!(
                "own socket gone (kubelet restart or deletion); serving again resource={}",
                slot.resource()
            );
        }
        slot.teardown("serving again on a new socket");
        slot.kubelet = kubelet;
        if let Err(e) = self.serve(i) {
            log::error!(
                "cannot serve resource={}: {}",
                self.slots[i].resource(),
                chain(&e)
            );
            self.backoff(i);
        }
    }

    /// Starts a new server generation for plugin `i` and the check that its
    /// socket answers, whose outcome comes back as [`Event::Served`].
    fn serve(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        let generation = slot.generation;
        let gate = Watch::new(None);
        let events = self.events.clone();
        let service = Service::new(
            slot.plugin.clone(),
            slot.snapshot.clone(),
            gate.clone(),
            self.cfg.injection,
            Arc::new(move |change| {
                let _ = events.send(Event::Stream {
                    plugin: i,
                    generation,
                    change,
                });
            }),
            self.metrics.clone(),
        );
        let streams = service.streams();
        let registration = match self.cfg.registration {
            RegistrationMode::KubeletSock => None,
            RegistrationMode::PluginsRegistry(_) => {
                let events = self.events.clone();
                Some(RegistrationService::new(
                    slot.resource(),
                    &slot.socket,
                    Arc::new(move |result| {
                        let _ = events.send(Event::Registered {
                            plugin: i,
                            generation,
                            result,
                        });
                    }),
                ))
            }
        };
        let shown = slot.shown.clone();
        let status = StatusService::new(
            slot.resource(),
            slot.snapshot.clone(),
            self.cfg.registration.name(),
            Arc::new(move || shown.lock().expect("state lock poisoned").to_string()),
        );
        let server = server::serve(
            self.env.clone(),
            service,
            status,
            registration,
            &slot.socket,
        )?;
        let socket = kubelet::socket_id(&slot.socket).ok_or_else(|| {
            Error::Invalid(format!(
                "socket {} vanished after bind",
                slot.socket.display()
            ))
        })?;
        slot.live = Some(Live {
            server,
            socket,
            gate,
            streams,
        });
        slot.set(State::Starting);
        slot.started = Instant::now();
        let events = self.events.clone();
        server::check_serving(self.env.clone(), &slot.socket, SERVE_CHECK, move |result| {
            let _ = events.send(Event::Served {
                plugin: i,
                generation,
                result,
            });
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
                slot.resource(),
                slot.socket.display()
            );
            slot.teardown("serving again on a new socket");
            self.backoff(i);
            return;
        }
        log::info!(
            "serving resource={} socket={} registration={}",
            slot.resource(),
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
                slot.resource()
            ),
        }
    }

    fn register(&mut self, i: usize) {
        let kubelet_sock = self.cfg.plugin_dir.join(KUBELET_SOCKET);
        let slot = &mut self.slots[i];
        let req = kubelet::register_request(slot.plugin.as_ref());
        let (generation, events) = (slot.generation, self.events.clone());
        let sent = kubelet::register_async(
            self.env.clone(),
            &kubelet_sock,
            &req,
            self.cfg.register_timeout,
            move |result| {
                let _ = events.send(Event::Registered {
                    plugin: i,
                    generation,
                    result,
                });
            },
        );
        match sent {
            Ok(handle) => slot.call = Some(handle),
            Err(e) => {
                self.metrics.register_failed(slot.resource());
                log::warn!(
                    "register failed resource={}: {}",
                    slot.resource(),
                    chain(&e)
                );
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
                self.metrics.registered(slot.resource());
                log::info!(
                    "registered resource={} socket={}{took}",
                    slot.resource(),
                    slot.socket.display(),
                );
            }
            // The plugin watcher retries on its own while our socket is
            // there; a new socket would only restart its backoff.
            Err(e) if !by_kubelet_sock => {
                self.metrics.register_failed(slot.resource());
                log::warn!(
                    "the kubelet's plugin watcher refused us resource={}: {e}",
                    slot.resource()
                );
            }
            Err(e) => {
                self.metrics.register_failed(slot.resource());
                log::warn!(
                    "register failed resource={} retry_ms={}: {e}",
                    slot.resource(),
                    slot.backoff.as_millis()
                );
                self.backoff(i);
            }
        }
    }

    /// Schedules another attempt for plugin `i`, doubling the wait up to
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

    /// Waits for every thread to report its end, then joins them; a thread
    /// that does not end in time is named and left behind, and makes the
    /// exit an error.
    fn join(&self, joins: Vec<JoinHandle<()>>, threads: usize) -> Result<()> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut ended = Vec::new();
        while ended.len() < threads {
            match self.inbox.recv_deadline(deadline) {
                Ok(Event::ThreadExited { name, result }) => {
                    if let Err(e) = result {
                        log::warn!("thread {name} ended: {e}");
                    }
                    ended.push(name);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let mut stuck = Vec::new();
        for j in joins {
            let name = j.thread().name().unwrap_or("?").to_string();
            // A thread that said it ended is returning: join it. (It may not
            // count as finished yet, a moment after it said so.)
            if ended.contains(&name) || j.is_finished() {
                let _ = j.join();
            } else {
                stuck.push(name);
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(Error::Thread(format!(
                "threads did not stop within {JOIN_TIMEOUT:?}: {}",
                stuck.join(", ")
            )))
        }
    }
}
