//! Register on `kubelet.sock` (`kubelet-sock` mode), sent without blocking
//! the caller, and what a device plugin tells the kubelet of itself in
//! either mode. The only code that calls `kubelet.sock`.

use std::{path::Path, sync::Arc, time::Duration};

use futures_util::future::{AbortHandle, Aborted, abortable};
use grpcio::{CallOption, ChannelBuilder, Environment};

use crate::{
    api::{api, api_grpc, pluginregistration},
    error::{Error, Result},
};

/// The only API version the kubelet accepts.
pub const API_VERSION: &str = "v1beta1";

/// The PluginInfo `type` of a device plugin.
pub const DEVICE_PLUGIN_TYPE: &str = "DevicePlugin";

/// The options we announce, in Register and in GetDevicePluginOptions alike
/// (kubelets before 1.25 read the first, later ones the second).
/// GetPreferredAllocation is asked for: the kubelet then lets us pick among
/// the devices it may give, and we keep a container on one NUMA node.
/// PreStartContainer still answers, though it is never needed.
pub fn options() -> api::DevicePluginOptions {
    api::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
        ..Default::default()
    }
}

/// The Register request for `resource` served on the socket file
/// `socket_name`: the endpoint is the bare file name (the kubelet joins it
/// onto its own dir) and the options are exactly what
/// GetDevicePluginOptions answers.
pub fn register_request(resource: &str, socket_name: &str) -> api::RegisterRequest {
    api::RegisterRequest {
        version: API_VERSION.into(),
        endpoint: socket_name.into(),
        resource_name: resource.into(),
        options: Some(options()).into(),
        ..Default::default()
    }
}

/// Sends Register to the kubelet at `kubelet_sock` and returns at once;
/// `done` gets the answer on grpcio's poll thread (so it must not block).
/// Aborting the handle cancels the call and `done` is never called.
///
/// The kubelet dials us back and asks for our options inside Register, so
/// the deadline must leave room for that.
pub fn register_async(
    env: Arc<Environment>,
    kubelet_sock: &Path,
    req: &api::RegisterRequest,
    timeout: Duration,
    done: impl FnOnce(std::result::Result<(), String>) + Send + 'static,
) -> Result<AbortHandle> {
    let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", kubelet_sock.display()));
    let client = api_grpc::RegistrationClient::new(channel);
    let call = client
        .register_async_opt(req, CallOption::default().timeout(timeout))
        .map_err(|source| Error::Grpc {
            op: format!("call Register on {}", kubelet_sock.display()),
            source,
        })?;
    let (call, handle) = abortable(call);
    // The call dies with its channel: keep the client until the answer.
    let keep = client.clone();
    client.spawn(async move {
        let _client = keep;
        match call.await {
            Ok(Ok(_)) => done(Ok(())),
            Ok(Err(e)) => done(Err(e.to_string())),
            Err(Aborted) => {}
        }
    });
    Ok(handle)
}

/// What GetInfo answers the kubelet's plugin watcher for `resource`
/// served on `socket` (`plugins-registry` mode).
pub fn plugin_info(resource: &str, socket: &Path) -> pluginregistration::PluginInfo {
    pluginregistration::PluginInfo {
        type_: DEVICE_PLUGIN_TYPE.into(),
        name: resource.into(),
        // Dialled verbatim by the kubelet, so absolute: this socket.
        endpoint: socket.display().to_string(),
        supported_versions: vec![API_VERSION.into()],
        ..Default::default()
    }
}
