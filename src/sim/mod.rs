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
//! It uses only the generated API and its own code, never the plugin's, so
//! it tests the wire. Threads: grpcio's, and `sim-connect`, which does the
//! dial-back so the Register handler never blocks the poll thread.

pub mod bench;
pub mod demo;
pub mod validate;

use std::{
    collections::HashMap,
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

use crate::api::{api, api_grpc};

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
}

/// A plugin connection: its client and what its stream last said.
struct Conn {
    client: api_grpc::DevicePluginClient,
    devices: Vec<(String, String)>,
    stream: AbortHandle,
    id: u64,
}

struct Shared {
    dir: PathBuf,
    env: Arc<Environment>,
    events: Sender<SimEvent>,
    conns: Mutex<HashMap<String, Conn>>,
    next_id: Mutex<u64>,
}

type Job = (api::RegisterRequest, UnarySink<api::Empty>);

/// The running simulator. Dropping it stops it and removes `kubelet.sock`.
pub struct Sim {
    shared: Arc<Shared>,
    server: Option<Server>,
    jobs: Option<Sender<Job>>,
    stop: Option<Sender<()>>,
    worker: Option<JoinHandle<()>>,
    events: Receiver<SimEvent>,
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
            events,
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
        let mut server = ServerBuilder::new(self.shared.env.clone())
            .register_service(api_grpc::create_registration(service))
            .build()
            .map_err(|e| format!("cannot build the Registration server: {e}"))?;
        server
            .add_listening_port(
                format!("unix:{}", path.display()),
                ServerCredentials::insecure(),
            )
            .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        server.start();
        self.server = Some(server);
        Ok(())
    }

    /// The path of `kubelet.sock`.
    pub fn socket(&self) -> PathBuf {
        self.shared.dir.join(KUBELET_SOCKET)
    }

    /// Everything the simulator sees, in order.
    pub fn events(&self) -> &Receiver<SimEvent> {
        &self.events
    }

    /// Waits at most `timeout` for an event that `pick` accepts, skipping
    /// the others; the error says what was awaited.
    pub fn wait_for<R>(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&SimEvent) -> Option<R>,
    ) -> Result<R, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self
                .events
                .recv_deadline(deadline)
                .map_err(|_| format!("timed out after {timeout:?} waiting for {what}"))?;
            if let Some(r) = pick(&ev) {
                return Ok(r);
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

    /// Allocates the first `n` healthy devices of `resource`, as the kubelet
    /// would pick them; returns the IDs and the answer.
    pub fn allocate_healthy(
        &self,
        resource: &str,
        n: usize,
    ) -> Result<(Vec<String>, api::AllocateResponse), String> {
        let devices = self
            .devices(resource)
            .ok_or_else(|| format!("no device list from {resource}"))?;
        let ids: Vec<String> = devices
            .into_iter()
            .filter(|(_, h)| h == "Healthy")
            .map(|(id, _)| id)
            .take(n)
            .collect();
        if ids.len() < n {
            return Err(format!(
                "{resource} has only {} healthy devices, {n} wanted",
                ids.len()
            ));
        }
        let resp = self.allocate(resource, &ids)?;
        Ok((ids, resp))
    }

    /// Restarts like a kubelet: drops every plugin connection and the
    /// Registration server, deletes every socket in the dir, serves again.
    pub fn restart(&mut self) -> Result<(), String> {
        self.disconnect_all();
        self.server = None;
        remove_sockets(&self.shared.dir)?;
        self.serve()
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
        self.disconnect_all();
        self.server = None;
        self.jobs = None;
        self.stop = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Deletes every socket in `dir`, as the kubelet does at start; other files
/// are kept.
pub fn remove_sockets(dir: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
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

/// Dials the plugin back, reads its options, answers Register, then opens
/// ListAndWatch: the kubelet's order since 1.25.
fn connect(shared: &Arc<Shared>, req: api::RegisterRequest, sink: UnarySink<api::Empty>) {
    let resource = req.resource_name.clone();
    let path = shared.dir.join(&req.endpoint);
    let channel =
        ChannelBuilder::new(shared.env.clone()).connect(&format!("unix:{}", path.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    // No wait_for_ready: a plugin that registers before it serves fails here.
    let opt = CallOption::default().timeout(DIAL_TIMEOUT);
    let options = match client.get_device_plugin_options_opt(&api::Empty::new(), opt) {
        Ok(o) => o,
        Err(e) => {
            let error = format!("failed to get device plugin options: {e}");
            let _ = shared.events.send(SimEvent::Rejected {
                request: req,
                error: error.clone(),
                at: Instant::now(),
            });
            let _ = futures_executor::block_on(
                sink.fail(RpcStatus::with_message(RpcStatusCode::UNKNOWN, error)),
            );
            return;
        }
    };
    let stream = match client.list_and_watch(&api::Empty::new()) {
        Ok(s) => s,
        Err(e) => {
            let _ = futures_executor::block_on(sink.fail(RpcStatus::with_message(
                RpcStatusCode::UNKNOWN,
                format!("failed to open ListAndWatch: {e}"),
            )));
            return;
        }
    };
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
            stream: abort,
            id,
        },
    );
    // A new registration replaces the old endpoint of the same resource.
    if let Some(old) = old {
        old.stream.abort();
    }
    // Only an answer that reached the plugin counts as a registration.
    if futures_executor::block_on(sink.success(api::Empty::new())).is_ok() {
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
