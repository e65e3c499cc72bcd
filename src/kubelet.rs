//! Talking to the kubelet: the only code that touches `kubelet.sock`. It
//! builds the Register request and sends it without blocking the caller, and
//! identifies a socket file by device and inode, so a recreated
//! `kubelet.sock` (a kubelet restart) is told apart from the old one.

use std::{
    os::unix::fs::FileTypeExt, os::unix::fs::MetadataExt, path::Path, sync::Arc, time::Duration,
};

use futures_util::future::{AbortHandle, Aborted, abortable};
use grpcio::{CallOption, ChannelBuilder, Environment};

use crate::{
    api::{api, api_grpc},
    error::{Error, Result},
    plugin::Plugin,
    server,
};

/// The only API version the kubelet accepts.
pub const API_VERSION: &str = "v1beta1";

/// The kubelet's socket file name in the device plugin dir.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// Identifies one socket file. A recreated file may get the inode number
/// of the one it replaces (seen here: the kubelet's and the simulator's
/// restarts), so its change time, to the nanosecond, is part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// The id of the socket at `path`; `None` if there is none (missing, or not
/// a socket).
pub fn socket_id(path: &Path) -> Option<SocketId> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| SocketId {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// The Register request for `plugin`: the endpoint is the bare socket file
/// name (the kubelet joins it onto its own dir) and the options are exactly
/// what GetDevicePluginOptions answers.
pub fn register_request(plugin: &dyn Plugin) -> api::RegisterRequest {
    api::RegisterRequest {
        version: API_VERSION.into(),
        endpoint: plugin.socket_name(),
        resource_name: plugin.resource().into(),
        options: Some(server::options()).into(),
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
