//! The kubelet's DRA side in the simulator: what the kubelet does with a
//! DRA driver once its plugin watcher finds the driver's registration
//! socket (GetInfo says type `DRAPlugin`), as measured on real kubelets
//! (1.36.3 and 1.32.13) and read in the kubelet's `dra_plugin_manager.go`
//! and `manager.go`.
//!
//! - Registration ([`register`], called by the plugin watcher's pass on the
//!   `sim-registry` thread): the kubelet's checks of the GetInfo answer
//!   (`validate::dra_plugin_info`), a lazily connecting channel to
//!   `unix:<endpoint>`, NotifyRegistrationStatus, then (1.36) the health
//!   stream. A removed socket deregisters ([`deregister`]).
//! - Health (1.36 only): one `sim-dra-health` thread per registered
//!   instance keeps `/v1alpha1.DRAResourceHealth/NodeWatchResources` open,
//!   records every message, clears the driver's health whenever a stream
//!   exits and opens it again 5 s later, for ever, as the kubelet's
//!   `wait.UntilWithContext(.., 5*time.Second)` does. It blocks on the
//!   stream with `block_on` on its own thread, never on grpcio's.
//! - Calls ([`Sim::prepare`], [`Sim::unprepare`], on the caller's thread):
//!   NodePrepareResources and NodeUnprepareResources through the service
//!   chosen at registration, with the kubelet's 45 s deadline and its checks
//!   of the answer.
//!
//! Everything it sees goes out as [`SimEvent`]s on the simulator's channel.
//! It uses only the generated API.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use futures_util::{
    StreamExt as _,
    stream::{AbortHandle, abortable},
};
use grpcio::{CallOption, Channel, ChannelBuilder};

use super::{Shared, Sim, SimEvent, validate};
use crate::api::{
    dra_health, dra_health_grpc, dra_v1, dra_v1_grpc, dra_v1beta1_grpc, pluginregistration,
};

/// The plugin type a DRA driver's GetInfo names (`pluginregistration`'s
/// `DRAPlugin` constant).
pub const PLUGIN_TYPE: &str = "DRAPlugin";

/// The kubelet's deadline of each NodePrepareResources and
/// NodeUnprepareResources call (`defaultClientCallTimeout`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// How long after a health stream exits the kubelet opens it again.
pub const HEALTH_RETRY: Duration = Duration::from_secs(5);

/// Which kubelet the plugin watcher plays towards DRA drivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubeletVersion {
    /// 1.32: ignores `supported_versions` (anything registers), always calls
    /// `v1beta1.DRAPlugin`, opens no health stream; a new registration of a
    /// driver replaces its old one.
    V1_32,
    /// 1.36 (the default): takes the first of the plugin's
    /// `supported_versions` that it supports (`v1.DRAPlugin`,
    /// `v1beta1.DRAPlugin`), refuses a plugin offering neither, keeps one
    /// instance per endpoint (calls go to the newest), and follows each
    /// instance's health stream.
    #[default]
    V1_36,
}

impl FromStr for KubeletVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.32" => Ok(KubeletVersion::V1_32),
            "1.36" => Ok(KubeletVersion::V1_36),
            _ => Err(format!("unknown kubelet version {s:?}: 1.32 or 1.36")),
        }
    }
}

impl fmt::Display for KubeletVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KubeletVersion::V1_32 => "1.32",
            KubeletVersion::V1_36 => "1.36",
        })
    }
}

/// The kubelet's DRA service a driver is called through, chosen at
/// registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraService {
    /// `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin` (1.34 and later).
    V1,
    /// `k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin` (1.32 and later).
    V1beta1,
}

impl DraService {
    /// Its name in `supported_versions`: `v1.DRAPlugin`, `v1beta1.DRAPlugin`.
    pub fn name(self) -> &'static str {
        match self {
            DraService::V1 => "v1.DRAPlugin",
            DraService::V1beta1 => "v1beta1.DRAPlugin",
        }
    }

    /// The service a `supported_versions` entry names, if the kubelet knows it.
    pub fn from_name(name: &str) -> Option<DraService> {
        [DraService::V1, DraService::V1beta1]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

impl fmt::Display for DraService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A registered DRA driver: where the simulator calls it, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraRegistration {
    /// The driver's name, from GetInfo.
    pub driver: String,
    /// The socket dialled, as `unix:<endpoint>`.
    pub endpoint: String,
    /// The service chosen.
    pub service: DraService,
}

/// One device of a health message, as the kubelet reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraDeviceHealth {
    /// The device's pool.
    pub pool: String,
    /// The device's name.
    pub device: String,
    /// `Healthy`, `Unhealthy` or `Unknown`, the kubelet's strings.
    pub health: String,
    /// Why (1.36 and later), as sent.
    pub message: String,
    /// How long the report holds, in seconds (0: the kubelet's 30 s).
    pub timeout_seconds: i64,
    /// The driver's `last_updated_time`, Unix seconds (the kubelet uses its
    /// own receive time instead).
    pub last_updated: i64,
}

/// A device a driver prepared for a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedDevice {
    /// The claim's requests it serves (none: all).
    pub request_names: Vec<String>,
    /// Its pool.
    pub pool: String,
    /// Its name.
    pub device: String,
    /// Its fully qualified CDI names.
    pub cdi_ids: Vec<String>,
}

/// A claim as the kubelet names it to a driver: `(namespace, uid, name)`.
pub type ClaimRef<'a> = (&'a str, &'a str, &'a str);

/// NodePrepareResources' answer by claim UID: the devices, or the
/// kubelet's text of the claim's error.
pub type Prepared = BTreeMap<String, Result<Vec<PreparedDevice>, String>>;

/// NodeUnprepareResources' answer by claim UID.
pub type Unprepared = BTreeMap<String, Result<(), String>>;

/// The DRA drivers the plugin watcher registered, and what their health
/// streams last said. Lives in the simulator's shared state.
#[derive(Default)]
pub(super) struct Drivers {
    /// By driver name, in the order registered.
    instances: Mutex<HashMap<String, Vec<Instance>>>,
    /// By driver name: the last health message of a stream still open.
    health: Mutex<HashMap<String, Vec<DraDeviceHealth>>>,
}

/// One registered plugin instance of a driver. Dropping it cancels its
/// health stream and joins its thread: drop it with no lock held.
struct Instance {
    /// The registration socket it came through.
    socket: PathBuf,
    endpoint: String,
    service: DraService,
    version: KubeletVersion,
    channel: Channel,
    health: Option<HealthWatch>,
}

impl Drivers {
    /// Where and how to call `driver`: its newest instance, as the kubelet's
    /// `GetPlugin` picks it.
    fn target(&self, driver: &str) -> Result<(Channel, DraService, KubeletVersion), String> {
        if driver.is_empty() {
            return Err("DRA driver name is empty".into());
        }
        let instances = self.instances.lock().expect("sim lock");
        instances
            .get(driver)
            .and_then(|list| list.last())
            .map(|i| (i.channel.clone(), i.service, i.version))
            .ok_or_else(|| format!("DRA driver {driver} is not registered"))
    }

    /// Takes out the instance registered through `socket`.
    fn take(&self, driver: &str, socket: &Path) -> Option<Instance> {
        let mut instances = self.instances.lock().expect("sim lock");
        let list = instances.get_mut(driver)?;
        let at = list.iter().position(|i| i.socket == socket)?;
        let instance = list.remove(at);
        if list.is_empty() {
            instances.remove(driver);
        }
        Some(instance)
    }
}

/// The plugin watcher's registration of a DRA driver whose registration
/// socket `socket` answered GetInfo with `info`: the kubelet's checks, the
/// instance added, `notify` (NotifyRegistrationStatus: `None` for success,
/// else the error after `RegisterPlugin error -- `), then (1.36) the health
/// stream. Returns the driver when it registered; `None` has the plugin
/// watcher try again.
pub(super) fn register(
    shared: &Arc<Shared>,
    version: KubeletVersion,
    socket: &Path,
    info: &pluginregistration::PluginInfo,
    notify: &dyn Fn(Option<&str>) -> Result<(), String>,
) -> Option<String> {
    let driver = info.name.clone();
    let added = validate::dra_plugin_info(
        version,
        &info.name,
        &info.endpoint,
        &info.supported_versions,
        &socket.display().to_string(),
    )
    .map_err(|e| format!("plugin validation failed with err: {e}"))
    .and_then(|(endpoint, service)| {
        add(shared, version, socket, &driver, &endpoint, service)
            .map(|()| (endpoint, service))
            .map_err(|e| format!("plugin registration failed with err: {e}"))
    });
    let rejected = |error: String| {
        let _ = shared.events.send(SimEvent::DraRejected {
            driver: driver.clone(),
            socket: socket.to_path_buf(),
            error,
            at: Instant::now(),
        });
    };
    let (endpoint, service) = match added {
        Ok(added) => added,
        Err(error) => {
            let _ = notify(Some(&error));
            rejected(error);
            return None;
        }
    };
    // Only a status that reached the driver counts; the plugin watcher
    // tries the whole registration again.
    if let Err(error) = notify(None) {
        drop(shared.dra.take(&driver, socket));
        rejected(error);
        return None;
    }
    // The order a 1.36 driver sees: GetInfo, NotifyRegistrationStatus,
    // NodeWatchResources (measured; the kubelet starts the stream
    // concurrently, so it may come first once in a while).
    if version == KubeletVersion::V1_36 {
        start_health(shared, &driver, socket);
    }
    let _ = shared.events.send(SimEvent::DraRegistered {
        driver: driver.clone(),
        endpoint,
        service,
        at: Instant::now(),
    });
    Some(driver)
}

/// Adds an instance of `driver` at `endpoint` (the kubelet's
/// `DRAPluginManager.add`; 1.32 replaces the driver's old one). The channel
/// connects lazily, as `grpc.NewClient` does: a driver not serving yet still
/// registers, and its calls fail.
fn add(
    shared: &Arc<Shared>,
    version: KubeletVersion,
    socket: &Path,
    driver: &str,
    endpoint: &str,
    service: DraService,
) -> Result<(), String> {
    let channel = ChannelBuilder::new(shared.env.clone()).connect(&format!("unix:{endpoint}"));
    let instance = Instance {
        socket: socket.to_path_buf(),
        endpoint: endpoint.to_string(),
        service,
        version,
        channel,
        health: None,
    };
    let replaced = {
        let mut instances = shared.dra.instances.lock().expect("sim lock");
        let list = instances.entry(driver.to_string()).or_default();
        if version == KubeletVersion::V1_36 && list.iter().any(|i| i.endpoint == endpoint) {
            // One plugin instance cannot hijack the endpoint of another.
            return Err(format!(
                "endpoint {endpoint} already registered for DRA driver plugin {driver}"
            ));
        }
        let replaced = match version {
            KubeletVersion::V1_32 => std::mem::take(list),
            KubeletVersion::V1_36 => Vec::new(),
        };
        list.push(instance);
        replaced
    };
    drop(replaced);
    Ok(())
}

/// Deregisters the instance of `driver` registered through `socket`, as
/// the kubelet does when that socket is removed: its connection and health
/// stream are dropped.
pub(super) fn deregister(shared: &Arc<Shared>, driver: &str, socket: &Path) {
    let Some(instance) = shared.dra.take(driver, socket) else {
        return;
    };
    let endpoint = instance.endpoint.clone();
    drop(instance);
    let _ = shared.events.send(SimEvent::DraDeregistered {
        driver: driver.to_string(),
        endpoint,
        at: Instant::now(),
    });
}

/// Drops every DRA instance, without events: the kubelet stops or restarts.
pub(super) fn close_all(shared: &Arc<Shared>) {
    let all = std::mem::take(&mut *shared.dra.instances.lock().expect("sim lock"));
    drop(all);
    shared.dra.health.lock().expect("sim lock").clear();
}

/// A health stream's thread and the means to stop it.
struct HealthWatch {
    /// Dropped to end the thread's 5 s wait.
    stop: Option<Sender<()>>,
    stream: Arc<Mutex<StreamSlot>>,
    thread: Option<JoinHandle<()>>,
}

/// The open stream of a health thread, so that deregistration can cancel
/// it; `closed` keeps the thread from opening another.
#[derive(Default)]
struct StreamSlot {
    closed: bool,
    abort: Option<AbortHandle>,
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        {
            let mut slot = self.stream.lock().expect("sim lock");
            slot.closed = true;
            if let Some(abort) = slot.abort.take() {
                abort.abort();
            }
        }
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the health thread of the instance registered through `socket`.
fn start_health(shared: &Arc<Shared>, driver: &str, socket: &Path) {
    let mut instances = shared.dra.instances.lock().expect("sim lock");
    let Some(instance) = instances
        .get_mut(driver)
        .and_then(|list| list.iter_mut().find(|i| i.socket == socket))
    else {
        return;
    };
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let stream = Arc::new(Mutex::new(StreamSlot::default()));
    let (sh, name, channel, slot) = (
        shared.clone(),
        driver.to_string(),
        instance.channel.clone(),
        stream.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("sim-dra-health".into())
        .spawn(move || watch_health(&sh, &name, channel, &stopped, &slot));
    match spawned {
        Ok(thread) => {
            instance.health = Some(HealthWatch {
                stop: Some(stop),
                stream,
                thread: Some(thread),
            })
        }
        Err(e) => {
            let _ = shared.events.send(SimEvent::DraHealthEnded {
                driver: driver.to_string(),
                error: Some(format!("cannot start the sim-dra-health thread: {e}")),
                at: Instant::now(),
            });
        }
    }
}

/// The health thread: follows the stream, and after each exit clears the
/// driver's health, says so, and opens it again after [`HEALTH_RETRY`],
/// until the instance is deregistered.
fn watch_health(
    shared: &Shared,
    driver: &str,
    channel: Channel,
    stopped: &Receiver<()>,
    slot: &Mutex<StreamSlot>,
) {
    let client = dra_health_grpc::DraResourceHealthClient::new(channel);
    loop {
        let ended = follow_health(shared, driver, &client, slot);
        // The kubelet clears the driver's health cache whenever a stream
        // exits ("Clearing health cache for driver upon stream exit").
        shared.dra.health.lock().expect("sim lock").remove(driver);
        let Some(error) = ended else { return };
        let _ = shared.events.send(SimEvent::DraHealthEnded {
            driver: driver.to_string(),
            error,
            at: Instant::now(),
        });
        crossbeam_channel::select! {
            recv(stopped) -> _ => return,
            default(HEALTH_RETRY) => {}
        }
    }
}

/// Follows one health stream until it exits: `Some(error)` (`None` for a
/// clean end) when it ended by itself, `None` when deregistration
/// cancelled it.
fn follow_health(
    shared: &Shared,
    driver: &str,
    client: &dra_health_grpc::DraResourceHealthClient,
    slot: &Mutex<StreamSlot>,
) -> Option<Option<String>> {
    if slot.lock().expect("sim lock").closed {
        return None;
    }
    let stream = match client.node_watch_resources(&dra_health::NodeWatchResourcesRequest::new()) {
        Ok(stream) => stream,
        Err(e) => return Some(Some(go_error(&e))),
    };
    let (mut stream, abort) = abortable(stream);
    {
        let mut slot = slot.lock().expect("sim lock");
        if slot.closed {
            return None;
        }
        slot.abort = Some(abort);
    }
    let ended = loop {
        match futures_executor::block_on(stream.next()) {
            Some(Ok(msg)) => record_health(shared, driver, &msg),
            Some(Err(e)) => break Some(go_error(&e)),
            None => break None,
        }
    };
    (!stream.is_aborted()).then_some(ended)
}

/// Keeps a health message as the driver's health and sends it as an event.
fn record_health(shared: &Shared, driver: &str, msg: &dra_health::NodeWatchResourcesResponse) {
    let devices: Vec<DraDeviceHealth> = msg
        .devices
        .iter()
        .map(|d| DraDeviceHealth {
            pool: d.device.pool_name.clone(),
            device: d.device.device_name.clone(),
            health: health_name(d.health.value()).into(),
            message: d.message.clone(),
            timeout_seconds: d.health_check_timeout_seconds,
            last_updated: d.last_updated_time,
        })
        .collect();
    shared
        .dra
        .health
        .lock()
        .expect("sim lock")
        .insert(driver.to_string(), devices.clone());
    let _ = shared.events.send(SimEvent::DraHealth {
        driver: driver.to_string(),
        devices,
        at: Instant::now(),
    });
}

/// The kubelet's health string of a `HealthStatus` value; a value it does
/// not know is `Unknown`.
fn health_name(value: i32) -> &'static str {
    match value {
        1 => "Healthy",
        2 => "Unhealthy",
        _ => "Unknown",
    }
}

/// A grpcio error as grpc-go prints a status, so texts read as the
/// kubelet's do (`rpc error: code = Unimplemented desc = ...`).
fn go_error(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(status) => {
            validate::go_status(i32::from(status.code()), status.message())
        }
        e => e.to_string(),
    }
}

/// Builds a request of `$api` for the claims, calls `$method` through
/// `$grpc`'s client with the kubelet's deadline, and hands the answer's
/// claims map to `$each`.
macro_rules! dra_call {
    ($api:ident, $grpc:ident, $channel:expr, $req:ident, $method:ident, $claims:expr, $each:expr) => {{
        let req = $api::$req {
            claims: $claims
                .iter()
                .map(|&(namespace, uid, name)| $api::Claim {
                    namespace: namespace.into(),
                    uid: uid.into(),
                    name: name.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        $grpc::DraPluginClient::new($channel)
            .$method(&req, CallOption::default().timeout(CALL_TIMEOUT))
            .map(|resp| {
                resp.claims
                    .into_iter()
                    .map($each)
                    .collect::<HashMap<_, _>>()
            })
    }};
}

/// Devices of a v1 or v1beta1 answer, which have the same fields 1-4.
macro_rules! prepared {
    ($devices:expr) => {
        $devices
            .into_iter()
            .map(|d| PreparedDevice {
                request_names: d.request_names,
                pool: d.pool_name,
                device: d.device_name,
                cdi_ids: d.cdi_device_ids,
            })
            .collect::<Vec<_>>()
    };
}

impl Sim {
    /// Calls NodePrepareResources of `driver` for `claims`
    /// (`(namespace, uid, name)`, one call as the kubelet makes per pod),
    /// through the service chosen at registration, with the kubelet's 45 s
    /// deadline. The error is the kubelet's text when the call fails, the
    /// driver is not registered, or the answer has a claim UID not asked
    /// for or leaves one out; otherwise each claim's devices or its error
    /// (the kubelet's text; it stops at the first, this reports all).
    pub fn prepare(&self, driver: &str, claims: &[ClaimRef]) -> Result<Prepared, String> {
        const METHOD: &str = "NodePrepareResources";
        let (channel, service, version) = self.shared.dra.target(driver)?;
        let answer = match service {
            DraService::V1 => dra_call!(
                dra_v1,
                dra_v1_grpc,
                channel,
                NodePrepareResourcesRequest,
                node_prepare_resources_opt,
                claims,
                |(uid, r)| (uid, (prepared!(r.devices), r.error))
            ),
            // v1beta1's messages are v1's (proto/dra_v1beta1.proto).
            DraService::V1beta1 => dra_call!(
                dra_v1,
                dra_v1beta1_grpc,
                channel,
                NodePrepareResourcesRequest,
                node_prepare_resources_opt,
                claims,
                |(uid, r)| (uid, (prepared!(r.devices), r.error))
            ),
        }
        .map_err(|e| validate::dra_call_error(METHOD, version, &go_error(&e)))?;
        let uids: Vec<&str> = claims.iter().map(|c| c.1).collect();
        validate::dra_answer(METHOD, version, &uids, answer.keys())?;
        let mut out = Prepared::new();
        for &(namespace, uid, name) in claims {
            let Some((devices, error)) = answer.get(uid) else {
                continue;
            };
            let result = match error.as_str() {
                "" => Ok(devices.clone()),
                e => Err(validate::dra_claim_error(
                    METHOD, version, namespace, name, e,
                )),
            };
            out.insert(uid.to_string(), result);
        }
        Ok(out)
    }

    /// Calls NodeUnprepareResources of `driver` for `claims`, like
    /// [`Sim::prepare`]: the same service, deadline and checks.
    pub fn unprepare(&self, driver: &str, claims: &[ClaimRef]) -> Result<Unprepared, String> {
        const METHOD: &str = "NodeUnprepareResources";
        let (channel, service, version) = self.shared.dra.target(driver)?;
        let answer = match service {
            DraService::V1 => dra_call!(
                dra_v1,
                dra_v1_grpc,
                channel,
                NodeUnprepareResourcesRequest,
                node_unprepare_resources_opt,
                claims,
                |(uid, r)| (uid, r.error)
            ),
            // v1beta1's messages are v1's (proto/dra_v1beta1.proto).
            DraService::V1beta1 => dra_call!(
                dra_v1,
                dra_v1beta1_grpc,
                channel,
                NodeUnprepareResourcesRequest,
                node_unprepare_resources_opt,
                claims,
                |(uid, r)| (uid, r.error)
            ),
        }
        .map_err(|e| validate::dra_call_error(METHOD, version, &go_error(&e)))?;
        let uids: Vec<&str> = claims.iter().map(|c| c.1).collect();
        validate::dra_answer(METHOD, version, &uids, answer.keys())?;
        let mut out = Unprepared::new();
        for &(namespace, uid, name) in claims {
            let result = match answer.get(uid).map(String::as_str) {
                None => continue,
                Some("") => Ok(()),
                Some(e) => Err(validate::dra_claim_error(
                    METHOD, version, namespace, name, e,
                )),
            };
            out.insert(uid.to_string(), result);
        }
        Ok(out)
    }

    /// Where and how `driver` is called now (its newest instance), if it is
    /// registered.
    pub fn dra_registration(&self, driver: &str) -> Option<DraRegistration> {
        let instances = self.shared.dra.instances.lock().expect("sim lock");
        instances
            .get(driver)
            .and_then(|list| list.last())
            .map(|i| DraRegistration {
                driver: driver.to_string(),
                endpoint: i.endpoint.clone(),
                service: i.service,
            })
    }

    /// What `driver`'s health stream last said, while a stream is open.
    pub fn dra_health(&self, driver: &str) -> Option<Vec<DraDeviceHealth>> {
        let health = self.shared.dra.health.lock().expect("sim lock");
        health.get(driver).cloned()
    }

    /// Waits for `driver` to register; returns where and how it is called.
    pub fn wait_dra_registered(
        &self,
        driver: &str,
        timeout: Duration,
    ) -> Result<DraRegistration, String> {
        self.wait_for(
            &format!("DRA driver {driver} to register"),
            timeout,
            |ev| match ev {
                SimEvent::DraRegistered {
                    driver: d,
                    endpoint,
                    service,
                    ..
                } if d == driver => Some(DraRegistration {
                    driver: d.clone(),
                    endpoint: endpoint.clone(),
                    service: *service,
                }),
                _ => None,
            },
        )
    }

    /// Waits for the plugin watcher to refuse `driver`; returns why.
    pub fn wait_dra_rejected(&self, driver: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for(
            &format!("DRA driver {driver} to be refused"),
            timeout,
            |ev| match ev {
                SimEvent::DraRejected {
                    driver: d, error, ..
                } if d == driver => Some(error.clone()),
                _ => None,
            },
        )
    }

    /// Waits for a health message of `driver` that `accept` takes; returns
    /// its devices.
    pub fn wait_dra_health(
        &self,
        driver: &str,
        timeout: Duration,
        mut accept: impl FnMut(&[DraDeviceHealth]) -> bool,
    ) -> Result<Vec<DraDeviceHealth>, String> {
        self.wait_for(
            &format!("a matching health message from DRA driver {driver}"),
            timeout,
            |ev| match ev {
                SimEvent::DraHealth {
                    driver: d, devices, ..
                } if d == driver && accept(devices) => Some(devices.clone()),
                _ => None,
            },
        )
    }

    /// Waits for a health stream of `driver` to exit by itself; returns its
    /// error (`None`: it ended cleanly).
    pub fn wait_dra_health_ended(
        &self,
        driver: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        self.wait_for(
            &format!("the health stream of DRA driver {driver} to end"),
            timeout,
            |ev| match ev {
                SimEvent::DraHealthEnded {
                    driver: d, error, ..
                } if d == driver => Some(error.clone()),
                _ => None,
            },
        )
    }

    /// Waits for `driver` to be deregistered; returns the endpoint dropped.
    pub fn wait_dra_deregistered(&self, driver: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for(
            &format!("DRA driver {driver} to deregister"),
            timeout,
            |ev| match ev {
                SimEvent::DraDeregistered {
                    driver: d,
                    endpoint,
                    ..
                } if d == driver => Some(endpoint.clone()),
                _ => None,
            },
        )
    }
}

/// Parses a claim as `kubelet-sim serve` takes it, `NAMESPACE/NAME/UID`,
/// into `(namespace, uid, name)`.
pub fn claim_arg(arg: &str) -> Result<(String, String, String), String> {
    match arg.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, uid] if !ns.is_empty() && !name.is_empty() && !uid.is_empty() => {
            Ok((ns.to_string(), uid.to_string(), name.to_string()))
        }
        _ => Err(format!("not a claim {arg:?}: NAMESPACE/NAME/UID")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_service_and_version_names() {
        assert_eq!(DraService::from_name("v1.DRAPlugin"), Some(DraService::V1));
        assert_eq!(
            DraService::from_name("v1beta1.DRAPlugin"),
            Some(DraService::V1beta1)
        );
        assert_eq!(DraService::from_name("v1alpha1.DRAResourceHealth"), None);
        assert_eq!(DraService::V1beta1.to_string(), "v1beta1.DRAPlugin");
        assert_eq!("1.32".parse(), Ok(KubeletVersion::V1_32));
        assert_eq!(KubeletVersion::default(), KubeletVersion::V1_36);
        assert!("1.33".parse::<KubeletVersion>().is_err());
    }

    #[test]
    fn test_health_names_and_claim_args() {
        assert_eq!(health_name(0), "Unknown");
        assert_eq!(health_name(1), "Healthy");
        assert_eq!(health_name(2), "Unhealthy");
        assert_eq!(health_name(7), "Unknown");
        assert_eq!(
            claim_arg("default/pod1-rngs/38a2").unwrap(),
            ("default".into(), "38a2".into(), "pod1-rngs".into())
        );
        for bad in ["default/x", "a/b/c/d", "/x/u", "default//u", ""] {
            assert!(claim_arg(bad).is_err(), "{bad:?}");
        }
    }
}
