//! `kubelet-plugin status`: asks every plugin socket in the device plugin
//! dir for its devices, as the kubelet would (one ListAndWatch message),
//! for an operator on a node without kubectl.

use std::{path::Path, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment};

use crate::{
    api::{api, api_grpc},
    error::{Error, Result},
    kubelet::KUBELET_SOCKET,
    lockfile,
};

/// How long one plugin may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The first device list of the plugin at `sock`: `(ID, health)`.
pub fn devices(
    env: Arc<Environment>,
    sock: &Path,
) -> std::result::Result<Vec<(String, String)>, String> {
    let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", sock.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    let opt = CallOption::default().timeout(TIMEOUT);
    let mut stream = client
        .list_and_watch_opt(&api::Empty::new(), opt)
        .map_err(|e| e.to_string())?;
    match futures_executor::block_on(stream.next()) {
        Some(Ok(msg)) => Ok(msg.devices.into_iter().map(|d| (d.ID, d.health)).collect()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("stream ended without a device list".into()),
    }
}

/// Prints the devices of every plugin socket in `dir`, each under its
/// resource name when it is one of ours (a resource lock in `dir` names
/// it, and `<name>.sock` serves `<domain>/<name>`; `domain` is the guess
/// for a socket without a lock); fails when there is none or one does not
/// answer.
pub fn run(dir: &Path, domain: &str) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
    let mut socks: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| p.file_name().is_some_and(|n| n != KUBELET_SOCKET))
        .collect();
    socks.sort();
    if socks.is_empty() {
        return Err(Error::Invalid(format!(
            "no plugin sockets in {}",
            dir.display()
        )));
    }
    let ours = lockfile::locked_resources(dir);
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let mut silent = Vec::new();
    for sock in &socks {
        let file = sock.file_name().unwrap_or_default().to_string_lossy();
        // The API does not tell a plugin's resource; ours follow our naming.
        let name = file
            .strip_suffix(".sock")
            .and_then(|n| {
                ours.iter()
                    .find(|r| r.rsplit_once('/').is_some_and(|(_, part)| part == n))
                    .cloned()
                    .or_else(|| {
                        crate::plugin::KINDS
                            .iter()
                            .any(|k| k.name == n)
                            .then(|| format!("{domain}/{n}"))
                    })
            })
            .map(|r| format!("{r} ({file})"))
            .unwrap_or_else(|| file.to_string());
        match devices(env.clone(), sock) {
            Ok(devices) => {
                let healthy = devices.iter().filter(|(_, h)| h == "Healthy").count();
                println!("{name}: {} devices, {healthy} healthy", devices.len());
                for (id, health) in devices {
                    println!("    {id:<12} {health}");
                }
            }
            Err(e) => {
                println!("{name}: not answering: {e}");
                silent.push(file.into_owned());
            }
        }
    }
    if !silent.is_empty() {
        return Err(Error::Invalid(format!(
            "not answering: {}",
            silent.join(", ")
        )));
    }
    Ok(())
}
