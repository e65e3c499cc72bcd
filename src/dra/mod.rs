//! The DRA front end: serves the inventory's devices to the kubelet as a
//! Dynamic Resource Allocation driver. The driver is named after the
//! resource domain (`github.com.ihcsim`); every device of every resource
//! is one device of the node's pool, published in ResourceSlices
//! ([`publisher`]), prepared for pods' claims ([`claims`]) and reported in
//! the kubelet's health stream ([`service`]).
//!
//! Sockets (the kubelet's layout): the DRA service on
//! `<dra-plugin-dir>/<driver>/dra.sock` (DRAPlugin `v1` and `v1beta1`, the
//! health service, our status service), and the registration socket
//! `<plugins-registry-dir>/<driver>-reg.sock`, where the kubelet's plugin
//! watcher finds us (GetInfo names the DRA socket). Either socket deleted,
//! or SIGHUP: both are made anew and the kubelet registers us again. The
//! checkpoint of prepared claims is `<dra-plugin-dir>/<driver>/
//! checkpoint.json`.
//!
//! Threads: `dra-publish` (the API server's slices) and `dra-claims`
//! (Prepare and Unprepare, which read claims from the API server), both
//! started here and stopped at shutdown; the rest runs on the supervisor's
//! events and timers.

pub mod checkpoint;
pub mod claims;
pub mod names;
pub mod publisher;
pub mod service;
pub mod slices;
mod status;

use std::{
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{Sender, unbounded};
use grpcio::{EnvBuilder, Environment, Server};

use crate::{
    api::{
        dra_health, dra_health_grpc, dra_v1_grpc, dra_v1beta1_grpc, pluginregistration,
        pluginregistration_grpc, status_grpc,
    },
    error::{Error, Result, chain},
    event::{DraEvent, Event},
    frontend::FrontEnd,
    inventory::{Resource, kinds::Plugin},
    kube,
    pluginwatcher::RegistrationService,
    rpc,
    socket::{self, SocketId},
    watch::Watch,
};
use rpc::Gate;
use service::HealthList;

/// The PluginInfo `type` of a DRA driver.
pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
/// What GetInfo advertises, in our order of preference: the kubelet (1.34
/// and later) takes the first DRAPlugin version it supports; the 1.32
/// kubelet reads none of it and calls `v1beta1`, which we serve too.
pub const SERVICES: &[&str] = &[
    "v1.DRAPlugin",
    "v1beta1.DRAPlugin",
    "v1alpha1.DRAResourceHealth",
];
/// How often the health list is sent again unchanged: the kubelet takes a
/// device not reported for 30 s (or its own timeout, field 4, from 1.35)
/// to be Unknown.
const HEALTH_RESEND: Duration = Duration::from_secs(20);
/// The timeout each health report asks for (kubelets from 1.35 read it).
const HEALTH_TIMEOUT_SECS: i64 = 60;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the DRA front end is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The driver name: `--resource-domain`.
    pub driver: String,
    /// The node whose pool we publish and whose claims we prepare.
    pub node: String,
    /// `--dra-plugin-dir`: `<it>/<driver>/` holds the DRA socket and the
    /// checkpoint.
    pub plugin_dir: PathBuf,
    /// `--plugins-registry-dir`: where the registration socket goes.
    pub registry_dir: PathBuf,
    /// How to reach the API server.
    pub kube: kube::Config,
}

impl Config {
    /// `<dra-plugin-dir>/<driver>`.
    pub fn driver_dir(&self) -> PathBuf {
        self.plugin_dir.join(&self.driver)
    }

    /// The DRA socket.
    pub fn dra_socket(&self) -> PathBuf {
        self.driver_dir().join("dra.sock")
    }

    /// The registration socket in the plugin watcher's dir.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir.join(format!("{}-reg.sock", self.driver))
    }
}

/// What both DRA threads work from.
#[derive(Clone)]
pub struct Context {
    /// The driver name.
    pub driver: String,
    /// The node.
    pub node: String,
    /// The API server client, shared: one connection pool, one set of
    /// request counters.
    pub client: kube::Client,
    /// The resources at start (a reload sends them anew).
    pub resources: Vec<Resource>,
    /// The supervisor's inbox, for the threads' ends.
    pub exits: Sender<Event>,
}

/// Where the driver is with the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// Serving; waits for the kubelet's plugin watcher.
    Waiting,
    Registered,
    /// The kubelet refused the registration (its reason).
    Refused(String),
    /// Serving failed: tries again at the instant.
    BackingOff(Instant),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Idle => f.write_str("idle"),
            State::Waiting => f.write_str("waiting for the kubelet's plugin watcher"),
            State::Registered => f.write_str("registered"),
            State::Refused(_) => f.write_str("refused by the kubelet"),
            State::BackingOff(_) => f.write_str("backing off"),
        }
    }
}

/// One running server generation: both sockets.
struct Live {
    server: Server,
    sockets: Vec<(PathBuf, SocketId)>,
    gate: Arc<Gate>,
}

/// The threads' channels, once started.
struct Threads {
    publish: Sender<publisher::Msg>,
    claims: Sender<claims::Job>,
    /// Dropping it stops both threads.
    _stop: Sender<()>,
}

/// The DRA front end.
pub struct DraDriver {
    cfg: Config,
    env: Arc<Environment>,
    events: Sender<Event>,
    resources: Vec<Resource>,
    live: Option<Live>,
    generation: u64,
    state: State,
    backoff: Duration,
    health: Arc<HealthList>,
    health_due: Instant,
    threads: Option<Threads>,
    published: publisher::Shown,
    prepared: claims::Shown,
    /// `state` as `status` tells it.
    shown: Arc<std::sync::Mutex<String>>,
}

impl DraDriver {
    /// The front end; its registration news reports to `events`.
    pub fn new(cfg: Config, events: Sender<Event>) -> Self {
        DraDriver {
            cfg,
            env: Arc::new(EnvBuilder::new().cq_count(1).name_prefix("grpc").build()),
            events,
            resources: Vec::new(),
            live: None,
            generation: 0,
            state: State::Idle,
            backoff: BACKOFF_MIN,
            health: Watch::new(Vec::new()),
            health_due: Instant::now() + HEALTH_RESEND,
            threads: None,
            published: publisher::Shown::default(),
            prepared: claims::Shown::default(),
            shown: Arc::default(),
        }
    }

    fn set(&mut self, state: State) {
        *self.shown.lock().expect("state lock poisoned") = state.to_string();
        self.state = state;
    }

    /// The health list now: every device, its health and why.
    fn health_list(&self) -> Vec<dra_health::DeviceHealth> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        names::devices(&self.resources)
            .into_iter()
            .map(|d| {
                let (health, message) = match d.device.health.reason() {
                    None => (dra_health::HealthStatus::HEALTHY, String::new()),
                    Some(why) => (dra_health::HealthStatus::UNHEALTHY, why.to_string()),
                };
                dra_health::DeviceHealth {
                    device: Some(dra_health::DeviceIdentifier {
                        pool_name: self.cfg.node.clone(),
                        device_name: d.name,
                        ..Default::default()
                    })
                    .into(),
                    health: health.into(),
                    last_updated_time: now,
                    health_check_timeout_seconds: HEALTH_TIMEOUT_SECS,
                    message,
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Sends the health list to every stream, now and every
    /// [`HEALTH_RESEND`].
    fn publish_health(&mut self) {
        self.health.publish(self.health_list());
        self.health_due = Instant::now() + HEALTH_RESEND;
    }

    /// The services of a new server generation.
    fn services(
        &self,
        generation: u64,
        gate: &Arc<Gate>,
        jobs: Sender<claims::Job>,
    ) -> Vec<grpcio::Service> {
        let events = self.events.clone();
        let info = pluginregistration::PluginInfo {
            type_: DRA_PLUGIN_TYPE.into(),
            name: self.cfg.driver.clone(),
            // Dialled as it is by the kubelet: absolute.
            endpoint: self.cfg.dra_socket().display().to_string(),
            supported_versions: SERVICES.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let registration = RegistrationService::new(
            info,
            Arc::new(move |result| {
                let _ = events.send(Event::Dra(DraEvent::Registered { generation, result }));
            }),
        );
        let plugin = service::DraPlugin::new(jobs);
        let status = status::DraStatus {
            driver: self.cfg.driver.clone(),
            node: self.cfg.node.clone(),
            resources: self.resources.clone(),
            published: self.published.clone(),
            prepared: self.prepared.clone(),
            state: self.shown.clone(),
        };
        vec![
            dra_v1_grpc::create_dra_plugin(plugin.clone()),
            dra_v1beta1_grpc::create_dra_plugin(plugin),
            dra_health_grpc::create_dra_resource_health(service::Health::new(
                self.health.clone(),
                gate.clone(),
            )),
            pluginregistration_grpc::create_registration(registration),
            status_grpc::create_status(status),
        ]
    }

    /// Serves a new generation on both sockets: the DRA socket first, so
    /// that it answers by the time the kubelet finds the registration
    /// socket and dials it.
    fn serve(&mut self) -> Result<()> {
        let jobs = match &self.threads {
            Some(t) => t.claims.clone(),
            None => return Err(Error::Thread("the DRA threads are not running".into())),
        };
        self.generation += 1;
        let gate = Watch::new(None);
        let services = self.services(self.generation, &gate, jobs);
        let paths = [self.cfg.dra_socket(), self.cfg.registration_socket()];
        let server = rpc::serve(
            self.env.clone(),
            services,
            &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        )?;
        let sockets = paths
            .iter()
            .map(|p| {
                socket::socket_id(p)
                    .map(|id| (p.clone(), id))
                    .ok_or_else(|| {
                        Error::Invalid(format!("socket {} vanished after bind", p.display()))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        self.live = Some(Live {
            server,
            sockets,
            gate,
        });
        log::info!(
            "serving DRA driver={} socket={} registration={}",
            self.cfg.driver,
            paths[0].display(),
            paths[1].display()
        );
        self.set(State::Waiting);
        Ok(())
    }

    /// Ends the current generation: its health streams get `why`, its
    /// server goes, its sockets are removed.
    fn teardown(&mut self, why: &'static str) {
        if let Some(live) = self.live.take() {
            live.gate.publish(Some(why));
            drop(live.server);
            for (path, id) in &live.sockets {
                socket::remove_socket(path, *id);
            }
        }
    }

    /// Serves anew (after a socket was deleted, or SIGHUP), backing off
    /// when that fails.
    fn serve_again(&mut self, why: &'static str) {
        self.teardown(why);
        match self.serve() {
            Ok(()) => self.backoff = BACKOFF_MIN,
            Err(e) => {
                log::error!("cannot serve the DRA driver: {}", chain(&e));
                self.set(State::BackingOff(Instant::now() + self.backoff));
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn sockets_ok(&self) -> bool {
        self.live.as_ref().is_some_and(|l| {
            l.sockets
                .iter()
                .all(|(p, id)| socket::socket_id(p) == Some(*id))
        })
    }

    fn registered(&mut self, generation: u64, result: std::result::Result<(), String>) {
        if generation != self.generation {
            return;
        }
        match result {
            Ok(()) => {
                log::info!(
                    "registered driver={} node={}",
                    self.cfg.driver,
                    self.cfg.node
                );
                self.set(State::Registered);
                // The kubelet deletes the node's slices when it starts:
                // registered (again) means they may be gone.
                self.tell(publisher::Msg::Registered);
            }
            Err(e) => {
                log::warn!(
                    "the kubelet's plugin watcher refused us driver={}: {e}",
                    self.cfg.driver
                );
                self.set(State::Refused(e));
            }
        }
    }

    fn tell(&self, msg: publisher::Msg) {
        if let Some(t) = &self.threads {
            let _ = t.publish.send(msg);
        }
    }

    /// The resources changed (a reload): the threads and the lists learn it.
    fn resources_changed(&mut self) {
        if let Some(t) = &self.threads {
            let _ = t
                .publish
                .send(publisher::Msg::Resources(self.resources.clone()));
            let _ = t
                .claims
                .send(claims::Job::Resources(self.resources.clone()));
        }
        self.publish_health();
    }
}

impl FrontEnd for DraDriver {
    fn api(&self) -> &'static str {
        "dra"
    }

    fn check(&self, _plugin: &dyn Plugin) -> Result<()> {
        // One driver per domain and node: binding would silently take the
        // sockets of a driver that serves.
        for path in [self.cfg.dra_socket(), self.cfg.registration_socket()] {
            if socket::socket_answers(&path) {
                return Err(Error::Busy(format!(
                    "another process is serving the DRA driver {} on {}: refusing to take its socket",
                    self.cfg.driver,
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        vec![self.cfg.registry_dir.clone(), self.cfg.driver_dir()]
    }

    fn add(&mut self, resource: Resource) {
        self.resources.push(resource);
        if self.threads.is_some() {
            self.resources_changed();
        }
    }

    fn remove(&mut self, name: &str) {
        self.resources.retain(|r| r.name() != name);
        self.resources_changed();
    }

    fn start(&mut self) -> Result<Vec<JoinHandle<()>>> {
        let checkpoint = checkpoint::Checkpoint::load(&self.cfg.driver_dir(), &self.cfg.driver);
        // One client for both threads: one connection pool, one TLS
        // session, one set of request counters.
        let client = kube::Client::new(self.cfg.kube.clone())
            .map_err(|e| Error::Invalid(format!("the API server's client: {e}")))?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (publish, publish_rx) = unbounded();
        let (jobs, jobs_rx) = unbounded();
        let ctx = Context {
            driver: self.cfg.driver.clone(),
            node: self.cfg.node.clone(),
            client,
            resources: self.resources.clone(),
            exits: self.events.clone(),
        };
        let joins = vec![
            publisher::spawn(
                ctx.clone(),
                self.published.clone(),
                publish_rx,
                stopped.clone(),
            )?,
            claims::spawn(ctx, checkpoint, self.prepared.clone(), jobs_rx, stopped)?,
        ];
        self.threads = Some(Threads {
            publish,
            claims: jobs,
            _stop: stop,
        });
        self.publish_health();
        self.serve()?;
        Ok(joins)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::DirChanged if self.live.is_some() && !self.sockets_ok() => {
                log::info!(
                    "own socket gone (deleted); serving again driver={}",
                    self.cfg.driver
                );
                self.serve_again("serving again on new sockets");
            }
            Event::Published(_) => {
                self.publish_health();
                self.tell(publisher::Msg::Changed);
            }
            Event::Dra(DraEvent::Registered { generation, result }) => {
                self.registered(generation, result)
            }
            _ => {}
        }
    }

    fn reregister(&mut self) {
        self.serve_again("serving again on new sockets");
    }

    fn deadline(&self) -> Option<Instant> {
        let backoff = match self.state {
            State::BackingOff(at) => Some(at),
            _ => None,
        };
        Some(backoff.map_or(self.health_due, |b| b.min(self.health_due)))
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let State::BackingOff(at) = self.state
            && at <= now
        {
            self.serve_again("serving again on new sockets");
        }
        if self.health_due <= now {
            self.publish_health();
        }
    }

    fn states(&self) -> Vec<String> {
        vec![format!("dra {}", self.state)]
    }

    fn ready(&self) -> bool {
        self.state != State::Idle
    }

    fn shutdown(&mut self) {
        self.teardown("shutting down");
        self.threads = None;
    }
}
