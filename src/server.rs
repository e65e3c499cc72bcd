//! The gRPC services of one plugin and the grpcio server that serves them
//! on its socket: the DevicePlugin service, and in `plugins-registry` mode
//! the plugin watcher's Registration service beside it on the same socket.
//!
//! The service reads the plugin's device snapshot (a [`Watch`] that outlives
//! server generations) and knows nothing of the supervisor: it reports
//! ListAndWatch streams opening and closing, and the kubelet's registration
//! status, through callbacks. Handlers never block: the grpcio poll thread
//! runs them.

use std::{
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use grpcio::{
    CallOption, ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, Server,
    ServerBuilder, ServerCredentials, ServerStreamingSink, UnarySink, WriteFlags,
};

use crate::{
    api::{api, api_grpc, pluginregistration, pluginregistration_grpc, status, status_grpc},
    device::{Device, Health},
    error::{Error, Result},
    kubelet::API_VERSION,
    metrics::Metrics,
    plugin::{self, AllocError, Injection, Plugin},
    watch::Watch,
};

/// The options we announce, in Register and in GetDevicePluginOptions alike
/// (kubelets before 1.25 read the first, later ones the second).
/// GetPreferredAllocation and PreStartContainer still answer correctly.
pub fn options() -> api::DevicePluginOptions {
    api::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
        ..Default::default()
    }
}

/// A ListAndWatch stream opened or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamChange {
    /// A client opened a stream.
    Opened,
    /// A stream ended: the client went away or the server closed it.
    Closed,
}

/// Called on every [`StreamChange`].
pub type OnStream = Arc<dyn Fn(StreamChange) + Send + Sync>;

/// The gate of one server generation: `None` while it serves; closing it
/// (publishing the reason) ends every ListAndWatch stream of the generation
/// with status UNAVAILABLE and that reason.
pub type Gate = Watch<Option<&'static str>>;

/// The number of open ListAndWatch streams of one server generation, so
/// that the supervisor can wait for them to end before it drops the server.
#[derive(Debug, Default)]
pub struct Streams {
    open: Mutex<usize>,
    changed: Condvar,
}

impl Streams {
    fn change(&self, by: StreamChange) {
        let mut open = self.open.lock().expect("streams lock poisoned");
        match by {
            StreamChange::Opened => *open += 1,
            StreamChange::Closed => *open = open.saturating_sub(1),
        }
        self.changed.notify_all();
    }

    /// Waits until no stream is open, at most until `deadline`; returns
    /// how many are still open.
    pub fn wait_closed(&self, deadline: Instant) -> usize {
        let mut open = self.open.lock().expect("streams lock poisoned");
        while *open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = self
                .changed
                .wait_timeout(open, left)
                .expect("streams lock poisoned")
                .0;
        }
        *open
    }
}

/// The DevicePlugin service of one plugin, for one server generation.
#[derive(Clone)]
pub struct Service {
    plugin: Arc<dyn Plugin>,
    devices: Arc<Watch<Vec<Device>>>,
    gate: Arc<Gate>,
    streams: Arc<Streams>,
    injection: Injection,
    on_stream: OnStream,
    metrics: Arc<Metrics>,
}

impl Service {
    /// A service answering for `plugin` from the snapshot `devices` until
    /// `gate` closes.
    pub fn new(
        plugin: Arc<dyn Plugin>,
        devices: Arc<Watch<Vec<Device>>>,
        gate: Arc<Gate>,
        injection: Injection,
        on_stream: OnStream,
        metrics: Arc<Metrics>,
    ) -> Self {
        Service {
            plugin,
            devices,
            gate,
            streams: Arc::default(),
            injection,
            on_stream,
            metrics,
        }
    }

    /// The open streams of this service.
    pub fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    fn stream_changed(&self, change: StreamChange) {
        self.streams.change(change);
        (self.on_stream)(change);
    }

    fn allocate_one(
        &self,
        ids: &[String],
    ) -> std::result::Result<api::ContainerAllocateResponse, AllocError> {
        let devices = self.devices.get();
        let alloc = plugin::allocate(self.plugin.as_ref(), &devices, ids, self.injection)?;
        let mut resp = api::ContainerAllocateResponse::new();
        resp.cdi_devices = alloc
            .cdi_devices
            .into_iter()
            .map(|name| api::CDIDevice {
                name,
                ..Default::default()
            })
            .collect();
        resp.devices = alloc
            .nodes
            .into_iter()
            .map(|n| api::DeviceSpec {
                container_path: n.container_path,
                host_path: n.host_path.display().to_string(),
                // Read and write, never mknod.
                permissions: "rw".into(),
                ..Default::default()
            })
            .collect();
        Ok(resp)
    }

    /// The answer to an Allocate request: one container response per
    /// container request, in order, or the first refusal's message (sent as
    /// INVALID_ARGUMENT). The gRPC handler and the fuzz harness call this.
    pub fn allocate_response(
        &self,
        req: &api::AllocateRequest,
    ) -> std::result::Result<api::AllocateResponse, String> {
        if req.container_requests.is_empty() {
            return Err("no container requests".to_string());
        }
        let container_responses = req
            .container_requests
            .iter()
            .map(|c| self.allocate_one(&c.devices_ids).map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(api::AllocateResponse {
            container_responses,
            ..Default::default()
        })
    }
}

fn reply<T: Send + 'static>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    result: std::result::Result<T, RpcStatus>,
) {
    let done = match result {
        Ok(resp) => sink.success(resp),
        Err(status) => sink.fail(status),
    };
    ctx.spawn(done.map(|r| {
        if let Err(e) = r {
            log::debug!("reply not delivered: {e}");
        }
    }));
}

impl api_grpc::DevicePlugin for Service {
    fn get_device_plugin_options(
        &mut self,
        ctx: RpcContext,
        _req: api::Empty,
        sink: UnarySink<api::DevicePluginOptions>,
    ) {
        reply(&ctx, sink, Ok(options()));
    }

    fn list_and_watch(
        &mut self,
        ctx: RpcContext,
        _req: api::Empty,
        mut sink: ServerStreamingSink<api::ListAndWatchResponse>,
    ) {
        let resource = self.plugin.resource().to_string();
        log::info!("ListAndWatch opened resource={resource}");
        self.stream_changed(StreamChange::Opened);
        let this = self.clone();
        let gate = self.gate.clone();
        let closed_resource = resource.clone();
        let mut updates = self
            .devices
            .subscribe()
            .take_until(Box::pin(self.gate.when(|reason| reason.is_some())))
            .map(move |devices| {
                let healthy = devices
                    .iter()
                    .filter(|d| d.health == Health::Healthy)
                    .count();
                log::info!(
                    "device list sent resource={resource} devices={} healthy={healthy}",
                    devices.len()
                );
                Ok((list_response(&devices), WriteFlags::default()))
            });
        // The stream runs as a future on grpcio's poll thread: no thread per
        // stream, and a client that goes away ends it at once.
        ctx.spawn(async move {
            let ended = match sink.send_all(&mut updates).await {
                // The gate closed: every stream of the generation ends the
                // same way, UNAVAILABLE with the reason, which the kubelet
                // logs ("ListAndWatch ended unexpectedly ... err=..."). Any
                // end counts as a disconnect to it; this one says why.
                Ok(()) => {
                    let why = (*gate.get()).unwrap_or("server stopped");
                    let status = RpcStatus::with_message(
                        RpcStatusCode::UNAVAILABLE,
                        format!("kubelet-plugin: {why}"),
                    );
                    match sink.fail(status).await {
                        Ok(()) => format!("ended by us: {why}"),
                        Err(e) => format!("ended by us ({why}), status not delivered: {e}"),
                    }
                }
                Err(e) => format!("client gone: {e}"),
            };
            log::info!("ListAndWatch closed resource={closed_resource} why=\"{ended}\"");
            this.stream_changed(StreamChange::Closed);
        });
    }

    fn get_preferred_allocation(
        &mut self,
        ctx: RpcContext,
        req: api::PreferredAllocationRequest,
        sink: UnarySink<api::PreferredAllocationResponse>,
    ) {
        let mut resp = api::PreferredAllocationResponse::new();
        for creq in &req.container_requests {
            resp.container_responses.push(preferred(creq));
        }
        reply(&ctx, sink, Ok(resp));
    }

    fn allocate(
        &mut self,
        ctx: RpcContext,
        req: api::AllocateRequest,
        sink: UnarySink<api::AllocateResponse>,
    ) {
        let resource = self.plugin.resource();
        let result = match self.allocate_response(&req) {
            Ok(resp) => {
                for (creq, cresp) in req.container_requests.iter().zip(&resp.container_responses) {
                    let cdi: Vec<_> = cresp.cdi_devices.iter().map(|c| c.name.as_str()).collect();
                    log::info!(
                        "allocated resource={resource} devices={} cdi={} specs={}",
                        creq.devices_ids.join(","),
                        cdi.join(","),
                        cresp.devices.len()
                    );
                }
                self.metrics.allocated(resource);
                Ok(resp)
            }
            Err(msg) => {
                log::warn!("allocate refused resource={resource}: {msg}");
                self.metrics.allocation_failed(resource, "INVALID_ARGUMENT");
                Err(RpcStatus::with_message(
                    RpcStatusCode::INVALID_ARGUMENT,
                    msg,
                ))
            }
        };
        reply(&ctx, sink, result);
    }

    fn pre_start_container(
        &mut self,
        ctx: RpcContext,
        _req: api::PreStartContainerRequest,
        sink: UnarySink<api::PreStartContainerResponse>,
    ) {
        // Nothing to prepare before a container starts.
        reply(&ctx, sink, Ok(api::PreStartContainerResponse::new()));
    }
}

/// The ListAndWatch message for a device list.
pub fn list_response(devices: &[Device]) -> api::ListAndWatchResponse {
    api::ListAndWatchResponse {
        devices: devices
            .iter()
            .map(|d| api::Device {
                ID: d.id.clone(),
                health: d.health.as_str().into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A preference that honours the contract: every must-include ID first,
/// then available ones, `allocation_size` in all (fewer if not enough).
fn preferred(
    req: &api::ContainerPreferredAllocationRequest,
) -> api::ContainerPreferredAllocationResponse {
    let size = usize::try_from(req.allocation_size).unwrap_or(0);
    let mut ids: Vec<String> = Vec::with_capacity(size);
    for id in req
        .must_include_deviceIDs
        .iter()
        .chain(&req.available_deviceIDs)
    {
        if ids.len() == size {
            break;
        }
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    api::ContainerPreferredAllocationResponse {
        deviceIDs: ids,
        ..Default::default()
    }
}

/// The plugin watcher's Registration service (`plugins-registry` mode),
/// served beside the DevicePlugin service on the same socket: GetInfo
/// names the resource and that socket as the endpoint, and the kubelet's
/// NotifyRegistrationStatus goes to `on_status`.
#[derive(Clone)]
pub struct RegistrationService {
    info: pluginregistration::PluginInfo,
    on_status: Arc<dyn Fn(std::result::Result<(), String>) + Send + Sync>,
}

/// The PluginInfo `type` of a device plugin.
pub const DEVICE_PLUGIN_TYPE: &str = "DevicePlugin";

impl RegistrationService {
    /// The service for `resource` served on `socket`.
    pub fn new(
        resource: &str,
        socket: &Path,
        on_status: Arc<dyn Fn(std::result::Result<(), String>) + Send + Sync>,
    ) -> Self {
        RegistrationService {
            info: pluginregistration::PluginInfo {
                type_: DEVICE_PLUGIN_TYPE.into(),
                name: resource.into(),
                // Dialled verbatim by the kubelet, so absolute: this socket.
                endpoint: socket.display().to_string(),
                supported_versions: vec![API_VERSION.into()],
                ..Default::default()
            },
            on_status,
        }
    }
}

impl pluginregistration_grpc::Registration for RegistrationService {
    fn get_info(
        &mut self,
        ctx: RpcContext,
        _req: pluginregistration::InfoRequest,
        sink: UnarySink<pluginregistration::PluginInfo>,
    ) {
        log::debug!("GetInfo from the kubelet resource={}", self.info.name);
        reply(&ctx, sink, Ok(self.info.clone()));
    }

    fn notify_registration_status(
        &mut self,
        ctx: RpcContext,
        req: pluginregistration::RegistrationStatus,
        sink: UnarySink<pluginregistration::RegistrationStatusResponse>,
    ) {
        (self.on_status)(if req.plugin_registered {
            Ok(())
        } else {
            Err(req.error)
        });
        reply(
            &ctx,
            sink,
            Ok(pluginregistration::RegistrationStatusResponse::new()),
        );
    }
}

/// Our status service, beside the DevicePlugin service on each socket: the
/// device list with the reason of every unhealthy device, which
/// ListAndWatch has no field for (`kubelet-plugin status` reads it).
#[derive(Clone)]
pub struct StatusService {
    resource: String,
    devices: Arc<Watch<Vec<Device>>>,
    registration: &'static str,
    state: Arc<dyn Fn() -> String + Send + Sync>,
}

impl StatusService {
    /// The status of `resource` from its snapshot; `state` tells the
    /// supervisor's state of the plugin.
    pub fn new(
        resource: &str,
        devices: Arc<Watch<Vec<Device>>>,
        registration: &'static str,
        state: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> Self {
        StatusService {
            resource: resource.into(),
            devices,
            registration,
            state,
        }
    }
}

impl status_grpc::Status for StatusService {
    fn devices(
        &mut self,
        ctx: RpcContext,
        _req: status::DevicesRequest,
        sink: UnarySink<status::DevicesResponse>,
    ) {
        let devices = self.devices.get();
        let resp = status::DevicesResponse {
            resource: self.resource.clone(),
            devices: devices
                .iter()
                .map(|d| status::DeviceStatus {
                    id: d.id.clone(),
                    health: d.health.as_str().into(),
                    reason: d
                        .health
                        .reason()
                        .map(|r| r.code().into())
                        .unwrap_or_default(),
                    why: d.health.reason().map(|r| r.to_string()).unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            registration: self.registration.into(),
            state: (self.state)(),
            ..Default::default()
        };
        reply(&ctx, sink, Ok(resp));
    }
}

/// Whether a server answers on the unix socket at `path`.
pub fn socket_answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Binds and starts a grpcio server for `service`, `status` (and
/// `registration`, in `plugins-registry` mode) on the unix socket `path`,
/// mode 0600.
///
/// grpcio silently replaces a socket file even while a live server uses it,
/// so a socket that answers is refused (another instance runs there); one
/// that does not is stale (left by a killed process) and is removed.
///
/// The socket is bound under a dot name beside `path` and renamed into
/// place once the server is started: whoever watches the dir (the
/// kubelet's plugin watcher) never finds it bound but not yet listening,
/// which refuses a connection. Dropping the server leaves `path` behind:
/// [`remove_socket`] removes it.
pub fn serve(
    env: Arc<Environment>,
    service: Service,
    status: StatusService,
    registration: Option<RegistrationService>,
    path: &Path,
) -> Result<Server> {
    if std::fs::symlink_metadata(path).is_ok() {
        if socket_answers(path) {
            return Err(Error::Busy(format!(
                "another process is serving on {}: refusing to take its socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))?;
        log::info!("removed stale socket path={}", path.display());
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let bound_at = path.with_file_name(format!(".{name}.tmp"));
    match std::fs::remove_file(&bound_at) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("remove stale socket", &bound_at, e));
        }
        _ => {}
    }
    let mut builder = ServerBuilder::new(env)
        .register_service(api_grpc::create_device_plugin(service))
        .register_service(status_grpc::create_status(status));
    if let Some(registration) = registration {
        builder =
            builder.register_service(pluginregistration_grpc::create_registration(registration));
    }
    let mut server = builder.build().map_err(|source| Error::Grpc {
        op: "build gRPC server".into(),
        source,
    })?;
    // Sockets are made 0777 minus the umask and grpcio has no mode option:
    // narrow the umask around the bind so only root can connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = server.add_listening_port(
        format!("unix:{}", bound_at.display()),
        ServerCredentials::insecure(),
    );
    nix::sys::stat::umask(old);
    bound.map_err(|source| Error::Grpc {
        op: format!("bind plugin socket {}", bound_at.display()),
        source,
    })?;
    server.start();
    std::fs::rename(&bound_at, path)
        .map_err(|e| Error::io("move socket into place at", path, e))?;
    Ok(server)
}

/// Removes the socket at `path` if it is still `ours` (a server dropped
/// leaves it, see [`serve`]); someone else's file there is left alone.
pub fn remove_socket(path: &Path, ours: crate::kubelet::SocketId) {
    if crate::kubelet::socket_id(path) == Some(ours)
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove socket {}: {e}", path.display());
    }
}

/// Checks that the DevicePlugin service at `path` answers a call within
/// `timeout`, without blocking the caller: `done` gets the outcome on
/// grpcio's poll thread (so it must not block). The kubelet dials back
/// inside Register, so we register only once our own socket answers.
pub fn check_serving(
    env: Arc<Environment>,
    path: &Path,
    timeout: Duration,
    done: impl FnOnce(std::result::Result<(), String>) + Send + 'static,
) -> Result<()> {
    let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", path.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    let opt = CallOption::default().wait_for_ready(true).timeout(timeout);
    let call = client
        .get_device_plugin_options_async_opt(&api::Empty::new(), opt)
        .map_err(|source| Error::Grpc {
            op: format!("check plugin socket {} answers", path.display()),
            source,
        })?;
    // The call dies with its channel: keep the client until the answer.
    let keep = client.clone();
    client.spawn(async move {
        let _client = keep;
        done(call.await.map(drop).map_err(|e| e.to_string()));
    });
    Ok(())
}
