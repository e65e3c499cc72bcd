//! `kubelet-plugin status`: what every running plugin of ours says of its
//! devices, with the reason of each unhealthy one, and with `--pods` which
//! pod holds which device (the kubelet's pod-resources API), for an
//! operator on a node without kubectl and for scripts (`--output json`).
//!
//! Our plugins are found by their resource locks in the CDI dir (a lock
//! names its resource, and a socket follows from it in either registration
//! mode, or the DRA driver's socket from its domain); each answers on its
//! socket through our own status service, beside the kubelet's services:
//! no network port, no extra socket, the reasons straight from the device
//! snapshot. A DRA driver also tells its slices and prepared claims
//! ([`dra`]).

mod dra;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment};

use crate::{
    api::{podresources, podresources_grpc, status, status_grpc},
    error::{Error, Result},
    json::json_str,
    lockfile, socket,
};

/// How long one plugin, or the kubelet, may take to answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);

/// The default pod-resources socket of the kubelet.
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// What `status` is asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the sockets are in `kubelet-sock` mode.
    pub device_plugin_dir: PathBuf,
    /// Where the plugins' resource locks are.
    pub cdi_dir: PathBuf,
    /// Where the sockets are in `plugins-registry` mode.
    pub plugins_registry_dir: PathBuf,
    /// Where a DRA driver's socket is: `<it>/<domain>/dra.sock`.
    pub dra_plugin_dir: PathBuf,
    /// Ask the kubelet which pod holds which device, on this socket.
    pub pods: Option<PathBuf>,
    /// JSON instead of text.
    pub json: bool,
    /// A liveness probe: only whether every plugin answers counts.
    pub liveness: bool,
}

/// How `status` ends, when it could ask every plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every plugin answers and every device is healthy (or `liveness`).
    Healthy,
    /// Every plugin answers; some device is unhealthy.
    Unhealthy,
}

impl Outcome {
    /// The exit code: 0, or 3 for some device unhealthy (2 is "no plugin,
    /// or one does not answer", an error).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Unhealthy => 3,
        }
    }
}

/// A device's health as a plugin reports it: the kubelet takes anything
/// but the exact "Healthy" as unhealthy, and so does `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    fn parse(wire: &str) -> Health {
        if wire == "Healthy" {
            Health::Healthy
        } else {
            Health::Unhealthy
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Unhealthy => "Unhealthy",
        }
    }
}

/// One device as a plugin reports it.
#[derive(Debug)]
struct DeviceReport {
    id: String,
    health: Health,
    /// The reason's code and sentence, for an unhealthy device.
    reason: Option<(String, String)>,
}

/// What one plugin answered.
#[derive(Debug)]
struct Answer {
    registration: String,
    state: String,
    devices: Vec<DeviceReport>,
}

impl Answer {
    fn from_wire(a: status::DevicesResponse) -> Answer {
        let devices = a
            .devices
            .into_iter()
            .map(|d| DeviceReport {
                health: Health::parse(&d.health),
                reason: (!d.reason.is_empty()).then_some((d.reason, d.why)),
                id: d.id,
            })
            .collect();
        Answer {
            registration: a.registration,
            state: a.state,
            devices,
        }
    }

    fn healthy(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.health == Health::Healthy)
            .count()
    }
}

/// One plugin of ours as `status` found it.
#[derive(Debug)]
struct Found {
    resource: String,
    socket: Option<PathBuf>,
    answer: std::result::Result<Answer, String>,
}

fn ask(env: &Arc<Environment>, sock: &Path) -> std::result::Result<Answer, String> {
    let channel = ChannelBuilder::new(env.clone()).connect(&format!("unix:{}", sock.display()));
    status_grpc::StatusClient::new(channel)
        .devices_opt(
            &status::DevicesRequest::new(),
            CallOption::default().timeout(TIMEOUT),
        )
        .map(Answer::from_wire)
        .map_err(|e| e.to_string())
}

/// A container that holds a device, as the pod-resources API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    namespace: String,
    pod: String,
    container: String,
}

impl Holder {
    fn to_json(&self) -> String {
        format!(
            "{{\"namespace\": {}, \"pod\": {}, \"container\": {}}}",
            json_str(&self.namespace),
            json_str(&self.pod),
            json_str(&self.container)
        )
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// Who holds each device: (resource, device ID) -> its holders.
type Holders = BTreeMap<(String, String), Vec<Holder>>;

/// Who holds each device, from the kubelet's pod-resources API at `sock`.
fn holders(env: &Arc<Environment>, sock: &Path) -> Result<Holders> {
    let channel = ChannelBuilder::new(env.clone()).connect(&format!("unix:{}", sock.display()));
    let list = podresources_grpc::PodResourcesListerClient::new(channel)
        .list_opt(
            &podresources::ListPodResourcesRequest::new(),
            CallOption::default().timeout(TIMEOUT),
        )
        .map_err(|source| Error::Grpc {
            op: format!("ask the kubelet's pod-resources API on {}", sock.display()),
            source,
        })?;
    let mut held = Holders::new();
    for pod in &list.pod_resources {
        for c in &pod.containers {
            for d in &c.devices {
                for id in &d.device_ids {
                    held.entry((d.resource_name.clone(), id.clone()))
                        .or_default()
                        .push(Holder {
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: c.name.clone(),
                        });
                }
            }
        }
    }
    Ok(held)
}

/// Asks every plugin of ours and prints what they say; the outcome, or an
/// error when there is none or one does not answer.
pub fn run(opts: &Options) -> Result<Outcome> {
    let resources = lockfile::locked_resources(&opts.cdi_dir);
    if resources.is_empty() {
        return Err(Error::Invalid(format!(
            "no kubelet-plugin resources in {} (no resource locks there)",
            opts.cdi_dir.display()
        )));
    }
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let drivers = ask_drivers(&env, opts, &resources);
    let by_dra = |r: &str| {
        drivers
            .iter()
            .any(|d| d.devices.iter().any(|x| x.resource == r))
    };
    let found: Vec<Found> = resources
        .into_iter()
        .filter(|r| !by_dra(r))
        .map(|resource| ask_plugin(&env, opts, resource))
        .collect();
    let held = match &opts.pods {
        Some(sock) if !found.is_empty() => Some(holders(&env, sock)?),
        _ => None,
    };
    if opts.json {
        let dra: Vec<String> = drivers.iter().map(dra::to_json).collect();
        println!(
            "{{\"plugins\": [{}], \"dra\": [{}]}}",
            to_json(&found, held.as_ref()),
            dra.join(", ")
        );
    } else {
        print_text(&found, held.as_ref());
        drivers.iter().for_each(dra::print_text);
    }
    let silent: Vec<&str> = found
        .iter()
        .filter(|f| f.answer.is_err())
        .map(|f| f.resource.as_str())
        .collect();
    if !silent.is_empty() {
        return Err(Error::Invalid(format!(
            "not answering: {}",
            silent.join(", ")
        )));
    }
    let unhealthy = found.iter().any(|f| {
        f.answer
            .as_ref()
            .is_ok_and(|a| a.healthy() < a.devices.len())
    }) || drivers.iter().any(dra::unhealthy);
    Ok(if unhealthy && !opts.liveness {
        Outcome::Unhealthy
    } else {
        Outcome::Healthy
    })
}

/// The DRA drivers of ours that answer: one per domain of the locked
/// resources, on `<dra-plugin-dir>/<domain>/dra.sock`.
fn ask_drivers(env: &Arc<Environment>, opts: &Options, resources: &[String]) -> Vec<dra::Answer> {
    let mut domains: Vec<&str> = resources
        .iter()
        .filter_map(|r| r.split_once('/').map(|(d, _)| d))
        .collect();
    domains.sort_unstable();
    domains.dedup();
    domains
        .into_iter()
        .map(|d| opts.dra_plugin_dir.join(d).join("dra.sock"))
        .filter(|sock| sock.exists())
        .filter_map(|sock| dra::ask(env, &sock).ok())
        .collect()
}

/// Asks the device plugin serving `resource`, on its socket in either
/// registration mode.
fn ask_plugin(env: &Arc<Environment>, opts: &Options, resource: String) -> Found {
    let there: Vec<PathBuf> = socket::socket_paths(
        &resource,
        &opts.device_plugin_dir,
        &opts.plugins_registry_dir,
    )
    .into_iter()
    .filter(|s| s.exists())
    .collect();
    let mut answer = Err("not running: no socket (a lock left by a killed instance)".into());
    let mut socket = None;
    for s in there {
        answer = ask(env, &s);
        socket = Some(s);
        if answer.is_ok() {
            break;
        }
    }
    Found {
        resource,
        socket,
        answer,
    }
}

fn print_text(found: &[Found], held: Option<&Holders>) {
    for f in found {
        let file = f
            .socket
            .as_ref()
            .and_then(|s| s.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "no socket".into());
        match &f.answer {
            Ok(a) => {
                println!(
                    "{} ({file}, {}, {}): {} devices, {} healthy",
                    f.resource,
                    a.registration,
                    a.state,
                    a.devices.len(),
                    a.healthy()
                );
                for d in &a.devices {
                    let mut line = format!("    {:<12} {:<9}", d.id, d.health.as_str());
                    if let Some((code, why)) = &d.reason {
                        line.push_str(&format!(" {code}: {why}"));
                    }
                    if let Some(held) = held {
                        let by = held
                            .get(&(f.resource.clone(), d.id.clone()))
                            .map(|hs| {
                                hs.iter()
                                    .map(Holder::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_else(|| "-".into());
                        line.push_str(&format!(" pod={by}"));
                    }
                    println!("{}", line.trim_end());
                }
            }
            Err(e) => println!("{} ({file}): not answering: {e}", f.resource),
        }
    }
}

/// `s` as a JSON string, or `null`.
fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

fn device_json(resource: &str, d: &DeviceReport, held: Option<&Holders>) -> String {
    let pods = held
        .map(|h| {
            let list: Vec<String> = h
                .get(&(resource.to_string(), d.id.clone()))
                .map(|hs| hs.iter().map(Holder::to_json).collect())
                .unwrap_or_default();
            format!(", \"pods\": [{}]", list.join(", "))
        })
        .unwrap_or_default();
    let (reason, why) = match &d.reason {
        Some((code, why)) => (Some(code.as_str()), Some(why.as_str())),
        None => (None, None),
    };
    format!(
        "{{\"id\": {}, \"health\": {}, \"reason\": {}, \"why\": {}{pods}}}",
        json_str(&d.id),
        json_str(d.health.as_str()),
        json_opt(reason),
        json_opt(why)
    )
}

/// The plugins as the items of a JSON list.
fn to_json(found: &[Found], held: Option<&Holders>) -> String {
    let plugins: Vec<String> = found
        .iter()
        .map(|f| {
            let socket = json_opt(f.socket.as_ref().map(|s| s.display().to_string()).as_deref());
            match &f.answer {
                Ok(a) => {
                    let devices: Vec<String> = a
                        .devices
                        .iter()
                        .map(|d| device_json(&f.resource, d, held))
                        .collect();
                    format!(
                        "{{\"resource\": {}, \"socket\": {socket}, \"answering\": true, \"registration\": {}, \"state\": {}, \"devices\": [{}]}}",
                        json_str(&f.resource),
                        json_str(&a.registration),
                        json_str(&a.state),
                        devices.join(", ")
                    )
                }
                Err(e) => format!(
                    "{{\"resource\": {}, \"socket\": {socket}, \"answering\": false, \"error\": {}}}",
                    json_str(&f.resource),
                    json_str(e)
                ),
            }
        })
        .collect();
    plugins.join(", ")
}
