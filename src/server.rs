//! The DevicePlugin gRPC service of one plugin and the grpcio server that
//! serves it on `<device-plugin-dir>/<socket>`.
//!
//! The service reads the plugin's device snapshot (a [`Watch`]) and knows
//! nothing of the supervisor: it reports ListAndWatch streams opening and
//! closing through a callback. Handlers never block: the grpcio poll thread
//! runs them.

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use grpcio::{
    ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder,
    ServerCredentials, ServerStreamingSink, UnarySink, WriteFlags,
};

use crate::{
    api::{api, api_grpc},
    device::{Device, Health},
    error::{Error, Result},
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

/// The DevicePlugin service of one plugin.
#[derive(Clone)]
pub struct Service {
    plugin: Arc<dyn Plugin>,
    devices: Arc<Watch<Vec<Device>>>,
    injection: Injection,
    on_stream: OnStream,
}

impl Service {
    /// A service answering for `plugin` from the snapshot `devices`.
    pub fn new(
        plugin: Arc<dyn Plugin>,
        devices: Arc<Watch<Vec<Device>>>,
        injection: Injection,
        on_stream: OnStream,
    ) -> Self {
        Service {
            plugin,
            devices,
            injection,
            on_stream,
        }
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
        (self.on_stream)(StreamChange::Opened);
        let on_stream = self.on_stream.clone();
        let mut updates = self.devices.subscribe().map(move |devices| {
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
            match sink.send_all(&mut updates).await {
                // The snapshot was closed: the server is going down.
                Ok(()) => {
                    let _ = sink.close().await;
                }
                Err(e) => log::debug!("ListAndWatch stream ended: {e}"),
            }
            log::info!("ListAndWatch closed");
            on_stream(StreamChange::Closed);
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
                Ok(resp)
            }
            Err(msg) => {
                log::warn!("allocate refused resource={resource}: {msg}");
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

/// Whether a server answers on the unix socket at `path`.
pub fn socket_answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Binds and starts a grpcio server for `service` on the unix socket `path`.
///
/// grpcio silently replaces a socket file even while a live server uses it,
/// so a socket that answers is refused (another instance runs there); one
/// that does not is stale (left by a killed process) and is removed.
pub fn serve(env: Arc<Environment>, service: Service, path: &Path) -> Result<Server> {
    if path.exists() {
        if socket_answers(path) {
            return Err(Error::Invalid(format!(
                "another process is serving on {}: refusing to take its socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))?;
        log::info!("removed stale socket path={}", path.display());
    }
    let mut server = ServerBuilder::new(env)
        .register_service(api_grpc::create_device_plugin(service))
        .build()
        .map_err(|source| Error::Grpc {
            op: "build gRPC server".into(),
            source,
        })?;
    // Sockets are made 0777 minus the umask and grpcio has no mode option:
    // narrow the umask around the bind so only root can connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = server.add_listening_port(
        format!("unix:{}", path.display()),
        ServerCredentials::insecure(),
    );
    nix::sys::stat::umask(old);
    bound.map_err(|source| Error::Grpc {
        op: format!("bind plugin socket {}", path.display()),
        source,
    })?;
    server.start();
    Ok(server)
}

/// Waits until the DevicePlugin service at `path` answers a call, for at
/// most `timeout`: the kubelet dials back inside Register, so we register
/// only once our own socket answers.
pub fn wait_serving(env: Arc<Environment>, path: &Path, timeout: Duration) -> Result<()> {
    let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", path.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    let opt = grpcio::CallOption::default()
        .wait_for_ready(true)
        .timeout(timeout);
    client
        .get_device_plugin_options_opt(&api::Empty::new(), opt)
        .map(drop)
        .map_err(|source| Error::Grpc {
            op: format!("check plugin socket {} answers", path.display()),
            source,
        })
}

/// The socket path of `plugin` in `dir`.
pub fn socket_path(dir: &Path, plugin: &dyn Plugin) -> PathBuf {
    dir.join(plugin.socket_name())
}
