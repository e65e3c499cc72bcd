//! The `supervisor` thread: owns the life of every plugin. It serves each
//! plugin on its own socket, checks the socket answers, registers with the
//! kubelet, and does it all again when the kubelet restarts (our socket
//! deleted, or `kubelet.sock` recreated), when the kubelet drops our
//! ListAndWatch stream and does not come back, and on SIGHUP. It also feeds
//! health updates into each plugin's snapshot, and stops everything on
//! shutdown.
//!
//! Inbound: every [`Event`] on one crossbeam channel. It is the only part
//! that calls the kubelet, and its loop never blocks on the kubelet:
//! Register answers arrive as events.

use std::{
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use futures_util::future::AbortHandle;
use grpcio::{EnvBuilder, Environment, Server};

use crate::{
    cdi,
    device::Device,
    dirwatch::DirWatch,
    error::{Error, Result, chain},
    event::{Event, SignalAction},
    health,
    kubelet::{self, KUBELET_SOCKET, SocketId},
    plugin::{Injection, Plugin},
    server::{self, Service, StreamChange},
    signals,
    thread::spawn_named,
    watch::Watch,
};

/// Register is retried after this, doubling up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two Register attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the kubelet may take to reopen ListAndWatch after closing it
/// before we register again.
const STREAM_GRACE: Duration = Duration::from_secs(2);
/// How long our own new socket may take to answer.
const SERVE_CHECK: Duration = Duration::from_secs(2);
/// How long threads get to finish at shutdown.
const JOIN_TIMEOUT: Duration = Duration::from_millis(800);

/// What the supervisor runs.
#[derive(Debug)]
pub struct Config {
    /// The plugins, each with its own socket and resource.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where `kubelet.sock` is and our sockets go.
    pub plugin_dir: PathBuf,
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
}

/// One running server generation of a plugin.
struct Live {
    server: Server,
    devices: Arc<Watch<Vec<Device>>>,
    socket: SocketId,
}

/// A plugin and where it is in its life.
struct Slot {
    plugin: Arc<dyn Plugin>,
    socket: PathBuf,
    devices: Vec<Device>,
    generation: u64,
    live: Option<Live>,
    /// The kubelet we registered, or are registering, with.
    kubelet: Option<SocketId>,
    registered: bool,
    /// Whether "waiting for kubelet.sock" was logged.
    waiting: bool,
    in_flight: Option<AbortHandle>,
    started: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
    streams: usize,
    stream_check_at: Option<Instant>,
}

impl Slot {
    fn resource(&self) -> &str {
        self.plugin.resource()
    }

    /// Ends the current generation: cancels a pending Register, ends its
    /// ListAndWatch streams and drops its server, which unlinks the socket.
    /// The kubelet tracks disconnects by resource name, so old streams must
    /// end before a new Register or they would mark the new one stopped.
    fn teardown(&mut self) {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
        if let Some(live) = self.live.take() {
            live.devices.close();
            drop(live.server);
        }
        self.registered = false;
        self.streams = 0;
        self.stream_check_at = None;
        self.retry_at = None;
    }
}

/// The supervisor: build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    cfg: Config,
    env: Arc<Environment>,
    slots: Vec<Slot>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
}

impl Supervisor {
    /// Prepares every plugin (makes its nodes) and probes its devices once,
    /// so the first ListAndWatch message is ready before any server starts.
    pub fn new(cfg: Config) -> Result<Self> {
        let mut slots = Vec::new();
        for plugin in &cfg.plugins {
            let socket = server::socket_path(&cfg.plugin_dir, plugin.as_ref());
            // Binding would silently take the socket from a live instance.
            if server::socket_answers(&socket) {
                return Err(Error::Invalid(format!(
                    "another process is serving on {}: refusing to take its socket",
                    socket.display()
                )));
            }
            plugin.prepare()?;
            // Before any Register: the kubelet may hand our CDI names to the
            // runtime at once, and they must resolve.
            let spec = cdi::write(&cfg.cdi_dir, plugin.as_ref())?;
            log::info!(
                "CDI spec written resource={} path={}",
                plugin.resource(),
                spec.display()
            );
            slots.push(Slot {
                socket,
                devices: plugin.probe(),
                plugin: plugin.clone(),
                generation: 0,
                live: None,
                kubelet: None,
                registered: false,
                waiting: false,
                in_flight: None,
                started: Instant::now(),
                backoff: BACKOFF_MIN,
                retry_at: None,
                streams: 0,
                stream_check_at: None,
            });
        }
        // One completion queue: one poll thread serves every plugin.
        let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("grpc").build());
        let (events, inbox) = unbounded();
        Ok(Supervisor {
            cfg,
            env,
            slots,
            events,
            inbox,
        })
    }

    /// Runs until SIGTERM or SIGINT (Ok) or a fatal error.
    pub fn run(mut self) -> Result<()> {
        let (signals, signals_join) = signals::spawn(self.events.clone())?;
        // In health's order: health::DEV_DIR, health::PLUGIN_DIR.
        let (watch, watch_stop) = DirWatch::new(&[&self.cfg.dev_dir, &self.cfg.plugin_dir])?;
        let mut joins = vec![signals_join];
        joins.push(self.spawn_health(watch)?);
        let threads = joins.len();

        let result = self.event_loop();

        for slot in &mut self.slots {
            slot.teardown();
        }
        signals.close();
        drop(watch_stop);
        self.join(joins, threads);
        result
    }

    fn spawn_health(&self, watch: DirWatch) -> Result<JoinHandle<()>> {
        let plugins = self.cfg.plugins.clone();
        let last = self.slots.iter().map(|s| s.devices.clone()).collect();
        let interval = self.cfg.poll_interval;
        let events = self.events.clone();
        spawn_named("health", self.events.clone(), move || {
            health::run(plugins, last, watch, interval, events)
        })
    }

    fn event_loop(&mut self) -> Result<()> {
        self.reconcile_all(false);
        loop {
            let event = match self.next_deadline() {
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
                    return Ok(());
                }
                Some(Event::Signal(SignalAction::Reregister)) => {
                    self.reconcile_all(true);
                }
                Some(Event::Health { plugin, devices }) => {
                    let slot = &mut self.slots[plugin];
                    if let Some(live) = &slot.live {
                        live.devices.publish(devices.clone());
                    }
                    slot.devices = devices;
                }
                Some(Event::PluginDir) => {
                    self.reconcile_all(false);
                }
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
                    return Err(Error::Invalid(format!("thread {name} ended: {why}")));
                }
            }
            self.run_timers();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|s| [s.retry_at, s.stream_check_at])
            .flatten()
            .min()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.retry_at.is_some_and(|t| t <= now) {
                slot.retry_at = None;
                self.reconcile(i, true);
            } else if slot.stream_check_at.is_some_and(|t| t <= now) {
                slot.stream_check_at = None;
                log::info!(
                    "ListAndWatch not reopened by the kubelet; registering again resource={}",
                    slot.resource()
                );
                self.reconcile(i, true);
            }
        }
    }

    fn reconcile_all(&mut self, force: bool) {
        for i in 0..self.slots.len() {
            self.reconcile(i, force);
        }
    }

    /// Brings plugin `i` in line with the plugin dir: waits while there is
    /// no `kubelet.sock`, and serves and registers anew when our socket is
    /// gone, the kubelet changed, or `force` is set.
    fn reconcile(&mut self, i: usize, force: bool) {
        let kubelet_sock = self.cfg.plugin_dir.join(KUBELET_SOCKET);
        let kubelet = kubelet::socket_id(&kubelet_sock);
        let slot = &mut self.slots[i];
        let own_ok = slot
            .live
            .as_ref()
            .is_some_and(|l| kubelet::socket_id(&slot.socket) == Some(l.socket));
        if kubelet.is_none() {
            if !slot.waiting {
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
                slot.waiting = true;
            }
            // Nothing to register with; the dir watch wakes us when it is back.
            slot.teardown();
            slot.kubelet = None;
            return;
        }
        slot.waiting = false;
        if !force && own_ok && slot.kubelet == kubelet {
            return;
        }
        if slot.kubelet.is_some() && slot.kubelet != kubelet {
            log::info!(
                "kubelet restarted; registering again resource={}",
                slot.resource()
            );
        } else if slot.kubelet.is_some() && !own_ok {
            log::info!(
                "own socket gone (kubelet restart or deletion); serving again resource={}",
                slot.resource()
            );
        }
        slot.teardown();
        slot.kubelet = kubelet;
        if let Err(e) = self.serve(i) {
            let slot = &mut self.slots[i];
            log::error!("cannot serve resource={}: {}", slot.resource(), chain(&e));
            self.backoff(i);
            return;
        }
        self.register(i, &kubelet_sock);
    }

    /// Starts a new server generation for plugin `i` and waits until its
    /// socket answers.
    fn serve(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        let (generation, events) = (slot.generation, self.events.clone());
        let devices = Watch::new(slot.devices.clone());
        let service = Service::new(
            slot.plugin.clone(),
            devices.clone(),
            self.cfg.injection,
            Arc::new(move |change| {
                let _ = events.send(Event::Stream {
                    plugin: i,
                    generation,
                    change,
                });
            }),
        );
        let server = server::serve(self.env.clone(), service, &slot.socket)?;
        let socket = kubelet::socket_id(&slot.socket).ok_or_else(|| {
            Error::Invalid(format!(
                "socket {} vanished after bind",
                slot.socket.display()
            ))
        })?;
        slot.live = Some(Live {
            server,
            devices,
            socket,
        });
        server::wait_serving(self.env.clone(), &slot.socket, SERVE_CHECK)?;
        log::info!(
            "serving resource={} socket={}",
            slot.resource(),
            slot.socket.display()
        );
        Ok(())
    }

    fn register(&mut self, i: usize, kubelet_sock: &std::path::Path) {
        let slot = &mut self.slots[i];
        let req = kubelet::register_request(slot.plugin.as_ref());
        let (generation, events) = (slot.generation, self.events.clone());
        slot.started = Instant::now();
        let sent = kubelet::register_async(
            self.env.clone(),
            kubelet_sock,
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
            Ok(handle) => slot.in_flight = Some(handle),
            Err(e) => {
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
        let slot = &mut self.slots[i];
        if generation != slot.generation {
            return;
        }
        slot.in_flight = None;
        match result {
            Ok(()) => {
                slot.registered = true;
                slot.backoff = BACKOFF_MIN;
                log::info!(
                    "registered resource={} endpoint={} took_ms={:.1}",
                    slot.resource(),
                    slot.plugin.socket_name(),
                    slot.started.elapsed().as_secs_f64() * 1000.0
                );
            }
            Err(e) => {
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
        slot.retry_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
    }

    fn stream(&mut self, i: usize, generation: u64, change: StreamChange) {
        let slot = &mut self.slots[i];
        if generation != slot.generation {
            return;
        }
        match change {
            StreamChange::Opened => {
                slot.streams += 1;
                slot.stream_check_at = None;
            }
            StreamChange::Closed => {
                slot.streams = slot.streams.saturating_sub(1);
                if slot.streams == 0 && slot.registered {
                    slot.stream_check_at = Some(Instant::now() + STREAM_GRACE);
                }
            }
        }
    }

    /// Waits for every thread to report its end, then joins them; a thread
    /// that does not end in time is named and left behind.
    fn join(&self, joins: Vec<JoinHandle<()>>, threads: usize) {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut ended = 0;
        while ended < threads {
            match self.inbox.recv_deadline(deadline) {
                Ok(Event::ThreadExited { name, result }) => {
                    ended += 1;
                    if let Err(e) = result {
                        log::warn!("thread {name} ended: {e}");
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for j in joins {
            if j.is_finished() {
                let _ = j.join();
            } else {
                log::error!(
                    "thread {} did not stop in time",
                    j.thread().name().unwrap_or("?")
                );
            }
        }
    }
}
