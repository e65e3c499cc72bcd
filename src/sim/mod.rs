//! The kubelet simulator: plays the kubelet's side of the device plugin API
//! so that any device plugin can be run, shown and tested without a kubelet.
//!
//! It serves `Registration` on `<dir>/kubelet.sock`, validates each Register
//! like the kubelet, dials the plugin back at once (no waiting for a socket
//! that is not serving yet), reads its options, then keeps its ListAndWatch
//! stream open and records every device list. It can allocate, and restart
//! the way a kubelet does (every socket in the dir deleted, `kubelet.sock`
//! made anew). Everything it sees is sent as a [`SimEvent`] with its time.
//!
//! It can also play the kubelet's plugin watcher ([`Sim::watch_registry`]):
//! it finds registration sockets in a dir, asks GetInfo, checks the answer
//! like the kubelet, connects to the endpoint and reports back with
//! NotifyRegistrationStatus; a socket removed is a plugin deregistered.
//! A socket whose GetInfo says `DRAPlugin` is a DRA driver: [`dra`] plays
//! the kubelet's DRA side for it (registration, the health stream,
//! NodePrepareResources and NodeUnprepareResources), as a 1.36 kubelet by
//! default or as a 1.32 one ([`Sim::watch_registry_as`]).
//!
//! It uses only the generated API and its own code, never the plugin's, so
//! it tests the wire (the inotify helper it shares is no plugin logic).
//! Threads: grpcio's; `sim-connect`, which does the dial-back so the
//! Register handler never blocks the poll thread; `sim-registry`, the
//! plugin watcher, when asked for; `sim-dra-health`, one per registered
//! DRA driver instance (1.36), which follows its health stream.

pub mod bench;
#[cfg(feature = "dra")]
pub mod bench_dra;
pub mod demo;
pub mod dra;
pub mod validate;

pub use dra::{
    ClaimRef, DraDeviceHealth, DraRegistration, DraService, KubeletVersion, Prepared,
    PreparedDevice, Unprepared,
};

use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, unbounded};
use futures_util::{
    FutureExt as _, StreamExt as _,
    stream::{AbortHandle, abortable},
};
use grpcio::{
    CallOption, ChannelBuilder, EnvBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode,
    Server, ServerBuilder, ServerCredentials, UnarySink,
};

use crate::{
    api::{
        api, api_grpc, pluginregistration, pluginregistration_grpc, podresources, podresources_grpc,
    },
    inventory::dirwatch::{Changes, DirWatch, Wake},
    wake::Stopper,
};

/// The kubelet's socket file name.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// How long the dial-back may take, as in the kubelet.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Something the simulated kubelet saw.
#[derive(Clone, Debug)]
pub enum SimEvent {
    /// A plugin registered and answered the dial-back.
    Registered {
        /// The request as received.
        request: api::RegisterRequest,
        /// The options the plugin answered.
        options: api::DevicePluginOptions,
        /// When.
        at: Instant,
    },
    /// A Register was refused; `error` is the kubelet's text.
    Rejected {
        /// The request as received.
        request: api::RegisterRequest,
        /// Why.
        error: String,
        /// When.
        at: Instant,
    },
    /// A ListAndWatch message: the full device list, `(ID, health)`.
    Devices {
        /// The resource.
        resource: String,
        /// Every device with its health string.
        devices: Vec<(String, String)>,
        /// When.
        at: Instant,
    },
    /// A ListAndWatch stream ended (the plugin closed it or went away).
    StreamEnded {
        /// The resource.
        resource: String,
        /// When.
        at: Instant,
    },
    /// A DRA driver registered: NotifyRegistrationStatus reached it.
    DraRegistered {
        /// The driver's name.
        driver: String,
        /// The socket it is called on.
        endpoint: String,
        /// The service chosen.
        service: DraService,
        /// When.
        at: Instant,
    },
    /// The plugin watcher refused a DRA driver (it tries again in 500 ms).
    DraRejected {
        /// The driver's name, from GetInfo.
        driver: String,
        /// Its registration socket.
        socket: PathBuf,
        /// The kubelet's text, as NotifyRegistrationStatus carries it after
        /// `RegisterPlugin error -- `.
        error: String,
        /// When.
        at: Instant,
    },
    /// A message of a DRA driver's health stream.
    DraHealth {
        /// The driver's name.
        driver: String,
        /// Every device the message lists.
        devices: Vec<DraDeviceHealth>,
        /// When.
        at: Instant,
    },
    /// A DRA driver's health stream exited by itself (not by
    /// deregistration): its health is cleared and the stream opened again
    /// in 5 s.
    DraHealthEnded {
        /// The driver's name.
        driver: String,
        /// Its status, as grpc-go prints it; `None` for a clean end.
        error: Option<String>,
        /// When.
        at: Instant,
    },
    /// A DRA driver's registration socket was removed: its connection and
    /// health stream are dropped.
    DraDeregistered {
        /// The driver's name.
        driver: String,
        /// The socket it was called on.
        endpoint: String,
        /// When.
        at: Instant,
    },
}

impl SimEvent {
    /// The resource the event is about: for a DRA event, the driver (a
    /// driver name has no `/`, a resource name has one, so the two never
    /// mix in the waits).
    pub fn resource(&self) -> &str {
        match self {
            SimEvent::Registered { request, .. } | SimEvent::Rejected { request, .. } => {
                &request.resource_name
            }
            SimEvent::Devices { resource, .. } | SimEvent::StreamEnded { resource, .. } => resource,
            SimEvent::DraRegistered { driver, .. }
            | SimEvent::DraRejected { driver, .. }
            | SimEvent::DraHealth { driver, .. }
            | SimEvent::DraHealthEnded { driver, .. }
            | SimEvent::DraDeregistered { driver, .. } => driver,
        }
    }
}

/// The most events kept for waits to come; older ones are dropped first.
const MAX_PENDING: usize = 10_000;

/// A plugin connection: its client and what its stream last said.
struct Conn {
    client: api_grpc::DevicePluginClient,
    devices: Vec<(String, String)>,
    /// Whether the plugin asked to choose among the devices offered.
    preferred: bool,
    stream: AbortHandle,
    id: u64,
}

struct Shared {
    dir: PathBuf,
    env: Arc<Environment>,
    events: Sender<SimEvent>,
    conns: Mutex<HashMap<String, Conn>>,
    next_id: Mutex<u64>,
    /// What the pod-resources API tells: who holds which devices.
    held: Mutex<Vec<Held>>,
    /// The DRA drivers registered through the plugin watcher.
    dra: dra::Drivers,
}

/// A container of a pod, as the kubelet's pod-resources API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The container's name.
    pub container: String,
}

/// Devices of one resource that a container holds.
#[derive(Clone, Debug)]
struct Held {
    pod: PodRef,
    resource: String,
    ids: Vec<String>,
}

/// The pod-resources API, from what the simulator allocated for pods.
#[derive(Clone)]
struct PodResources(Arc<Shared>);

impl podresources_grpc::PodResourcesLister for PodResources {
    fn list(
        &mut self,
        ctx: RpcContext,
        _req: podresources::ListPodResourcesRequest,
        sink: UnarySink<podresources::ListPodResourcesResponse>,
    ) {
        let held = self.0.held.lock().expect("sim lock").clone();
        let mut pods: Vec<podresources::PodResources> = Vec::new();
        for h in held {
            let pod = match pods
                .iter_mut()
                .find(|p| p.namespace == h.pod.namespace && p.name == h.pod.name)
            {
                Some(p) => p,
                None => {
                    pods.push(podresources::PodResources {
                        name: h.pod.name.clone(),
                        namespace: h.pod.namespace.clone(),
                        ..Default::default()
                    });
                    pods.last_mut().expect("just pushed")
                }
            };
            let container = match pod
                .containers
                .iter()
                .position(|c| c.name == h.pod.container)
            {
                Some(i) => &mut pod.containers[i],
                None => {
                    pod.containers.push(podresources::ContainerResources {
                        name: h.pod.container.clone(),
                        ..Default::default()
                    });
                    pod.containers.last_mut().expect("just pushed")
                }
            };
            container.devices.push(podresources::ContainerDevices {
                resource_name: h.resource,
                device_ids: h.ids,
                ..Default::default()
            });
        }
        let resp = podresources::ListPodResourcesResponse {
            pod_resources: pods,
            ..Default::default()
        };
        ctx.spawn(sink.success(resp).map(drop));
    }
}

type Job = (api::RegisterRequest, UnarySink<api::Empty>);

/// The running simulator. Dropping it stops it and removes `kubelet.sock`.
pub struct Sim {
    shared: Arc<Shared>,
    server: Option<Server>,
    jobs: Option<Sender<Job>>,
    stop: Option<Sender<()>>,
    worker: Option<JoinHandle<()>>,
    registry: Option<Registry>,
    /// The pod-resources API's server, when asked for.
    pod_resources: Option<Server>,
    events: Receiver<SimEvent>,
    /// Events seen and not yet taken by a wait, in order.
    pending: Mutex<VecDeque<SimEvent>>,
}

/// The plugin watcher: its dir, what it registered, and its thread.
struct Registry {
    dir: PathBuf,
    version: KubeletVersion,
    known: Arc<Mutex<Registered>>,
    stop: Option<Stopper>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Registration {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
}

impl api_grpc::Registration for Registration {
    fn register(
        &mut self,
        ctx: RpcContext,
        req: api::RegisterRequest,
        sink: UnarySink<api::Empty>,
    ) {
        let checked = validate::version(&req.version)
            .and_then(|()| validate::resource_name(&req.resource_name))
            .and_then(|()| validate::endpoint(&req.endpoint));
        match checked {
            Ok(()) => {
                if let Err(e) = self.jobs.send((req, sink)) {
                    let (_, sink) = e.into_inner();
                    ctx.spawn(
                        sink.fail(RpcStatus::with_message(
                            RpcStatusCode::UNAVAILABLE,
                            "kubelet stopping".into(),
                        ))
                        .map(drop),
                    );
                }
            }
            Err(error) => {
                let _ = self.shared.events.send(SimEvent::Rejected {
                    request: req,
                    error: error.clone(),
                    at: Instant::now(),
                });
                // The kubelet returns plain errors, which reach the plugin as UNKNOWN.
                ctx.spawn(
                    sink.fail(RpcStatus::with_message(RpcStatusCode::UNKNOWN, error))
                        .map(drop),
                );
            }
        }
    }
}

impl Sim {
    /// Serves Registration on `<dir>/kubelet.sock`.
    pub fn start(dir: &Path) -> Result<Sim, String> {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("sim-grpc")
                .build(),
        );
        let (events_tx, events) = unbounded();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            env,
            events: events_tx,
            conns: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
            held: Mutex::new(Vec::new()),
            dra: dra::Drivers::default(),
        });
        let (jobs, job_rx) = unbounded::<Job>();
        // Stopped by its own channel: a Registration handler still in grpcio's
        // hands may keep a jobs sender alive after the server is dropped.
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("sim-connect".into())
            .spawn(move || {
                loop {
                    crossbeam_channel::select! {
                        recv(job_rx) -> job => match job {
                            Ok((req, sink)) => connect(&worker_shared, req, sink),
                            Err(_) => return,
                        },
                        recv(stopped) -> _ => return,
                    }
                }
            })
            .map_err(|e| format!("cannot start sim-connect thread: {e}"))?;
        let mut sim = Sim {
            shared,
            server: None,
            jobs: Some(jobs),
            stop: Some(stop),
            worker: Some(worker),
            registry: None,
            pod_resources: None,
            events,
            pending: Mutex::default(),
        };
        sim.serve()?;
        Ok(sim)
    }

    fn serve(&mut self) -> Result<(), String> {
        let path = self.socket();
        let service = Registration {
            shared: self.shared.clone(),
            jobs: self.jobs.clone().expect("jobs open while running"),
        };
        let service = api_grpc::create_registration(service);
        self.server = Some(serve_on(&self.shared.env, service, &path)?);
        Ok(())
    }

    /// The path of `kubelet.sock`.
    pub fn socket(&self) -> PathBuf {
        self.shared.dir.join(KUBELET_SOCKET)
    }

    /// The channel the events arrive on, for a reader of its own (`serve`
    /// prints them): what it takes, no wait sees.
    pub fn event_channel(&self) -> Receiver<SimEvent> {
        self.events.clone()
    }

    /// The next event not yet taken by a wait, waiting at most until
    /// `deadline`.
    pub fn next_event(&self, deadline: Instant) -> Option<SimEvent> {
        let next = self.pending.lock().expect("sim lock").pop_front();
        next.or_else(|| self.events.recv_deadline(deadline).ok())
    }

    /// Every event not yet taken by a wait, now.
    pub fn take_events(&self) -> Vec<SimEvent> {
        let mut all: Vec<SimEvent> = self.pending.lock().expect("sim lock").drain(..).collect();
        all.extend(self.events.try_iter());
        all
    }

    /// Waits at most `timeout` for an event that `pick` accepts; the error
    /// says what was awaited.
    ///
    /// Every event is kept until a wait takes it, so the plugins' events may
    /// come in any order: a match takes itself and the events of its
    /// resource before it (older news of the same plugin); the events of
    /// other resources stay for their own waits. `pick` sees each event
    /// once per call, in order.
    pub fn wait_for<R>(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&SimEvent) -> Option<R>,
    ) -> Result<R, String> {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock().expect("sim lock");
        let mut at = 0;
        loop {
            while at < pending.len() {
                if let Some(r) = pick(&pending[at]) {
                    let resource = pending[at].resource().to_string();
                    let mut i = 0;
                    pending.retain(|ev| {
                        i += 1;
                        i > at + 1 || ev.resource() != resource
                    });
                    return Ok(r);
                }
                at += 1;
            }
            let ev = self
                .events
                .recv_deadline(deadline)
                .map_err(|_| format!("timed out after {timeout:?} waiting for {what}"))?;
            pending.push_back(ev);
            if pending.len() > MAX_PENDING {
                pending.pop_front();
                at = at.saturating_sub(1);
            }
        }
    }

    /// Waits for a Register of `resource` and returns the request.
    pub fn wait_registered(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<api::RegisterRequest, String> {
        self.wait_for(&format!("{resource} to register"), timeout, |ev| match ev {
            SimEvent::Registered { request, .. } if request.resource_name == resource => {
                Some(request.clone())
            }
            _ => None,
        })
    }

    /// Waits for a Register of `resource` and then its first device list,
    /// which it returns: the plugin is then ready to allocate from.
    pub fn wait_ready(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<Vec<(String, String)>, String> {
        self.wait_registered(resource, timeout)?;
        self.wait_devices(resource, timeout, |_| true)
    }

    /// Waits until each of `resources` has sent a device list, in whichever
    /// order; returns each one's list.
    pub fn wait_lists(
        &self,
        resources: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Vec<(String, String)>>, String> {
        resources
            .iter()
            .map(|r| self.wait_devices(r, timeout, |_| true))
            .collect()
    }

    /// Waits for a device list of `resource` that `accept` takes.
    pub fn wait_devices(
        &self,
        resource: &str,
        timeout: Duration,
        mut accept: impl FnMut(&[(String, String)]) -> bool,
    ) -> Result<Vec<(String, String)>, String> {
        self.wait_for(
            &format!("a matching device list from {resource}"),
            timeout,
            |ev| match ev {
                SimEvent::Devices {
                    resource: r,
                    devices,
                    ..
                } if r == resource && accept(devices) => Some(devices.clone()),
                _ => None,
            },
        )
    }

    /// The last device list of `resource`, if it is connected.
    pub fn devices(&self, resource: &str) -> Option<Vec<(String, String)>> {
        let conns = self.shared.conns.lock().expect("sim lock");
        conns.get(resource).map(|c| c.devices.clone())
    }

    /// The client the simulator dialed `resource`'s plugin with.
    pub fn client(&self, resource: &str) -> Result<api_grpc::DevicePluginClient, String> {
        let conns = self.shared.conns.lock().expect("sim lock");
        conns
            .get(resource)
            .map(|c| c.client.clone())
            .ok_or_else(|| format!("no device plugin registered for {resource}"))
    }

    /// Calls Allocate for one container with `ids`.
    pub fn allocate(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<api::AllocateResponse, String> {
        let req = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: ids.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        self.client(resource)?
            .allocate_opt(&req, CallOption::default().timeout(DIAL_TIMEOUT))
            .map_err(|e| e.to_string())
    }

    /// Calls Allocate for `pod`'s container with `ids` and, when it
    /// succeeds, tells the pod-resources API that the container holds them.
    pub fn allocate_for(
        &self,
        pod: &PodRef,
        resource: &str,
        ids: &[String],
    ) -> Result<api::AllocateResponse, String> {
        let resp = self.allocate(resource, ids)?;
        self.shared.held.lock().expect("sim lock").push(Held {
            pod: pod.clone(),
            resource: resource.into(),
            ids: ids.to_vec(),
        });
        Ok(resp)
    }

    /// Serves the kubelet's pod-resources API (`v1.PodResourcesLister`) on
    /// the unix socket `path`, from [`Sim::allocate_for`]'s allocations.
    pub fn serve_pod_resources(&mut self, path: &Path) -> Result<(), String> {
        let service =
            podresources_grpc::create_pod_resources_lister(PodResources(self.shared.clone()));
        self.pod_resources = Some(serve_on(&self.shared.env, service, path)?);
        Ok(())
    }

    /// Allocates `n` healthy devices of `resource` as the kubelet picks
    /// them: the plugin's preferred ones when it asked to choose and there
    /// is a choice, else the first; returns the IDs and the answer.
    pub fn allocate_healthy(
        &self,
        resource: &str,
        n: usize,
    ) -> Result<(Vec<String>, api::AllocateResponse), String> {
        let devices = self
            .devices(resource)
            .ok_or_else(|| format!("no device list from {resource}"))?;
        let mut ids: Vec<String> = devices
            .into_iter()
            .filter(|(_, h)| h == "Healthy")
            .map(|(id, _)| id)
            .collect();
        if ids.len() < n {
            return Err(format!(
                "{resource} has only {} healthy devices, {n} wanted",
                ids.len()
            ));
        }
        if ids.len() > n && self.asks_preference(resource) {
            ids = self.preferred(resource, ids, n)?;
        } else {
            ids.truncate(n);
        }
        let resp = self.allocate(resource, &ids)?;
        Ok((ids, resp))
    }

    fn asks_preference(&self, resource: &str) -> bool {
        let conns = self.shared.conns.lock().expect("sim lock");
        conns.get(resource).is_some_and(|c| c.preferred)
    }

    /// GetPreferredAllocation for one container: `n` of `available`; the
    /// answer is checked as the kubelet checks it.
    pub fn preferred(
        &self,
        resource: &str,
        available: Vec<String>,
        n: usize,
    ) -> Result<Vec<String>, String> {
        let req = api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_deviceIDs: available.clone(),
                allocation_size: i32::try_from(n).map_err(|e| e.to_string())?,
                ..Default::default()
            }],
            ..Default::default()
        };
        let resp = self
            .client(resource)?
            .get_preferred_allocation_opt(&req, CallOption::default().timeout(DIAL_TIMEOUT))
            .map_err(|e| format!("GetPreferredAllocation of {resource}: {e}"))?;
        let ids = resp
            .container_responses
            .first()
            .map(|c| c.deviceIDs.clone())
            .unwrap_or_default();
        if ids.len() != n || ids.iter().any(|id| !available.contains(id)) {
            return Err(format!(
                "GetPreferredAllocation of {resource} answered {ids:?}, not {n} of {available:?}"
            ));
        }
        Ok(ids)
    }

    /// Plays the kubelet's plugin watcher on `dir` too: registers every
    /// registration socket there now and every one made later (on a
    /// thread of its own), and deregisters those removed. DRA drivers are
    /// handled as a 1.36 kubelet does.
    pub fn watch_registry(&mut self, dir: &Path) -> Result<(), String> {
        self.watch_registry_as(dir, KubeletVersion::default())
    }

    /// [`Sim::watch_registry`], with DRA drivers handled as the kubelet of
    /// `version` does (device plugins are the same in both).
    pub fn watch_registry_as(&mut self, dir: &Path, version: KubeletVersion) -> Result<(), String> {
        let (mut watch, stop) =
            DirWatch::new(&[dir]).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        let known = Arc::new(Mutex::new(Registered::new()));
        let (shared, seen, path) = (self.shared.clone(), known.clone(), dir.to_path_buf());
        scan_registry(
            &shared,
            &path,
            version,
            &mut seen.lock().expect("sim lock"),
            None,
        );
        let thread = std::thread::Builder::new()
            .name("sim-registry".into())
            .spawn(move || {
                loop {
                    let pending: Vec<PathBuf> = {
                        let known = seen.lock().expect("sim lock");
                        known
                            .iter()
                            .filter(|(_, r)| r.is_none())
                            .map(|(p, _)| p.clone())
                            .collect()
                    };
                    let retry = (!pending.is_empty()).then_some(REGISTER_RETRY);
                    let changed = match watch.wait(retry) {
                        Ok(Wake::Changed(mut dirs)) => match dirs.swap_remove(0) {
                            Changes::None => continue,
                            Changes::Named(names) => {
                                Some(names.iter().map(|n| path.join(n)).collect())
                            }
                            Changes::Any => None,
                        },
                        Ok(Wake::Timeout | Wake::Kicked) => Some(pending),
                        Ok(Wake::Stopped) | Err(_) => return,
                    };
                    let mut known = seen.lock().expect("sim lock");
                    scan_registry(&shared, &path, version, &mut known, changed);
                }
            })
            .map_err(|e| format!("cannot start sim-registry thread: {e}"))?;
        self.registry = Some(Registry {
            dir: dir.to_path_buf(),
            version,
            known,
            stop: Some(stop),
            thread: Some(thread),
        });
        Ok(())
    }

    /// Restarts like a kubelet: drops every plugin connection (DRA drivers'
    /// too) and the Registration server, deletes every socket in the dir,
    /// serves again; the plugin watcher, if any, registers the sockets in
    /// its dir anew.
    pub fn restart(&mut self) -> Result<(), String> {
        self.disconnect_all();
        dra::close_all(&self.shared);
        self.server = None;
        remove_sockets(&self.shared.dir)?;
        self.serve()?;
        if let Some(r) = &self.registry {
            let mut known = r.known.lock().expect("sim lock");
            known.clear();
            scan_registry(&self.shared, &r.dir, r.version, &mut known, None);
        }
        Ok(())
    }

    /// Closes the ListAndWatch stream of `resource` and forgets the plugin,
    /// as a kubelet does when it drops a plugin's stream; returns whether
    /// it was connected.
    pub fn disconnect(&self, resource: &str) -> bool {
        let conn = self.shared.conns.lock().expect("sim lock").remove(resource);
        conn.map(|c| c.stream.abort()).is_some()
    }

    fn disconnect_all(&self) {
        let conns = std::mem::take(&mut *self.shared.conns.lock().expect("sim lock"));
        for conn in conns.into_values() {
            conn.stream.abort();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            drop(r.stop.take());
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
        self.disconnect_all();
        dra::close_all(&self.shared);
        self.server = None;
        self.pod_resources = None;
        self.jobs = None;
        self.stop = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Serves `service` on the unix socket `path`.
fn serve_on(
    env: &Arc<Environment>,
    service: grpcio::Service,
    path: &Path,
) -> Result<Server, String> {
    let mut server = ServerBuilder::new(env.clone())
        .register_service(service)
        .build()
        .map_err(|e| format!("cannot build the server for {}: {e}", path.display()))?;
    server
        .add_listening_port(
            format!("unix:{}", path.display()),
            ServerCredentials::insecure(),
        )
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    server.start();
    Ok(server)
}

/// The kubelet's checkpoint in its device plugin dir.
const CHECKPOINT: &str = "kubelet_internal_checkpoint";

/// Deletes every file in `dir` but the checkpoint, as the kubelet (1.32,
/// measured) does at start: sockets, and any other file a plugin left
/// there. Dirs are kept.
pub fn remove_sockets(dir: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| !t.is_dir()) && entry.file_name() != CHECKPOINT {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                // Its owner may remove it first.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("cannot remove {}: {e}", path.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The kubelet's connect routine: dials the plugin's socket at `path`,
/// reads its options and opens ListAndWatch. No wait_for_ready: a plugin
/// that registers before it serves fails here, as it does with a kubelet.
fn dial(shared: &Arc<Shared>, path: &Path) -> Result<Dialled, String> {
    let channel =
        ChannelBuilder::new(shared.env.clone()).connect(&format!("unix:{}", path.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    let opt = CallOption::default().timeout(DIAL_TIMEOUT);
    let options = client
        .get_device_plugin_options_opt(&api::Empty::new(), opt)
        .map_err(|e| format!("failed to get device plugin options: {e}"))?;
    let stream = client
        .list_and_watch(&api::Empty::new())
        .map_err(|e| format!("failed to open ListAndWatch: {e}"))?;
    Ok(Dialled {
        client,
        options,
        stream,
    })
}

/// A plugin the simulator has dialled.
struct Dialled {
    client: api_grpc::DevicePluginClient,
    options: api::DevicePluginOptions,
    stream: grpcio::ClientSStreamReceiver<api::ListAndWatchResponse>,
}

/// Dials the plugin back, reads its options, answers Register, then follows
/// its ListAndWatch stream: the kubelet's order since 1.25.
fn connect(shared: &Arc<Shared>, req: api::RegisterRequest, sink: UnarySink<api::Empty>) {
    match dial(shared, &shared.dir.join(&req.endpoint)) {
        Ok(dialled) => follow(shared, req, dialled, move || {
            futures_executor::block_on(sink.success(api::Empty::new())).is_ok()
        }),
        Err(error) => {
            let _ = shared.events.send(SimEvent::Rejected {
                request: req,
                error: error.clone(),
                at: Instant::now(),
            });
            let _ = futures_executor::block_on(
                sink.fail(RpcStatus::with_message(RpcStatusCode::UNKNOWN, error)),
            );
        }
    }
}

/// Records the connection of `req`'s resource (replacing an older one),
/// tells the plugin with `answer` (Register's reply, or the plugin
/// watcher's NotifyRegistrationStatus), and follows its stream.
fn follow(
    shared: &Arc<Shared>,
    req: api::RegisterRequest,
    dialled: Dialled,
    answer: impl FnOnce() -> bool,
) {
    let resource = req.resource_name.clone();
    let Dialled {
        client,
        options,
        stream,
    } = dialled;
    let (mut stream, abort) = abortable(stream);
    let id = {
        let mut next = shared.next_id.lock().expect("sim lock");
        *next += 1;
        *next
    };
    let old = shared.conns.lock().expect("sim lock").insert(
        resource.clone(),
        Conn {
            client: client.clone(),
            devices: Vec::new(),
            preferred: options.get_preferred_allocation_available,
            stream: abort,
            id,
        },
    );
    // A new registration replaces the old endpoint of the same resource.
    if let Some(old) = old {
        old.stream.abort();
    }
    // Only an answer that reached the plugin counts as a registration.
    if answer() {
        let _ = shared.events.send(SimEvent::Registered {
            request: req,
            options,
            at: Instant::now(),
        });
    }

    let shared = shared.clone();
    // Read the stream as a future on the poll thread: it only takes a lock
    // and sends on an unbounded channel, so it never blocks.
    client.spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let devices: Vec<(String, String)> = msg
                .devices
                .iter()
                .map(|d| (d.ID.clone(), d.health.clone()))
                .collect();
            if let Some(conn) = shared.conns.lock().expect("sim lock").get_mut(&resource)
                && conn.id == id
            {
                conn.devices = devices.clone();
            }
            let _ = shared.events.send(SimEvent::Devices {
                resource: resource.clone(),
                devices,
                at: Instant::now(),
            });
        }
        {
            let mut conns = shared.conns.lock().expect("sim lock");
            if conns.get(&resource).is_some_and(|c| c.id == id) {
                conns.remove(&resource);
            }
        }
        let _ = shared.events.send(SimEvent::StreamEnded {
            resource,
            at: Instant::now(),
        });
    });
}

/// How long GetInfo may take, as in the kubelet's plugin watcher.
const GET_INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long NotifyRegistrationStatus may take, as in the kubelet.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon the plugin watcher tries a registration that failed again.
const REGISTER_RETRY: Duration = Duration::from_millis(500);

/// The plugin watcher's pass over its dir, as the kubelet makes it at
/// start (`changed` is `None`: every socket there is registered) and on
/// each inotify event (the entries named in `changed`: a socket removed is
/// deregistered, one created is registered, after the old one at that path
/// is deregistered). A registration that failed is tried again on the next
/// pass over the pending ones, as the kubelet's reconciler does while the
/// socket is there. Dot files and other files are skipped.
fn scan_registry(
    shared: &Arc<Shared>,
    dir: &Path,
    version: KubeletVersion,
    known: &mut Registered,
    changed: Option<Vec<PathBuf>>,
) {
    let is_socket = |path: &Path| {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        !hidden && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
    };
    let paths: Vec<PathBuf> = changed.unwrap_or_else(|| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    });
    for path in paths {
        // Deregistration: the kubelet disconnects the plugin's client.
        match known.remove(&path) {
            Some(Some(Plugin::Device(resource))) => {
                let conn = shared.conns.lock().expect("sim lock").remove(&resource);
                if let Some(conn) = conn {
                    conn.stream.abort();
                }
            }
            Some(Some(Plugin::Dra(driver))) => dra::deregister(shared, &driver, &path),
            Some(None) | None => {}
        }
        if is_socket(&path) {
            let plugin = register_socket(shared, version, &path);
            known.insert(path, plugin);
        }
    }
}

/// What a registration socket registered.
enum Plugin {
    /// A device plugin, by resource.
    Device(String),
    /// A DRA driver, by name.
    Dra(String),
}

/// The registration sockets the plugin watcher found: what each
/// registered, `None` while its registration is pending a retry.
type Registered = HashMap<PathBuf, Option<Plugin>>;

/// The plugin watcher's registration of one socket: GetInfo, the checks,
/// the connect routine, then NotifyRegistrationStatus; a DRA driver's is
/// [`dra::register`]'s. Returns what registered.
fn register_socket(shared: &Arc<Shared>, version: KubeletVersion, socket: &Path) -> Option<Plugin> {
    let channel =
        ChannelBuilder::new(shared.env.clone()).connect(&format!("unix:{}", socket.display()));
    let client = pluginregistration_grpc::RegistrationClient::new(channel);
    let info = client
        .get_info_opt(
            &pluginregistration::InfoRequest::new(),
            CallOption::default().timeout(GET_INFO_TIMEOUT),
        )
        .map_err(|e| {
            format!(
                "failed to get plugin info using RPC GetInfo at socket {}: {e}",
                socket.display()
            )
        });
    let notify = |error: Option<&str>| {
        let status = pluginregistration::RegistrationStatus {
            plugin_registered: error.is_none(),
            error: error
                .map(|e| format!("RegisterPlugin error -- {e}"))
                .unwrap_or_default(),
            ..Default::default()
        };
        client
            .notify_registration_status_opt(&status, CallOption::default().timeout(NOTIFY_TIMEOUT))
            .map(drop)
            .map_err(|e| {
                format!(
                    "failed to send registration status at socket {}, err: {e}",
                    socket.display()
                )
            })
    };
    let info = match info {
        Ok(info) if info.type_ == dra::PLUGIN_TYPE => {
            return dra::register(shared, version, socket, &info, &notify).map(Plugin::Dra);
        }
        info => info,
    };
    let mut req = api::RegisterRequest {
        version: validate::SUPPORTED_VERSIONS[0].into(),
        endpoint: socket.display().to_string(),
        ..Default::default()
    };
    let checked = info.and_then(|info| {
        req.resource_name = info.name.clone();
        let endpoint = validate::plugin_info(
            &info.type_,
            &info.name,
            &info.endpoint,
            &info.supported_versions,
            &socket.display().to_string(),
        )?;
        req.endpoint = endpoint.clone();
        dial(shared, Path::new(&endpoint))
    });
    match checked {
        Ok(dialled) => {
            let resource = req.resource_name.clone();
            follow(shared, req, dialled, || notify(None).is_ok());
            Some(Plugin::Device(resource))
        }
        Err(error) => {
            let _ = notify(Some(&error));
            let _ = shared.events.send(SimEvent::Rejected {
                request: req,
                error,
                at: Instant::now(),
            });
            None
        }
    }
}
