//! gRPC on unix sockets, as every server of ours needs it: binding a
//! socket safely (never taking one a live server uses, mode 0600, moved
//! into place only once it serves), answering unary calls without
//! blocking grpcio's poll thread, and streams that follow a value until
//! their server generation's [`Gate`] closes.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::{FutureExt as _, SinkExt as _, Stream, StreamExt as _};
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials,
    ServerStreamingSink, UnarySink, WriteFlags,
};

use crate::{
    error::{Error, Result},
    socket::socket_answers,
    watch::Watch,
};

/// The CPU count grpc's C core sizes its pools by, whatever the machine
/// has: its event engine keeps this many threads (at least 2), its
/// executors grow to twice this under load. A node agent serves a handful
/// of sockets; with this, its thread count is the same on 2 cores and 64.
pub const GRPC_CPUS: u32 = 1;

/// grpc's `gpr_cpu_num_cores`, as the linker (`--wrap`, see `build.rs`)
/// makes the C core call it.
#[unsafe(no_mangle)]
pub extern "C" fn __wrap_gpr_cpu_num_cores() -> std::ffi::c_uint {
    GRPC_CPUS
}

/// The gate of one server generation: `None` while it serves; closing it
/// (publishing the reason) ends every stream of the generation with status
/// UNAVAILABLE and that reason.
pub type Gate = Watch<Option<&'static str>>;

/// Sends `values` on `sink` (each made a message by `message`) until the
/// client goes or `gate` closes; then ends the stream: a closed gate with
/// UNAVAILABLE and its reason, which the kubelet logs ("ListAndWatch ended
/// unexpectedly ... err=..."), since any end is a disconnect to it and this
/// one says why. Runs as a future on grpcio's poll thread: no thread per
/// stream, and a client that goes away ends it at once. Returns how it
/// ended, for a log line.
pub async fn follow<T, V, S>(
    mut sink: ServerStreamingSink<T>,
    values: S,
    gate: Arc<Gate>,
    mut message: impl FnMut(V) -> T,
) -> String
where
    S: Stream<Item = V> + Unpin,
{
    let mut updates = values
        .take_until(Box::pin(gate.when(|reason| reason.is_some())))
        .map(|v| Ok((message(v), WriteFlags::default())));
    match sink.send_all(&mut updates).await {
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
    }
}

/// Sends the answer of a unary call; a client gone meanwhile is logged.
pub fn reply<T: Send + 'static>(
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

/// Binds and starts a grpcio server for `services` on the unix sockets
/// `paths` (every service on each), mode 0600.
///
/// grpcio silently replaces a socket file even while a live server uses it,
/// so a socket that answers is refused (another instance runs there); one
/// that does not is stale (left by a killed process) and is removed.
///
/// Each socket is bound under a dot name beside its path and renamed into
/// place, in the order given, once the server is started: whoever watches
/// the dir (the kubelet's plugin watcher) never finds it bound but not yet
/// listening, which refuses a connection. Dropping the server leaves the
/// sockets behind: [`crate::socket::remove_socket`] removes them.
pub fn serve(
    env: Arc<Environment>,
    services: Vec<grpcio::Service>,
    paths: &[&Path],
) -> Result<Server> {
    for path in paths {
        clear(path)?;
    }
    let builder = services
        .into_iter()
        .fold(ServerBuilder::new(env), ServerBuilder::register_service);
    let mut server = builder.build().map_err(|source| Error::Grpc {
        op: "build gRPC server".into(),
        source,
    })?;
    let bound: Vec<PathBuf> = paths.iter().map(|p| dot_name(p)).collect();
    for at in &bound {
        // Sockets are made 0777 minus the umask and grpcio has no mode
        // option: narrow the umask around the bind so only root can connect.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let result = server.add_listening_port(
            format!("unix:{}", at.display()),
            ServerCredentials::insecure(),
        );
        nix::sys::stat::umask(old);
        result.map_err(|source| Error::Grpc {
            op: format!("bind socket {}", at.display()),
            source,
        })?;
    }
    server.start();
    for (at, path) in bound.iter().zip(paths) {
        std::fs::rename(at, path).map_err(|e| Error::io("move socket into place at", path, e))?;
    }
    Ok(server)
}

/// Where `path`'s socket is bound before it is moved into place.
fn dot_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Makes way for a socket at `path`: refused when someone answers there; a
/// stale socket (and a stale dot name) removed.
fn clear(path: &Path) -> Result<()> {
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
    let at = dot_name(path);
    match std::fs::remove_file(&at) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove stale socket", &at, e))
        }
        _ => Ok(()),
    }
}
