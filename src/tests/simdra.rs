//! The kubelet simulator's DRA side over the real wire: a small fake DRA
//! driver, written here with grpcio (the registration service on a socket
//! in a registry dir; `dra.v1`, `dra.v1beta1` and the health service on a
//! DRA socket elsewhere), against `Sim::watch_registry`. Every wait is
//! bounded; nothing sleeps to synchronise.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, unbounded};
use futures_util::{FutureExt as _, SinkExt as _};
use grpcio::{
    EnvBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder,
    ServerCredentials, ServerStreamingSink, UnarySink, WriteFlags,
};
use kubelet_plugin::{
    api::{
        dra_health, dra_health_grpc, dra_v1, dra_v1_grpc, dra_v1beta1_grpc, pluginregistration,
        pluginregistration_grpc,
    },
    sim::{DraDeviceHealth, DraService, KubeletVersion, Sim},
};
use protobuf::{EnumOrUnknown, MessageField};

const DRIVER: &str = "dra.example.com";
const WAIT: Duration = Duration::from_secs(5);
const ALL: &[&str] = &[
    "v1.DRAPlugin",
    "v1beta1.DRAPlugin",
    "v1alpha1.DRAResourceHealth",
];
const CLAIMS: &[(&str, &str, &str)] = &[
    ("default", "uid-1", "claim-1"),
    ("default", "uid-2", "claim-2"),
];

/// A call the fake driver received.
#[derive(Debug, PartialEq)]
struct Call {
    /// `v1` or `v1beta1`.
    service: &'static str,
    /// `prepare` or `unprepare`.
    method: &'static str,
    /// `(namespace, uid, name)`.
    claims: Vec<(String, String, String)>,
}

/// How the fake answers Prepare and Unprepare.
#[derive(Clone, Copy, Debug, Default)]
enum Answer {
    /// An entry for every claim.
    #[default]
    Full,
    /// No entry for the last claim.
    LeaveOutLast,
    /// Every claim's entry, and one for a UID not asked for.
    AddUnknown,
    /// The first claim's entry carries an error.
    FailFirst,
}

/// The claim UIDs to answer, each with its error.
fn answer_for(answer: Answer, uids: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = uids.iter().map(|u| (u.clone(), String::new())).collect();
    match answer {
        Answer::Full => {}
        Answer::LeaveOutLast => {
            out.pop();
        }
        Answer::AddUnknown => out.push(("not-asked".into(), String::new())),
        Answer::FailFirst => out[0].1 = "device busy".into(),
    }
    out
}

/// The fake's DRA service of one version.
macro_rules! fake_dra {
    ($name:ident, $api:ident, $grpc:ident, $service:literal) => {
        #[derive(Clone)]
        struct $name {
            calls: Sender<Call>,
            answer: Arc<Mutex<Answer>>,
        }

        impl $name {
            fn record(
                &self,
                method: &'static str,
                claims: &[$api::Claim],
            ) -> Vec<(String, String)> {
                let claims: Vec<(String, String, String)> = claims
                    .iter()
                    .map(|c| (c.namespace.clone(), c.uid.clone(), c.name.clone()))
                    .collect();
                let uids: Vec<String> = claims.iter().map(|c| c.1.clone()).collect();
                self.calls
                    .send(Call {
                        service: $service,
                        method,
                        claims,
                    })
                    .unwrap();
                answer_for(*self.answer.lock().unwrap(), &uids)
            }
        }

        impl $grpc::DraPlugin for $name {
            fn node_prepare_resources(
                &mut self,
                ctx: RpcContext,
                req: $api::NodePrepareResourcesRequest,
                sink: UnarySink<$api::NodePrepareResourcesResponse>,
            ) {
                let mut resp = $api::NodePrepareResourcesResponse::new();
                for (uid, error) in self.record("prepare", &req.claims) {
                    let device = $api::Device {
                        request_names: vec!["req".into()],
                        pool_name: "pool".into(),
                        device_name: format!("dev-{uid}"),
                        cdi_device_ids: vec![format!("example.com/dev={uid}")],
                        ..Default::default()
                    };
                    let entry = $api::NodePrepareResourceResponse {
                        devices: vec![device],
                        error,
                        ..Default::default()
                    };
                    resp.claims.insert(uid, entry);
                }
                ctx.spawn(sink.success(resp).map(drop));
            }

            fn node_unprepare_resources(
                &mut self,
                ctx: RpcContext,
                req: $api::NodeUnprepareResourcesRequest,
                sink: UnarySink<$api::NodeUnprepareResourcesResponse>,
            ) {
                let mut resp = $api::NodeUnprepareResourcesResponse::new();
                for (uid, error) in self.record("unprepare", &req.claims) {
                    let entry = $api::NodeUnprepareResourceResponse {
                        error,
                        ..Default::default()
                    };
                    resp.claims.insert(uid, entry);
                }
                ctx.spawn(sink.success(resp).map(drop));
            }
        }
    };
}

fake_dra!(FakeV1, dra_v1, dra_v1_grpc, "v1");
// v1beta1's messages are v1's (proto/dra_v1beta1.proto).
fake_dra!(FakeV1beta1, dra_v1, dra_v1beta1_grpc, "v1beta1");

/// What a test tells one open health stream of the fake.
enum Health {
    /// Send this device list.
    Send(Vec<dra_health::DeviceHealth>),
    /// End the stream cleanly.
    End,
    /// End it with this status.
    Fail(RpcStatusCode),
}

/// The fake's health service: each stream the kubelet opens is handed to
/// the test as a sender, and a pump thread writes what the test sends, so
/// the handler returns at once.
#[derive(Clone)]
struct FakeHealth {
    streams: Sender<Sender<Health>>,
}

impl dra_health_grpc::DraResourceHealth for FakeHealth {
    fn node_watch_resources(
        &mut self,
        _ctx: RpcContext,
        _req: dra_health::NodeWatchResourcesRequest,
        sink: ServerStreamingSink<dra_health::NodeWatchResourcesResponse>,
    ) {
        let (tx, rx) = unbounded();
        self.streams.send(tx).unwrap();
        std::thread::Builder::new()
            .name("fake-health".into())
            .spawn(move || pump(sink, rx))
            .unwrap();
    }
}

fn pump(
    mut sink: ServerStreamingSink<dra_health::NodeWatchResourcesResponse>,
    rx: Receiver<Health>,
) {
    for cmd in rx {
        match cmd {
            Health::Send(devices) => {
                let msg = dra_health::NodeWatchResourcesResponse {
                    devices,
                    ..Default::default()
                };
                let sent = futures_executor::block_on(sink.send((msg, WriteFlags::default())));
                if sent.is_err() {
                    return;
                }
            }
            Health::End => {
                let _ = futures_executor::block_on(sink.close());
                return;
            }
            Health::Fail(code) => {
                let status = RpcStatus::with_message(code, "fake failure".into());
                let _ = futures_executor::block_on(sink.fail(status));
                return;
            }
        }
    }
}

/// The fake's registration service.
#[derive(Clone)]
struct FakeRegistration {
    info: pluginregistration::PluginInfo,
    statuses: Sender<pluginregistration::RegistrationStatus>,
}

impl pluginregistration_grpc::Registration for FakeRegistration {
    fn get_info(
        &mut self,
        ctx: RpcContext,
        _req: pluginregistration::InfoRequest,
        sink: UnarySink<pluginregistration::PluginInfo>,
    ) {
        ctx.spawn(sink.success(self.info.clone()).map(drop));
    }

    fn notify_registration_status(
        &mut self,
        ctx: RpcContext,
        req: pluginregistration::RegistrationStatus,
        sink: UnarySink<pluginregistration::RegistrationStatusResponse>,
    ) {
        self.statuses.send(req).unwrap();
        let resp = pluginregistration::RegistrationStatusResponse::new();
        ctx.spawn(sink.success(resp).map(drop));
    }
}

/// What the fake serves.
struct Options<'a> {
    /// Its supported_versions.
    versions: &'a [&'a str],
    /// Whether it serves the health service.
    health: bool,
    /// Whether it serves its DRA socket at all.
    serving: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            versions: ALL,
            health: true,
            serving: true,
        }
    }
}

/// A fake DRA driver: its sockets, and what it saw.
struct Fake {
    reg_socket: PathBuf,
    dra_socket: PathBuf,
    calls: Receiver<Call>,
    statuses: Receiver<pluginregistration::RegistrationStatus>,
    streams: Receiver<Sender<Health>>,
    answer: Arc<Mutex<Answer>>,
    _servers: Vec<Server>,
}

fn serve(env: &Arc<Environment>, services: Vec<grpcio::Service>, path: &Path) -> Server {
    let mut builder = ServerBuilder::new(env.clone());
    for s in services {
        builder = builder.register_service(s);
    }
    let mut server = builder.build().unwrap();
    server
        .add_listening_port(
            format!("unix:{}", path.display()),
            ServerCredentials::insecure(),
        )
        .unwrap();
    server.start();
    server
}

impl Fake {
    /// Serves the DRA socket `<plugins>/dra.sock`, then the registration
    /// socket, bound under a dot name (which the plugin watcher skips) and
    /// renamed into `<registry>/<DRIVER>-reg.sock` once it serves.
    fn start(registry: &Path, plugins: &Path, opts: Options) -> Fake {
        let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("fake").build());
        let (calls_tx, calls) = unbounded();
        let (statuses_tx, statuses) = unbounded();
        let (streams_tx, streams) = unbounded();
        let answer = Arc::new(Mutex::new(Answer::default()));
        std::fs::create_dir_all(plugins).unwrap();
        let dra_socket = plugins.join("dra.sock");
        let mut servers = Vec::new();
        if opts.serving {
            let (calls, answer) = (calls_tx, answer.clone());
            let mut services = vec![
                dra_v1_grpc::create_dra_plugin(FakeV1 {
                    calls: calls.clone(),
                    answer: answer.clone(),
                }),
                dra_v1beta1_grpc::create_dra_plugin(FakeV1beta1 { calls, answer }),
            ];
            if opts.health {
                services.push(dra_health_grpc::create_dra_resource_health(FakeHealth {
                    streams: streams_tx,
                }));
            }
            servers.push(serve(&env, services, &dra_socket));
        }
        let info = pluginregistration::PluginInfo {
            type_: "DRAPlugin".into(),
            name: DRIVER.into(),
            endpoint: dra_socket.display().to_string(),
            supported_versions: opts.versions.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        let registration = pluginregistration_grpc::create_registration(FakeRegistration {
            info,
            statuses: statuses_tx,
        });
        let hidden = registry.join(format!(".{DRIVER}-reg.sock"));
        let reg_socket = registry.join(format!("{DRIVER}-reg.sock"));
        servers.push(serve(&env, vec![registration], &hidden));
        std::fs::rename(&hidden, &reg_socket).unwrap();
        Fake {
            reg_socket,
            dra_socket,
            calls,
            statuses,
            streams,
            answer,
            _servers: servers,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn call(&self) -> Call {
        self.calls.recv_timeout(WAIT).expect("a call within 5 s")
    }

    fn stream(&self) -> Sender<Health> {
        self.streams
            .recv_timeout(WAIT)
            .expect("a health stream within 5 s")
    }
}

/// A simulator watching a fresh registry dir, with a dir for the fake's
/// DRA socket beside it.
struct Setup {
    tmp: tempfile::TempDir,
    registry: PathBuf,
    sim: Sim,
}

impl Setup {
    fn new(version: KubeletVersion) -> Setup {
        let tmp = tempfile::Builder::new()
            .prefix("simdra-")
            .tempdir()
            .unwrap();
        let (dp, registry) = (tmp.path().join("dp"), tmp.path().join("registry"));
        std::fs::create_dir(&dp).unwrap();
        std::fs::create_dir(&registry).unwrap();
        let mut sim = Sim::start(&dp).unwrap();
        sim.watch_registry_as(&registry, version).unwrap();
        Setup { tmp, registry, sim }
    }

    fn fake(&self, plugin_dir: &str, opts: Options) -> Fake {
        Fake::start(&self.registry, &self.tmp.path().join(plugin_dir), opts)
    }
}

fn owned(claims: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    claims
        .iter()
        .map(|(n, u, c)| (n.to_string(), u.to_string(), c.to_string()))
        .collect()
}

/// Prepares and unprepares [`CLAIMS`] and checks that both went to the
/// fake through `service`, with every claim answered.
fn round_trip(s: &Setup, fake: &Fake, service: &str) {
    let prepared = s.sim.prepare(DRIVER, CLAIMS).unwrap();
    assert_eq!(
        fake.call(),
        Call {
            service: service_name(service),
            method: "prepare",
            claims: owned(CLAIMS),
        }
    );
    assert_eq!(prepared.len(), 2);
    for (_, uid, _) in CLAIMS {
        let devices = prepared[*uid].as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].pool, "pool");
        assert_eq!(devices[0].device, format!("dev-{uid}"));
        assert_eq!(devices[0].request_names, ["req"]);
        assert_eq!(devices[0].cdi_ids, [format!("example.com/dev={uid}")]);
    }
    let unprepared = s.sim.unprepare(DRIVER, CLAIMS).unwrap();
    let call = fake.call();
    assert_eq!(
        (call.service, call.method),
        (service_name(service), "unprepare")
    );
    assert_eq!(call.claims, owned(CLAIMS));
    assert_eq!(unprepared.len(), 2);
    assert!(unprepared.values().all(Result::is_ok), "{unprepared:?}");
}

fn service_name(service: &str) -> &'static str {
    if service == "v1" { "v1" } else { "v1beta1" }
}

#[test]
fn test_v1_offered_first_is_chosen_and_prepare_round_trips() {
    let s = Setup::new(KubeletVersion::V1_36);
    let fake = s.fake("drv", Options::default());
    let reg = s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
    assert_eq!(reg.service, DraService::V1);
    assert_eq!(reg.endpoint, fake.dra_socket.display().to_string());
    assert_eq!(s.sim.dra_registration(DRIVER), Some(reg));
    let status = fake.statuses.recv_timeout(WAIT).unwrap();
    assert!(status.plugin_registered, "{status:?}");
    assert_eq!(status.error, "");
    // The 1.36 kubelet opens the health stream at every registration.
    let _stream = fake.stream();
    round_trip(&s, &fake, "v1");
}

#[test]
fn test_v1beta1_when_only_it_is_offered_or_it_comes_first() {
    for versions in [
        &["v1beta1.DRAPlugin"][..],
        &["v1beta1.DRAPlugin", "v1.DRAPlugin"],
    ] {
        let s = Setup::new(KubeletVersion::V1_36);
        let opts = Options {
            versions,
            health: false,
            ..Default::default()
        };
        let fake = s.fake("drv", opts);
        let reg = s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
        assert_eq!(reg.service, DraService::V1beta1, "{versions:?}");
        round_trip(&s, &fake, "v1beta1");
        // No health service: the stream fails as on a real kubelet, and is
        // tried again.
        let error = s.sim.wait_dra_health_ended(DRIVER, WAIT).unwrap();
        let error = error.expect("an error, not a clean end");
        assert!(
            error.starts_with("rpc error: code = Unimplemented desc = "),
            "{error}"
        );
    }
}

#[test]
fn test_a_plugin_offering_only_v2_is_refused_with_the_kubelets_text() {
    let s = Setup::new(KubeletVersion::V1_36);
    let fake = s.fake(
        "drv",
        Options {
            versions: &["v2.DRAPlugin"],
            ..Default::default()
        },
    );
    let want = format!(
        "plugin validation failed with err: invalid supported gRPC versions of DRA driver plugin {DRIVER} at endpoint {}: none of services supported by the plugin ([\"v2.DRAPlugin\"]) are supported by the kubelet ([\"v1.DRAPlugin\" \"v1beta1.DRAPlugin\"])",
        fake.dra_socket.display()
    );
    assert_eq!(s.sim.wait_dra_rejected(DRIVER, WAIT).unwrap(), want);
    let status = fake.statuses.recv_timeout(WAIT).unwrap();
    assert!(!status.plugin_registered);
    assert_eq!(status.error, format!("RegisterPlugin error -- {want}"));
    assert_eq!(
        s.sim.prepare(DRIVER, CLAIMS).unwrap_err(),
        format!("DRA driver {DRIVER} is not registered")
    );
    // The plugin watcher tries again while the socket is there.
    let again = fake.statuses.recv_timeout(WAIT).unwrap();
    assert!(!again.plugin_registered);
    assert!(fake.calls.is_empty());
}

#[test]
fn test_1_32_calls_v1beta1_whatever_is_advertised() {
    for versions in [&["v1.DRAPlugin"][..], &["v2.DRAPlugin"], ALL] {
        let s = Setup::new(KubeletVersion::V1_32);
        let opts = Options {
            versions,
            ..Default::default()
        };
        let fake = s.fake("drv", opts);
        let reg = s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
        assert_eq!(reg.service, DraService::V1beta1, "{versions:?}");
        assert!(fake.statuses.recv_timeout(WAIT).unwrap().plugin_registered);
        round_trip(&s, &fake, "v1beta1");
        // 1.32's own texts for an answer that leaves a claim out.
        fake.answer(Answer::LeaveOutLast);
        assert_eq!(
            s.sim.prepare(DRIVER, CLAIMS).unwrap_err(),
            "NodePrepareResources left out 1 claims"
        );
        // 1.32 has no health stream: none was opened by the time the
        // calls above came back (a 1.36 sim opens it before it reports
        // the registration).
        assert!(fake.streams.is_empty(), "1.32 opened a health stream");
    }
}

fn device(
    name: &str,
    health: dra_health::HealthStatus,
    message: &str,
    timeout: i64,
) -> dra_health::DeviceHealth {
    dra_health::DeviceHealth {
        device: MessageField::some(dra_health::DeviceIdentifier {
            pool_name: "pool".into(),
            device_name: name.into(),
            ..Default::default()
        }),
        health: EnumOrUnknown::new(health),
        last_updated_time: 1_700_000_000,
        health_check_timeout_seconds: timeout,
        message: message.into(),
        ..Default::default()
    }
}

#[test]
fn test_health_messages_arrive_as_events_and_an_ended_stream_is_opened_again() {
    let s = Setup::new(KubeletVersion::V1_36);
    let fake = s.fake("drv", Options::default());
    s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
    let stream = fake.stream();
    let sent = vec![
        device(
            "dev-a",
            dra_health::HealthStatus::UNHEALTHY,
            "entropy source failed",
            120,
        ),
        device("dev-b", dra_health::HealthStatus::HEALTHY, "", 0),
    ];
    stream.send(Health::Send(sent)).unwrap();
    let got = s
        .sim
        .wait_dra_health(DRIVER, WAIT, |d| d.len() == 2)
        .unwrap();
    let want = |device: &str, health: &str, message: &str, timeout| DraDeviceHealth {
        pool: "pool".into(),
        device: device.into(),
        health: health.into(),
        message: message.into(),
        timeout_seconds: timeout,
        last_updated: 1_700_000_000,
    };
    assert_eq!(
        got,
        [
            want("dev-a", "Unhealthy", "entropy source failed", 120),
            want("dev-b", "Healthy", "", 0)
        ]
    );
    assert_eq!(s.sim.dra_health(DRIVER), Some(got));

    // A clean end clears the driver's health; the kubelet opens the stream
    // again 5 s later.
    stream
        .send(Health::Send(vec![device(
            "dev-a",
            dra_health::HealthStatus::UNKNOWN,
            "",
            0,
        )]))
        .unwrap();
    s.sim
        .wait_dra_health(DRIVER, WAIT, |d| d.len() == 1 && d[0].health == "Unknown")
        .unwrap();
    stream.send(Health::End).unwrap();
    assert_eq!(s.sim.wait_dra_health_ended(DRIVER, WAIT).unwrap(), None);
    let ended = Instant::now();
    assert_eq!(s.sim.dra_health(DRIVER), None);
    let again = fake
        .streams
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream opened again within 10 s");
    let after = ended.elapsed();
    assert!(
        after >= Duration::from_secs(4),
        "opened again after {after:?}, not 5 s"
    );
    // A failed stream is reported with its status, and tried again too.
    again
        .send(Health::Fail(RpcStatusCode::UNAVAILABLE))
        .unwrap();
    let error = s.sim.wait_dra_health_ended(DRIVER, WAIT).unwrap();
    assert_eq!(
        error.as_deref(),
        Some("rpc error: code = Unavailable desc = fake failure")
    );
}

#[test]
fn test_an_answer_missing_a_claim_or_naming_an_unknown_uid_is_an_error() {
    let s = Setup::new(KubeletVersion::V1_36);
    let fake = s.fake("drv", Options::default());
    s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();

    fake.answer(Answer::LeaveOutLast);
    assert_eq!(
        s.sim.prepare(DRIVER, CLAIMS).unwrap_err(),
        "NodePrepareResources skipped 1 ResourceClaims"
    );
    assert_eq!(
        s.sim.unprepare(DRIVER, CLAIMS).unwrap_err(),
        "NodeUnprepareResources skipped 1 ResourceClaims"
    );

    fake.answer(Answer::AddUnknown);
    assert_eq!(
        s.sim.prepare(DRIVER, CLAIMS).unwrap_err(),
        "NodePrepareResources returned result for unknown claim UID not-asked"
    );
    assert_eq!(
        s.sim.unprepare(DRIVER, CLAIMS).unwrap_err(),
        "NodeUnprepareResources returned result for unknown claim UID not-asked"
    );

    // A claim's own error is that claim's result; the others stand.
    fake.answer(Answer::FailFirst);
    let prepared = s.sim.prepare(DRIVER, CLAIMS).unwrap();
    assert_eq!(
        prepared["uid-1"].as_ref().unwrap_err(),
        "NodePrepareResources failed for ResourceClaim claim-1: device busy"
    );
    assert_eq!(prepared["uid-2"].as_ref().unwrap().len(), 1);
    let unprepared = s.sim.unprepare(DRIVER, CLAIMS).unwrap();
    assert_eq!(
        unprepared["uid-1"].as_ref().unwrap_err(),
        "NodeUnprepareResources failed for ResourceClaim claim-1: device busy"
    );
    assert_eq!(unprepared["uid-2"], Ok(()));
    assert_eq!(fake.calls.try_iter().count(), 6, "one call each");
}

#[test]
fn test_a_driver_not_serving_registers_and_its_calls_fail() {
    // The kubelet's channel connects lazily: registration does not dial the
    // DRA socket, the calls and the health stream do.
    let s = Setup::new(KubeletVersion::V1_36);
    let opts = Options {
        serving: false,
        ..Default::default()
    };
    let fake = s.fake("drv", opts);
    s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
    assert!(!fake.dra_socket.exists());
    let error = s.sim.prepare(DRIVER, CLAIMS).unwrap_err();
    assert!(
        error.starts_with("NodePrepareResources: rpc error: code = Unavailable desc = "),
        "{error}"
    );
    let ended = s.sim.wait_dra_health_ended(DRIVER, WAIT).unwrap();
    assert!(
        ended
            .as_deref()
            .is_some_and(|e| e.starts_with("rpc error: code = Unavailable")),
        "{ended:?}"
    );
}

#[test]
fn test_removing_the_registration_socket_deregisters() {
    let s = Setup::new(KubeletVersion::V1_36);
    let fake = s.fake("drv", Options::default());
    s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
    let stream = fake.stream();
    stream
        .send(Health::Send(vec![device(
            "dev-a",
            dra_health::HealthStatus::HEALTHY,
            "",
            0,
        )]))
        .unwrap();
    s.sim.wait_dra_health(DRIVER, WAIT, |_| true).unwrap();

    std::fs::remove_file(&fake.reg_socket).unwrap();
    let endpoint = s.sim.wait_dra_deregistered(DRIVER, WAIT).unwrap();
    assert_eq!(endpoint, fake.dra_socket.display().to_string());
    assert_eq!(s.sim.dra_registration(DRIVER), None);
    assert_eq!(s.sim.dra_health(DRIVER), None, "health dropped with it");
    assert_eq!(
        s.sim.unprepare(DRIVER, CLAIMS).unwrap_err(),
        format!("DRA driver {DRIVER} is not registered")
    );
    drop(fake);

    // The driver comes back: a new socket registers it again.
    let back = s.fake("drv2", Options::default());
    let reg = s.sim.wait_dra_registered(DRIVER, WAIT).unwrap();
    assert_eq!(reg.endpoint, back.dra_socket.display().to_string());
    round_trip(&s, &back, "v1");
}
